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
// The suite waits out leases and records of up to a second, long enough
// for a loaded CI machine, and takes a few seconds in all: its subtests
// run in parallel.
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
// beside the command that reads the key) may report it only when the
// context given to Acquire asks for it (idem.TTLRequested; an Operation
// asks only when it has a local cache). Asked or not, Acquire owes the
// same answer, atomically (a lease for an absent key, the holder's
// fingerprint for a held one, the record for a completed one; a lease is
// committed, refreshed and released alike). The suite checks the TTL of an
// Acquire asked for it (RecordTTL), that the answers agree on everything
// else (TTLRequestAgrees), and that concurrent callers of both kinds never
// get two leases on one key (AcquireRace). A store that wraps another
// passes the context on, and with it the request.
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

// acquireTTL returns the Acquire of s, asked for Acquisition.TTL
// (idem.ContextWithTTLRequest), as an Operation with a local cache asks.
func acquireTTL(s idem.Store) acquireFunc {
	return func(ctx context.Context, key, fingerprint string, ttl time.Duration) (idem.Acquisition, error) {
		return s.Acquire(idem.ContextWithTTLRequest(ctx), key, fingerprint, ttl)
	}
}

// timedRounds runs round, given its number, up to n times until one
// reports that its timing held. It is for checks of a TTL that a loaded
// machine can defeat by running late: such a round tests nothing and is
// run again, with a fresh key, so that only a round whose timing held can
// fail. It fails t when none held.
func timedRounds(t *testing.T, n int, round func(int) bool) {
	t.Helper()
	for i := range n {
		if round(i) {
			return
		}
	}
	t.Fatalf("%d rounds in a row were too slow to check the TTL: the machine is overloaded", n)
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
