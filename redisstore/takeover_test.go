package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/redisstore"
	"github.com/redis/go-redis/v9"
)

// stalledRefresh is an idem.Store whose leases are never extended: Refresh
// reports success and sends nothing, as when a holder's refreshes stall (a
// GC pause, a stalled Redis connection) while its fn runs. The lease then
// expires under fn, and another caller may take the key.
type stalledRefresh struct{ idem.Store }

func (s stalledRefresh) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	a, err := s.Store.Acquire(ctx, key, fp, ttl)
	if a.Lease != nil {
		a.Lease = stalledLease{a.Lease}
	}
	return a, err
}

type stalledLease struct{ idem.Lease }

func (stalledLease) Refresh(context.Context, time.Duration) error { return nil }

// TestTakeoverWithSameResult: A's lease expires while A's fn runs, B takes
// the key, runs fn and commits, then A's fn returns the same result as B's
// (a 204, a fixed "ok"), so A's record has the same bytes as B's. fn ran
// twice, and A must say so (ErrNotStored, ErrLeaseLost) instead of
// reporting its outcome stored: only B's commit stored anything.
func TestTakeoverWithSameResult(t *testing.T) {
	clients := map[string]redis.UniversalClient{
		"single":  redistest.Single(t),
		"cluster": redistest.Cluster(t),
	}
	for _, name := range []string{"single", "cluster"} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			store := redisstore.New(clients[name],
				redisstore.WithPrefix(fmt.Sprint("takeover:", time.Now().UnixNano(), ":")),
				redisstore.WithPollBackoff(time.Millisecond, 10*time.Millisecond))
			const lockTTL = 150 * time.Millisecond
			opA := idem.New[string, string](stalledRefresh{store}, idem.WithLockTTL(lockTTL))
			opB := idem.New[string, string](store, idem.WithLockTTL(lockTTL), idem.WithWaitTimeout(10*time.Second))

			type result struct {
				resp string
				info idem.Info
				err  error
			}
			var runs atomic.Int32
			aRunning, bDone := make(chan struct{}), make(chan struct{})
			aDone := make(chan result, 1)
			go func() {
				resp, info, err := opA.DoInfo(ctx, "k", "req", func(context.Context, string) (string, error) {
					runs.Add(1)
					close(aRunning)
					<-bDone // A's fn outlives its lease
					return "ok", nil
				})
				aDone <- result{resp, info, err}
			}()
			select {
			case <-aRunning:
			case a := <-aDone:
				t.Fatalf("A returned before its fn ran: %+v", a)
			case <-ctx.Done():
				t.Fatal("A's fn never ran")
			}
			bResp, bInfo, bErr := opB.DoInfo(ctx, "k", "req", func(context.Context, string) (string, error) {
				runs.Add(1)
				return "ok", nil
			})
			close(bDone)
			var a result
			select {
			case a = <-aDone:
			case <-ctx.Done():
				t.Fatal("A's Do did not return")
			}

			if bErr != nil || bResp != "ok" || bInfo.Outcome != idem.OutcomeExecuted {
				t.Errorf("B: %q, %v, outcome %v; want \"ok\", nil, executed (B took the key after A's lease expired)", bResp, bErr, bInfo.Outcome)
			}
			if !errors.Is(a.err, idem.ErrNotStored) || !errors.Is(a.err, idem.ErrLeaseLost) {
				t.Errorf("A: err = %v; want ErrNotStored wrapping ErrLeaseLost: its lease was taken over, its commit of the same bytes stored nothing", a.err)
			}
			if a.resp != "ok" || a.info.Outcome != idem.OutcomeNotStored {
				t.Errorf("A: %q, outcome %v; want fn's \"ok\", not_stored", a.resp, a.info.Outcome)
			}
			if runs := runs.Load(); runs != 2 {
				t.Errorf("fn ran %d times, want 2 (A, then B after A's lease expired)", runs)
			}
			storedCount := 0
			for _, o := range []idem.Outcome{a.info.Outcome, bInfo.Outcome} {
				if o == idem.OutcomeExecuted {
					storedCount++
				}
			}
			if storedCount != 1 {
				t.Errorf("%d of the 2 executions reported their outcome stored (A %v, B %v), want exactly 1", storedCount, a.info.Outcome, bInfo.Outcome)
			}

			// B's record is what later calls replay.
			resp, info, err := opB.DoInfo(ctx, "k", "req", func(context.Context, string) (string, error) {
				runs.Add(1)
				return "third", nil
			})
			if err != nil || resp != "ok" || !info.Replayed || runs.Load() != 2 {
				t.Errorf("later call: %q, %v, replayed %v, runs %d; want B's \"ok\" replayed, fn not run", resp, err, info.Replayed, runs.Load())
			}
		})
	}
}

// TestSubMillisecondTTL checks that lease TTLs are rounded up to whole
// milliseconds: a refresh for less than one must keep the lease, not send
// PEXPIRE 0 and delete it while reporting success. It reads the TTL that
// the refresh script is sent, rather than racing a 1 ms lease.
func TestSubMillisecondTTL(t *testing.T) {
	client := redistest.Single(t)
	sent := &scriptArgs{}
	client.AddHook(sent)
	s := redisstore.New(client)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	key := fmt.Sprintf("submilli:%d", time.Now().UnixNano())
	a, err := s.Acquire(ctx, key, "fp", 1500*time.Microsecond)
	if err != nil || a.Lease == nil {
		t.Fatalf("Acquire: %+v, %v", a, err)
	}
	sent.reset()
	// The lease may have expired by the time the refresh arrives; either
	// answer is fine here, what is sent is what matters.
	_ = a.Lease.Refresh(ctx, 500*time.Microsecond)
	args := sent.last()
	if len(args) == 0 {
		t.Fatal("the refresh sent no script")
	}
	if ttl := fmt.Sprint(args[len(args)-1]); ttl != "1" {
		t.Fatalf("a refresh for 500µs sent TTL %q ms, want 1: PEXPIRE 0 would delete the lease", ttl)
	}
}

// scriptArgs is a go-redis hook that keeps the arguments of the last
// EVALSHA or EVAL sent on its own.
type scriptArgs struct {
	mu   sync.Mutex
	args []any
}

func (*scriptArgs) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *scriptArgs) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := cmd.Name(); n == "evalsha" || n == "eval" {
			h.mu.Lock()
			h.args = cmd.Args()
			h.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}

func (*scriptArgs) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *scriptArgs) reset() { h.mu.Lock(); h.args = nil; h.mu.Unlock() }

func (h *scriptArgs) last() []any { h.mu.Lock(); defer h.mu.Unlock(); return h.args }
