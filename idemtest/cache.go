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

// The tests in this file cover what idem.WithLocalCache needs of a store.
// The cache keeps records in the process; it must never outlive the stored
// record, so it keeps a record that Acquire returned only when the store
// reports the record's remaining lifetime (Acquisition.TTL), and then
// counts the expiry from when Acquire was sent. A store that leaves TTL at
// zero is correct, but its replays are cached only in the process that
// committed them.

// testRecordTTL checks Acquisition.TTL: when a store reports it to an
// Acquire asked for it (idem.ContextWithTTLRequest), it is at most what
// the record has left, and it counts down.
func testRecordTTL(t *testing.T, e *env) {
	const ttl = 2 * time.Second
	k := e.key("k")
	l := acquireLease(t, e.store, k, "fp", time.Minute)
	if err := l.Commit(ctxFor(t), []byte("rec"), ttl); err != nil {
		t.Fatal(err)
	}
	committed := time.Now() // the store has set the record's expiry by now
	acquire := acquireTTL(e.store)
	a, err := acquire(ctxFor(t), k, "fp", time.Minute)
	if err != nil || a.Record == nil {
		t.Fatalf("Acquire after Commit: %+v, %v; want the record", a, err)
	}
	if a.TTL == 0 {
		t.Log("the store does not report Acquisition.TTL: idem.WithLocalCache caches only the records this process commits")
		return
	}
	if a.TTL < 0 || a.TTL > ttl {
		t.Fatalf("Acquisition.TTL = %v right after a Commit with TTL %v; want within (0, %v]", a.TTL, ttl, ttl)
	}
	time.Sleep(100 * time.Millisecond)
	asked := time.Now() // the store measures the TTL after this
	b, err := acquire(ctxFor(t), k, "fp", time.Minute)
	if err != nil || b.Record == nil {
		t.Fatalf("Acquire: %+v, %v", b, err)
	}
	// The store set the expiry before committed and measured the TTL after
	// asked, so the record had at most ttl - (asked - committed) left. A
	// store that rounds the TTL it is given up to whole milliseconds (as it
	// must, not down) may keep the record up to 1 ms longer.
	if left := ttl - asked.Sub(committed); b.TTL > left+time.Millisecond {
		t.Errorf("Acquisition.TTL = %v, but the record has at most %v left: the TTL must count down, or a local cache outlives the record", b.TTL, left)
	}
}

// testTTLRequestAgrees checks that Acquire gives the same answer but for
// TTL whether or not its context asks for the TTL: a lease on an absent key
// (which the other then sees held, and which commits alike), the holder's
// fingerprint on a held key, the record on a completed one.
func testTTLRequestAgrees(t *testing.T, e *env) {
	methods := []struct {
		name    string
		acquire acquireFunc
	}{{"Acquire", e.store.Acquire}, {"AcquireWithTTL", acquireTTL(e.store)}}
	for _, leaser := range methods {
		k := e.key(leaser.name)
		a, err := leaser.acquire(ctxFor(t), k, "fp-holder", time.Minute)
		if err != nil || a.Lease == nil || a.Record != nil || a.Holder != "" {
			t.Fatalf("%s of an absent key: %+v, %v; want a lease alone", leaser.name, a, err)
		}
		for _, m := range methods {
			h, err := m.acquire(ctxFor(t), k, "fp-other", time.Minute)
			if err != nil || h.Lease != nil || h.Record != nil || h.Holder != "fp-holder" {
				t.Errorf("%s of a key leased by %s: %+v, %v; want holder %q alone", m.name, leaser.name, h, err, "fp-holder")
			}
		}
		rec := []byte("rec\x00" + leaser.name)
		if err := a.Lease.Commit(ctxFor(t), rec, time.Minute); err != nil {
			t.Fatalf("Commit of a lease from %s: %v", leaser.name, err)
		}
		for _, m := range methods {
			r, err := m.acquire(ctxFor(t), k, "fp-other", time.Minute)
			if err != nil || r.Lease != nil || r.Holder != "" || !bytes.Equal(r.Record, rec) {
				t.Errorf("%s of a key completed through %s: %+v, %v; want record %q alone", m.name, leaser.name, r, err, rec)
			}
		}
	}
}

