package idem_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/codec"
	"github.com/idemkit/idem/memstore"
)

// TestLocalCacheChecks checks that a record answered from the local cache
// goes through every check a stored one does: the fingerprint, the
// record's types and its codec; and that a record that cannot be read is
// not cached.
func TestLocalCacheChecks(t *testing.T) {
	ctx := context.Background()
	store := &countingStore{Store: memstore.New()}
	op := idem.New[string, int](store, idem.WithLocalCache(8))
	fn := func(context.Context, string) (int, error) { return 7, nil }
	if _, err := op.Do(ctx, "k", "a", fn); err != nil {
		t.Fatal(err)
	}
	before := store.acquires.Load()
	if v, info, err := op.DoInfo(ctx, "k", "a", fn); err != nil || v != 7 || !info.Replayed {
		t.Fatalf("cached replay: %d, %v, %v", v, info.Outcome, err)
	}
	if _, info, err := op.DoInfo(ctx, "k", "b", fn); !errors.Is(err, idem.ErrKeyReused) || info.Outcome != idem.OutcomeKeyReused {
		t.Fatalf("another request from the cache: %v, %v; want ErrKeyReused", info.Outcome, err)
	}
	if n := store.acquires.Load() - before; n != 0 {
		t.Fatalf("cached calls reached the store %d times, want 0", n)
	}

	// Another Operation on other types, sharing the store and namespace:
	// refused from the store, then from its cache, never replayed.
	other := idem.New[string, string](store, idem.WithLocalCache(8))
	for range 2 {
		if _, err := other.Do(ctx, "k", "a", func(context.Context, string) (string, error) { return "", nil }); !errors.Is(err, idem.ErrKeyReused) {
			t.Fatalf("record of other types: %v, want ErrKeyReused", err)
		}
	}

	// A record of another codec is corrupt to this Operation: not cached,
	// so every call asks the store again.
	jsonOp := idem.New[string, int](store, idem.WithCodec(codec.JSON{}), idem.WithLocalCache(8))
	before = store.acquires.Load()
	for range 3 {
		if _, err := jsonOp.Do(ctx, "k", "a", fn); !errors.Is(err, idem.ErrCorruptRecord) {
			t.Fatalf("record of another codec: %v, want ErrCorruptRecord", err)
		}
	}
	if n := store.acquires.Load() - before; n != 3 {
		t.Fatalf("unreadable record: %d store calls for 3 Do, want 3 (never cached)", n)
	}
}

// TestLocalCacheStorm runs 64 callers on one key with the local cache:
// fn runs once, every caller gets its result.
func TestLocalCacheStorm(t *testing.T) {
	ctx := context.Background()
	op := idem.New[string, int](memstore.New(), idem.WithLocalCache(4), idem.WithWaitTimeout(5*time.Second))
	var runs atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range 20 {
				v, err := op.Do(ctx, "k", "r", func(context.Context, string) (int, error) {
					time.Sleep(5 * time.Millisecond)
					return int(runs.Add(1)), nil
				})
				if err != nil || v != 1 {
					t.Errorf("got %d, %v; want 1", v, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := runs.Load(); n != 1 {
		t.Fatalf("fn ran %d times, want 1", n)
	}
}

func TestLocalCacheInvalidSize(t *testing.T) {
	op := idem.New[string, int](memstore.New(), idem.WithLocalCache(-1))
	if !errors.Is(op.Err(), idem.ErrInvalidOption) {
		t.Fatalf("WithLocalCache(-1): Err = %v, want ErrInvalidOption", op.Err())
	}
}
