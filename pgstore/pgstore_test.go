package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemtest"
	"github.com/idemkit/idem/internal/pgtest"
	"github.com/idemkit/idem/pgstore"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// newStore returns a migrated Store on a fresh database, through a pool of
// at most maxConns connections (0: pgx's default).
func newStore(t testing.TB, maxConns int32, opts ...pgstore.Option) *pgstore.Store {
	t.Helper()
	s := pgstore.New(pgtest.Pool(t, maxConns), opts...)
	if err := s.Migrate(ctxFor(t)); err != nil {
		t.Fatal(err)
	}
	return s
}

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestConformance(t *testing.T) {
	s := newStore(t, 16)
	idemtest.TestStore(t, func(*testing.T) idem.Store { return s })
}

func TestMigrateConcurrently(t *testing.T) {
	pool := pgtest.Pool(t, 8)
	ctx := ctxFor(t)
	for round := range 2 { // a second round finds everything there
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Go(func() { errs <- pgstore.New(pool, pgstore.WithTable("concurrent")).Migrate(ctx) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_indexes WHERE tablename = 'concurrent'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 { // the primary key and the expiry index
		t.Errorf("%d indexes on the table, want 2", n)
	}
}

func TestDDLInOwnMigration(t *testing.T) {
	pool := pgtest.Pool(t, 4)
	ctx := ctxFor(t)
	if _, err := pool.Exec(ctx, `CREATE SCHEMA billing`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, pgstore.DDL("billing.Idem")); err != nil {
		t.Fatal(err)
	}
	s := pgstore.New(pool, pgstore.WithTable("billing.Idem"))
	op := idem.New[string, string](s)
	got, err := op.Do(ctx, "k", "req", func(context.Context, string) (string, error) { return "done", nil })
	if err != nil || got != "done" {
		t.Fatalf("Do = %q, %v", got, err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM billing."Idem" WHERE record IS NOT NULL`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d records in billing.\"Idem\", err %v; want 1", n, err)
	}
	if !strings.Contains(pgstore.DDL(""), `"idem_records"`) {
		t.Errorf("DDL(\"\") does not name the default table:\n%s", pgstore.DDL(""))
	}
}

func TestNoTable(t *testing.T) {
	s := pgstore.New(pgtest.Pool(t, 2)) // not migrated
	op := idem.New[string, string](s)
	ran := false
	_, info, err := op.DoInfo(ctxFor(t), "k", "req", func(context.Context, string) (string, error) { ran = true; return "", nil })
	if !errors.Is(err, pgstore.ErrNoTable) || !errors.Is(err, idem.ErrStore) || ran {
		t.Fatalf("Do on a missing table = %v (ran %v), want ErrNoTable and ErrStore, fn not run", err, ran)
	}
	if info.Outcome != idem.OutcomeStoreError {
		t.Errorf("outcome %v, want store_error", info.Outcome)
	}
	if _, err := s.Sweep(ctxFor(t), 10); !errors.Is(err, pgstore.ErrNoTable) {
		t.Errorf("Sweep on a missing table = %v, want ErrNoTable", err)
	}
}

func TestCorruptRow(t *testing.T) {
	s := newStore(t, 4)
	ctx := ctxFor(t)
	op := idem.New[string, string](s)
	for _, rec := range [][]byte{{}, []byte("garbage"), {0x00, 0xff, 0xfe}} {
		key := fmt.Sprintf("corrupt-%x", rec)
		if _, err := s.Pool().Exec(ctx, `INSERT INTO idem_records VALUES ($1, 'tok', 'fp', $2, now() + interval '1 hour')`, ":"+key, rec); err != nil {
			t.Fatal(err)
		}
		ran := false
		_, info, err := op.DoInfo(ctx, key, "req", func(context.Context, string) (string, error) { ran = true; return "", nil })
		if !errors.Is(err, idem.ErrCorruptRecord) || ran || info.Outcome != idem.OutcomeCorruptRecord {
			t.Errorf("record %q: Do = %v, %v (ran %v), want ErrCorruptRecord without running fn", rec, info.Outcome, err, ran)
		}
	}
}

func TestAcquireRace(t *testing.T) {
	// Many callers insert one fresh key at once: the unique violation
	// between their inserts must read as "held", never as a store error.
	s := newStore(t, 32)
	ctx := ctxFor(t)
	for round := range 20 {
		key := fmt.Sprintf("race-%d", round)
		var leases, holders atomic.Int32
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				acq, err := s.Acquire(ctx, key, "fp", time.Minute)
				switch {
				case err != nil:
					t.Errorf("Acquire: %v", err)
				case acq.Lease != nil:
					leases.Add(1)
				case acq.Holder == "fp":
					holders.Add(1)
				default:
					t.Errorf("Acquire = %+v", acq)
				}
			})
		}
		wg.Wait()
		if leases.Load() != 1 || holders.Load() != 31 {
			t.Fatalf("round %d: %d leases and %d holders, want 1 and 31", round, leases.Load(), holders.Load())
		}
	}
}

func TestTakeoverRace(t *testing.T) {
	// Callers race to take over one expired lease: one wins.
	s := newStore(t, 32)
	ctx := ctxFor(t)
	for round := range 10 {
		key := fmt.Sprintf("takeover-%d", round)
		if _, err := s.Acquire(ctx, key, "old", time.Millisecond); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		var leases atomic.Int32
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				acq, err := s.Acquire(ctx, key, "new", time.Minute)
				if err != nil {
					t.Errorf("Acquire: %v", err)
				} else if acq.Lease != nil {
					leases.Add(1)
				} else if acq.Holder != "new" {
					t.Errorf("Acquire = %+v", acq)
				}
			})
		}
		wg.Wait()
		if leases.Load() != 1 {
			t.Fatalf("round %d: %d callers took the expired lease over, want 1", round, leases.Load())
		}
	}
}

func TestSweep(t *testing.T) {
	s := newStore(t, 4)
	ctx := ctxFor(t)
	op := idem.New[int, int](s, idem.WithTTL(50*time.Millisecond))
	for i := range 5 {
		if _, err := op.Do(ctx, fmt.Sprint("short", i), i, func(_ context.Context, i int) (int, error) { return i, nil }); err != nil {
			t.Fatal(err)
		}
	}
	long := idem.New[int, int](s, idem.WithTTL(time.Hour))
	if _, err := long.Do(ctx, "long", 1, func(_ context.Context, i int) (int, error) { return i, nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire(ctx, ":leased", "fp", time.Hour); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := s.Sweep(ctx, 0); !errors.Is(err, idem.ErrInvalidOption) {
		t.Errorf("Sweep(0) = %v, want ErrInvalidOption", err)
	}
	var swept int64
	for _, want := range []int64{3, 2, 0} {
		n, err := s.Sweep(ctx, 3)
		if err != nil || n != want {
			t.Fatalf("Sweep(3) = %d, %v; want %d", n, err, want)
		}
		swept += n
	}
	var left int
	if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM idem_records`).Scan(&left); err != nil || left != 2 {
		t.Fatalf("%d rows left after sweeping %d, err %v; want the live record and lease", left, swept, err)
	}
	if got, err := long.Do(ctx, "long", 1, func(context.Context, int) (int, error) { return 0, errors.New("ran again") }); err != nil || got != 1 {
		t.Errorf("the live record after Sweep: %d, %v", got, err)
	}
}

func TestSmallPoolManyWaiters(t *testing.T) {
	// 32 duplicates of one key on a pool of 4 connections: waiters hold no
	// connection, so all are served, none times out.
	for _, tx := range []bool{false, true} {
		t.Run(fmt.Sprintf("DoTx=%v", tx), func(t *testing.T) {
			s := newStore(t, 4)
			ctx := ctxFor(t)
			op := idem.New[string, string](s, idem.WithWaitTimeout(20*time.Second), idem.WithLockTTL(time.Second))
			var runs atomic.Int32
			fn := func(context.Context, string) (string, error) {
				runs.Add(1)
				time.Sleep(300 * time.Millisecond)
				return "paid", nil
			}
			var wg sync.WaitGroup
			for range 32 {
				wg.Go(func() {
					var got string
					var err error
					if tx {
						got, err = pgstore.DoTx(ctx, op, "one", "req", func(ctx context.Context, _ pgx.Tx, r string) (string, error) { return fn(ctx, r) })
					} else {
						got, err = op.Do(ctx, "one", "req", fn)
					}
					if err != nil || got != "paid" {
						t.Errorf("Do = %q, %v", got, err)
					}
				})
			}
			wg.Wait()
			if runs.Load() != 1 {
				t.Errorf("fn ran %d times, want 1", runs.Load())
			}
		})
	}
}

// acquireOnceExpired polls Acquire of key until it grants a lease, and
// fails t when none is granted within limit: it waits out a lease or
// record that is to expire, for as long as that takes and no longer, so
// that a TTL long enough for a loaded machine costs only itself.
func acquireOnceExpired(t testing.TB, s *pgstore.Store, key string, limit time.Duration) {
	t.Helper()
	ctx := ctxFor(t)
	for deadline := time.Now().Add(limit); ; time.Sleep(10 * time.Millisecond) {
		acq, err := s.Acquire(ctx, key, "fp-after", time.Minute)
		switch {
		case err != nil:
			t.Fatalf("Acquire(%s) = %v", key, err)
		case acq.Lease != nil:
			return
		case time.Now().After(deadline):
			t.Fatalf("Acquire(%s) = %+v %v after it should have expired", key, acq, limit)
		}
	}
}

func TestSubSecondLeaseExpires(t *testing.T) {
	// A lease shorter than a second is kept to the millisecond: not
	// truncated to nothing, nor rounded up to a whole second. 800ms, for
	// the second Acquire to land within it on a loaded machine.
	const ttl = 800 * time.Millisecond
	s := newStore(t, 4)
	ctx := ctxFor(t)
	if _, err := s.Acquire(ctx, "k", "fp", ttl); err != nil {
		t.Fatal(err)
	}
	if acq, err := s.Acquire(ctx, "k", "fp", time.Minute); err != nil || acq.Holder != "fp" {
		t.Fatalf("Acquire while leased = %+v, %v", acq, err)
	}
	// It ends within ttl of now by the database's clock, not a whole
	// second after it was granted: a stall of the test's cannot fail this.
	var leftMs float64
	if err := s.Pool().QueryRow(ctx, `SELECT extract(epoch FROM expires_at - clock_timestamp())::float8 * 1000 FROM idem_records WHERE key = 'k'`).Scan(&leftMs); err != nil {
		t.Fatal(err)
	}
	if leftMs > float64(ttl/time.Millisecond) {
		t.Errorf("the lease of %v ends in %.0fms", ttl, leftMs)
	}
	acquireOnceExpired(t, s, "k", 10*time.Second)
}

// countingTracer counts the statements each pool sends, by their first
// word.
// onStart, when set before the tracer is used, is called with each
// statement's first word.
type countingTracer struct {
	mu      sync.Mutex
	stmts   []string
	onStart func(conn *pgx.Conn, word string)
}

func (c *countingTracer) TraceQueryStart(ctx context.Context, conn *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	word, _, _ := strings.Cut(strings.TrimSpace(d.SQL), " ")
	word = strings.ToUpper(word)
	c.mu.Lock()
	c.stmts = append(c.stmts, word)
	c.mu.Unlock()
	if c.onStart != nil {
		c.onStart(conn, word)
	}
	return ctx
}

func (c *countingTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *countingTracer) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stmts
	c.stmts = nil
	return s
}

func tracedStore(t testing.TB) (*pgstore.Store, *countingTracer) {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(pgtest.ConnString(t))
	if err != nil {
		t.Fatal(err)
	}
	tr := &countingTracer{}
	cfg.ConnConfig.Tracer = tr
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := pgstore.New(pool)
	if err := s.Migrate(ctxFor(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctxFor(t), `CREATE TABLE orders (id text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	tr.take()
	return s, tr
}

func TestStatements(t *testing.T) {
	s, tr := tracedStore(t)
	ctx := ctxFor(t)
	op := idem.New[string, string](s)
	fn := func(context.Context, string) (string, error) { return "ok", nil }
	txFn := func(ctx context.Context, tx pgx.Tx, id string) (string, error) {
		_, err := tx.Exec(ctx, `INSERT INTO orders VALUES ($1)`, id)
		return "ok", err
	}
	for _, tc := range []struct {
		name string
		call func() error
		want string
	}{
		{"Do first execution", func() error { _, err := op.Do(ctx, "a", "a", fn); return err }, "WITH UPDATE"},
		{"Do replay", func() error { _, err := op.Do(ctx, "a", "a", fn); return err }, "WITH"},
		{"DoTx first execution", func() error { _, err := pgstore.DoTx(ctx, op, "b", "b", txFn); return err }, "WITH BEGIN INSERT UPDATE COMMIT"},
		{"DoTx replay", func() error { _, err := pgstore.DoTx(ctx, op, "b", "b", txFn); return err }, "WITH"},
		{"Do replay of DoTx's record", func() error { _, err := op.Do(ctx, "b", "b", fn); return err }, "WITH"},
	} {
		if err := tc.call(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := strings.Join(tr.take(), " "); got != tc.want {
			t.Errorf("%s: statements %s, want %s", tc.name, got, tc.want)
		}
	}
}
