package memstore_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
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

// The tests below run in a synctest bubble: time.Now, time.Sleep and timers
// use a fake clock that jumps ahead when every goroutine in the bubble is
// blocked, so expiry is exact and costs no real time. Everything done
// between two sleeps happens at one instant, so entries filled together
// expire together.

const batch = memstore.ReclaimBatch

// putRecords stores n records, under prefix followed by 0 to n-1, each kept
// for ttl.
func putRecords(t testing.TB, s *memstore.Store, prefix string, n int, ttl time.Duration) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		a, err := s.Acquire(ctx, prefix+strconv.Itoa(i), "fp", time.Hour)
		if err != nil || a.Lease == nil {
			t.Fatalf("Acquire %s%d: %+v, %v; want a lease", prefix, i, a, err)
		}
		if err := a.Lease.Commit(ctx, []byte("r"), ttl); err != nil {
			t.Fatalf("Commit %s%d: %v", prefix, i, err)
		}
	}
}

// putLeases leases n keys, prefix followed by 0 to n-1, each for ttl.
func putLeases(t testing.TB, s *memstore.Store, prefix string, n int, ttl time.Duration) []idem.Lease {
	t.Helper()
	ls := make([]idem.Lease, n)
	for i := range n {
		a, err := s.Acquire(context.Background(), prefix+strconv.Itoa(i), "fp", ttl)
		if err != nil || a.Lease == nil {
			t.Fatalf("Acquire %s%d: %+v, %v; want a lease", prefix, i, a, err)
		}
		ls[i] = a.Lease
	}
	return ls
}

// TestMassExpiryReclaimsInBatches checks that after 45,000 entries expire
// together no call reclaims more than a batch of each kind, and that the
// backlog drains at that rate over the following calls.
func TestMassExpiryReclaimsInBatches(t *testing.T) {
	for _, c := range []struct{ records, leases int }{
		{45000, 0},
		{0, 45000},
		{22500, 22500},
	} {
		t.Run(fmt.Sprintf("records=%d,leases=%d", c.records, c.leases), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				s := memstore.New()
				putRecords(t, s, "r", c.records, time.Second)
				putLeases(t, s, "l", c.leases, time.Second)
				time.Sleep(2 * time.Second)
				total := c.records + c.leases
				if n := s.Len(); n != total {
					t.Fatalf("Len after expiry, before any call = %d, want %d (nothing reclaimed yet)", n, total)
				}
				perCall := 0 // the most one call may reclaim
				if c.records > 0 {
					perCall += batch
				}
				if c.leases > 0 {
					perCall += batch
				}

				// One Acquire of a new key: it gets a lease (+1) and reclaims
				// one batch of each kind.
				a, err := s.Acquire(ctx, "trigger", "fp", time.Hour)
				if err != nil || a.Lease == nil {
					t.Fatalf("Acquire of a new key after the expiry: %+v, %v; want a lease", a, err)
				}
				removed := total + 1 - s.Len()
				if removed != perCall {
					t.Fatalf("first Acquire after the expiry reclaimed %d entries, want %d (one batch of %d per kind)", removed, perCall, batch)
				}

				// Further calls (Acquire of the held key: it adds nothing)
				// drain the rest, one batch each.
				want := (max(c.records, c.leases) + batch - 1) / batch // calls to drain, counting the first
				calls := 1
				for s.Len() > 1 {
					before := s.Len()
					a, err := s.Acquire(ctx, "trigger", "other", time.Hour)
					if err != nil || a.Holder != "fp" {
						t.Fatalf("Acquire of the held key: %+v, %v; want held by fp", a, err)
					}
					calls++
					if removed := before - s.Len(); removed < 1 || removed > perCall {
						t.Fatalf("call %d reclaimed %d entries, want 1 to %d", calls, removed, perCall)
					}
					if calls > want {
						t.Fatalf("%d entries left after %d calls, want all reclaimed after %d", s.Len()-1, calls, want)
					}
				}
				if calls != want {
					t.Errorf("drained after %d calls, want %d", calls, want)
				}
			})
		})
	}
}

// fillThenExpire stores 3*batch records or leases (as leased says) that
// expire after 1s, then does put for the entries under test, which must
// expire after them (after 2s, say), and sleeps until all have expired. The
// entries under test are then behind three batches of expired entries of
// their kind: reclaim cannot reach them in one call, nor in two.
func fillThenExpire(t *testing.T, s *memstore.Store, leased bool, put func()) {
	t.Helper()
	if leased {
		putLeases(t, s, "filler", 3*batch, time.Second)
	} else {
		putRecords(t, s, "filler", 3*batch, time.Second)
	}
	put()
	time.Sleep(3 * time.Second)
}

// checkNotSwept fails the test when a call reclaimed everything, so that
// what the test checks did not depend on treating an unreclaimed expired
// entry as absent.
func checkNotSwept(t *testing.T, s *memstore.Store) {
	t.Helper()
	if n := s.Len(); n <= batch {
		t.Fatalf("Len = %d after the calls, want more than %d: reclaim is not bounded, so the test did not see an unreclaimed expired entry", n, batch)
	}
}

