package grpcadapter_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/grpcadapter"
	"github.com/idemkit/idem/memstore"
	"google.golang.org/grpc/codes"
)

// acquireCounter counts the calls that reach a store.
type acquireCounter struct {
	idem.Store
	n atomic.Int64
}

func (s *acquireCounter) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	s.n.Add(1)
	return s.Store.Acquire(ctx, key, fp, ttl)
}

// TestLocalCache checks that idem.WithLocalCache reaches the interceptor
// through WithOptions: replays and a key-reuse check of a completed key
// do not reach the store, and answer as from the store.
func TestLocalCache(t *testing.T) {
	store := &acquireCounter{Store: memstore.New()}
	e := start(t, store, setup{opts: []grpcadapter.Option{grpcadapter.WithOptions(idem.WithLocalCache(100))}})
	ctx := testCtx(t)
	key := grpcadapter.NewKey()
	wantOK(t, e.call(ctx, key, order("book")), grpcadapter.StatusNew)
	before := store.n.Load()
	for range 5 {
		wantOK(t, e.call(ctx, key, order("book")), grpcadapter.StatusHit)
	}
	wantRefusal(t, e.call(ctx, key, order("pen")).err, codes.FailedPrecondition, grpcadapter.ReasonKeyReused)
	if n := store.n.Load() - before; n != 0 {
		t.Errorf("5 replays and a reused key reached the store %d times, want 0", n)
	}
}
