package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/pgstore"
)

// order is the request of the DoTx tests, and receipt their result.
type order struct {
	ID     string
	Amount int
}

type receipt struct {
	OrderID string
	Total   int
}

// orderStore returns a Store with an orders table beside its own.
func orderStore(t testing.TB, maxConns int32) *pgstore.Store {
	t.Helper()
	s := newStore(t, maxConns)
	if _, err := s.Pool().Exec(ctxFor(t), `CREATE TABLE orders (id text PRIMARY KEY, amount int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return s
}

// insertOrder is a DoTx fn: it inserts the order and returns its receipt.
func insertOrder(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
	if _, err := tx.Exec(ctx, `INSERT INTO orders (id, amount) VALUES ($1, $2)`, o.ID, o.Amount); err != nil {
		return receipt{}, err
	}
	return receipt{OrderID: o.ID, Total: o.Amount}, nil
}

func countRows(t testing.TB, s *pgstore.Store, query string, args ...any) int {
	t.Helper()
	var n int
	if err := s.Pool().QueryRow(ctxFor(t), query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func orders(t testing.TB, s *pgstore.Store) int {
	return countRows(t, s, `SELECT count(*) FROM orders`)
}

func records(t testing.TB, s *pgstore.Store) int {
	return countRows(t, s, `SELECT count(*) FROM idem_records WHERE record IS NOT NULL`)
}

func rows(t testing.TB, s *pgstore.Store) int {
	return countRows(t, s, `SELECT count(*) FROM idem_records`)
}

func TestDoTxCommitsTogether(t *testing.T) {
	s := orderStore(t, 4)
	ctx := ctxFor(t)
	op := idem.New[order, receipt](s)
	o := order{ID: "o1", Amount: 42}
	got, err := pgstore.DoTx(ctx, op, "k1", o, insertOrder)
	if err != nil || got != (receipt{"o1", 42}) {
		t.Fatalf("DoTx = %+v, %v", got, err)
	}
	if orders(t, s) != 1 || records(t, s) != 1 {
		t.Fatalf("%d orders and %d records, want 1 and 1", orders(t, s), records(t, s))
	}
	// Retries replay, through DoTx and through Do, without running fn.
	again, info, err := op.DoInfo(ctx, "k1", o, func(context.Context, order) (receipt, error) {
		return receipt{}, errors.New("fn ran again")
	})
	if err != nil || again != got || info.Outcome != idem.OutcomeReplayed {
		t.Errorf("Do after DoTx = %+v, %v, %v", again, info.Outcome, err)
	}
	again, err = pgstore.DoTx(ctx, op, "k1", o, func(context.Context, pgx.Tx, order) (receipt, error) {
		return receipt{}, errors.New("fn ran again")
	})
	if err != nil || again != got {
		t.Errorf("DoTx again = %+v, %v", again, err)
	}
	if orders(t, s) != 1 {
		t.Errorf("%d orders after retries, want 1", orders(t, s))
	}
	// A key reused for another order is refused before fn runs.
	_, err = pgstore.DoTx(ctx, op, "k1", order{ID: "o2", Amount: 1}, insertOrder)
	if !errors.Is(err, idem.ErrKeyReused) || orders(t, s) != 1 {
		t.Errorf("DoTx with the key reused = %v, %d orders", err, orders(t, s))
	}
}

func TestDoTxRollsBackOnError(t *testing.T) {
	s := orderStore(t, 4)
	ctx := ctxFor(t)
	op := idem.New[order, receipt](s)
	o := order{ID: "o1", Amount: 42}
	boom := errors.New("provider unavailable")
	_, err := pgstore.DoTx(ctx, op, "k", o, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
		if _, err := insertOrder(ctx, tx, o); err != nil {
			return receipt{}, err
		}
		return receipt{}, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("DoTx = %v, want fn's error", err)
	}
	if orders(t, s) != 0 || rows(t, s) != 0 {
		t.Fatalf("%d orders and %d rows of idem_records after fn failed, want none", orders(t, s), rows(t, s))
	}
	// The key was released: a retry runs fn at once.
	got, err := pgstore.DoTx(ctx, op, "k", o, insertOrder)
	if err != nil || got.OrderID != "o1" || orders(t, s) != 1 {
		t.Fatalf("retry = %+v, %v, %d orders", got, err, orders(t, s))
	}
}

// declined is a final error.
type declined struct{}

func (declined) Error() string { return "card declined" }

func TestDoTxFinalErrorCommitsWrites(t *testing.T) {
	s := orderStore(t, 4)
	ctx := ctxFor(t)
	op := idem.New[order, receipt](s)
	o := order{ID: "o1", Amount: 42}
	_, err := pgstore.DoTx(ctx, op, "k", o, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
		if _, err := insertOrder(ctx, tx, o); err != nil {
			return receipt{}, err
		}
		return receipt{}, idem.Final(declined{})
	})
	if !errors.As(err, new(declined)) {
		t.Fatalf("DoTx = %v, want the final error", err)
	}
	if orders(t, s) != 1 || records(t, s) != 1 {
		t.Fatalf("%d orders and %d records, want fn's write and the error record committed together", orders(t, s), records(t, s))
	}
	_, err = op.Do(ctx, "k", o, func(context.Context, order) (receipt, error) { return receipt{}, errors.New("fn ran again") })
	var re *idem.ReplayedError
	if !errors.As(err, &re) || re.Message != "card declined" {
		t.Errorf("retry = %v, want the replayed final error", err)
	}
}

func TestDoTxHoldRollsBack(t *testing.T) {
	s := orderStore(t, 4)
	ctx := ctxFor(t)
	timeout := errors.New("downstream timeout")
	// A lease long enough that a loaded machine's retry "at once" still
	// finds it; the test then waits it out by polling.
	op := idem.New[order, receipt](s, idem.WithLockTTL(2*time.Second), idem.WithDisposition(func(err error) idem.Disposition {
		if errors.Is(err, timeout) {
			return idem.Hold
		}
		return idem.Release
	}))
	o := order{ID: "o1", Amount: 42}
	_, err := pgstore.DoTx(ctx, op, "k", o, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
		if _, err := insertOrder(ctx, tx, o); err != nil {
			return receipt{}, err
		}
		return receipt{}, timeout
	})
	if !errors.Is(err, timeout) || orders(t, s) != 0 {
		t.Fatalf("DoTx = %v with %d orders, want the error and no order", err, orders(t, s))
	}
	if _, err := pgstore.DoTx(ctx, op, "k", o, insertOrder); !errors.Is(err, idem.ErrInFlight) {
		t.Fatalf("retry while held = %v, want ErrInFlight", err)
	}
	// Once the lease expires, a retry runs fn. Retry until then, for
	// far longer than the lease: only a hold that outlives it fails.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, err = pgstore.DoTx(ctx, op, "k", o, insertOrder)
		if !errors.Is(err, idem.ErrInFlight) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || orders(t, s) != 1 {
		t.Fatalf("retry after the hold = %v, %d orders", err, orders(t, s))
	}
}

func TestDoTxUnstorableResultRollsBack(t *testing.T) {
	s := newStore(t, 4)
	if _, err := s.Pool().Exec(ctxFor(t), `CREATE TABLE orders (id text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	// A struct in an interface field does not come back from msgpack as
	// itself: the result cannot be stored.
	op := idem.New[string, any](s)
	_, err := pgstore.DoTx(ctxFor(t), op, "k", "o1", func(ctx context.Context, tx pgx.Tx, id string) (any, error) {
		_, err := tx.Exec(ctx, `INSERT INTO orders VALUES ($1)`, id)
		return receipt{OrderID: id}, err
	})
	// Known not to have happened (ErrRolledBack), and still held: fn may
	// have done more than its writes.
	if !errors.Is(err, idem.ErrNotStored) || !errors.Is(err, pgstore.ErrRolledBack) {
		t.Fatalf("DoTx = %v, want ErrNotStored and ErrRolledBack", err)
	}
	if n := countRows(t, s, `SELECT count(*) FROM orders`); n != 0 {
		t.Errorf("%d orders kept without a record, want 0", n)
	}
	if _, err := pgstore.DoTx(ctxFor(t), op, "k", "o1", func(context.Context, pgx.Tx, string) (any, error) { return nil, nil }); !errors.Is(err, idem.ErrInFlight) {
		t.Errorf("retry at once = %v, want ErrInFlight while the lease lasts", err)
	}
}

func TestDoTxPanicRollsBack(t *testing.T) {
	s := orderStore(t, 4)
	ctx := ctxFor(t)
	op := idem.New[order, receipt](s)
	o := order{ID: "o1", Amount: 42}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("the panic did not continue")
			}
		}()
		_, _ = pgstore.DoTx(ctx, op, "k", o, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
			if _, err := insertOrder(ctx, tx, o); err != nil {
				return receipt{}, err
			}
			panic("boom")
		})
	}()
	if orders(t, s) != 0 || rows(t, s) != 0 {
		t.Fatalf("%d orders and %d rows after a panic, want none", orders(t, s), rows(t, s))
	}
	if _, err := pgstore.DoTx(ctx, op, "k", o, insertOrder); err != nil || orders(t, s) != 1 {
		t.Fatalf("retry = %v, %d orders", err, orders(t, s))
	}
}

