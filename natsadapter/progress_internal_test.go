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

// ttlAsked is a memstore that counts the Acquires whose context asks for
// the record's TTL (idem.TTLRequested), and those whose does not.
type ttlAsked struct {
	idem.Store
	asked, plain atomic.Int64
}

func (s *ttlAsked) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	if idem.TTLRequested(ctx) {
		s.asked.Add(1)
	} else {
		s.plain.Add(1)
	}
	return s.Store.Acquire(ctx, key, fp, ttl)
}

// TestProgressStorePassesTTLRequest checks that the store the handler's
// Operation runs on passes an Operation's request for the TTL on to the
// wrapped store: an Operation with a local cache
// (WithOptions(idem.WithLocalCache(n))) asks, and then replays from its
// cache; one without does not ask.
func TestProgressStorePassesTTLRequest(t *testing.T) {
	ctx := context.Background()
	inner := &ttlAsked{Store: memstore.New()}
	ps := &progressStore{Store: inner}
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
	if p, a := inner.plain.Load(), inner.asked.Load(); p != 2 || a != 0 {
		t.Fatalf("without a cache: %d plain Acquires, %d asking for the TTL; want 2, 0", p, a)
	}
	cached := idem.New[string, string](ps, idem.WithLocalCache(8))
	for range 3 {
		if _, info, err := cached.DoInfo(ctx, "k", "r", fn); err != nil || !info.Replayed {
			t.Fatalf("replay with a cache: %v, %v", info.Outcome, err)
		}
	}
	if p, a := inner.plain.Load(), inner.asked.Load(); p != 2 || a != 1 {
		t.Fatalf("with a cache: %d plain Acquires, %d asking for the TTL in all; want 2, 1 (then cached)", p, a)
	}
}

// TestProgressStoreReportsTTL checks that progressStore's Acquire, asked
// for the TTL, reports it for a record, from redisstore (which reports it
// only when asked) and from memstore.
func TestProgressStoreReportsTTL(t *testing.T) {
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
			a, err = ps.Acquire(idem.ContextWithTTLRequest(ctx), "k", "fp", time.Minute)
			if err != nil || string(a.Record) != "rec" || a.TTL <= 0 || a.TTL > time.Minute {
				t.Fatalf("Acquire asked for the TTL: %+v, %v; want the record and a TTL within (0, 1m]", a, err)
			}
		})
	}
}
