package idemtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

// storeTests exercise the Store contract directly.
var storeTests = []test{
	{"AcquireLeasesAbsentKey", testAcquireLeases},
	{"CommitThenReplay", testCommitReplay},
	{"ReleaseFreesKey", testRelease},
	{"AcquireRace", testAcquireRace},
	{"LeaseExpires", testLeaseExpires},
	{"RefreshKeepsLease", testRefresh},
	{"OwnerCheckedCommit", testOwnerCheckedCommit},
	{"RecordExpires", testRecordExpires},
	{"WaitWakesOnCommit", testWaitCommit},
	{"WaitWakesOnRelease", testWaitRelease},
	{"WaitWakesOnExpiry", testWaitExpiry},
	{"WaitHonoursContext", testWaitContext},
	{"KeysAreIndependent", testIndependentKeys},
	{"EmptyRecord", testEmptyRecord},
	{"ExpiredLeaseOnFreeKey", testExpiredLeaseFreeKey},
	{"CommitAfterTakeoverSameBytes", testCommitAfterTakeoverSameBytes},
	{"RecordTTL", testRecordTTL},
	{"TTLRequestAgrees", testTTLRequestAgrees},
}

// testCommitAfterTakeoverSameBytes checks that a Commit is recognised as
// already done only for the lease that made it, not for any lease whose
// record has the same bytes. A holder whose lease expired while its fn ran,
// and whose fn returned what the new holder's returned (a 204, a fixed
// "ok"), must learn that its outcome was not stored: fn ran twice, and a
// nil error would hide it.
func testCommitAfterTakeoverSameBytes(t *testing.T, e *env) {
	rec := []byte("same\x00bytes\xff")
	// stale returns a lease on k that has expired, so that k is free.
	stale := func(t *testing.T, k string) idem.Lease {
		l := acquireLease(t, e.store, k, "fp", 30*time.Millisecond)
		time.Sleep(80 * time.Millisecond)
		return l
	}
	expectRecord := func(t *testing.T, k, what string) {
		t.Helper()
		a, err := e.store.Acquire(ctxFor(t), k, "fp", time.Minute)
		if err != nil || a.Lease != nil || !bytes.Equal(a.Record, rec) {
			t.Fatalf("%s: Acquire = %+v, %v; want the record %q", what, a, err, rec)
		}
	}

	t.Run("NewHolderCommitted", func(t *testing.T) {
		t.Parallel()
		k := e.key("committed")
		old := stale(t, k)
		b := acquireLease(t, e.store, k, "fp", time.Minute)
		if err := b.Commit(ctxFor(t), rec, time.Minute); err != nil {
			t.Fatalf("Commit by the new holder: %v", err)
		}
		// A short TTL: a store that let this Commit through and rewrote
		// the record would make it expire.
		if err := old.Commit(ctxFor(t), rec, 30*time.Millisecond); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("Commit of the same bytes by the expired holder, after the new holder committed them = %v, want ErrLeaseLost", err)
		}
		if err := b.Commit(ctxFor(t), rec, time.Minute); err != nil {
			t.Fatalf("repeated Commit by the new holder after the stale one: %v, want nil (Commit is idempotent)", err)
		}
		time.Sleep(80 * time.Millisecond)
		expectRecord(t, k, "after the stale Commit")
		if err := old.Commit(ctxFor(t), rec, time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("stale Commit, repeated = %v, want ErrLeaseLost", err)
		}
	})

	t.Run("ReleasedThenThirdHolds", func(t *testing.T) {
		t.Parallel()
		k := e.key("released-held")
		old := stale(t, k)
		b := acquireLease(t, e.store, k, "fp-b", time.Minute)
		if err := b.Release(ctxFor(t)); err != nil {
			t.Fatal(err)
		}
		c := acquireLease(t, e.store, k, "fp-c", time.Minute)
		if err := old.Commit(ctxFor(t), rec, time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("Commit by the expired holder over a third caller's lease = %v, want ErrLeaseLost", err)
		}
		if err := b.Commit(ctxFor(t), rec, time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("Commit by the holder that released = %v, want ErrLeaseLost", err)
		}
		a, err := e.store.Acquire(ctxFor(t), k, "other", time.Minute)
		if err != nil || a.Lease != nil || a.Record != nil || a.Holder != "fp-c" {
			t.Fatalf("after stale Commits the third caller's lease is gone: %+v, %v", a, err)
		}
		if err := c.Commit(ctxFor(t), rec, time.Minute); err != nil {
			t.Fatalf("Commit by the third holder: %v", err)
		}
	})

	t.Run("ReleasedThenThirdCommitted", func(t *testing.T) {
		t.Parallel()
		k := e.key("released-committed")
		old := stale(t, k)
		b := acquireLease(t, e.store, k, "fp", time.Minute)
		if err := b.Release(ctxFor(t)); err != nil {
			t.Fatal(err)
		}
		c := acquireLease(t, e.store, k, "fp", time.Minute)
		if err := c.Commit(ctxFor(t), rec, time.Minute); err != nil {
			t.Fatalf("Commit by the third holder: %v", err)
		}
		if err := old.Commit(ctxFor(t), rec, 30*time.Millisecond); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("Commit of the same bytes by the expired holder, after a third caller committed them = %v, want ErrLeaseLost", err)
		}
		if err := b.Commit(ctxFor(t), rec, 30*time.Millisecond); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("Commit of the same bytes by the holder that released = %v, want ErrLeaseLost", err)
		}
		if err := c.Commit(ctxFor(t), rec, time.Minute); err != nil {
			t.Fatalf("repeated Commit by the third holder: %v, want nil", err)
		}
		time.Sleep(80 * time.Millisecond)
		expectRecord(t, k, "after the stale Commits")
	})
}

