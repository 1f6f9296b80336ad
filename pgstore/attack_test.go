package pgstore_test

// Adversarial tests of DoTx's transaction, of TTLs and of Lease edges: each
// tries to make the store run fn twice without the caller being told, keep
// a record without fn's writes, or fail unclearly. Several found bugs, fixed
// since; their comments say what was wrong.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/pgstore"
)

// TestAttackMaxDurationTTL: time.Duration(math.MaxInt64), the usual
// "forever", keeps leases and records for ever, rather than overflowing in
// the rounding up to milliseconds into a TTL of 1 ms, after which the next
// call would run fn again with nobody told.
func TestAttackMaxDurationTTL(t *testing.T) {
	s := newStore(t, 4)
	ctx := ctxFor(t)
	forever := time.Duration(math.MaxInt64)

	t.Run("Do", func(t *testing.T) {
		op := idem.New[string, string](s, idem.WithTTL(forever))
		if err := op.Err(); err != nil {
			t.Fatal(err)
		}
		runs := 0
		fn := func(context.Context, string) (string, error) { runs++; return "charged", nil }
		for range 2 {
			if _, err := op.Do(ctx, "forever", "req", fn); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if runs != 1 {
			t.Errorf("fn ran %d times with WithTTL(math.MaxInt64), both calls returned nil: silent double execution", runs)
		}
	})

	t.Run("Acquire", func(t *testing.T) {
		if _, err := s.Acquire(ctx, "lease-forever", "fp", forever); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		acq, err := s.Acquire(ctx, "lease-forever", "fp", time.Minute)
		if err != nil || acq.Lease != nil {
			t.Errorf("a lease of TTL math.MaxInt64 was taken over 20ms later (Acquire = %+v, %v)", acq, err)
		}
	})
}

// TestAttackDoTxFnCommits: fn tries to commit its transaction itself. The
// transaction refuses (ErrTxOwned), so fn's writes cannot commit apart
// from the record; before, they did, while DoTx reported ErrRolledBack.
func TestAttackDoTxFnCommits(t *testing.T) {
	s := orderStore(t, 4)
	ctx := ctxFor(t)
	op := idem.New[order, receipt](s)
	_, err := pgstore.DoTx(ctx, op, "k", order{ID: "o1", Amount: 1}, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
		r, err := insertOrder(ctx, tx, o)
		if err != nil {
			return r, err
		}
		return r, tx.Commit(ctx)
	})
	kept := orders(t, s)
	if !errors.Is(err, pgstore.ErrTxOwned) || kept != 0 || records(t, s) != 0 {
		t.Errorf("DoTx = %v with %d orders and %d records; want ErrTxOwned, and fn's error rolling everything back", err, kept, records(t, s))
	}
}

// TestAttackDoTxRawRollback: fn ends its transaction with SQL
// (tx.Exec(ctx, "ROLLBACK")), which pgx does not see. The record must not
// be written outside the transaction (it would autocommit, and every retry
// replay a success whose writes never happened).
func TestAttackDoTxRawRollback(t *testing.T) {
	for _, end := range []string{"ROLLBACK", "COMMIT"} {
		t.Run(end, func(t *testing.T) {
			s := orderStore(t, 4)
			ctx := ctxFor(t)
			// A lease long enough that a loaded machine's retry "at
			// once" still finds it.
			op := idem.New[order, receipt](s, idem.WithLockTTL(2*time.Second))
			fn := func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
				r, err := insertOrder(ctx, tx, o)
				if err != nil {
					return r, err
				}
				_, err = tx.Exec(ctx, end)
				return r, err
			}
			_, err := pgstore.DoTx(ctx, op, "k", order{ID: "o1", Amount: 1}, fn)
			// The outcome is unknown to DoTx (it cannot tell which SQL
			// ended the transaction): ErrNotStored, not ErrRolledBack,
			// no record, and the key held until its lease expires.
			if !errors.Is(err, idem.ErrNotStored) || errors.Is(err, pgstore.ErrRolledBack) || records(t, s) != 0 {
				t.Fatalf("DoTx = %v with %d records, want ErrNotStored without ErrRolledBack, and no record", err, records(t, s))
			}
			if _, err := pgstore.DoTx(ctx, op, "k", order{ID: "o1", Amount: 1}, insertOrder); !errors.Is(err, idem.ErrInFlight) {
				t.Errorf("retry at once = %v, want ErrInFlight while the lease lasts", err)
			}
		})
	}
}