// TestExpiredEntryIsAbsentBeforeReclaim checks that an expired record or
// lease still in the store is treated as absent by Acquire and Wait.
func TestExpiredEntryIsAbsentBeforeReclaim(t *testing.T) {
	for _, leased := range []bool{false, true} {
		t.Run(map[bool]string{false: "record", true: "lease"}[leased], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				s := memstore.New()
				fillThenExpire(t, s, leased, func() {
					if leased {
						putLeases(t, s, "k", 1, 2*time.Second)
					} else {
						putRecords(t, s, "k", 1, 2*time.Second)
					}
				})
				start := time.Now()
				if err := s.Wait(ctx, "k0"); err != nil || time.Since(start) != 0 {
					t.Fatalf("Wait on an expired entry = %v after %v, want nil at once", err, time.Since(start))
				}
				a, err := s.Acquire(ctx, "k0", "new", time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if a.Lease == nil || a.Record != nil || a.Holder != "" {
					t.Fatalf("Acquire of a key whose entry expired = %+v, want a lease (expired counts as absent)", a)
				}
				checkNotSwept(t, s)
				if a, _ := s.Acquire(ctx, "k0", "other", time.Minute); a.Holder != "new" {
					t.Fatalf("Acquire after the new lease = %+v, want held by %q", a, "new")
				}
			})
		})
	}
}

// TestExpiredLeaseIsLostBeforeReclaim checks that the holder of an expired
// lease still in the store can no longer refresh, commit or release it.
func TestExpiredLeaseIsLostBeforeReclaim(t *testing.T) {
	ops := map[string]func(l idem.Lease) error{
		"Refresh": func(l idem.Lease) error { return l.Refresh(context.Background(), time.Minute) },
		"Commit":  func(l idem.Lease) error { return l.Commit(context.Background(), []byte("late"), time.Minute) },
		"Release": func(l idem.Lease) error { return l.Release(context.Background()) },
	}
	for _, name := range []string{"Refresh", "Commit", "Release"} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := memstore.New()
				var l idem.Lease
				fillThenExpire(t, s, true, func() { l = putLeases(t, s, "k", 1, 2*time.Second)[0] })
				if err := ops[name](l); !errors.Is(err, idem.ErrLeaseLost) {
					t.Fatalf("%s of an expired lease = %v, want ErrLeaseLost", name, err)
				}
				checkNotSwept(t, s)
				a, err := s.Acquire(context.Background(), "k0", "other", time.Minute)
				if err != nil || a.Lease == nil {
					t.Fatalf("after a late %s: Acquire = %+v, %v; want a lease (the key is free)", name, a, err)
				}
			})
		})
	}
}

// TestRepeatedCommitOfExpiredRecord checks that repeating a Commit whose
// record has expired, but is still in the store, reports ErrLeaseLost (the
// record is absent) rather than success, and writes nothing.
func TestRepeatedCommitOfExpiredRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		s := memstore.New()
		var l idem.Lease
		fillThenExpire(t, s, false, func() {
			l = putLeases(t, s, "k", 1, time.Hour)[0]
			if err := l.Commit(ctx, []byte("r"), 2*time.Second); err != nil {
				t.Fatal(err)
			}
			if err := l.Commit(ctx, []byte("r"), 2*time.Second); err != nil {
				t.Fatalf("repeated Commit of a live record = %v, want nil", err)
			}
		})
		if err := l.Commit(ctx, []byte("r"), 2*time.Second); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("repeated Commit after the record expired = %v, want ErrLeaseLost", err)
		}
		checkNotSwept(t, s)
		a, err := s.Acquire(ctx, "k0", "other", time.Minute)
		if err != nil || a.Lease == nil {
			t.Fatalf("after the late Commit: Acquire = %+v, %v; want a lease", a, err)
		}
	})
}

// TestMaxEntriesFullOfExpired checks that a bounded store holding only
// expired entries, leases and records, grants new leases without first
// reclaiming them all.
func TestMaxEntriesFullOfExpired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		const bound = 8 * batch
		s := memstore.New(memstore.WithMaxEntries(bound))
		putLeases(t, s, "l", bound/2, time.Second)
		putRecords(t, s, "r", bound/2, time.Second)
		time.Sleep(2 * time.Second)
		for i := range bound {
			before := s.Len()
			a, err := s.Acquire(ctx, "new"+strconv.Itoa(i), "fp", time.Hour)
			if err != nil || a.Lease == nil {
				t.Fatalf("Acquire #%d of a new key in a store full of expired entries: %+v, %v; want a lease", i, a, err)
			}
			n := s.Len()
			if n > bound {
				t.Fatalf("Len = %d after Acquire #%d, above the bound %d", n, i, bound)
			}
			// One dropped to make room (when full), plus a batch of each kind.
			if removed := before + 1 - n; removed > 2*batch+1 {
				t.Fatalf("Acquire #%d removed %d entries, want at most %d", i, removed, 2*batch+1)
			}
		}
	})
}

