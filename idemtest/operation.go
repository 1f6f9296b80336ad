package idemtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/idemkit/idem"
)

// operationTests exercise a store through idem.Operation.
var operationTests = []test{
	{"ExactlyOnceWaiting", testStormWaiting},
	{"ExactlyOnceNoWait", testStormNoWait},
	{"ReplayZeroValues", testReplayZeroValues},
	{"ReplayStruct", testReplayStruct},
	{"KeyReusedInFlight", testKeyReusedInFlight},
	{"KeyReusedAfterCompletion", testKeyReusedAfter},
	{"ErrorNotStored", testErrorNotStored},
	{"FinalErrorReplayed", testFinalError},
	{"PanicReleasesLease", testPanic},
	{"LeaseRefreshedWhileFnRuns", testLongFn},
	{"LostLeaseNotStored", testLostLease},
	{"CancelStopsWait", testCancelWait},
	{"CancelledCallerStillReleases", testCancelledCaller},
	{"WaiterTakesOverAfterFailure", testWaiterTakesOver},
	{"ResultExpires", testResultExpires},
	{"WaitTimeoutGivesInFlight", testWaitTimeout},
}

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

type order struct {
	ID     string
	Amount int64
	Items  []string
	Meta   map[string]string
	At     time.Time
	Note   *string
}

type receipt struct {
	OrderID string
	Charged int64
	Tags    map[string]int
	Lines   []line
	When    time.Time
	Paid    bool
	Ref     *string
}

type line struct {
	SKU string
	Qty int
}

func sampleReceipt() receipt {
	ref := "ch_1"
	return receipt{
		OrderID: "o-1", Charged: 1999, Tags: map[string]int{"a": 1, "b": 2},
		Lines: []line{{"sku-1", 2}, {"sku-2", 0}}, When: time.Unix(1700000000, 123456789).UTC(),
		Paid: true, Ref: &ref,
	}
}

func testStormWaiting(t *testing.T, e *env) {
	const n, keys = 64, 4
	op := idem.New[order, receipt](e.store, idem.WithWaitTimeout(20*time.Second))
	for k := range keys {
		key := e.key(fmt.Sprint(k))
		var runs atomic.Int32
		results := make([]receipt, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				r, err := op.Do(ctxFor(t), key, order{ID: "o-1"}, func(ctx context.Context, o order) (receipt, error) {
					runs.Add(1)
					time.Sleep(30 * time.Millisecond)
					return sampleReceipt(), nil
				})
				if err != nil {
					t.Errorf("call %d: %v", i, err)
				}
				results[i] = r
			})
		}
		close(start)
		wg.Wait()
		if got := runs.Load(); got != 1 {
			t.Fatalf("key %d: fn ran %d times for %d concurrent calls, want 1", k, got, n)
		}
		for i, r := range results {
			if diff := cmp.Diff(sampleReceipt(), r); diff != "" {
				t.Fatalf("key %d call %d result differs (-want +got):\n%s", k, i, diff)
			}
		}
	}
}

func testStormNoWait(t *testing.T, e *env) {
	const n = 64
	op := idem.New[order, int](e.store)
	key := e.key("k")
	var runs, inFlight, other atomic.Int32
	others := make(chan struct{}) // closed when the n-1 other calls returned
	var wg, rest sync.WaitGroup
	rest.Add(n - 1)
	go func() { rest.Wait(); close(others) }()
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			ran := false
			_, err := op.Do(ctxFor(t), key, order{ID: "x"}, func(ctx context.Context, o order) (int, error) {
				ran = true
				runs.Add(1)
				select {
				case <-others:
				case <-time.After(20 * time.Second): // fn ran twice: fail, not hang
					t.Error("the other calls did not return")
				}
				return 7, nil
			})
			if ran {
				if err != nil {
					t.Errorf("executing call: %v", err)
				}
				return
			}
			defer rest.Done()
			switch {
			case errors.Is(err, idem.ErrInFlight):
				inFlight.Add(1)
			default:
				other.Add(1)
				t.Errorf("duplicate call: err %v, want ErrInFlight", err)
			}
		})
	}
	close(start)
	wg.Wait()
	if runs.Load() != 1 || inFlight.Load() != n-1 {
		t.Fatalf("runs %d, ErrInFlight %d, other %d; want 1, %d, 0", runs.Load(), inFlight.Load(), other.Load(), n-1)
	}
	r, err := op.Do(ctxFor(t), key, order{ID: "x"}, func(context.Context, order) (int, error) {
		t.Error("fn ran after completion")
		return 0, nil
	})
	if err != nil || r != 7 {
		t.Fatalf("replay = %v, %v; want 7, nil", r, err)
	}
}

// replayOnce runs fn returning v, then checks that a second call replays a
// value equal to v under go-cmp without running fn.
func replayOnce[Resp any](t *testing.T, e *env, name string, v Resp) {
	t.Helper()
	op := idem.New[string, Resp](e.store)
	key := e.key(name)
	runs := 0
	fn := func(context.Context, string) (Resp, error) { runs++; return v, nil }
	first, info, err := op.DoInfo(ctxFor(t), key, "req", fn)
	if err != nil || info.Replayed {
		t.Fatalf("%s: first call: replayed=%v err=%v", name, info.Replayed, err)
	}
	got, info, err := op.DoInfo(ctxFor(t), key, "req", fn)
	if err != nil {
		t.Fatalf("%s: replay: %v", name, err)
	}
	if !info.Replayed || runs != 1 {
		t.Fatalf("%s: replay ran fn (runs=%d, replayed=%v)", name, runs, info.Replayed)
	}
	if diff := cmp.Diff(first, got); diff != "" {
		t.Errorf("%s: replayed value differs (-first +replay):\n%s", name, diff)
	}
}