// TestAttackDoTxBeginFailsRecorded: BEGIN of fn's transaction fails, so fn
// never runs; the error must not go through the Operation's disposition as
// fn's own, which would store it as the key's final outcome.
func TestAttackDoTxBeginFailsRecorded(t *testing.T) {
	s, tr := tracedStore(t)
	var kill atomic.Bool
	tr.onStart = func(conn *pgx.Conn, word string) {
		if word == "BEGIN" && kill.Load() {
			terminate(t, s, conn.PgConn().PID())
		}
	}
	ctx := ctxFor(t)
	op := idem.New[string, string](s, idem.WithDisposition(func(error) idem.Disposition { return idem.Record }))
	ran := false
	kill.Store(true)
	_, err := pgstore.DoTx(ctx, op, "k", "o1", func(context.Context, pgx.Tx, string) (string, error) {
		ran = true
		return "ok", nil
	})
	kill.Store(false)
	t.Logf("DoTx = %v (ran %v)", err, ran)
	if ran || !errors.Is(err, idem.ErrStore) {
		t.Fatalf("BEGIN did not fail as the test arranged: DoTx = %v (ran %v)", err, ran)
	}
	_, err = pgstore.DoTx(ctx, op, "k", "o1", func(context.Context, pgx.Tx, string) (string, error) {
		ran = true
		return "ok", nil
	})
	if !ran {
		t.Errorf("fn never ran, yet its key now replays a final error: %v", err)
	}
}

// TestAttackDoTxAbortedTx: fn swallows the error of a failed statement and
// returns a result; its transaction is aborted and can keep nothing.
func TestAttackDoTxAbortedTx(t *testing.T) {
	s := orderStore(t, 4)
	ctx := ctxFor(t)
	op := idem.New[order, receipt](s)
	o := order{ID: "o1", Amount: 1}
	_, err := pgstore.DoTx(ctx, op, "k", o, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
		r, err := insertOrder(ctx, tx, o)
		if err != nil {
			return r, err
		}
		_, _ = tx.Exec(ctx, `SELECT 1/0`) // fails, aborting the transaction; ignored
		return r, nil
	})
	if !errors.Is(err, pgstore.ErrRolledBack) || !errors.Is(err, idem.ErrNotStored) {
		t.Errorf("DoTx with fn's transaction aborted = %v, want ErrRolledBack and ErrNotStored", err)
	}
	if orders(t, s) != 0 || records(t, s) != 0 {
		t.Errorf("%d orders and %d records, want none", orders(t, s), records(t, s))
	}
	// The outcome is known, nothing was kept: is the key given back?
	ran := false
	_, err = pgstore.DoTx(ctx, op, "k", o, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
		ran = true
		return insertOrder(ctx, tx, o)
	})
	if err != nil || !ran {
		t.Errorf("retry at once = %v (ran %v): the key was not given back after a known rollback", err, ran)
	}
}

