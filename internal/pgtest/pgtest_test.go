package pgtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/idemkit/idem/internal/testserver"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// childEnv set to 1 makes the binary a child of TestDiesWithBinary: it
// starts the server and exits without Main.
const childEnvVar = "IDEM_PGTEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnvVar) == "1" {
		os.Exit(m.Run())
	}
	os.Exit(Main(m))
}

func TestServerOnLoopback(t *testing.T) {
	start := time.Now()
	s := SharedServer(t)
	t.Logf("server ready on %s:%d after %v (0 if another test started it)", s.Host, s.Port, time.Since(start).Round(time.Millisecond))
	if s.Host != "127.0.0.1" {
		t.Errorf("Host = %q, want 127.0.0.1", s.Host)
	}
	if s.Port == 5432 || s.Port <= 0 {
		t.Errorf("Port = %d, want a free port other than 5432", s.Port)
	}
	ctx := context.Background()
	c, err := pgx.Connect(ctx, ConnString(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var addr string
	var port int
	var dir string
	if err := c.QueryRow(ctx, "SELECT host(inet_server_addr()), inet_server_port(), current_setting('data_directory')").Scan(&addr, &port, &dir); err != nil {
		t.Fatal(err)
	}
	if addr != "127.0.0.1" || port != s.Port {
		t.Errorf("connected to %s:%d, want 127.0.0.1:%d", addr, port, s.Port)
	}
	if !strings.HasPrefix(dir, s.Dir+string(filepath.Separator)) {
		t.Errorf("data directory %s is not in %s", dir, s.Dir)
	}
}

func TestConnStringNewEmptyDatabases(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b := ConnString(t), ConnString(t)
	if a == b {
		t.Fatalf("two calls gave the same connection string %s", a)
	}
	ca, err := pgx.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close(ctx)
	cb, err := pgx.Connect(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close(ctx)
	var dbA, dbB string
	if err := ca.QueryRow(ctx, "SELECT current_database()").Scan(&dbA); err != nil {
		t.Fatal(err)
	}
	if err := cb.QueryRow(ctx, "SELECT current_database()").Scan(&dbB); err != nil {
		t.Fatal(err)
	}
	if dbA == dbB {
		t.Fatalf("both connection strings lead to database %s", dbA)
	}
	for _, c := range []*pgx.Conn{ca, cb} {
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("new database has %d tables, want 0", n)
		}
	}
	if _, err := ca.Exec(ctx, "CREATE TABLE only_in_a (k text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	var found *string
	if err := cb.QueryRow(ctx, "SELECT to_regclass('only_in_a')::text").Scan(&found); err != nil {
		t.Fatal(err)
	}
	if found != nil {
		t.Errorf("table created in %s is visible in %s", dbA, dbB)
	}
	if err := ca.QueryRow(ctx, "SELECT to_regclass('only_in_a')::text").Scan(&found); err != nil || found == nil {
		t.Errorf("table not visible in its own database: %v, %v", found, err)
	}
}

func TestPoolMaxConns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := Pool(t, 3)
	if got := p.Config().MaxConns; got != 3 {
		t.Errorf("Pool(t, 3): MaxConns = %d", got)
	}
	var one int
	if err := p.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1: %d, %v", one, err)
	}
	cfg, err := pgxpool.ParseConfig(ConnString(t))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := Pool(t, 0).Config().MaxConns, cfg.MaxConns; got != want {
		t.Errorf("Pool(t, 0): MaxConns = %d, want the default %d", got, want)
	}
}

func TestDatabaseDroppedAfterTest(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("sub", func(t *testing.T) {
		// Left open on purpose: the drop must end this session.
		c, err := pgx.Connect(context.Background(), ConnString(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRow(context.Background(), "SELECT current_database()").Scan(&name); err != nil {
			t.Fatal(err)
		}
	})
	p := Pool(t, 1)
	var exists bool
	if err := p.QueryRow(context.Background(), "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Errorf("database %s of an ended test still exists", name)
	}
}

func TestDBName(t *testing.T) {
	for _, tc := range []struct {
		n    int
		test string
		want string
	}{
		{1, "TestX", "t1_testx"},
		{12, "TestA/sub_case#01", "t12_testa_sub_case_01"},
		{3, "Test" + strings.Repeat("é", 80), "t3_test" + strings.Repeat("_", 56)},
	} {
		got := dbName(tc.n, tc.test)
		if got != tc.want {
			t.Errorf("dbName(%d, %q) = %q, want %q", tc.n, tc.test, got, tc.want)
		}
		if len(got) > 63 {
			t.Errorf("dbName(%d, %q) is %d bytes long", tc.n, tc.test, len(got))
		}
	}
}

// TestChildStartServer starts the server in a child of TestDiesWithBinary and
// prints where it is.
func TestChildStartServer(t *testing.T) {
	if os.Getenv(childEnvVar) != "1" {
		t.Skip("run by TestDiesWithBinary")
	}
	s := SharedServer(t)
	fmt.Printf("PGTEST pid=%d dir=%s\n", s.cmd.Process.Pid, s.Dir)
	if n := len(serverProcesses(s.Dir)); n < 2 {
		t.Errorf("%d processes run in %s/data, want the postmaster and its children", n, s.Dir)
	}
}

// TestDiesWithBinary checks that a binary that exits without Main neither
// hangs nor leaves its server running.
func TestDiesWithBinary(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("only Linux kills a child with its parent")
	}
	if testing.Short() {
		t.Skip("starts a second server")
	}
	SharedServer(t) // skips when PostgreSQL is not installed
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestChildStartServer$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnvVar+"=1")
	// A pipe, as under go test: the child's exit must close it.
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child ran for %v", time.Since(start).Round(time.Millisecond))
	var pid int
	var dir string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "PGTEST "); ok {
			fmt.Sscanf(rest, "pid=%d dir=%s", &pid, &dir)
		}
	}
	if pid == 0 || !strings.Contains(dir, "idem-pg-") {
		t.Fatalf("child did not say where its server is:\n%s", out)
	}
	defer os.RemoveAll(dir)
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := serverProcesses(dir)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes of the child's server still running: %v", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Shut down, not killed: it removed its lock file (and shared memory).
	if _, err := os.Stat(filepath.Join(dir, "data", "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postmaster.pid of the dead server: %v, want it removed\n%s", err, testserver.Tail(filepath.Join(dir, "postgres.log")))
	}

	// The next binary to start a server removes the directory, once it is
	// old enough not to be an initdb in progress.
	removeStale()
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("a recent directory was removed: %v", err)
	}
	old := time.Now().Add(-2 * time.Minute)
	if err := os.Chtimes(dir, old, old); err != nil {
		t.Fatal(err)
	}
	removeStale()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale directory %s not removed: %v", dir, err)
	}
	if _, err := os.Stat(SharedServer(t).Dir); err != nil {
		t.Errorf("directory of the running server: %v", err)
	}
}

// serverProcesses returns the live (not zombie) processes whose working
// directory is dir/data: the postmaster and its children, which each run in a
// session of their own.
func serverProcesses(dir string) []int {
	data := filepath.Join(dir, "data")
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err != nil || cwd != data {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ...
		s := string(b)
		if f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]); len(f) > 0 && f[0] != "Z" {
			pids = append(pids, pid)
		}
	}
	return pids
}