func TestDoTxLeaseLost(t *testing.T) {
	s := orderStore(t, 4)
	ctx := ctxFor(t)
	op := idem.New[order, receipt](s, idem.WithLockTTL(300*time.Millisecond))
	o := order{ID: "o1", Amount: 42}
	inFn, stolen := make(chan struct{}), make(chan struct{})
	go func() {
		<-inFn
		// Another caller's takeover: the row now holds someone else's
		// lease.
		if _, err := s.Pool().Exec(ctx, `UPDATE idem_records SET token = 'thief' WHERE key = ':k'`); err != nil {
			t.Error(err)
		}
		close(stolen)
	}()
	got, err := pgstore.DoTx(ctx, op, "k", o, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
		r, err := insertOrder(ctx, tx, o)
		close(inFn)
		<-stolen
		return r, err // fn does not notice, and reports success
	})
	if !errors.Is(err, idem.ErrLeaseLost) || !errors.Is(err, pgstore.ErrRolledBack) || !errors.Is(err, idem.ErrNotStored) {
		t.Fatalf("DoTx = %+v, %v; want ErrLeaseLost, ErrRolledBack and ErrNotStored", got, err)
	}
	if orders(t, s) != 0 || records(t, s) != 0 {
		t.Errorf("%d orders and %d records after the lease was lost, want none", orders(t, s), records(t, s))
	}
	if n := countRows(t, s, `SELECT count(*) FROM idem_records WHERE token = 'thief'`); n != 1 {
		t.Errorf("the new holder's lease was changed")
	}
}

