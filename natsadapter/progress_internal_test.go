package natsadapter

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/redisstore"
)

// ttlCounting is an idem.TTLStore on memstore whose Acquire, like
// redisstore's, leaves Acquisition.TTL zero, and which counts the calls of
// each method.
type ttlCounting struct {
	idem.Store
	plain, withTTL atomic.Int64
}

func (s *ttlCounting) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	s.plain.Add(1)
	a, err := s.Store.Acquire(ctx, key, fp, ttl)
	a.TTL = 0
	return a, err
}

func (s *ttlCounting) AcquireTTL(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	s.withTTL.Add(1)
	return s.Store.Acquire(ctx, key, fp, ttl)
}

// TestProgressStoreForwardsAcquireTTL checks that the store the handler's
// Operation runs on is an idem.TTLStore that forwards AcquireTTL to the
// wrapped store's AcquireTTL, so that an Operation with a local cache
// (WithOptions(idem.WithLocalCache(n))) caches the records it replays from
// the store, and one without calls Acquire.
func TestProgressStoreForwardsAcquireTTL(t *testing.T) {
	ctx := context.Background()
	inner := &ttlCounting{Store: memstore.New()}
	var ps idem.Store = &progressStore{Store: inner}
	if _, ok := ps.(idem.TTLStore); !ok {
		t.Fatal("progressStore is not an idem.TTLStore")
	}
	fn := func(context.Context, string) (string, error) { return "done", nil }
	// Another process completes the key.
	if _, err := idem.New[string, string](inner).Do(ctx, "k", "r", fn); err != nil {
		t.Fatal(err)
	}
	inner.plain.Store(0)

	plain := idem.New[string, string](ps)
	for range 2 {
		if _, info, err := plain.DoInfo(ctx, "k", "r", fn); err != nil || !info.Replayed {
			t.Fatalf("replay without a cache: %v, %v", info.Outcome, err)
		}
	}
	if p, w := inner.plain.Load(), inner.withTTL.Load(); p != 2 || w != 0 {
		t.Fatalf("without a cache: %d Acquire, %d AcquireTTL; want 2, 0", p, w)
	}

	cached := idem.New[string, string](ps, idem.WithLocalCache(8))
	for range 3 {
		if _, info, err := cached.DoInfo(ctx, "k", "r", fn); err != nil || !info.Replayed {
			t.Fatalf("replay with a cache: %v, %v", info.Outcome, err)
		}
	}
	if p, w := inner.plain.Load(), inner.withTTL.Load(); p != 2 || w != 1 {
		t.Fatalf("with a cache: %d Acquire, %d AcquireTTL in all; want 2, 1 (then cached)", p, w)
	}
}

// TestProgressStoreAcquireTTL checks what progressStore's AcquireTTL
// reports for a record: the TTL from redisstore's AcquireTTL, and from
// the Acquire of a store that is no idem.TTLStore (memstore).
func TestProgressStoreAcquireTTL(t *testing.T) {
	ctx := context.Background()
	stores := map[string]idem.Store{
		"memstore":   memstore.New(),
		"redisstore": redisstore.New(redistest.Single(t), redisstore.WithPrefix(fmt.Sprint("nats-ttl:", time.Now().UnixNano(), ":"))),
	}
	for name, store := range stores {
		t.Run(name, func(t *testing.T) {
			ps := &progressStore{Store: store}
			a, err := ps.Acquire(ctx, "k", "fp", time.Minute)
			if err != nil || a.Lease == nil {
				t.Fatalf("Acquire: %+v, %v", a, err)
			}
			if err := a.Lease.Commit(ctx, []byte("rec"), time.Minute); err != nil {
				t.Fatal(err)
			}
			a, err = ps.AcquireTTL(ctx, "k", "fp", time.Minute)
			if err != nil || string(a.Record) != "rec" || a.TTL <= 0 || a.TTL > time.Minute {
				t.Fatalf("AcquireTTL: %+v, %v; want the record and a TTL within (0, 1m]", a, err)
			}
		})
	}
}
