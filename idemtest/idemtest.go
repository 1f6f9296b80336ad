// Package idemtest checks that an idem.Store keeps its contract.
//
// A backend's tests call TestStore with a function that returns the store
// under test:
//
//	func TestConformance(t *testing.T) {
//		idemtest.TestStore(t, func(t *testing.T) idem.Store { return mystore.New(...) })
//	}
//
// The suite runs against the store directly (atomic acquire, owner-checked
// commit and release, expiry, waiting) and through idem.Operation
// (exactly-once storms, replay, key reuse, failure, panic, lease refresh,
// cancellation). Run it with -race. Keys are unique per run, so a store
// shared between subtests, or with other users, does not need flushing.
// The suite sleeps for lease and record expiry in tens of milliseconds, and
// takes a few seconds in all.
//
// For idem.WithLocalCache, a store should report with every record it
// returns from Acquire how long the record has left (Acquisition.TTL), by
// its own clock, rounded down, and keep every record at least the TTL it
// was committed with (round a TTL up to the store's resolution, never
// down): the cache keeps a record until the Acquire was sent plus the
// reported TTL, or the Commit was sent plus the committed TTL, and must
// never outlive it. A store that reports no TTL is correct, but only the
// records a process committed itself are cached there. The RecordTTL and
// LocalCache* cases check this.
//
// A store for which reading the TTL costs extra work (redisstore: a PTTL
// beside the command that reads the key) may instead implement
// idem.TTLStore: its Acquire may leave Acquisition.TTL zero, and its
// AcquireTTL owes everything Acquire does, atomically and with the same
// answer (a lease for an absent key, the holder's fingerprint for a held
// one, the record for a completed one; a lease from either is committed,
// refreshed and released alike), plus the TTL as above. An Operation calls
// AcquireTTL only when it has a local cache. The suite then checks the TTL
// through AcquireTTL (RecordTTL), that both methods agree on everything
// else (TTLStoreAgrees), and that concurrent callers of both never get two
// leases on one key (AcquireRace). A store that wraps another (to observe
// or decorate its leases) should implement idem.TTLStore as well, its
// AcquireTTL calling the wrapped store's AcquireTTL when it has one and its
// Acquire otherwise, or a local cache over it caches no replay.
package idemtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

// TestStore runs the conformance suite against the stores newStore returns.
// newStore is called once per subtest; it may return the same store each
// time.
func TestStore(t *testing.T, newStore func(t *testing.T) idem.Store) {
	t.Helper()
	run := runID()
	for _, tc := range storeTests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, &env{store: newStore(t), prefix: "idemtest:" + run + ":" + tc.name})
		})
	}
	for _, tc := range operationTests {
		t.Run("Do/"+tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, &env{store: newStore(t), prefix: "idemtest:" + run + ":Do/" + tc.name})
		})
	}
}

type test struct {
	name string
	fn   func(t *testing.T, e *env)
}

// env is what a conformance test gets: the store, and unique keys.
type env struct {
	store  idem.Store
	prefix string
}

// key returns a key unique to this run and test.
func (e *env) key(parts ...string) string {
	return e.prefix + ":" + strings.Join(parts, ":")
}

func runID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// acquireLease acquires key and fails the test unless a lease was granted.
func acquireLease(t *testing.T, s idem.Store, key, fp string, ttl time.Duration) idem.Lease {
	t.Helper()
	a, err := s.Acquire(ctxFor(t), key, fp, ttl)
	if err != nil {
		t.Fatalf("Acquire(%q): %v", key, err)
	}
	if a.Lease == nil {
		t.Fatalf("Acquire(%q) = record %q, holder %q; want a lease", key, a.Record, a.Holder)
	}
	return a.Lease
}

// acquireFunc is an Acquire method of a store.
type acquireFunc = func(ctx context.Context, key, fingerprint string, ttl time.Duration) (idem.Acquisition, error)

// acquireTTL returns the method of s that reports Acquisition.TTL: its
// AcquireTTL when s is an idem.TTLStore, else its Acquire.
func acquireTTL(s idem.Store) acquireFunc {
	if ts, ok := s.(idem.TTLStore); ok {
		return ts.AcquireTTL
	}
	return s.Acquire
}

// eventually polls cond every few milliseconds until it holds or d passes.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return cond()
}
