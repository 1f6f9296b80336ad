package idemtest

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

// The tests in this file cover what happens when fn fails, panics or
// outlives its lease, and when callers give up or keys expire.

// holdKey starts a call of op on key whose fn blocks, and returns once fn
// runs. The returned func lets fn return and waits for the call to end.
func holdKey(t *testing.T, op *idem.Operation[string, int], key string) (release func()) {
	rel, started, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		_, _ = op.Do(ctxFor(t), key, "r", func(context.Context, string) (int, error) {
			close(started)
			<-rel
			return 1, nil
		})
	}()
	<-started
	return func() { close(rel); <-done }
}

func testWaitTimeout(t *testing.T, e *env) {
	const wait = 100 * time.Millisecond
	op := idem.New[string, int](e.store, idem.WithWaitTimeout(wait))
	key := e.key("k")
	defer holdKey(t, op, key)()
	begin := time.Now()
	_, info, err := op.DoInfo(ctxFor(t), key, "r", func(context.Context, string) (int, error) {
		t.Error("fn ran while another execution held the key")
		return 0, nil
	})
	d := time.Since(begin)
	if !errors.Is(err, idem.ErrInFlight) || info.Replayed {
		t.Fatalf("err = %v, replayed = %v; want ErrInFlight after the wait", err, info.Replayed)
	}
	if d < wait || d > wait+2*time.Second {
		t.Fatalf("returned after %v, want about the wait timeout %v", d, wait)
	}
}

func testErrorNotStored(t *testing.T, e *env) {
	op := idem.New[string, int](e.store, idem.WithLockTTL(time.Minute))
	key := e.key("k")
	boom := errors.New("boom")
	runs := 0
	_, err := op.Do(ctxFor(t), key, "r", func(context.Context, string) (int, error) { runs++; return 0, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want fn's error", err)
	}
	r, err := op.Do(ctxFor(t), key, "r", func(context.Context, string) (int, error) { runs++; return 5, nil })
	if err != nil || r != 5 || runs != 2 {
		t.Fatalf("retry after error: %v, %v, runs=%d; want 5, nil, 2", r, err, runs)
	}
}

type declined struct{ Reason string }

func (d *declined) Error() string { return "card declined: " + d.Reason }

func testFinalError(t *testing.T, e *env) {
	op := idem.New[string, int](e.store)
	key := e.key("k")
	runs := 0
	_, err := op.Do(ctxFor(t), key, "r", func(context.Context, string) (int, error) {
		runs++
		return 0, idem.Final(&declined{"insufficient funds"})
	})
	var d *declined
	if !errors.As(err, &d) || d.Reason != "insufficient funds" {
		t.Fatalf("first call err = %v, want the *declined fn returned", err)
	}
	_, info, err := op.DoInfo(ctxFor(t), key, "r", func(context.Context, string) (int, error) { runs++; return 1, nil })
	var re *idem.ReplayedError
	if !errors.Is(err, idem.ErrReplayed) || !errors.As(err, &re) || !info.Replayed {
		t.Fatalf("replay err = %v (replayed=%v), want a *ReplayedError", err, info.Replayed)
	}
	if re.Message != "card declined: insufficient funds" || runs != 1 {
		t.Fatalf("replayed message %q, runs %d", re.Message, runs)
	}

	byPred := idem.New[string, int](e.store, idem.WithDisposition(func(err error) idem.Disposition {
		if d := (*declined)(nil); errors.As(err, &d) {
			return idem.Record
		}
		return idem.Release
	}))
	k2 := e.key("pred")
	_, _ = byPred.Do(ctxFor(t), k2, "r", func(context.Context, string) (int, error) { return 0, &declined{"x"} })
	if _, err := byPred.Do(ctxFor(t), k2, "r", func(context.Context, string) (int, error) { return 1, nil }); !errors.Is(err, idem.ErrReplayed) {
		t.Fatalf("WithDisposition: replay err = %v, want ErrReplayed", err)
	}
}

func testPanic(t *testing.T, e *env) {
	op := idem.New[string, int](e.store, idem.WithLockTTL(time.Minute))
	key := e.key("k")
	func() {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Errorf("recovered %v, want the panic of fn", r)
			}
		}()
		_, _ = op.Do(ctxFor(t), key, "r", func(context.Context, string) (int, error) { panic("kaboom") })
		t.Error("Do returned normally after fn panicked")
	}()
	r, err := op.Do(ctxFor(t), key, "r", func(context.Context, string) (int, error) { return 3, nil })
	if err != nil || r != 3 {
		t.Fatalf("call after panic: %v, %v; want fn to run again at once", r, err)
	}
}

