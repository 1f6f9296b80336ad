package pgstore_test

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/pgtest"
	"github.com/idemkit/idem/pgstore"
)

// The benchmarks of this file measure the store against the cheapest
// statements PostgreSQL can answer through the same kind of pool, so that
// the ratios say what idempotency costs on top of a round trip:
//
//   - Select1: a plain SELECT 1, the floor of any call;
//   - DoReplay and DoFirst: Operation.Do on a key that holds a record, and
//     on a fresh key each call with fn answering at once;
//   - TxInsert: BEGIN, an INSERT of one order and COMMIT by hand, the floor
//     of DoTxFirst;
//   - DoTxReplay and DoTxFirst: the same through DoTx, whose fn inserts the
//     order in the call's transaction;
//   - Parallel: Select1 and DoReplay from 64 goroutines at once.
//
// Run them all in one run, so that the ratios are comparable:
//
//	go test -run '^$' -bench . -benchmem ./pgstore
//
// Each benchmark runs on a new database of the test server that
// internal/pgtest starts (fsync and synchronous_commit off), through a pool
// whose stmtCounter reports stmts/op, the statements sent per call. The
// calls carry context.Background(), no deadline, as in the redisstore
// benchmarks. The client, the server and the benchmark share the machine's
// cores: compare ratios, not absolute times, and on a busy machine the
// ratios of medians over -count runs, since the benchmarks run one after
// another and the machine's speed drifts between them.

// stmtCounter is a pgx QueryTracer that counts the statements a pool sends.
// Unlike countingTracer it keeps no list, so it adds no lock and no
// allocation to the calls measured.
type stmtCounter struct{ n atomic.Int64 }

