package pgstore_test

// Tests with real OS processes: the test binary re-runs itself as a child
// (TestHelperProcess), which connects to the parent's database, and dies or
// competes as told by environment variables.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/pgstore"
)

// The environment of a child process. helperEnv names the scenario; when it
// is unset, TestHelperProcess does nothing.
const (
	helperEnv = "IDEM_PGSTORE_HELPER"
	dsnEnv    = "IDEM_PGSTORE_DSN"
)

// The scenarios a child runs.
const (
	scenarioCrashInFn         = "crash-in-fn"
	scenarioCrashBeforeCommit = "crash-before-commit"
	scenarioStorm             = "storm"
)

// Exit codes of a child.
const (
	exitOK      = 0
	exitFailed  = 1 // the scenario went otherwise than planned
	exitSetup   = 2 // the child could not connect
	exitCrashed = 3 // the planned abrupt death
)

// The crash scenarios' key, request and lock TTL.
const (
	crashKey     = "crash-key"
	crashLockTTL = 500 * time.Millisecond
)

var crashOrder = order{ID: "o1", Amount: 42}

// The storm's shape: stormGoroutines goroutines in each of two processes
// call DoTx for every one of stormKeys keys.
const (
	stormKeys       = 20
	stormGoroutines = 16
)

// childPoolSize is the size of a child's connection pool.
const childPoolSize = 8

// TestHelperProcess is not a test: it is the body of the child processes
// the tests of this file start. Run by go test, it returns at once.
func TestHelperProcess(t *testing.T) {
	scenario := os.Getenv(helperEnv)
	if scenario == "" {
		return
	}
	// Child mode: run the scenario and exit, without reporting to the
	// testing package; the parent reads the exit code and stdout.
	os.Exit(runHelper(scenario, os.Getenv(dsnEnv)))
}

// runHelper runs scenario against the database at dsn and returns the exit
// code; the crash scenarios exit with exitCrashed on their own.
func runHelper(scenario, dsn string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		fmt.Fprintf(os.Stderr, "child: %v\n", err)
		return exitSetup
	}
	cfg.MaxConns = childPoolSize
	var tr *commitKiller
	if scenario == scenarioCrashBeforeCommit {
		tr = &commitKiller{}
		cfg.ConnConfig.Tracer = tr
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "child: %v\n", err)
		return exitSetup
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "child: %v\n", err)
		return exitSetup
	}
	// The parent created the tables: the child only connects.
	s := pgstore.New(pool)

	switch scenario {
	case scenarioCrashInFn:
		op := idem.New[order, receipt](s, idem.WithLockTTL(crashLockTTL))
		_, err := pgstore.DoTx(ctx, op, crashKey, crashOrder, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
			if _, err := insertOrder(ctx, tx, o); err != nil {
				return receipt{}, err
			}
			fmt.Println("in-fn: order inserted, dying")
			os.Exit(exitCrashed) // no rollback, no release
			return receipt{}, errors.New("unreachable")
		})
		fmt.Printf("DoTx returned %v instead of dying in fn\n", err)
		return exitFailed

	case scenarioCrashBeforeCommit:
		op := idem.New[order, receipt](s, idem.WithLockTTL(crashLockTTL))
		_, err := pgstore.DoTx(ctx, op, crashKey, crashOrder, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
			tr.arm(tx.Conn().PgConn().PID())
			return insertOrder(ctx, tx, o)
		})
		fmt.Printf("DoTx returned %v instead of dying at COMMIT\n", err)
		return exitFailed

	case scenarioStorm:
		return runStorm(ctx, s)
	}
	fmt.Fprintf(os.Stderr, "child: unknown scenario %q\n", scenario)
	return exitSetup
}

// commitKiller is the tracer of the crash-before-commit child: once armed
// with fn's connection, it notes that connection's statements, and exits
// the process as the connection is about to send COMMIT, when fn's INSERT
// and then the record's UPDATE went before it, each changing one row.
type commitKiller struct {
	pid   atomic.Uint32 // the backend of fn's transaction; 0: not armed
	mu    sync.Mutex
	sql   string   // the armed connection's statement in progress
	trail []string // the armed connection's statements: tag (table)
}