func testLongFn(t *testing.T, e *env) {
	// Long enough, as in testRefresh, that refreshes (sent every third of
	// it, each given a third of it) keep up on a loaded 2-core machine
	// under -race, and so does the refresh before fn that a slow Acquire
	// calls for; fn outlives two and a half such leases.
	const lockTTL = time.Second
	op := idem.New[string, int](e.store, idem.WithLockTTL(lockTTL))
	key := e.key("k")
	var runs atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := op.Do(ctxFor(t), key, "r", func(ctx context.Context, _ string) (int, error) {
			runs.Add(1)
			select {
			case <-time.After(5 * lockTTL / 2):
				return 1, nil
			case <-ctx.Done():
				return 0, context.Cause(ctx)
			}
		})
		if err != nil {
			t.Errorf("long fn: %v", err)
		}
	}()
	for {
		select {
		case <-done:
			if runs.Load() != 1 {
				t.Fatalf("fn ran %d times, want 1", runs.Load())
			}
			return
		case <-time.After(lockTTL / 4):
		}
		_, err := op.Do(ctxFor(t), key, "r", func(context.Context, string) (int, error) {
			runs.Add(1)
			return 2, nil
		})
		if err != nil && !errors.Is(err, idem.ErrInFlight) {
			t.Fatalf("duplicate: %v", err)
		}
	}
}

// stalledStore hands out leases that live for leaseTTL in the store,
// whatever the Operation asked for, and whose Refresh claims success but
// does nothing, as when a refresher is starved: the lease then expires
// while fn runs, and the Operation holding it does not know.
type stalledStore struct {
	idem.Store
	leaseTTL time.Duration
}

func (s stalledStore) Acquire(ctx context.Context, key, fp string, _ time.Duration) (idem.Acquisition, error) {
	a, err := s.Store.Acquire(ctx, key, fp, s.leaseTTL)
	if a.Lease != nil {
		a.Lease = stalledLease{a.Lease}
	}
	return a, err
}

type stalledLease struct{ idem.Lease }

func (stalledLease) Refresh(context.Context, time.Duration) error { return nil }

func testLostLease(t *testing.T, e *env) {
	key := e.key("k")
	// The stalled holder's lease expires in the store after 60 ms, but its
	// Operation has a lock TTL long enough that its Commit, which is given
	// that long, gets its answer (ErrLeaseLost) in time on a loaded
	// machine. The new owner's is long too, so that its Acquire, fn and
	// Commit never race its own lease's expiry: the stalled one is tested.
	stalled := idem.New[string, string](stalledStore{e.store, 60 * time.Millisecond}, idem.WithLockTTL(10*time.Second))
	op := idem.New[string, string](e.store, idem.WithLockTTL(time.Minute))
	started, takenOver := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(takenOver)
		<-started
		if !eventually(5*time.Second, func() bool {
			r, err := op.Do(ctxFor(t), key, "r", func(context.Context, string) (string, error) { return "new owner", nil })
			return err == nil && r == "new owner"
		}) {
			t.Error("the expired lease was never taken over")
		}
	}()
	r, err := stalled.Do(ctxFor(t), key, "r", func(context.Context, string) (string, error) {
		close(started)
		<-takenOver
		return "old owner", nil
	})
	if !errors.Is(err, idem.ErrNotStored) || !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("Do after losing the lease: err = %v, want ErrNotStored wrapping ErrLeaseLost", err)
	}
	if r != "old owner" {
		t.Errorf("Do returned %q, want fn's result even though it was not stored", r)
	}
	got, err := op.Do(ctxFor(t), key, "r", func(context.Context, string) (string, error) { return "third", nil })
	if err != nil || got != "new owner" {
		t.Fatalf("stored result = %q, %v; want the new owner's, untouched", got, err)
	}
}