// TestMaxEntriesFullOfLiveLeases checks that a bounded store holding live
// leases and expired ones drops the expired ones to make room, never evicts
// a live one, and reports ErrFull once live leases are all it holds.
func TestMaxEntriesFullOfLiveLeases(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		const bound = 4 * batch
		s := memstore.New(memstore.WithMaxEntries(bound))
		putLeases(t, s, "old", bound/2, time.Second)
		live := putLeases(t, s, "live", bound/2, time.Hour)
		time.Sleep(2 * time.Second)
		live = append(live, putLeases(t, s, "new", 1, time.Hour)...)
		if n := s.Len(); n <= len(live) {
			t.Fatalf("Len = %d after one Acquire, want expired leases left (more than the %d live ones): reclaim is not bounded", n, len(live))
		}
		live = append(live, putLeases(t, s, "more", bound/2-1, time.Hour)...)
		if n := s.Len(); n != bound {
			t.Fatalf("Len = %d, want the bound %d", n, bound)
		}
		_, err := s.Acquire(ctx, "one-more", "fp", time.Hour)
		if !errors.Is(err, memstore.ErrFull) {
			t.Fatalf("Acquire on a store full of live leases = %v, want ErrFull", err)
		}
		for i, l := range live {
			if err := l.Refresh(ctx, time.Hour); err != nil {
				t.Fatalf("live lease #%d: Refresh = %v; a live lease was evicted", i, err)
			}
		}
	})
}

// TestWaitWakesOnExpiryWithoutReclaim checks that a waiter on a lease that
// expires wakes at its expiry even when no other call runs, so nothing
// reclaims the lease.
func TestWaitWakesOnExpiryWithoutReclaim(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := memstore.New()
		putLeases(t, s, "k", 1, time.Second)
		start := time.Now()
		if err := s.Wait(context.Background(), "k0"); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d != time.Second {
			t.Fatalf("Wait returned after %v, want the lease's expiry, 1s", d)
		}
		if n := s.Len(); n != 1 {
			t.Fatalf("Len = %d, want 1 (Wait reclaims nothing)", n)
		}
	})
}

// TestExpiredEntriesAreReclaimed checks reclaiming through idem.Operation:
// records that expired together are gone after enough further calls.
func TestExpiredEntriesAreReclaimed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		s := memstore.New()
		op := idem.New[int, int](s, idem.WithTTL(time.Second))
		echo := func(_ context.Context, r int) (int, error) { return r, nil }
		const n = 1000
		for i := range n {
			if _, err := op.Do(ctx, strconv.Itoa(i), i, echo); err != nil {
				t.Fatal(err)
			}
		}
		if s.Len() != n {
			t.Fatalf("Len = %d, want %d", s.Len(), n)
		}
		time.Sleep(1100 * time.Millisecond)
		calls := 0
		for s.Len() > 1 {
			if _, err := op.Do(ctx, "trigger", 0, echo); err != nil {
				t.Fatal(err)
			}
			if calls++; calls > n/batch+1 {
				t.Fatalf("Len = %d after %d calls, want 1 (expired records reclaimed)", s.Len(), calls)
			}
		}
	})
}

// TestNoGoroutineLeak runs storms of duplicate calls in a bubble: synctest.Test
// fails if any goroutine the calls started (waiters, timers) outlives them.
func TestNoGoroutineLeak(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
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
	})
}

// BenchmarkAcquireAfterMassExpiry reports the cost of one Acquire in the
// period after 45,000 records expired together, until they are all
// reclaimed. Each iteration is one Acquire of a held key (which stores
// nothing); when no expired record is left, the store is refilled with the
// timer stopped. With reclaiming in batches this is the cost of a call that
// reclaims one batch; with reclaiming everything at once it is the cost of
// the call that does it, the stall every caller waiting for the lock shares.
func BenchmarkAcquireAfterMassExpiry(b *testing.B) {
	const n = 45000
	ctx := context.Background()
	var s *memstore.Store
	margin := 100 * time.Millisecond
	refill := func() {
		for {
			s = memstore.New()
			a, err := s.Acquire(ctx, "trigger", "fp", 24*time.Hour)
			if err != nil || a.Lease == nil {
				b.Fatal(a, err)
			}
			// Every record expires at (within nanoseconds of) expiry,
			// however long the fill takes; a fill slower than the margin
			// is retried with a longer one.
			expiry := time.Now().Add(margin)
			for i := range n {
				a, err := s.Acquire(ctx, "r"+strconv.Itoa(i), "fp", time.Hour)
				if err != nil || a.Lease == nil {
					b.Fatal(a, err)
				}
				if err := a.Lease.Commit(ctx, []byte("record"), time.Until(expiry)); err != nil {
					b.Fatal(err)
				}
			}
			if s.Len() == n+1 && time.Now().Before(expiry) {
				time.Sleep(time.Until(expiry) + time.Millisecond)
				return
			}
			margin *= 2
		}
	}
	b.ReportAllocs()
	refill()
	for b.Loop() { // the first call of Loop resets the timer
		if s.Len() == 1 {
			b.StopTimer()
			refill()
			b.StartTimer()
		}
		if _, err := s.Acquire(ctx, "trigger", "other", time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}