// testLocalCacheSmall runs a storm on more keys than a small local cache
// holds, with another Operation without a cache on the same store: each
// key's fn runs once, every call returns its key's result, a key reused
// with another request is refused from the cache as from the store.
func testLocalCacheSmall(t *testing.T, e *env) {
	const keys, callers = 16, 64
	cached := idem.New[string, string](e.store, idem.WithLocalCache(4), idem.WithWaitTimeout(10*time.Second))
	plain := idem.New[string, string](e.store, idem.WithWaitTimeout(10*time.Second))
	var runs [keys]atomic.Int64
	fn := func(k int) func(context.Context, string) (string, error) {
		return func(_ context.Context, req string) (string, error) {
			runs[k].Add(1)
			time.Sleep(time.Millisecond)
			return "done " + req, nil
		}
	}
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			op := cached
			if c%4 == 3 {
				op = plain
			}
			for round := range 3 {
				k := (c + round) % keys
				req := fmt.Sprint("req-", k)
				v, err := op.Do(ctxFor(t), e.key(fmt.Sprint(k)), req, fn(k))
				if err != nil || v != "done "+req {
					t.Errorf("key %d: %q, %v; want %q", k, v, err, "done "+req)
				}
			}
		})
	}
	wg.Wait()
	for k := range keys {
		if n := runs[k].Load(); n != 1 {
			t.Errorf("key %d: fn ran %d times, want 1", k, n)
		}
		if _, err := cached.Do(ctxFor(t), e.key(fmt.Sprint(k)), "another request", fn(k)); !errors.Is(err, idem.ErrKeyReused) {
			t.Errorf("key %d reused: %v, want ErrKeyReused", k, err)
		}
	}
}

// testLocalCacheExpires checks that a record cached by the process that
// committed it, and one cached from the store by another, expire with the
// stored record: the key then executes afresh.
func testLocalCacheExpires(t *testing.T, e *env) {
	timedRounds(t, 5, func(round int) bool { return localCacheExpiresRound(t, e, round) })
}

// localCacheExpiresRound runs testLocalCacheExpires once, and reports
// whether its timing held.
func localCacheExpiresRound(t *testing.T, e *env, round int) bool {
	// Long enough that the replays half-way through it come in time on a
	// loaded machine.
	const ttl = 800 * time.Millisecond
	a := idem.New[string, int](e.store, idem.WithTTL(ttl), idem.WithLocalCache(8))
	b := idem.New[string, int](e.store, idem.WithTTL(ttl), idem.WithLocalCache(8))
	k := e.key("k", fmt.Sprint(round))
	var runs atomic.Int64
	fn := func(context.Context, string) (int, error) { return int(runs.Add(1)), nil }
	// The record, and every copy of it cached, lives until ttl after began
	// at least, and ttl after committed at most (plus the store's rounding
	// up, under a millisecond).
	began := time.Now()
	if v, err := a.Do(ctxFor(t), k, "r", fn); err != nil || v != 1 {
		t.Fatalf("first: %d, %v", v, err)
	}
	committed := time.Now()
	time.Sleep(time.Until(began.Add(ttl / 2)))
	// b learns of the record half-way through its life: its copy must
	// expire with the record, not a TTL after b learned of it.
	for _, op := range []*idem.Operation[string, int]{a, b} {
		v, err := op.Do(ctxFor(t), k, "r", fn)
		if time.Since(began) > ttl*9/10 {
			return false // too late to tell a replay from an expiry
		}
		if err != nil || v != 1 {
			t.Fatalf("replay: %d, %v; want 1", v, err)
		}
	}
	time.Sleep(time.Until(committed.Add(ttl + 50*time.Millisecond)))
	again := time.Now() // b's new record lives until ttl after this, at least
	if v, err := b.Do(ctxFor(t), k, "r", fn); err != nil || v != 2 {
		t.Fatalf("after the record's TTL, through the Operation that cached it from the store: %d, %v; want 2, executed afresh", v, err)
	}
	v, err := a.Do(ctxFor(t), k, "r", fn)
	if time.Since(again) >= ttl {
		return false // b's record may have expired too
	}
	if err != nil || v != 2 {
		t.Fatalf("after the TTL, through the Operation that committed: %d, %v; want b's 2", v, err)
	}
	return true
}

// testLocalCacheSkipsInFlight checks that a key whose execution is under way
// is never answered from the cache, and that its record is cached once
// committed.
func testLocalCacheSkipsInFlight(t *testing.T, e *env) {
	op := idem.New[string, int](e.store, idem.WithLocalCache(8))
	k := e.key("k")
	release := holdKey(t, op, k)
	for range 3 {
		if _, err := op.Do(ctxFor(t), k, "r", func(context.Context, string) (int, error) {
			t.Error("fn ran while another execution held the key")
			return 0, nil
		}); !errors.Is(err, idem.ErrInFlight) {
			t.Fatalf("while in flight: %v, want ErrInFlight", err)
		}
	}
	release()
	if v, info, err := op.DoInfo(ctxFor(t), k, "r", func(context.Context, string) (int, error) {
		t.Error("fn ran again after the execution that held the key completed")
		return 0, nil
	}); err != nil || v != 1 || !info.Replayed {
		t.Fatalf("after commit: %d, %v, %v; want the replayed 1", v, info.Outcome, err)
	}
}