func testCancelWait(t *testing.T, e *env) {
	op := idem.New[string, int](e.store, idem.WithWaitTimeout(time.Minute))
	key := e.key("k")
	defer holdKey(t, op, key)()
	ctx, cancel := context.WithTimeout(ctxFor(t), 80*time.Millisecond)
	defer cancel()
	begin := time.Now()
	_, err := op.Do(ctx, key, "r", func(context.Context, string) (int, error) { return 2, nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want one wrapping context.DeadlineExceeded", err)
	}
	if d := time.Since(begin); d > 3*time.Second {
		t.Fatalf("cancelled wait returned after %v", d)
	}
}

func testCancelledCaller(t *testing.T, e *env) {
	op := idem.New[string, int](e.store, idem.WithLockTTL(time.Minute))
	key := e.key("k")
	ctx, cancel := context.WithCancel(ctxFor(t))
	_, err := op.Do(ctx, key, "r", func(ctx context.Context, _ string) (int, error) {
		cancel()
		<-ctx.Done()
		return 0, ctx.Err()
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled from fn", err)
	}
	r, err := op.Do(ctxFor(t), key, "r", func(context.Context, string) (int, error) { return 9, nil })
	if err != nil || r != 9 {
		t.Fatalf("after a cancelled call: %v, %v; want the lease released and fn run", r, err)
	}
}

func testWaiterTakesOver(t *testing.T, e *env) {
	op := idem.New[string, int](e.store, idem.WithWaitTimeout(10*time.Second), idem.WithLockTTL(time.Minute))
	key := e.key("k")
	started := make(chan struct{})
	go func() {
		_, _ = op.Do(ctxFor(t), key, "r", func(context.Context, string) (int, error) {
			close(started)
			time.Sleep(50 * time.Millisecond)
			return 0, errors.New("transient")
		})
	}()
	<-started
	r, err := op.Do(ctxFor(t), key, "r", func(context.Context, string) (int, error) { return 4, nil })
	if err != nil || r != 4 {
		t.Fatalf("waiter after the holder failed: %v, %v; want it to run fn itself", r, err)
	}
}

// testResultExpires checks that a result is replayed for the TTL, and that
// the key executes afresh once its record expired.
func testResultExpires(t *testing.T, e *env) {
	timedRounds(t, 3, func(round int) bool { return resultExpiresRound(t, e, round) })
}

// resultExpiresRound runs testResultExpires once, and reports whether its
// timing held.
func resultExpiresRound(t *testing.T, e *env, round int) bool {
	// Long enough that the replays after the first call come well within
	// it on a loaded machine.
	const ttl = 500 * time.Millisecond
	op := idem.New[string, int](e.store, idem.WithTTL(ttl))
	key := e.key("k", fmt.Sprint(round))
	runs := 0
	fn := func(context.Context, string) (int, error) { runs++; return runs, nil }
	began := time.Now() // the record is committed after this, so lives until ttl after it
	if r, _ := op.Do(ctxFor(t), key, "r", fn); r != 1 {
		t.Fatalf("first = %d", r)
	}
	// Replayed right after the first call, and half-way through the TTL.
	for _, at := range []time.Duration{0, ttl / 2} {
		time.Sleep(time.Until(began.Add(at)))
		r, err := op.Do(ctxFor(t), key, "r", fn)
		if time.Since(began) >= ttl {
			return false // too late to tell a replay from an expiry
		}
		if err != nil || r != 1 {
			t.Fatalf("replay %v after the first call began = %d, %v; want 1 for the TTL, %v", at, r, err, ttl)
		}
	}
	time.Sleep(time.Until(began.Add(ttl))) // it cannot have expired before
	if !eventually(3*time.Second, func() bool {
		r, err := op.Do(ctxFor(t), key, "r", fn)
		return err == nil && r == 2
	}) {
		t.Fatal("result never expired")
	}
	return true
}

// testHoldKeepsKeyRefused checks the Hold disposition: nothing is stored,
// the key is refused (ErrInFlight) while the lease lives, and fn runs again
// once it expired, which needs a store whose leases expire on their own.
func testHoldKeepsKeyRefused(t *testing.T, e *env) {
	// Long enough that the Acquire, and the refresh before fn that a slow
	// Acquire calls for, fit in it on a loaded machine.
	const lockTTL = 600 * time.Millisecond
	unknown := errors.New("gateway timeout: outcome unknown")
	op := idem.New[string, int](e.store, idem.WithLockTTL(lockTTL), idem.WithDisposition(func(err error) idem.Disposition {
		if errors.Is(err, unknown) {
			return idem.Hold
		}
		return idem.Release
	}))
	key := e.key("k")
	_, info, err := op.DoInfo(ctxFor(t), key, "r", func(context.Context, string) (int, error) { return 0, unknown })
	if !errors.Is(err, unknown) || info.Outcome != idem.OutcomeHeld {
		t.Fatalf("first call: %v, %v; want fn's error, held", info.Outcome, err)
	}
	_, err = op.Do(ctxFor(t), key, "r", func(context.Context, string) (int, error) {
		t.Error("fn ran while the key was held")
		return 0, nil
	})
	if !errors.Is(err, idem.ErrInFlight) {
		t.Fatalf("retry while held: %v, want ErrInFlight", err)
	}
	if !eventually(3*time.Second, func() bool {
		r, err := op.Do(ctxFor(t), key, "r", func(context.Context, string) (int, error) { return 5, nil })
		return err == nil && r == 5
	}) {
		t.Fatal("the hold never ended")
	}
}