func TestDoTxCommitRollsBack(t *testing.T) {
	// A deferred constraint fails at COMMIT: the server rolls back, so
	// the outcome is known, and the key is given back.
	s := newStore(t, 4)
	ctx := ctxFor(t)
	if _, err := s.Pool().Exec(ctx, `
		CREATE TABLE parents (id int PRIMARY KEY);
		CREATE TABLE children (id int PRIMARY KEY, parent int REFERENCES parents DEFERRABLE INITIALLY DEFERRED)`); err != nil {
		t.Fatal(err)
	}
	op := idem.New[int, int](s)
	var runs atomic.Int32
	fn := func(ctx context.Context, tx pgx.Tx, id int) (int, error) {
		runs.Add(1)
		_, err := tx.Exec(ctx, `INSERT INTO children VALUES ($1, 99)`, id)
		return id, err
	}
	_, err := pgstore.DoTx(ctx, op, "k", 1, fn)
	if !errors.Is(err, pgstore.ErrRolledBack) || !errors.Is(err, idem.ErrNotStored) || errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("DoTx = %v, want ErrRolledBack and ErrNotStored", err)
	}
	if n := countRows(t, s, `SELECT count(*) FROM children`); n != 0 || rows(t, s) != 0 {
		t.Fatalf("%d children and %d idem rows after COMMIT rolled back, want none", n, rows(t, s))
	}
	if _, err := s.Pool().Exec(ctx, `INSERT INTO parents VALUES (99)`); err != nil {
		t.Fatal(err)
	}
	if got, err := pgstore.DoTx(ctx, op, "k", 1, fn); err != nil || got != 1 || runs.Load() != 2 {
		t.Fatalf("retry = %d, %v after %d runs", got, err, runs.Load())
	}
}

func TestDoTxCommitUnknown(t *testing.T) {
	// The server's session ends as COMMIT is sent: nobody can say whether
	// the transaction committed, and DoTx says so.
	var kill atomic.Bool
	s, tr := tracedStore(t)
	tr.onStart = func(conn *pgx.Conn, sql string) {
		if sql == "COMMIT" && kill.Load() {
			terminate(t, s, conn.PgConn().PID())
		}
	}
	ctx := ctxFor(t)
	op := idem.New[string, string](s)
	kill.Store(true)
	_, err := pgstore.DoTx(ctx, op, "k", "o1", func(ctx context.Context, tx pgx.Tx, id string) (string, error) {
		_, err := tx.Exec(ctx, `INSERT INTO orders VALUES ($1)`, id)
		return id, err
	})
	kill.Store(false)
	if !errors.Is(err, idem.ErrNotStored) || errors.Is(err, pgstore.ErrRolledBack) {
		t.Fatalf("DoTx = %v, want ErrNotStored without ErrRolledBack", err)
	}
}