// TestAttackDoTxIsolationSaysLeaseLost: fn raises its transaction to
// REPEATABLE READ or SERIALIZABLE (SET TRANSACTION, as its first
// statement) and runs past its lease TTL, refreshed all along. The
// record's UPDATE reads the row as of fn's snapshot and matches nothing;
// DoTx must not call that a lost lease ("another caller may hold the
// key") while the lease is still this call's, and must give the key back.
func TestAttackDoTxIsolationSaysLeaseLost(t *testing.T) {
	for _, level := range []string{"READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"} {
		t.Run(level, func(t *testing.T) {
			s := orderStore(t, 4)
			ctx := ctxFor(t)
			// The lease's refreshes (each given a third of the TTL) must
			// get through on a loaded machine: the lease stays this
			// call's throughout, and only the snapshot is stale.
			op := idem.New[order, receipt](s, idem.WithLockTTL(600*time.Millisecond))
			_, err := pgstore.DoTx(ctx, op, "k", order{ID: "o1"}, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
				if _, err := tx.Exec(ctx, `SET TRANSACTION ISOLATION LEVEL `+level); err != nil {
					return receipt{}, err
				}
				r, err := insertOrder(ctx, tx, o) // takes the snapshot
				// Refreshed at 200, 400, 600ms; fn outlives by 200ms
				// the expiry its snapshot saw, a TTL from the last
				// refresh before it at the latest.
				time.Sleep(800 * time.Millisecond)
				return r, err
			})
			live := countRows(t, s, `SELECT count(*) FROM idem_records WHERE record IS NULL AND expires_at > clock_timestamp()`)
			t.Logf("DoTx = %v; %d orders, %d records, %d live leases", err, orders(t, s), records(t, s), live)
			switch {
			case err == nil && (orders(t, s) != 1 || records(t, s) != 1):
				t.Errorf("DoTx succeeded with %d orders and %d records", orders(t, s), records(t, s))
			case err != nil && !errors.Is(err, pgstore.ErrRolledBack):
				t.Errorf("DoTx = %v, want ErrRolledBack", err)
			case errors.Is(err, idem.ErrLeaseLost) && live == 1:
				t.Errorf("DoTx says ErrLeaseLost, but its lease is live and nobody else's: %v", err)
			}
		})
	}
}

// TestAttackLeaseEdges: Lease methods at the edges the conformance suite
// leaves out.
func TestAttackLeaseEdges(t *testing.T) {
	s := newStore(t, 4)
	ctx := ctxFor(t)
	acquire := func(key string, ttl time.Duration) idem.Lease {
		t.Helper()
		a, err := s.Acquire(ctx, key, "fp", ttl)
		if err != nil || a.Lease == nil {
			t.Fatalf("Acquire(%s, %v) = %+v, %v", key, ttl, a, err)
		}
		return a.Lease
	}
	// Expired, and nobody took it: Commit stores nothing, and says so.
	l := acquire("expired", 20*time.Millisecond)
	time.Sleep(40 * time.Millisecond)
	if err := l.Commit(ctx, []byte("late"), time.Hour); !errors.Is(err, idem.ErrLeaseLost) {
		t.Errorf("Commit of an expired lease = %v, want ErrLeaseLost", err)
	}
	if err := l.Refresh(ctx, time.Hour); !errors.Is(err, idem.ErrLeaseLost) {
		t.Errorf("Refresh of an expired lease = %v, want ErrLeaseLost", err)
	}
	acquire("expired", time.Minute) // free

	// After Commit, Refresh neither revives a lease nor moves the expiry.
	// The record's TTL is long enough to outlast, on a loaded machine,
	// the round trips that need it live; it is then waited out.
	l = acquire("committed", time.Minute)
	if err := l.Commit(ctx, []byte("r"), time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.Refresh(ctx, time.Hour); !errors.Is(err, idem.ErrLeaseLost) {
		t.Errorf("Refresh after Commit = %v, want ErrLeaseLost", err)
	}
	if err := l.Commit(ctx, []byte("r"), time.Hour); err != nil {
		t.Errorf("Commit repeated = %v", err)
	}
	acquireOnceExpired(t, s, "committed", 10*time.Second) // the record's own TTL ended it

	// Two centuries: no overflow in the milliseconds nor in the interval,
	// and the replay's TTL says so.
	const centuries = 200 * 365 * 24 * time.Hour
	l = acquire("centuries", centuries)
	if err := l.Commit(ctx, []byte("r"), centuries); err != nil {
		t.Fatal(err)
	}
	if a, err := s.Acquire(ctx, "centuries", "fp", time.Minute); err != nil || string(a.Record) != "r" || a.TTL < centuries-time.Hour || a.TTL > centuries {
		t.Errorf("a record of TTL %v: Acquire = %+v, %v", centuries, a, err)
	}

	// TTLs of zero or below, straight to the store, make the shortest
	// lease, not an error nor a lease that never ends.
	for _, ttl := range []time.Duration{0, -time.Hour, time.Nanosecond} {
		key := fmt.Sprint("ttl", int64(ttl))
		acquire(key, ttl)
		time.Sleep(10 * time.Millisecond)
		acquire(key, time.Minute)
	}
}
