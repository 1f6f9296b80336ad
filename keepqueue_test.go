package idem_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// TestKeepersShareOneQueue runs 64 goroutines on one Operation, each
// calling Do on keys of its own with a 500 ms lease: some fns return at
// once, which must cost no refresh, and some outlive the lease twice over,
// which only refreshes started by the Operation's shared keeper queue keep
// alive. Every call must execute once and store its result, no fn's
// context may end, the short calls must not be refreshed, and no goroutine
// may be left behind.
func TestKeepersShareOneQueue(t *testing.T) {
	const (
		callers = 64
		rounds  = 2
		ttl     = 500 * time.Millisecond // long enough for a loaded machine
	)
	before := runtime.NumGoroutine()
	store := &flakyStore{Store: memstore.New()}
	op := idem.New[int, int](store, idem.WithLockTTL(ttl))
	var execs, long atomic.Int32
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				sleep := time.Duration(0)
				if (c+r)%4 == 0 {
					sleep = 2 * ttl
					long.Add(1)
				}
				got, err := op.Do(context.Background(), fmt.Sprintf("k%d-%d", c, r), c, func(ctx context.Context, n int) (int, error) {
					execs.Add(1)
					select {
					case <-time.After(sleep):
					case <-ctx.Done():
						return 0, context.Cause(ctx)
					}
					return n + 1, nil
				})
				if err != nil || got != c+1 {
					t.Errorf("caller %d round %d: Do = %d, %v; want %d, nil", c, r, got, err, c+1)
				}
			}
		}()
	}
	wg.Wait()
	if n := execs.Load(); n != callers*rounds {
		t.Errorf("fn ran %d times, want %d", n, callers*rounds)
	}
	// A long fn (2 ttl) is refreshed at ttl/3, 2ttl/3, ttl, ...: 5 or 6
	// times, fewer if a loaded machine runs the timers late, but at least
	// twice to outlive its lease. A short one is never refreshed.
	if n, l := store.refreshes.Load(), long.Load(); n < 2*l || n > 8*l {
		t.Errorf("%d refreshes for %d long calls, want 2 to 8 each", n, l)
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines left, %d before", n, before)
	}
}

// TestKeepersAcrossBubbles uses one Operation in two testing/synctest
// bubbles in turn. The first leaves a timer pending that its bubble will
// never fire; a long fn in the second must still be refreshed, and its
// result stored.
func TestKeepersAcrossBubbles(t *testing.T) {
	// The bubbles' clocks are fake; the call outside them lasts 2 ttl of
	// real time, long enough for a loaded machine.
	const ttl = 600 * time.Millisecond
	store := &flakyStore{Store: memstore.New()}
	op := idem.New[int, int](store, idem.WithLockTTL(ttl))
	run := func(key string, sleep time.Duration) {
		synctest.Test(t, func(t *testing.T) {
			got, err := op.Do(context.Background(), key, 1, func(ctx context.Context, n int) (int, error) {
				time.Sleep(sleep)
				return n + 1, context.Cause(ctx)
			})
			if err != nil || got != 2 {
				t.Errorf("%s: Do = %d, %v; want 2, nil", key, got, err)
			}
		})
	}
	run("short", 0)
	run("long", 3*ttl)
	if n := store.refreshes.Load(); n < 8 {
		t.Errorf("the long fn was refreshed %d times, want at least 8", n)
	}
	// Outside the bubbles, the Operation's queue starts refreshes too.
	got, err := op.Do(context.Background(), "real", 1, func(ctx context.Context, n int) (int, error) {
		time.Sleep(2 * ttl)
		return n + 1, context.Cause(ctx)
	})
	if err != nil || got != 2 {
		t.Errorf("outside the bubbles: Do = %d, %v; want 2, nil", got, err)
	}
}

// TestKeepersAfterBubblePastEpoch uses an Operation in a testing/synctest
// bubble whose fake clock has run past the real date (27 years of fake
// sleep): there its keeper cannot tell it is in a bubble, joins the
// Operation's queue and arms the queue's timer, which never fires once the
// bubble's test returns. A long fn outside the bubble must still be
// refreshed: the queue sees that its timer was armed on another clock.
func TestKeepersAfterBubblePastEpoch(t *testing.T) {
	const ttl = 600 * time.Millisecond // long enough for a loaded machine
	store := &flakyStore{Store: memstore.New()}
	op := idem.New[int, int](store, idem.WithLockTTL(ttl))
	synctest.Test(t, func(t *testing.T) {
		time.Sleep(27 * 365 * 24 * time.Hour)
		if _, err := op.Do(context.Background(), "in-bubble", 1, func(_ context.Context, n int) (int, error) { return n, nil }); err != nil {
			t.Error(err)
		}
	})
	before := store.refreshes.Load()
	got, err := op.Do(context.Background(), "real", 1, func(ctx context.Context, n int) (int, error) {
		time.Sleep(2 * ttl)
		return n + 1, context.Cause(ctx)
	})
	if err != nil || got != 2 {
		t.Errorf("Do = %d, %v; want 2, nil", got, err)
	}
	// 5 or 6 refreshes on time; a loaded machine may run timers late.
	if n := store.refreshes.Load() - before; n < 3 {
		t.Errorf("a fn of 2 lease TTLs was refreshed %d times, want at least 3", n)
	}
}
