package memstore_test

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemtest"
	"github.com/idemkit/idem/memstore"
)

func TestConformance(t *testing.T) {
	idemtest.TestStore(t, func(*testing.T) idem.Store { return memstore.New() })
}

func TestConformanceShared(t *testing.T) {
	s := memstore.New()
	idemtest.TestStore(t, func(*testing.T) idem.Store { return s })
}

func TestMaxEntriesEvictsSoonestRecord(t *testing.T) {
	ctx := context.Background()
	s := memstore.New(memstore.WithMaxEntries(3))
	op := func(ttl time.Duration) *idem.Operation[string, string] {
		return idem.New[string, string](s, idem.WithTTL(ttl))
	}
	echo := func(_ context.Context, r string) (string, error) { return r, nil }
	_, _ = op(time.Hour).Do(ctx, "long", "r", echo)
	_, _ = op(time.Minute).Do(ctx, "short", "r", echo)
	_, _ = op(time.Hour).Do(ctx, "long2", "r", echo)
	if _, err := op(time.Hour).Do(ctx, "new", "r", echo); err != nil {
		t.Fatal(err)
	}
	if n := s.Len(); n != 3 {
		t.Fatalf("Len = %d, want the bound 3", n)
	}
	// Look at "short" last: acquiring an absent key adds a lease, which
	// would evict again.
	for _, c := range []struct {
		key        string
		wantReplay bool
	}{{"long", true}, {"long2", true}, {"new", true}, {"short", false}} {
		key, wantReplay := c.key, c.wantReplay
		a, err := s.Acquire(ctx, ":"+key, "x", time.Minute) // the key idem stores under
		if err != nil {
			t.Fatal(err)
		}
		if got := a.Record != nil; got != wantReplay {
			t.Errorf("%s: record kept = %v, want %v (the soonest-expiring record is evicted)", key, got, wantReplay)
		}
		if a.Lease != nil {
			_ = a.Lease.Release(ctx)
		}
	}
}

func TestMaxEntriesNeverEvictsLeases(t *testing.T) {
	ctx := context.Background()
	s := memstore.New(memstore.WithMaxEntries(2))
	for _, k := range []string{"a", "b"} {
		if a, err := s.Acquire(ctx, k, "fp", time.Minute); err != nil || a.Lease == nil {
			t.Fatal(err)
		}
	}
	_, err := s.Acquire(ctx, "c", "fp", time.Minute)
	if !errors.Is(err, memstore.ErrFull) {
		t.Fatalf("Acquire with only leases held: %v, want ErrFull", err)
	}
	_, err = idem.New[string, int](s).Do(ctx, "c", "r", func(context.Context, string) (int, error) { return 0, nil })
	if !errors.Is(err, idem.ErrStore) || !errors.Is(err, memstore.ErrFull) {
		t.Fatalf("Do on a full store: %v, want ErrStore wrapping ErrFull", err)
	}
}

func TestExpiredEntriesAreReclaimed(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	op := idem.New[int, int](s, idem.WithTTL(time.Second))
	for i := range 1000 {
		if _, err := op.Do(ctx, strconv.Itoa(i), i, func(_ context.Context, r int) (int, error) { return r, nil }); err != nil {
			t.Fatal(err)
		}
	}
	if s.Len() != 1000 {
		t.Fatalf("Len = %d, want 1000", s.Len())
	}
	time.Sleep(1100 * time.Millisecond)
	_, _ = op.Do(ctx, "trigger", 0, func(context.Context, int) (int, error) { return 0, nil })
	if n := s.Len(); n != 1 {
		t.Fatalf("Len after expiry and one call = %d, want 1 (expired records reclaimed)", n)
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	ctx := context.Background()
	before := runtime.NumGoroutine()
	s := memstore.New()
	op := idem.New[int, int](s, idem.WithWaitTimeout(5*time.Second))
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			_, _ = op.Do(ctx, strconv.Itoa(i%10), i%10, func(_ context.Context, r int) (int, error) {
				time.Sleep(time.Millisecond)
				return r, nil
			})
		})
	}
	wg.Wait()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Fatalf("%d goroutines before, %d after: leak", before, after)
	}
}