func (c *stmtCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *stmtCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// benchStore returns a migrated Store with an orders table (as orderStore
// makes) on a new database for b alone, through a pool of at most maxConns
// connections (0: pgxpool's default, 4 or the number of CPUs) that counts
// its statements.
func benchStore(b *testing.B, maxConns int32) (*pgstore.Store, *stmtCounter) {
	b.Helper()
	cfg, err := pgxpool.ParseConfig(pgtest.ConnString(b))
	if err != nil {
		b.Fatal(err)
	}
	count := &stmtCounter{}
	cfg.ConnConfig.Tracer = count
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	s := pgstore.New(pool)
	ctx := ctxFor(b)
	if err := s.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY, amount int NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	return s, count
}

// benchConns is the pool size of the sequential benchmarks: DoTx holds one
// connection for fn's transaction and may refresh the lease on another.
const benchConns = 4

// benchOrder is the request of the benchmarks; its amount is a typical
// one, its ID replaced by a fresh one in the first executions.
var benchOrder = order{ID: "ord_3Mtw4xLkdIwHu7ix", Amount: 1999}

// benchEcho is the trivial fn of Do: it returns the order's receipt at once.
func benchEcho(_ context.Context, o order) (receipt, error) {
	return receipt{OrderID: o.ID, Total: o.Amount}, nil
}

// errReplayMissed is what fn returns in the replay benchmarks, where it
// must not run.
var errReplayMissed = errors.New("fn ran: the key held no record")

// benchLoop runs call once per iteration of b.Loop, with the iteration's
// number from 0, and reports allocations and stmts/op: the statements
// counted during the loop per call.
func benchLoop(b *testing.B, count *stmtCounter, call func(i int) error) {
	b.ReportAllocs()
	count.n.Store(0)
	i := 0
	for b.Loop() {
		if err := call(i); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(count.n.Load())/float64(b.N), "stmts/op")
}

// freshID returns the key, and the order ID, of the i-th first execution.
// Each run of a benchmark has a database of its own, so i may start at 0.
func freshID(i int) string { return "ord-" + strconv.Itoa(i) }

func BenchmarkSelect1(b *testing.B) {
	s, count := benchStore(b, benchConns)
	pool, ctx := s.Pool(), context.Background()
	benchLoop(b, count, func(int) error {
		var one int
		return pool.QueryRow(ctx, `SELECT 1`).Scan(&one)
	})
}

func BenchmarkDoReplay(b *testing.B) {
	s, count := benchStore(b, benchConns)
	ctx := context.Background()
	op := idem.New[order, receipt](s)
	if _, err := op.Do(ctx, "hit", benchOrder, benchEcho); err != nil {
		b.Fatal(err)
	}
	missed := func(context.Context, order) (receipt, error) { return receipt{}, errReplayMissed }
	benchLoop(b, count, func(int) error {
		_, err := op.Do(ctx, "hit", benchOrder, missed)
		return err
	})
}

func BenchmarkDoFirst(b *testing.B) {
	s, count := benchStore(b, benchConns)
	ctx := context.Background()
	op := idem.New[order, receipt](s)
	benchLoop(b, count, func(i int) error {
		id := freshID(i)
		_, err := op.Do(ctx, id, order{ID: id, Amount: benchOrder.Amount}, benchEcho)
		return err
	})
}

func BenchmarkTxInsert(b *testing.B) {
	s, count := benchStore(b, benchConns)
	pool, ctx := s.Pool(), context.Background()
	benchLoop(b, count, func(i int) error {
		// The transaction DoTx begins, with fn's INSERT, without idem.
		tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
		if err != nil {
			return err
		}
		if _, err := insertOrder(ctx, tx, order{ID: freshID(i), Amount: benchOrder.Amount}); err != nil {
			_ = tx.Rollback(ctx)
			return err
		}
		return tx.Commit(ctx)
	})
}

func BenchmarkDoTxReplay(b *testing.B) {
	s, count := benchStore(b, benchConns)
	ctx := context.Background()
	op := idem.New[order, receipt](s)
	if _, err := pgstore.DoTx(ctx, op, "hit", benchOrder, insertOrder); err != nil {
		b.Fatal(err)
	}
	missed := func(context.Context, pgx.Tx, order) (receipt, error) { return receipt{}, errReplayMissed }
	benchLoop(b, count, func(int) error {
		_, err := pgstore.DoTx(ctx, op, "hit", benchOrder, missed)
		return err
	})
}

func BenchmarkDoTxFirst(b *testing.B) {
	s, count := benchStore(b, benchConns)
	ctx := context.Background()
	op := idem.New[order, receipt](s)
	benchLoop(b, count, func(i int) error {
		id := freshID(i)
		_, err := pgstore.DoTx(ctx, op, id, order{ID: id, Amount: benchOrder.Amount}, insertOrder)
		return err
	})
}

// benchCallers is how many goroutines call at once in BenchmarkParallel: a
// busy service, more callers than cores and than the pool's connections.
const benchCallers = 64

// benchHitKeys is how many keys, filled before the timer, the parallel
// replays cycle over.
const benchHitKeys = 64

// BenchmarkParallel measures what 64 concurrent callers get through one
// pool of pgxpool's default size (4 or the number of CPUs, whichever is
// larger): Select1, a plain SELECT 1, and DoReplay, Operation.Do on keys
// that hold a record (64 keys filled before the timer, the callers cycling
// over them). Besides stmts/op, each reports req/s, calls per second, and
// DoReplay x-select1, its req/s over that of Select1 in the same run
// (reported only when Select1 ran first: filter with -bench on the parent,
// not on one sub-benchmark).
func BenchmarkParallel(b *testing.B) {
	s, count := benchStore(b, 0)
	ctx := context.Background()
	op := idem.New[order, receipt](s)
	keys := make([]string, benchHitKeys)
	for i := range keys {
		keys[i] = "hit-" + strconv.Itoa(i)
		if _, err := op.Do(ctx, keys[i], benchOrder, benchEcho); err != nil {
			b.Fatal(err)
		}
	}
	pool := s.Pool()
	missed := func(context.Context, order) (receipt, error) { return receipt{}, errReplayMissed }

	var selectRate float64
	b.Run("Select1", func(b *testing.B) {
		selectRate = benchParallel(b, count, 0, func(uint64) error {
			var one int
			return pool.QueryRow(ctx, `SELECT 1`).Scan(&one)
		})
	})
	b.Run("DoReplay", func(b *testing.B) {
		benchParallel(b, count, selectRate, func(i uint64) error {
			_, err := op.Do(ctx, keys[i%benchHitKeys], benchOrder, missed)
			return err
		})
	})
}

// benchParallel runs call(i) for i in [0, b.N) from at least benchCallers
// goroutines, timing only the calls, reports allocations, stmts/op, req/s
// and, unless base is 0, x-select1 (req/s over base), and returns req/s.
func benchParallel(b *testing.B, count *stmtCounter, base float64, call func(i uint64) error) float64 {
	b.ReportAllocs()
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((benchCallers + procs - 1) / procs)
	var next atomic.Uint64
	count.n.Store(0)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := call(next.Add(1) - 1); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	rate := float64(b.N) / b.Elapsed().Seconds()
	b.ReportMetric(float64(count.n.Load())/float64(b.N), "stmts/op")
	b.ReportMetric(rate, "req/s")
	if base > 0 {
		b.ReportMetric(rate/base, "x-select1")
	}
	return rate
}