func testReplayZeroValues(t *testing.T, e *env) {
	replayOnce(t, e, "int0", 0)
	replayOnce(t, e, "emptystring", "")
	replayOnce(t, e, "false", false)
	replayOnce(t, e, "nilslice", []int(nil))
	replayOnce(t, e, "emptyslice", []int{})
	replayOnce(t, e, "nilmap", map[string]int(nil))
	replayOnce(t, e, "nilpointer", (*receipt)(nil))
	replayOnce(t, e, "emptystruct", struct{}{})
	replayOnce(t, e, "zeroreceipt", receipt{})
	replayOnce(t, e, "float0", 0.0)
}

func testReplayStruct(t *testing.T, e *env) {
	replayOnce(t, e, "receipt", sampleReceipt())
	r := sampleReceipt()
	replayOnce(t, e, "pointer", &r)
	replayOnce(t, e, "nested", map[string][]receipt{"x": {r, {}}})
}

func testKeyReusedInFlight(t *testing.T, e *env) {
	op := idem.New[order, int](e.store, idem.WithWaitTimeout(5*time.Second))
	key := e.key("k")
	release := make(chan struct{})
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := op.Do(ctxFor(t), key, order{ID: "a"}, func(context.Context, order) (int, error) {
			close(started)
			<-release
			return 1, nil
		})
		done <- err
	}()
	<-started
	begin := time.Now()
	_, err := op.Do(ctxFor(t), key, order{ID: "b"}, func(context.Context, order) (int, error) {
		t.Error("fn ran for a reused key")
		return 0, nil
	})
	if !errors.Is(err, idem.ErrKeyReused) {
		t.Errorf("different request while in flight: %v, want ErrKeyReused", err)
	}
	if time.Since(begin) > 2*time.Second {
		t.Errorf("key reuse was reported only after waiting %v", time.Since(begin))
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func testKeyReusedAfter(t *testing.T, e *env) {
	op := idem.New[order, int](e.store)
	key := e.key("k")
	one := func(context.Context, order) (int, error) { return 1, nil }
	if _, err := op.Do(ctxFor(t), key, order{ID: "a", Amount: 1}, one); err != nil {
		t.Fatal(err)
	}
	_, err := op.Do(ctxFor(t), key, order{ID: "a", Amount: 2}, one)
	if !errors.Is(err, idem.ErrKeyReused) {
		t.Fatalf("different request after completion: %v, want ErrKeyReused", err)
	}
	lax := idem.New[order, int](e.store, idem.WithSignatureValidation(false))
	r, err := lax.Do(ctxFor(t), key, order{ID: "a", Amount: 2}, one)
	if err != nil || r != 1 {
		t.Fatalf("without validation: %v, %v; want replay of 1", r, err)
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

	byPred := idem.New[string, int](e.store, idem.WithFinalErrors(func(err error) bool {
		var d *declined
		return errors.As(err, &d)
	}))
	k2 := e.key("pred")
	_, _ = byPred.Do(ctxFor(t), k2, "r", func(context.Context, string) (int, error) { return 0, &declined{"x"} })
	if _, err := byPred.Do(ctxFor(t), k2, "r", func(context.Context, string) (int, error) { return 1, nil }); !errors.Is(err, idem.ErrReplayed) {
		t.Fatalf("WithFinalErrors: replay err = %v, want ErrReplayed", err)
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
	// Long enough that refreshes keep up on a loaded 2-core machine under
	// -race, short enough that fn outlives several leases.
	const lockTTL = 300 * time.Millisecond
	op := idem.New[string, int](e.store, idem.WithLockTTL(lockTTL))
	key := e.key("k")
	var runs atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := op.Do(ctxFor(t), key, "r", func(ctx context.Context, _ string) (int, error) {
			runs.Add(1)
			select {
			case <-time.After(4 * lockTTL):
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

// stalledStore hands out leases whose Refresh claims success but does
// nothing, as when a refresher is starved: the lease then expires while fn
// runs.
type stalledStore struct{ idem.Store }

func (s stalledStore) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	a, err := s.Store.Acquire(ctx, key, fp, ttl)
	if a.Lease != nil {
		a.Lease = stalledLease{a.Lease}
	}
	return a, err
}

type stalledLease struct{ idem.Lease }

func (stalledLease) Refresh(context.Context, time.Duration) error { return nil }

func testLostLease(t *testing.T, e *env) {
	const lockTTL = 60 * time.Millisecond
	key := e.key("k")
	stalled := idem.New[string, string](stalledStore{e.store}, idem.WithLockTTL(lockTTL))
	op := idem.New[string, string](e.store, idem.WithLockTTL(lockTTL))
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

func testResultExpires(t *testing.T, e *env) {
	op := idem.New[string, int](e.store, idem.WithTTL(60*time.Millisecond))
	key := e.key("k")
	runs := 0
	fn := func(context.Context, string) (int, error) { runs++; return runs, nil }
	if r, _ := op.Do(ctxFor(t), key, "r", fn); r != 1 {
		t.Fatalf("first = %d", r)
	}
	if r, _ := op.Do(ctxFor(t), key, "r", fn); r != 1 {
		t.Fatalf("replay before expiry = %d, want 1", r)
	}
	if !eventually(3*time.Second, func() bool {
		r, err := op.Do(ctxFor(t), key, "r", fn)
		return err == nil && r == 2
	}) {
		t.Fatal("result never expired")
	}
}
