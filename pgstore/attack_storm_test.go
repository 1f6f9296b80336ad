package pgstore_test

// Adversarial storms: many callers of one key while leases expire, pools
// starve, sessions are killed and a sweeper runs; every extra run of fn
// must be told to its caller, and at most one kept.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/pgtest"
	"github.com/idemkit/idem/pgstore"
)

// sharedPools returns pools of the given sizes on one new database, named
// pool0, pool1... (application_name), with the store's table and a ledger
// table (no unique constraint, so that a second execution shows as a second
// row) created.
func sharedPools(t *testing.T, sizes ...int32) []*pgxpool.Pool {
	t.Helper()
	dsn := pgtest.ConnString(t)
	var pools []*pgxpool.Pool
	for i, n := range sizes {
		cfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		cfg.MaxConns = n
		cfg.ConnConfig.RuntimeParams["application_name"] = fmt.Sprint("pool", i)
		p, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		pools = append(pools, p)
	}
	if err := pgstore.New(pools[0]).Migrate(ctxFor(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := pools[0].Exec(ctxFor(t), `CREATE TABLE ledger (key text NOT NULL, run int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return pools
}

// hog holds as many of pool's connections as it can get for on, lets them
// go for off, and again, until stop is closed: leases refreshed through
// pool then fail, expire, and are taken over while their fn runs.
func hog(pool *pgxpool.Pool, on, off time.Duration, stop <-chan struct{}) {
	for {
		var held []*pgxpool.Conn
		deadline := time.Now().Add(on)
		for time.Now().Before(deadline) && len(held) < int(pool.Config().MaxConns) {
			ctx, cancel := context.WithDeadline(context.Background(), deadline)
			c, err := pool.Acquire(ctx)
			cancel()
			if err == nil {
				held = append(held, c)
			}
		}
		select {
		case <-stop:
		case <-time.After(time.Until(deadline)):
		}
		for _, c := range held {
			c.Release()
		}
		select {
		case <-stop:
			return
		case <-time.After(off):
		}
	}
}

// sweeper sweeps through pool until stop is closed, and reports the first
// error.
func sweeper(t *testing.T, pool *pgxpool.Pool, stop <-chan struct{}, done *sync.WaitGroup) {
	s := pgstore.New(pool)
	done.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.Sweep(context.Background(), 1000); err != nil {
				t.Errorf("Sweep: %v", err)
				return
			}
		}
	})
}

// outcome is one storm caller's view: the run of fn it made (0 when fn did
// not run in it), what it got back, and the error.
type outcome struct {
	run  int32
	resp int32
	err  error
}

// checkTold checks the promise of idem over one key's callers: of those
// whose fn ran, at most one returned without ErrNotStored, and every
// caller that returned a result without running fn got that one's.
func checkTold(t *testing.T, key string, outs []outcome) (winner int32) {
	t.Helper()
	silent, told := 0, 0
	for _, o := range outs {
		switch {
		case o.run != 0 && o.err == nil:
			silent++
			winner = o.run
		case o.run != 0 && errors.Is(o.err, idem.ErrNotStored):
			told++
		case o.run != 0:
			t.Errorf("%s: run %d returned %v, neither nil nor ErrNotStored", key, o.run, o.err)
		}
	}
	if silent > 1 {
		t.Errorf("%s: SILENT DOUBLE EXECUTION: %d callers ran fn and were told nothing", key, silent)
	}
	// Every replay returns one run's result: the winner's, or, when none
	// returned nil, that of a run whose outcome was unknown to it.
	replayed := int32(0)
	for _, o := range outs {
		if o.run != 0 || o.err != nil {
			continue
		}
		if replayed == 0 {
			replayed = o.resp
		}
		if o.resp != replayed || winner != 0 && o.resp != winner {
			t.Errorf("%s: a replay returned run %d; others %d, the winner %d", key, o.resp, replayed, winner)
		}
	}
	for _, o := range outs {
		if replayed != 0 && o.run == replayed && (errors.Is(o.err, idem.ErrLeaseLost) || errors.Is(o.err, pgstore.ErrRolledBack)) {
			t.Errorf("%s: replays return run %d, whose caller was told it was not stored: %v", key, o.run, o.err)
		}
	}
	t.Logf("%s: %d callers, fn ran %d times: %d told ErrNotStored, winner run %d", key, len(outs), silent+told, told, winner)
	return winner
}

// TestAttackStormDo: 64 callers of one key through Do, with a lease TTL of
// 150ms, a fn that takes 400ms and ignores its context, and the pool
// starved now and then so that refreshes fail and leases are taken over
// while fn runs, with a sweeper deleting expired leases all along. fn may
// run more than once, but every caller whose run was not stored must be
// told.
func TestAttackStormDo(t *testing.T) {
	pools := sharedPools(t, 3, 2)
	s := pgstore.New(pools[0])
	ctx := ctxFor(t)
	op := idem.New[string, int32](s, idem.WithLockTTL(150*time.Millisecond), idem.WithWaitTimeout(20*time.Second))
	var runs atomic.Int32
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() { hog(pools[0], 200*time.Millisecond, 100*time.Millisecond, stop) })
	sweeper(t, pools[1], stop, &bg)
	time.AfterFunc(time.Second, func() { close(stop) })
	outs := make([]outcome, 64)
	var wg sync.WaitGroup
	for i := range outs {
		wg.Go(func() {
			var run int32
			resp, err := op.Do(ctx, "storm", "req", func(context.Context, string) (int32, error) {
				run = runs.Add(1)
				time.Sleep(400 * time.Millisecond)
				return run, nil
			})
			outs[i] = outcome{run, resp, err}
		})
	}
	wg.Wait()
	bg.Wait()
	checkTold(t, "storm", outs)
	if runs.Load() < 2 {
		t.Logf("no lease was taken over: the storm did not attack")
	}
}

// ledgerRuns returns the runs whose ledger rows of key committed.
func ledgerRuns(t *testing.T, pool *pgxpool.Pool, key string) map[int32]bool {
	t.Helper()
	rows, err := pool.Query(ctxFor(t), `SELECT run FROM ledger WHERE key = $1`, key)
	if err != nil {
		t.Fatal(err)
	}
	runs, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatal(err)
	}
	m := map[int32]bool{}
	for _, r := range runs {
		m[r] = true
	}
	if len(runs) > 1 {
		t.Errorf("%s: SILENT DOUBLE EXECUTION in the database: %d ledger rows committed (runs %v)", key, len(runs), runs)
	}
	return m
}

// checkLedger checks DoTx's promise over one key: fn's writes commit with
// the record or not at all, so at most one run's row is kept, it is the
// winner's, and no run told ErrRolledBack kept its row.
func checkLedger(t *testing.T, pool *pgxpool.Pool, key string, outs []outcome) {
	t.Helper()
	winner := checkTold(t, key, outs)
	kept := ledgerRuns(t, pool, key)
	if winner != 0 && !kept[winner] {
		t.Errorf("%s: run %d returned nil but its row was not kept", key, winner)
	}
	rolledBack, unknown := 0, 0
	for _, o := range outs {
		switch {
		case o.run == 0:
		case errors.Is(o.err, pgstore.ErrRolledBack):
			rolledBack++
			if kept[o.run] {
				t.Errorf("%s: run %d was told ErrRolledBack but its row was kept: %v", key, o.run, o.err)
			}
		case o.err != nil:
			unknown++
		}
	}
	t.Logf("%s: %d runs rolled back, %d of unknown outcome, %d kept", key, rolledBack, unknown, len(kept))
	var recs int
	if err := pool.QueryRow(ctxFor(t), `SELECT count(*) FROM idem_records WHERE key = $1 AND record IS NOT NULL`, ":"+key).Scan(&recs); err != nil {
		t.Fatal(err)
	}
	if recs != len(kept) {
		t.Errorf("%s: %d records and %d ledger rows: they must commit together", key, recs, len(kept))
	}
}

// ledgerFn is a DoTx fn that writes its run to the ledger, then dawdles
// for d without looking at its context. *run is set when it returns a
// result; a fn whose write failed returns the error, and has no effect.
func ledgerFn(runs *atomic.Int32, run *int32, d time.Duration) func(context.Context, pgx.Tx, string) (int32, error) {
	return func(ctx context.Context, tx pgx.Tx, key string) (int32, error) {
		r := runs.Add(1)
		if _, err := tx.Exec(context.WithoutCancel(ctx), `INSERT INTO ledger VALUES ($1, $2)`, key, r); err != nil {
			return 0, err
		}
		time.Sleep(d)
		*run = r
		return r, nil
	}
}

// TestAttackStormDoTx: TestAttackStormDo through DoTx, each fn writing a
// ledger row: at most one row may commit, whatever happens to the leases.
func TestAttackStormDoTx(t *testing.T) {
	pools := sharedPools(t, 3, 2)
	s := pgstore.New(pools[0])
	ctx := ctxFor(t)
	op := idem.New[string, int32](s, idem.WithLockTTL(150*time.Millisecond), idem.WithWaitTimeout(20*time.Second))
	var runs atomic.Int32
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() { hog(pools[0], 200*time.Millisecond, 100*time.Millisecond, stop) })
	sweeper(t, pools[1], stop, &bg)
	time.AfterFunc(time.Second, func() { close(stop) })
	outs := make([]outcome, 64)
	var wg sync.WaitGroup
	for i := range outs {
		wg.Go(func() {
			var run int32
			resp, err := pgstore.DoTx(ctx, op, "storm", "storm", ledgerFn(&runs, &run, 400*time.Millisecond))
			outs[i] = outcome{run, resp, err}
		})
	}
	wg.Wait()
	bg.Wait()
	checkLedger(t, pools[1], "storm", outs)
}

// TestAttackChaosDoTx: callers of several keys through DoTx while every
// session of the store's pool is terminated now and then: statements, the
// record's UPDATE and COMMIT fail at random points. Whatever fails, a
// key's ledger keeps at most one row, together with its record.
func TestAttackChaosDoTx(t *testing.T) {
	pools := sharedPools(t, 8, 2, 1)
	s := pgstore.New(pools[0])
	ctx := ctxFor(t)
	op := idem.New[string, int32](s, idem.WithLockTTL(300*time.Millisecond), idem.WithWaitTimeout(20*time.Second))
	var runs atomic.Int32
	stop := make(chan struct{})
	var bg sync.WaitGroup
	sweeper(t, pools[1], stop, &bg)
	bg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(20+runs.Load()%40) * time.Millisecond):
			}
			_, _ = pools[2].Exec(context.Background(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE datname = current_database() AND application_name = 'pool0'`)
		}
	})
	time.AfterFunc(1500*time.Millisecond, func() { close(stop) })
	const keys, callers = 6, 12
	outs := make([][]outcome, keys)
	var wg sync.WaitGroup
	for k := range keys {
		outs[k] = make([]outcome, callers)
		for i := range callers {
			wg.Go(func() {
				var run int32
				key := fmt.Sprint("chaos-", k)
				for {
					resp, err := pgstore.DoTx(ctx, op, key, key, ledgerFn(&runs, &run, time.Duration(20*i)*time.Millisecond))
					outs[k][i] = outcome{run, resp, err}
					// A caller fn did not run in retries while the
					// store fails, as a client would.
					if run != 0 || !errors.Is(err, idem.ErrStore) && !errors.Is(err, idem.ErrInFlight) {
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
			})
		}
	}
	wg.Wait()
	bg.Wait()
	for k := range keys {
		checkLedger(t, pools[1], fmt.Sprint("chaos-", k), outs[k])
	}
}

// TestAttackAcquireShortTTLStorm: 64 goroutines acquire one key again and
// again with leases of 1 or 2 ms, which expire while the others' statements
// run: Acquire must answer every time, never give up ("changed under 16
// attempts") or fail.
func TestAttackAcquireShortTTLStorm(t *testing.T) {
	s := newStore(t, 32)
	ctx := ctxFor(t)
	var leases, errs atomic.Int32
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Go(func() {
			for range 40 {
				acq, err := s.Acquire(ctx, "hot", "fp", time.Duration(1+g%2)*time.Millisecond)
				switch {
				case err != nil:
					if errs.Add(1) < 5 {
						t.Errorf("Acquire: %v", err)
					}
				case acq.Lease != nil:
					leases.Add(1)
				case acq.Holder != "fp":
					t.Errorf("Acquire = %+v", acq)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d leases granted of %d acquires, %d errors", leases.Load(), 64*40, errs.Load())
}

// TestAttackDoTxCallerGoesAway: the caller's context ends while fn runs.
// fn that ignores it and returns a result has its writes and record
// committed together; fn whose statements fail with it keeps nothing and
// the key is given back.
func TestAttackDoTxCallerGoesAway(t *testing.T) {
	s := orderStore(t, 4)
	op := idem.New[order, receipt](s)
	t.Run("fn ignores it", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctxFor(t))
		_, err := pgstore.DoTx(ctx, op, "ignores", order{ID: "o1"}, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
			r, err := insertOrder(ctx, tx, o)
			cancel()
			time.Sleep(20 * time.Millisecond)
			return r, err
		})
		if err != nil || countRows(t, s, `SELECT count(*) FROM orders WHERE id = 'o1'`) != 1 {
			t.Errorf("DoTx = %v; want the write and the record kept", err)
		}
	})
	t.Run("fn's statement fails", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctxFor(t))
		_, err := pgstore.DoTx(ctx, op, "fails", order{ID: "o2"}, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
			if _, err := insertOrder(ctx, tx, o); err != nil {
				return receipt{}, err
			}
			cancel()
			return insertOrder(ctx, tx, order{ID: "o3"})
		})
		if !errors.Is(err, context.Canceled) || countRows(t, s, `SELECT count(*) FROM orders WHERE id IN ('o2', 'o3')`) != 0 {
			t.Errorf("DoTx = %v; want fn's error and nothing kept", err)
		}
		if _, err := pgstore.DoTx(ctxFor(t), op, "fails", order{ID: "o2"}, insertOrder); err != nil {
			t.Errorf("retry = %v, want the key given back", err)
		}
	})
}