// terminate ends the server session pid, and waits until it is gone.
func terminate(t testing.TB, s *pgstore.Store, pid uint32) {
	ctx := ctxFor(t)
	if _, err := s.Pool().Exec(ctx, `SELECT pg_terminate_backend($1, 10000)`, pid); err != nil {
		t.Error(err)
	}
}

func TestDoTxStorm(t *testing.T) {
	s := orderStore(t, 8)
	ctx := ctxFor(t)
	op := idem.New[order, receipt](s, idem.WithWaitTimeout(20*time.Second))
	var runs atomic.Int32
	var wg sync.WaitGroup
	results := make(chan receipt, 32)
	for range 32 {
		wg.Go(func() {
			r, err := pgstore.DoTx(ctx, op, "storm", order{ID: "o1", Amount: 7}, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
				runs.Add(1)
				time.Sleep(20 * time.Millisecond)
				r, err := insertOrder(ctx, tx, o)
				return r, err
			})
			if err != nil {
				t.Errorf("DoTx: %v", err)
			}
			results <- r
		})
	}
	wg.Wait()
	close(results)
	for r := range results {
		if r != (receipt{"o1", 7}) {
			t.Errorf("result %+v", r)
		}
	}
	if runs.Load() != 1 || orders(t, s) != 1 {
		t.Errorf("fn ran %d times, %d orders; want 1 and 1", runs.Load(), orders(t, s))
	}
}

func TestDoTxNeedsPgstore(t *testing.T) {
	op := idem.New[string, string](memstore.New())
	ran := false
	_, err := pgstore.DoTx(context.Background(), op, "k", "r", func(context.Context, pgx.Tx, string) (string, error) {
		ran = true
		return "", nil
	})
	if !errors.Is(err, idem.ErrInvalidOption) || ran {
		t.Fatalf("DoTx on memstore = %v (ran %v), want ErrInvalidOption without running fn", err, ran)
	}
}

func TestDoTxNestedDo(t *testing.T) {
	// A Do on the same store inside fn is its own call: its record
	// commits at once, not in the outer transaction.
	s := orderStore(t, 4)
	ctx := ctxFor(t)
	outer := idem.New[order, receipt](s)
	inner := idem.New[string, string](s, idem.WithNamespace("inner"))
	_, err := pgstore.DoTx(ctx, outer, "outer", order{ID: "o1"}, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
		if _, err := inner.Do(ctx, "k", "r", func(context.Context, string) (string, error) { return "x", nil }); err != nil {
			return receipt{}, err
		}
		return receipt{}, errors.New("outer fails")
	})
	if err == nil {
		t.Fatal("DoTx succeeded")
	}
	if n := countRows(t, s, `SELECT count(*) FROM idem_records WHERE key = 'inner:k' AND record IS NOT NULL`); n != 1 {
		t.Errorf("the inner record was rolled back with the outer transaction")
	}
}

func TestDoTxFinalErrorAfterFailedStatement(t *testing.T) {
	// fn's INSERT fails (a unique violation aborts the transaction), and
	// fn settles the request with a final error: the transaction can keep
	// nothing, and the error record is stored on its own.
	s := orderStore(t, 4)
	ctx := ctxFor(t)
	if _, err := s.Pool().Exec(ctx, `INSERT INTO orders VALUES ('taken', 1)`); err != nil {
		t.Fatal(err)
	}
	op := idem.New[order, receipt](s)
	var runs atomic.Int32
	fn := func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
		runs.Add(1)
		if _, err := insertOrder(ctx, tx, o); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "23505" {
				return receipt{}, idem.Final(errors.New("order id taken"))
			}
			return receipt{}, err
		}
		return receipt{OrderID: o.ID}, nil
	}
	if _, err := pgstore.DoTx(ctx, op, "k", order{ID: "taken", Amount: 2}, fn); err == nil || errors.Is(err, idem.ErrNotStored) {
		t.Fatalf("DoTx = %v, want the final error, stored", err)
	}
	_, err := pgstore.DoTx(ctx, op, "k", order{ID: "taken", Amount: 2}, fn)
	var re *idem.ReplayedError
	if runs.Load() != 1 || !errors.As(err, &re) || re.Message != "order id taken" {
		t.Errorf("retry = %v after %d runs, want the final error replayed and fn run once", err, runs.Load())
	}
	if n := countRows(t, s, `SELECT count(*) FROM orders WHERE amount = 2`); n != 0 {
		t.Errorf("%d of fn's orders kept", n)
	}
}