// testExpiredLeaseFreeKey checks that an expired lease stays lost even when
// nobody took the key since: a holder that stalled past its lease must not
// get it back, because another caller may have run fn and failed meanwhile.
func testExpiredLeaseFreeKey(t *testing.T, e *env) {
	for _, op := range []string{"Refresh", "Commit", "Release"} {
		k := e.key(op)
		l := acquireLease(t, e.store, k, "fp", 30*time.Millisecond)
		time.Sleep(100 * time.Millisecond)
		var err error
		switch op {
		case "Refresh":
			err = l.Refresh(ctxFor(t), time.Minute)
		case "Commit":
			err = l.Commit(ctxFor(t), []byte("late"), time.Minute)
		case "Release":
			err = l.Release(ctxFor(t))
		}
		if !errors.Is(err, idem.ErrLeaseLost) {
			t.Errorf("%s of an expired lease on a free key = %v, want ErrLeaseLost", op, err)
		}
		a, err := e.store.Acquire(ctxFor(t), k, "other", time.Minute)
		if err != nil || a.Lease == nil {
			t.Errorf("after a late %s the key is not free: %+v, %v", op, a, err)
		}
	}
}

// testEmptyRecord checks that an empty record is still a record: non-nil,
// so that it is not mistaken for a key held by another caller.
func testEmptyRecord(t *testing.T, e *env) {
	k := e.key("k")
	l := acquireLease(t, e.store, k, "fp", time.Minute)
	if err := l.Commit(ctxFor(t), []byte{}, time.Minute); err != nil {
		t.Fatal(err)
	}
	a, err := e.store.Acquire(ctxFor(t), k, "fp", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if a.Record == nil || len(a.Record) != 0 || a.Lease != nil {
		t.Fatalf("after committing an empty record: %+v, want Record = []byte{}", a)
	}
}

func testAcquireLeases(t *testing.T, e *env) {
	k := e.key("k")
	acquireLease(t, e.store, k, "fp-1", time.Minute)
	a, err := e.store.Acquire(ctxFor(t), k, "fp-2", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if a.Lease != nil || a.Record != nil {
		t.Fatalf("second Acquire got lease %v, record %q; want held", a.Lease, a.Record)
	}
	if a.Holder != "fp-1" {
		t.Errorf("Holder = %q, want the first caller's fingerprint %q", a.Holder, "fp-1")
	}
}

func testCommitReplay(t *testing.T, e *env) {
	k := e.key("k")
	l := acquireLease(t, e.store, k, "fp", time.Minute)
	rec := []byte("record\x00with\xffbinary")
	if err := l.Commit(ctxFor(t), rec, time.Minute); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	// A repeated Commit (its reply was lost, say) succeeds.
	if err := l.Commit(ctxFor(t), rec, time.Minute); err != nil {
		t.Fatalf("repeated Commit of the same record: %v, want nil (Commit is idempotent)", err)
	}
	for i := range 3 {
		a, err := e.store.Acquire(ctxFor(t), k, "other", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if a.Lease != nil || !bytes.Equal(a.Record, rec) {
			t.Fatalf("Acquire #%d after Commit: lease %v, record %q; want record %q", i, a.Lease, a.Record, rec)
		}
	}
	if err := l.Commit(ctxFor(t), []byte("again"), time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
		t.Errorf("second Commit = %v, want ErrLeaseLost", err)
	}
	if err := l.Release(ctxFor(t)); !errors.Is(err, idem.ErrLeaseLost) {
		t.Errorf("Release after Commit = %v, want ErrLeaseLost", err)
	}
	a, _ := e.store.Acquire(ctxFor(t), k, "other", time.Minute)
	if !bytes.Equal(a.Record, rec) {
		t.Errorf("record after late Commit/Release = %q, want %q", a.Record, rec)
	}
}

func testRelease(t *testing.T, e *env) {
	k := e.key("k")
	l := acquireLease(t, e.store, k, "fp", time.Minute)
	if err := l.Release(ctxFor(t)); err != nil {
		t.Fatalf("Release: %v", err)
	}
	l2 := acquireLease(t, e.store, k, "fp", time.Minute)
	if err := l.Release(ctxFor(t)); !errors.Is(err, idem.ErrLeaseLost) {
		t.Errorf("stale Release = %v, want ErrLeaseLost", err)
	}
	if err := l.Refresh(ctxFor(t), time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
		t.Errorf("stale Refresh = %v, want ErrLeaseLost", err)
	}
	if err := l2.Commit(ctxFor(t), []byte("r"), time.Minute); err != nil {
		t.Errorf("new holder's Commit after stale Release: %v", err)
	}
}

// testAcquireRace has concurrent callers acquire one key: one gets the
// lease. Half of them ask for the TTL (idem.ContextWithTTLRequest).
func testAcquireRace(t *testing.T, e *env) {
	const n = 32
	withTTL := acquireTTL(e.store)
	for round := range 5 {
		k := e.key("k", fmt.Sprint(round))
		var leases atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			acquire := e.store.Acquire
			if i%2 == 1 {
				acquire = withTTL
			}
			wg.Go(func() {
				<-start
				a, err := acquire(ctxFor(t), k, fmt.Sprint(i), time.Minute)
				if err != nil {
					t.Error(err)
					return
				}
				if a.Lease != nil {
					leases.Add(1)
				}
			})
		}
		close(start)
		wg.Wait()
		if got := leases.Load(); got != 1 {
			t.Fatalf("round %d: %d of %d concurrent Acquires got a lease, want 1", round, got, n)
		}
	}
}

func testLeaseExpires(t *testing.T, e *env) {
	k := e.key("k")
	old := acquireLease(t, e.store, k, "old", 50*time.Millisecond)
	var l idem.Lease
	if !eventually(2*time.Second, func() bool {
		a, err := e.store.Acquire(ctxFor(t), k, "new", time.Minute)
		l = a.Lease
		return err == nil && a.Lease != nil
	}) {
		t.Fatal("expired lease was never given up")
	}
	if err := old.Refresh(ctxFor(t), time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
		t.Errorf("Refresh of expired lease = %v, want ErrLeaseLost", err)
	}
	if err := l.Commit(ctxFor(t), []byte("r"), time.Minute); err != nil {
		t.Errorf("Commit by new holder: %v", err)
	}
}

func testRefresh(t *testing.T, e *env) {
	k := e.key("k")
	// Refreshed every third of the TTL, a lease survives a refresh late by
	// two thirds of it: a loaded machine (-race, the whole suite on 2
	// cores) has been seen to lose a 300 ms lease refreshed every 150 ms,
	// and, beside six busy loops, a 600 ms one.
	const ttl = time.Second
	l := acquireLease(t, e.store, k, "fp", ttl)
	for range 7 { // 2.3s in all, more than twice the TTL
		time.Sleep(ttl / 3)
		if err := l.Refresh(ctxFor(t), ttl); err != nil {
			t.Fatalf("Refresh: %v", err)
		}
		a, err := e.store.Acquire(ctxFor(t), k, "other", ttl)
		if err != nil {
			t.Fatal(err)
		}
		if a.Lease != nil {
			t.Fatal("another caller acquired a lease that was being refreshed")
		}
	}
	if err := l.Commit(ctxFor(t), []byte("r"), time.Minute); err != nil {
		t.Errorf("Commit after refreshes: %v", err)
	}
}

func testOwnerCheckedCommit(t *testing.T, e *env) {
	k := e.key("k")
	old := acquireLease(t, e.store, k, "fp", 30*time.Millisecond)
	time.Sleep(80 * time.Millisecond)
	l := acquireLease(t, e.store, k, "fp", time.Minute)
	if err := old.Commit(ctxFor(t), []byte("stale"), time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("Commit by expired holder = %v, want ErrLeaseLost", err)
	}
	if err := old.Release(ctxFor(t)); !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("Release by expired holder = %v, want ErrLeaseLost", err)
	}
	a, _ := e.store.Acquire(ctxFor(t), k, "fp", time.Minute)
	if a.Holder != "fp" || a.Lease != nil || a.Record != nil {
		t.Fatalf("after stale Commit/Release the new lease is gone: %+v", a)
	}
	if err := l.Commit(ctxFor(t), []byte("fresh"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := old.Commit(ctxFor(t), []byte("stale"), time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("stale Commit over a record = %v, want ErrLeaseLost", err)
	}
	a, _ = e.store.Acquire(ctxFor(t), k, "fp", time.Minute)
	if string(a.Record) != "fresh" {
		t.Fatalf("record = %q, want the new holder's %q", a.Record, "fresh")
	}
}

// testRecordExpires checks that a record is there after its Commit for
// its TTL, and that its key is free once it expired.
func testRecordExpires(t *testing.T, e *env) {
	timedRounds(t, 3, func(round int) bool { return recordExpiresRound(t, e, round) })
}

// recordExpiresRound runs testRecordExpires once, and reports whether its
// timing held.
func recordExpiresRound(t *testing.T, e *env, round int) bool {
	// Long enough that the Acquires after the Commit come well within it
	// on a loaded machine.
	const ttl = 500 * time.Millisecond
	k := e.key("k", fmt.Sprint(round))
	l := acquireLease(t, e.store, k, "fp", time.Minute)
	sent := time.Now() // the record lives until ttl after this, at least
	if err := l.Commit(ctxFor(t), []byte("r"), ttl); err != nil {
		t.Fatal(err)
	}
	// The record is there right after the Commit, and half-way through
	// its TTL.
	for _, at := range []time.Duration{0, ttl / 2} {
		time.Sleep(time.Until(sent.Add(at)))
		a, err := e.store.Acquire(ctxFor(t), k, "fp", time.Minute)
		if time.Since(sent) >= ttl {
			return false // too late to tell the record from its expiry
		}
		if err != nil || string(a.Record) != "r" {
			t.Fatalf("record %v after Commit was sent = %q, %v; want it there for its TTL, %v", at, a.Record, err, ttl)
		}
	}
	time.Sleep(time.Until(sent.Add(ttl))) // it cannot have expired before
	if !eventually(3*time.Second, func() bool {
		a, err := e.store.Acquire(ctxFor(t), k, "fp", time.Minute)
		return err == nil && a.Lease != nil
	}) {
		t.Fatal("record never expired")
	}
	return true
}

// waitReturns starts Wait on key and returns a channel that gets its result.
func waitReturns(ctx context.Context, s idem.Store, key string) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- s.Wait(ctx, key) }()
	return ch
}

func expectWaitWithin(t *testing.T, ch <-chan error, d time.Duration, what string) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("Wait after %s: %v", what, err)
		}
	case <-time.After(d):
		t.Fatalf("Wait did not return within %v of %s", d, what)
	}
}