// commitTrail is what the armed connection must have done before COMMIT.
const commitTrail = "INSERT 0 1 (orders); UPDATE 1 (idem_records)"

func (c *commitKiller) arm(pid uint32) { c.pid.Store(pid) }

func (c *commitKiller) armed(conn *pgx.Conn) bool {
	pid := c.pid.Load()
	return pid != 0 && conn.PgConn().PID() == pid
}

func (c *commitKiller) TraceQueryStart(ctx context.Context, conn *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if !c.armed(conn) {
		return ctx
	}
	sql := strings.TrimSpace(d.SQL)
	c.mu.Lock()
	c.sql = sql
	trail := strings.Join(c.trail, "; ")
	c.mu.Unlock()
	if !strings.EqualFold(sql, "commit") {
		return ctx
	}
	if trail != commitTrail {
		fmt.Printf("COMMIT after %q, want after %q\n", trail, commitTrail)
		os.Exit(exitFailed)
	}
	fmt.Printf("at-commit: after %s, dying\n", trail)
	os.Exit(exitCrashed) // COMMIT is never sent
	return ctx
}

func (c *commitKiller) TraceQueryEnd(ctx context.Context, conn *pgx.Conn, d pgx.TraceQueryEndData) {
	if !c.armed(conn) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	entry := d.CommandTag.String()
	if d.Err != nil {
		entry = "error " + d.Err.Error()
	}
	switch {
	case strings.Contains(c.sql, `"idem_records"`):
		entry += " (idem_records)"
	case strings.Contains(c.sql, "orders"):
		entry += " (orders)"
	default:
		entry += " (?)"
	}
	c.trail = append(c.trail, entry)
}

// runStorm is the storm child: stormGoroutines goroutines each call DoTx
// for every key, in an order of their own. fn inserts the order and notes
// its execution in runs, a table without a unique constraint.
func runStorm(ctx context.Context, s *pgstore.Store) int {
	op := idem.New[order, receipt](s, idem.WithWaitTimeout(20*time.Second))
	keys := make([]string, stormKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("storm-%02d", i)
	}
	pid := os.Getpid()
	// Both children start once the parent says so, to overlap.
	fmt.Println("ready")
	if line, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil || line != "go\n" {
		fmt.Printf("no start signal: %q, %v\n", line, err)
		return exitFailed
	}
	var executed atomic.Int32
	var failures atomic.Int32
	var wg sync.WaitGroup
	for range stormGoroutines {
		wg.Go(func() {
			mine := slices.Clone(keys)
			mathrand.Shuffle(len(mine), func(i, j int) { mine[i], mine[j] = mine[j], mine[i] })
			for _, key := range mine {
				i, _ := strconv.Atoi(strings.TrimPrefix(key, "storm-"))
				req := orderFor(key, i)
				got, err := pgstore.DoTx(ctx, op, key, req, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
					r, err := insertOrder(ctx, tx, o)
					if err != nil {
						return receipt{}, err
					}
					if _, err := tx.Exec(ctx, `INSERT INTO runs (key, pid) VALUES ($1, $2)`, key, pid); err != nil {
						return receipt{}, err
					}
					executed.Add(1)
					return r, nil
				})
				if err != nil || got != (receipt{OrderID: req.ID, Total: req.Amount}) {
					failures.Add(1)
					fmt.Printf("error: DoTx(%s) = %+v, %v\n", key, got, err)
				}
			}
		})
	}
	wg.Wait()
	fmt.Printf("executed %d\n", executed.Load())
	if failures.Load() > 0 {
		return exitFailed
	}
	return exitOK
}

// orderFor is the storm's request for key, the same in every process.
func orderFor(key string, i int) order { return order{ID: key, Amount: 100 + i} }