func TestDoTxSQLCommitThenError(t *testing.T) {
	// fn ends its transaction with SQL, then fails: its write committed,
	// so the key must stay held and the caller be told, not the key
	// released for a retry that writes again.
	s := orderStore(t, 4)
	ctx := ctxFor(t)
	// A lease long enough that a loaded machine's retry "at once" still
	// finds it.
	op := idem.New[order, receipt](s, idem.WithLockTTL(2*time.Second))
	var runs atomic.Int32
	fn := func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
		runs.Add(1)
		if _, err := insertOrder(ctx, tx, o); err != nil {
			return receipt{}, err
		}
		if _, err := tx.Exec(ctx, `COMMIT`); err != nil {
			return receipt{}, err
		}
		_, err := tx.Exec(ctx, `SELECT 1/0`)
		return receipt{}, err
	}
	_, err := pgstore.DoTx(ctx, op, "k", order{ID: "o1"}, fn)
	if !errors.Is(err, idem.ErrNotStored) || errors.Is(err, pgstore.ErrRolledBack) {
		t.Fatalf("DoTx = %v, want ErrNotStored (unknown) without ErrRolledBack", err)
	}
	if _, err := pgstore.DoTx(ctx, op, "k", order{ID: "o1"}, fn); !errors.Is(err, idem.ErrInFlight) || runs.Load() != 1 {
		t.Errorf("retry at once = %v after %d runs, want ErrInFlight while the lease lasts", err, runs.Load())
	}
}

func TestDoTxPoolExhausted(t *testing.T) {
	// Two DoTx calls at once on a pool of 2: their transactions hold both
	// connections, their leases cannot be refreshed, and both lose them,
	// told and with nothing kept. A pool of 3 serves them.
	//
	// fn holds its transaction for twice the lease TTL: a lease not
	// refreshed is lost by then. The TTL is long enough that a loaded
	// machine's stalls do not lose a lease that can be refreshed (pool=3),
	// and that both calls are in their transactions well before a lease
	// can expire (pool=2). A fn whose lease was lost keeps its transaction,
	// and so its connection, until the other's lease is lost too: giving
	// it back would let the other's refreshes through.
	const lockTTL = time.Second
	for _, size := range []int32{2, 3} {
		t.Run(fmt.Sprint("pool=", size), func(t *testing.T) {
			s := orderStore(t, size)
			ctx := ctxFor(t)
			op := idem.New[order, receipt](s, idem.WithLockTTL(lockTTL))
			var lost atomic.Int32
			allLost := make(chan struct{})
			var wg sync.WaitGroup
			errs := make([]error, 2)
			for i, id := range []string{"a", "b"} {
				wg.Go(func() {
					_, errs[i] = pgstore.DoTx(ctx, op, id, order{ID: id}, func(ctx context.Context, tx pgx.Tx, o order) (receipt, error) {
						r, err := insertOrder(ctx, tx, o)
						held := time.NewTimer(2 * lockTTL)
						defer held.Stop()
						select {
						case <-held.C:
						case <-ctx.Done():
							if lost.Add(1) == 2 {
								close(allLost)
							}
							select {
							case <-held.C:
							case <-allLost:
							}
						}
						return r, err
					})
				})
			}
			wg.Wait()
			for i, err := range errs {
				switch {
				case size == 3 && err != nil:
					t.Errorf("call %d = %v", i, err)
				case size == 2 && !(errors.Is(err, idem.ErrLeaseLost) && errors.Is(err, pgstore.ErrRolledBack)):
					t.Errorf("call %d = %v, want ErrLeaseLost and ErrRolledBack", i, err)
				}
			}
			if want := map[int32]int{2: 0, 3: 2}[size]; orders(t, s) != want {
				t.Errorf("%d orders, want %d", orders(t, s), want)
			}
		})
	}
}