// TestAttackSweepRacesTakeover: expired leases are taken over while Sweep
// deletes them: every lease granted must survive, so that its Commit
// stores its record.
func TestAttackSweepRacesTakeover(t *testing.T) {
	pools := sharedPools(t, 16, 4)
	s := pgstore.New(pools[0])
	ctx := ctxFor(t)
	const keys = 300
	if _, err := pools[0].Exec(ctx, `INSERT INTO idem_records
		SELECT 'k' || i, 'old', 'fp', NULL, clock_timestamp() - interval '1 ms' FROM generate_series(0, $1 - 1) i`, keys); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var bg sync.WaitGroup
	var swept atomic.Int64
	for range 3 {
		bg.Go(func() {
			sw := pgstore.New(pools[1])
			for {
				select {
				case <-stop:
					return
				default:
				}
				n, err := sw.Sweep(ctx, 5)
				swept.Add(n)
				if err != nil {
					t.Errorf("Sweep: %v", err)
					return
				}
			}
		})
	}
	leases := make([]idem.Lease, keys)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for k := g; k < keys; k += 16 {
				a, err := s.Acquire(ctx, fmt.Sprint("k", k), "fp", time.Minute)
				if err != nil || a.Lease == nil {
					t.Errorf("Acquire k%d = %+v, %v; want the expired lease taken over", k, a, err)
					continue
				}
				leases[k] = a.Lease
			}
		})
	}
	wg.Wait()
	close(stop)
	bg.Wait()
	t.Logf("%d of %d expired leases swept, the rest taken over", swept.Load(), keys)
	for k, l := range leases {
		if l != nil {
			if err := l.Commit(ctx, []byte("r"), time.Hour); err != nil {
				t.Errorf("k%d: Commit of a lease taken over during Sweep = %v", k, err)
			}
		}
	}
	if n := countRows(t, s, `SELECT count(*) FROM idem_records WHERE record = 'r'`); n != keys {
		t.Errorf("%d records of %d", n, keys)
	}
}
