package idem_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/race"
	"github.com/idemkit/idem/memstore"
)

type benchReq struct {
	Customer string
	Amount   int64
	Currency string
	Metadata map[string]string
}

type benchResp struct {
	ID       string
	Amount   int64
	Currency string
	Status   string
}

var (
	benchIn  = benchReq{Customer: "cus_9s6XKzkNRiz8i3", Amount: 1999, Currency: "eur", Metadata: map[string]string{"order": "o-1", "cart": "c-7"}}
	benchOut = benchResp{ID: "ch_3Mtw4xLkdIwHu7ix0QjHZyqf", Amount: 1999, Currency: "eur", Status: "succeeded"}
)

func benchFn(context.Context, benchReq) (benchResp, error) { return benchOut, nil }

// BenchmarkMemstore measures Do on the embedded store against calling fn
// directly.
func BenchmarkMemstore(b *testing.B) {
	ctx := context.Background()
	b.Run("Direct", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := benchFn(ctx, benchIn); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ReplayHit", func(b *testing.B) {
		op := idem.New[benchReq, benchResp](memstore.New())
		if _, err := op.Do(ctx, "k", benchIn, benchFn); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := op.Do(ctx, "k", benchIn, benchFn); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("FirstExecution", func(b *testing.B) { benchFirstExecutions(b, memstore.New()) })
	// FirstExecution keeps every record (for 24 h), so the heap grows
	// with b.N and the garbage collector's work with it; a service holds
	// its TTL's worth of records, a heap that does not grow. This one
	// bounds the store to 10,000 entries, evicting the oldest.
	b.Run("FirstExecutionSteady", func(b *testing.B) {
		benchFirstExecutions(b, memstore.New(memstore.WithMaxEntries(10_000)))
	})
	b.Run("ReplayHitParallel", func(b *testing.B) {
		op := idem.New[benchReq, benchResp](memstore.New())
		if _, err := op.Do(ctx, "k", benchIn, benchFn); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := op.Do(ctx, "k", benchIn, benchFn); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// benchFirstExecutions calls Do on store with a new key each time.
func benchFirstExecutions(b *testing.B, store idem.Store) {
	ctx := context.Background()
	op := idem.New[benchReq, benchResp](store)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := op.Do(ctx, "k"+strconv.Itoa(i), benchIn, benchFn); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFingerprint measures the default canonical fingerprint.
func BenchmarkFingerprint(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := idem.Fingerprint(benchIn); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDoAllocs checks the allocations of Do on memstore: a replay hit makes
// at most 4 (the store key and fingerprint share one; msgpack allocates the
// result's three strings). Run without -race (.ci/run does), where
// sync.Pool keeps what it is given.
func TestDoAllocs(t *testing.T) {
	if race.Enabled {
		t.Skip("sync.Pool drops items at random under the race detector; .ci/run runs this test without -race")
	}
	ctx := context.Background()
	op := idem.New[benchReq, benchResp](memstore.New())
	if _, err := op.Do(ctx, "k", benchIn, benchFn); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(200, func() { _, _ = op.Do(ctx, "k", benchIn, benchFn) }); n > 4 {
		t.Errorf("replay hit: %v allocations, want at most 4", n)
	}
	cached := idem.New[benchReq, benchResp](memstore.New(), idem.WithLocalCache(16))
	if _, err := cached.Do(ctx, "k", benchIn, benchFn); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(200, func() { _, _ = cached.Do(ctx, "k", benchIn, benchFn) }); n > 4 {
		t.Errorf("replay from the local cache: %v allocations, want at most 4", n)
	}
	// A first execution makes 11 to 12 today: the key, fn's context (2),
	// the keeper, the record, the commit's context (2), memstore's entry,
	// the strings the replay check decodes, and map growth now and then.
	// No timer: until their first refresh, keepers wait in the
	// Operation's queue.
	i := 0
	keys := make([]string, 202)
	for j := range keys {
		keys[j] = "k" + strconv.Itoa(j)
	}
	if n := testing.AllocsPerRun(200, func() { i++; _, _ = op.Do(ctx, keys[i], benchIn, benchFn) }); n > 12 {
		t.Errorf("first execution: %v allocations, want at most 12", n)
	}
}