// child is a running child process.
type child struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // stdout, line by line; closed at EOF
	out    []string    // the lines read so far
	stderr strings.Builder
}

// startChild starts the test binary as a child that runs scenario on the
// database at dsn. It is killed when ctx ends.
func startChild(ctx context.Context, t *testing.T, scenario, dsn string) *child {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.timeout=60s")
	cmd.Env = append(os.Environ(), helperEnv+"="+scenario, dsnEnv+"="+dsn)
	cmd.WaitDelay = 5 * time.Second
	c := &child{t: t, cmd: cmd, lines: make(chan string, 256)}
	cmd.Stderr = &c.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	return c
}

// waitLine waits for the child to print line, and fails the test when it
// does not within d.
func (c *child) waitLine(line string, d time.Duration) {
	c.t.Helper()
	timeout := time.After(d)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				c.t.Fatalf("child %d ended its output without printing %q:\n%s", c.cmd.Process.Pid, line, c.output())
			}
			c.out = append(c.out, l)
			if l == line {
				return
			}
		case <-timeout:
			c.t.Fatalf("child %d did not print %q within %v:\n%s", c.cmd.Process.Pid, line, d, c.output())
		}
	}
}

// wait waits for the child to exit, and returns its exit code.
func (c *child) wait() int {
	c.t.Helper()
	for l := range c.lines {
		c.out = append(c.out, l)
	}
	err := c.cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		c.t.Fatalf("child %d: %v", c.cmd.Process.Pid, err)
	}
	return c.cmd.ProcessState.ExitCode()
}

// output returns what the child printed so far, for failure messages; its
// stderr only once it exited.
func (c *child) output() string {
	s := "stdout:\n" + strings.Join(c.out, "\n")
	if c.cmd.ProcessState != nil {
		s += "\nstderr:\n" + c.stderr.String()
	}
	return s
}

// hasLine reports whether the child printed a line starting with prefix.
func (c *child) hasLine(prefix string) bool {
	return slices.ContainsFunc(c.out, func(l string) bool { return strings.HasPrefix(l, prefix) })
}

func TestDoTxCrashInsideFn(t *testing.T) {
	testDoTxCrash(t, scenarioCrashInFn, "in-fn: order inserted")
}

func TestDoTxCrashBeforeCommit(t *testing.T) {
	testDoTxCrash(t, scenarioCrashBeforeCommit, "at-commit: after "+commitTrail)
}

// testDoTxCrash runs a child that dies in the middle of DoTx, after
// printing a line starting with marker, and checks that nothing of its
// call survived but the lease, and that once the lease expired the key is
// executed once.
func testDoTxCrash(t *testing.T, scenario, marker string) {
	s := orderStore(t, 4)
	ctx := ctxFor(t)
	c := startChild(ctx, t, scenario, s.Pool().Config().ConnString())
	code := c.wait()
	if code != exitCrashed || !c.hasLine(marker) {
		t.Fatalf("child exited with %d, want %d after printing %q\n%s", code, exitCrashed, marker, c.output())
	}
	died := time.Now()

	// The child's transaction died with it: neither the order nor the
	// record was kept. Its lease row is left, without a record.
	if n := orders(t, s); n != 0 {
		t.Errorf("%d orders after the child died in DoTx, want 0", n)
	}
	if n := records(t, s); n != 0 {
		t.Errorf("%d records after the child died in DoTx, want 0", n)
	}
	if n := countRows(t, s, `SELECT count(*) FROM idem_records WHERE key = $1 AND record IS NULL`, ":"+crashKey); n != 1 || rows(t, s) != 1 {
		t.Errorf("%d leases of the key, %d rows; want the child's lease left alone", n, rows(t, s))
	}
	var live bool
	if err := s.Pool().QueryRow(ctx, `SELECT expires_at > clock_timestamp() FROM idem_records`).Scan(&live); err != nil {
		t.Fatal(err)
	}

	// A retry outlasts the lease, then runs fn once.
	op := idem.New[order, receipt](s, idem.WithWaitTimeout(10*time.Second))
	var runs atomic.Int32
	fn := func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
		runs.Add(1)
		return insertOrder(ctx, tx, o)
	}
	want := receipt{OrderID: crashOrder.ID, Total: crashOrder.Amount}
	got, err := pgstore.DoTx(ctx, op, crashKey, crashOrder, fn)
	if err != nil || got != want {
		t.Fatalf("retry after the crash = %+v, %v; want %+v", got, err, want)
	}
	t.Logf("lease live when the retry began: %v; the retry completed %v after the child died", live, time.Since(died).Round(time.Millisecond))
	if runs.Load() != 1 || orders(t, s) != 1 || records(t, s) != 1 || rows(t, s) != 1 {
		t.Fatalf("fn ran %d times; %d orders, %d records, %d rows; want 1 each", runs.Load(), orders(t, s), records(t, s), rows(t, s))
	}

	// Later calls replay.
	again, err := pgstore.DoTx(ctx, op, crashKey, crashOrder, fn)
	if err != nil || again != want || runs.Load() != 1 {
		t.Errorf("second retry = %+v, %v, fn ran %d times; want a replay", again, err, runs.Load())
	}
	if orders(t, s) != 1 || records(t, s) != 1 {
		t.Errorf("%d orders and %d records after the replay, want 1 and 1", orders(t, s), records(t, s))
	}
}

