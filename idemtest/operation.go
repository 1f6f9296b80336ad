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
	{"HoldKeepsKeyRefused", testHoldKeepsKeyRefused},
	{"LocalCacheSmallerThanKeys", testLocalCacheSmall},
	{"LocalCacheExpiresWithRecord", testLocalCacheExpires},
	{"LocalCacheSkipsInFlight", testLocalCacheSkipsInFlight},
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