func testWaitCommit(t *testing.T, e *env) {
	k := e.key("k")
	l := acquireLease(t, e.store, k, "fp", time.Minute)
	ch := waitReturns(ctxFor(t), e.store, k)
	time.Sleep(30 * time.Millisecond)
	select {
	case err := <-ch:
		t.Fatalf("Wait returned %v while the lease was held", err)
	default:
	}
	if err := l.Commit(ctxFor(t), []byte("r"), time.Minute); err != nil {
		t.Fatal(err)
	}
	expectWaitWithin(t, ch, 2*time.Second, "Commit")
}

func testWaitRelease(t *testing.T, e *env) {
	k := e.key("k")
	l := acquireLease(t, e.store, k, "fp", time.Minute)
	ch := waitReturns(ctxFor(t), e.store, k)
	time.Sleep(20 * time.Millisecond)
	if err := l.Release(ctxFor(t)); err != nil {
		t.Fatal(err)
	}
	expectWaitWithin(t, ch, 2*time.Second, "Release")
}

func testWaitExpiry(t *testing.T, e *env) {
	k := e.key("k")
	acquireLease(t, e.store, k, "fp", 100*time.Millisecond)
	ch := waitReturns(ctxFor(t), e.store, k)
	expectWaitWithin(t, ch, 3*time.Second, "the lease expiring")
}

func testWaitContext(t *testing.T, e *env) {
	k := e.key("k")
	acquireLease(t, e.store, k, "fp", time.Minute)
	ctx, cancel := context.WithCancel(ctxFor(t))
	ch := waitReturns(ctx, e.store, k)
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-ch:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Wait ignored the cancelled context")
	}
	if err := e.store.Wait(ctxFor(t), e.key("absent")); err != nil {
		t.Errorf("Wait on an absent key = %v, want nil at once", err)
	}
}

func testIndependentKeys(t *testing.T, e *env) {
	a := acquireLease(t, e.store, e.key("a"), "fp", time.Minute)
	b := acquireLease(t, e.store, e.key("b"), "fp", time.Minute)
	if err := a.Commit(ctxFor(t), []byte("A"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctxFor(t)); err != nil {
		t.Fatal(err)
	}
	got, _ := e.store.Acquire(ctxFor(t), e.key("a"), "fp", time.Minute)
	if string(got.Record) != "A" {
		t.Errorf("key a = %+v, want record A", got)
	}
	acquireLease(t, e.store, e.key("b"), "fp", time.Minute)
}