func TestDoTxMultiProcessStorm(t *testing.T) {
	s := orderStore(t, 4)
	ctx := ctxFor(t)
	if _, err := s.Pool().Exec(ctx, `CREATE TABLE runs (key text NOT NULL, pid int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	dsn := s.Pool().Config().ConnString()
	children := []*child{startChild(ctx, t, scenarioStorm, dsn), startChild(ctx, t, scenarioStorm, dsn)}
	for _, c := range children {
		c.waitLine("ready", 20*time.Second)
	}
	start := time.Now()
	for _, c := range children {
		if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
			t.Fatal(err)
		}
	}
	executed := 0
	for _, c := range children {
		code := c.wait()
		if code != exitOK {
			t.Errorf("child %d exited with %d, want 0\n%s", c.cmd.Process.Pid, code, c.output())
			continue
		}
		for _, l := range c.out {
			if n, ok := strings.CutPrefix(l, "executed "); ok {
				k, err := strconv.Atoi(n)
				if err != nil {
					t.Fatalf("child %d printed %q", c.cmd.Process.Pid, l)
				}
				executed += k
				t.Logf("child %d executed %d keys", c.cmd.Process.Pid, k)
			}
		}
	}
	t.Logf("storm of %d calls took %v", 2*stormGoroutines*stormKeys, time.Since(start).Round(time.Millisecond))
	if t.Failed() {
		return
	}
	if executed != stormKeys {
		t.Errorf("the children executed fn %d times in all, want %d", executed, stormKeys)
	}
	if n := orders(t, s); n != stormKeys {
		t.Errorf("%d orders, want %d", n, stormKeys)
	}
	if n := countRows(t, s, `SELECT count(*) FROM runs`); n != stormKeys {
		t.Errorf("%d executions recorded in runs, want %d", n, stormKeys)
	}
	if n := countRows(t, s, `SELECT count(DISTINCT key) FROM runs`); n != stormKeys {
		t.Errorf("executions of %d distinct keys, want %d", n, stormKeys)
	}
	if n := records(t, s); n != stormKeys || rows(t, s) != stormKeys {
		t.Errorf("%d records, %d rows; want %d", n, rows(t, s), stormKeys)
	}
	// Every order is the one its key's request asked for.
	if n := countRows(t, s, `SELECT count(*) FROM orders WHERE amount = 100 + substr(id, 7)::int`); n != stormKeys {
		t.Errorf("%d orders match their requests, want %d", n, stormKeys)
	}
}
