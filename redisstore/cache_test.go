package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/redisstore"
)

// TestLocalCacheRoundTrips checks WithLocalCache on real Redis: replays of
// a key completed in this process, and a key-reuse check of it, cost no
// round trip; an Operation without the cache finds the record in Redis;
// after the TTL the key executes afresh.
func TestLocalCacheRoundTrips(t *testing.T) {
	ctx := context.Background()
	for name, c := range countedClients(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			prefix := fmt.Sprint("lc:", time.Now().UnixNano(), ":")
			// Long enough that every call before the sleep comes within
			// it on a loaded machine: the round-trip counts assume the
			// records live.
			const ttl = 2 * time.Second
			cached := idem.New[string, string](redisstore.New(c.client, redisstore.WithPrefix(prefix)), idem.WithTTL(ttl), idem.WithLocalCache(64))
			plain := idem.New[string, string](redisstore.New(c.client, redisstore.WithPrefix(prefix)), idem.WithTTL(ttl))
			var runs atomic.Int64
			fn := func(_ context.Context, req string) (string, error) { runs.Add(1); return "paid " + req, nil }

			if v, err := cached.Do(ctx, "k", "a", fn); err != nil || v != "paid a" {
				t.Fatalf("first call: %q, %v", v, err)
			}
			c.count.reset()
			for i := range 50 {
				v, info, err := cached.DoInfo(ctx, "k", "a", fn)
				if err != nil || v != "paid a" || info.Outcome != idem.OutcomeReplayed {
					t.Fatalf("replay %d: %q, %v, %v", i, v, info.Outcome, err)
				}
			}
			if _, err := cached.Do(ctx, "k", "other request", fn); !errors.Is(err, idem.ErrKeyReused) {
				t.Fatalf("key reused: %v, want ErrKeyReused", err)
			}
			if n, names := c.count.read(); n != 0 {
				t.Errorf("50 cached replays and a key-reuse check cost %d round trips %v, want 0", n, names)
			}

			// Another Operation (another process) finds the record in Redis.
			c.count.reset()
			if v, info, err := plain.DoInfo(ctx, "k", "a", fn); err != nil || v != "paid a" || !info.Replayed {
				t.Fatalf("uncached replay: %q, %v, %v", v, info.Outcome, err)
			}
			if n, _ := c.count.read(); n != 1 {
				t.Errorf("uncached replay cost %d round trips, want 1", n)
			}
			// A record found in Redis is cached too, with Redis's TTL.
			if _, err := cached.Do(ctx, "k2", "b", fn); err != nil {
				t.Fatal(err)
			}
			k2Stored := time.Now() // k2's record, and every copy of it cached, expires by ttl after this
			viaRedis := idem.New[string, string](redisstore.New(c.client, redisstore.WithPrefix(prefix)), idem.WithTTL(ttl), idem.WithLocalCache(64))
			if _, info, err := viaRedis.DoInfo(ctx, "k2", "b", fn); err != nil || !info.Replayed {
				t.Fatalf("replay from Redis: %v, %v", info.Outcome, err)
			}
			c.count.reset()
			if _, info, err := viaRedis.DoInfo(ctx, "k2", "b", fn); err != nil || !info.Replayed {
				t.Fatalf("cached replay of a record read from Redis: %v, %v", info.Outcome, err)
			}
			if n, _ := c.count.read(); n != 0 {
				t.Errorf("replay of a record cached from Redis cost %d round trips, want 0", n)
			}

			if n := runs.Load(); n != 2 {
				t.Fatalf("fn ran %d times before the TTL, want 2", n)
			}
			time.Sleep(time.Until(k2Stored.Add(ttl + 50*time.Millisecond)))
			for _, op := range []*idem.Operation[string, string]{cached, viaRedis} {
				if _, info, err := op.DoInfo(ctx, "k2", "b", fn); err != nil || info.Outcome != idem.OutcomeExecuted {
					t.Errorf("after the TTL: %v, %v; want executed afresh", info.Outcome, err)
				}
				op.Forget("k2") // so that the second Operation finds the key free, not stored by the first
				if err := c.client.Del(ctx, prefix+":k2").Err(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestLocalCacheForget checks the documented weakness and its remedy: a
// record deleted from Redis by hand is replayed from the cache until
// Forget drops it; then the key executes afresh.
func TestLocalCacheForget(t *testing.T) {
	ctx := context.Background()
	client := countedClients(t)["single"].client
	prefix := fmt.Sprint("lcf:", time.Now().UnixNano(), ":")
	op := idem.New[string, int](redisstore.New(client, redisstore.WithPrefix(prefix)), idem.WithLocalCache(16))
	var runs atomic.Int64
	fn := func(context.Context, string) (int, error) { return int(runs.Add(1)), nil }
	if _, err := op.Do(ctx, "k", "req", fn); err != nil {
		t.Fatal(err)
	}
	if err := client.Del(ctx, prefix+":k").Err(); err != nil { // an operator purges the key
		t.Fatal(err)
	}
	if v, info, err := op.DoInfo(ctx, "k", "req", fn); err != nil || v != 1 || !info.Replayed {
		t.Fatalf("after a purge behind idem's back: %d, %v, %v; want the cached 1, replayed", v, info.Outcome, err)
	}
	op.Forget("k")
	if v, info, err := op.DoInfo(ctx, "k", "req", fn); err != nil || v != 2 || info.Outcome != idem.OutcomeExecuted {
		t.Fatalf("after Forget: %d, %v, %v; want 2, executed", v, info.Outcome, err)
	}
}

// TestRecordTTLRoundedUp checks that a record's TTL is rounded up to whole
// milliseconds, as a lease's is: rounded down, Redis would drop the record
// before a local cache, which keeps it for the full TTL, lets it go, and a
// caller elsewhere would run fn again while this process replays.
func TestRecordTTLRoundedUp(t *testing.T) {
	client := redistest.Single(t)
	sent := &scriptArgs{}
	client.AddHook(sent)
	s := redisstore.New(client, redisstore.WithPrefix(fmt.Sprint("rttl:", time.Now().UnixNano(), ":")))
	ctx := context.Background()
	a, err := s.Acquire(ctx, "k", "fp", time.Minute)
	if err != nil || a.Lease == nil {
		t.Fatalf("Acquire: %+v, %v", a, err)
	}
	sent.reset()
	if err := a.Lease.Commit(ctx, []byte("rec"), 30*time.Millisecond+950*time.Microsecond); err != nil {
		t.Fatal(err)
	}
	args := sent.last()
	if len(args) == 0 {
		t.Fatal("Commit sent no script")
	}
	if px := fmt.Sprint(args[len(args)-1]); px != "31" {
		t.Fatalf("a record TTL of 30.95 ms was sent as PX %s, want 31", px)
	}
}

// TestForeverTTL: a TTL of the largest Duration (math.MaxInt64, a common
// "forever") keeps the lease and the record for it, rather than
// overflowing in the rounding to milliseconds into a TTL of 1 ms.
func TestForeverTTL(t *testing.T) {
	client := redistest.Single(t)
	prefix := fmt.Sprint("forever:", time.Now().UnixNano(), ":")
	s := redisstore.New(client, redisstore.WithPrefix(prefix))
	ctx := context.Background()
	forever := time.Duration(math.MaxInt64)
	a, err := s.Acquire(ctx, "k", "fp", forever)
	if err != nil || a.Lease == nil {
		t.Fatalf("Acquire: %+v, %v", a, err)
	}
	const century = 100 * 365 * 24 * time.Hour
	if got, err := client.PTTL(ctx, prefix+"k").Result(); err != nil || got < century {
		t.Fatalf("lease PTTL = %v, %v; want over a century", got, err)
	}
	if err := a.Lease.Commit(ctx, []byte("rec"), forever); err != nil {
		t.Fatal(err)
	}
	if got, err := client.PTTL(ctx, prefix+"k").Result(); err != nil || got < century {
		t.Fatalf("record PTTL = %v, %v; want over a century", got, err)
	}
}

// tenantStore embeds the concrete *redisstore.Store and overrides Acquire
// to scope keys by tenant, as a wrapper may. An Operation with a local
// cache must still call that Acquire, which then asks the embedded store
// for the TTL through its context: were the request a method of its own,
// the embedded store's would be promoted to the wrapper, and called in the
// override's stead.
type tenantStore struct {
	*redisstore.Store
	tenant   string
	acquires atomic.Int32
}

func (w *tenantStore) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	w.acquires.Add(1)
	return w.Store.Acquire(ctx, w.tenant+"/"+key, fp, ttl)
}

// TestLocalCacheOverWrapper checks that two tenants' wrappers over one
// store keep their records apart with a local cache, and that the second
// process of a tenant caches a record it replays from Redis.
func TestLocalCacheOverWrapper(t *testing.T) {
	base := redisstore.New(redistest.Single(t), redisstore.WithPrefix(fmt.Sprint("tenants:", time.Now().UnixNano(), ":")))
	a := &tenantStore{Store: base, tenant: "a"}
	b := &tenantStore{Store: base, tenant: "b"}
	ctx := context.Background()
	fn := func(v string) func(context.Context, int) (string, error) {
		return func(context.Context, int) (string, error) { return v, nil }
	}
	if got, err := idem.New[int, string](a, idem.WithLocalCache(10)).Do(ctx, "order-1", 1, fn("a's")); err != nil || got != "a's" {
		t.Fatalf("tenant a: %q, %v", got, err)
	}
	opB := idem.New[int, string](b, idem.WithLocalCache(10))
	if got, err := opB.Do(ctx, "order-1", 1, fn("b's")); err != nil || got != "b's" {
		t.Fatalf("tenant b: %q, %v; want its own result", got, err)
	}
	if a.acquires.Load() != 1 || b.acquires.Load() != 1 {
		t.Fatalf("the wrappers' Acquire ran %d and %d times, want once each", a.acquires.Load(), b.acquires.Load())
	}
	// Another process of tenant a replays from Redis, then from its cache.
	other := idem.New[int, string](a, idem.WithLocalCache(10))
	for range 3 {
		if got, info, err := other.DoInfo(ctx, "order-1", 1, fn("again")); err != nil || got != "a's" || !info.Replayed {
			t.Fatalf("tenant a, second process: %q, %v, %v; want a's result replayed", got, info.Outcome, err)
		}
	}
	if n := a.acquires.Load(); n != 2 {
		t.Errorf("tenant a's wrapper Acquire ran %d times, want 2: the second process's replays after the first should come from its cache", n)
	}
}
