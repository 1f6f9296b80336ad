package httpadapter_test

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/httpadapter"
	"github.com/idemkit/idem/memstore"
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

// TestLocalCache checks that idem.WithLocalCache reaches the middleware
// through WithOptions: replays and a key-reuse check of a completed key
// do not reach the store, and answer as from the store.
func TestLocalCache(t *testing.T) {
	store := &acquireCounter{Store: memstore.New()}
	e := start(t, store, createHandler, httpadapter.WithScope(nil), httpadapter.WithOptions(idem.WithLocalCache(100)))
	key := newKey()
	first := e.send(call{key: key, body: `{"item":"book"}`})
	wantNew(t, first, http.StatusCreated)
	before := store.n.Load()
	for range 5 {
		wantHit(t, e.send(call{key: key, body: `{"item":"book"}`}), first)
	}
	wantProblem(t, e.send(call{key: key, body: `{"item":"pen"}`}), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)
	if n := store.n.Load() - before; n != 0 {
		t.Errorf("5 replays and a reused key reached the store %d times, want 0", n)
	}
	e.wantRuns(1)
}

// TestObserver: an idem.Observer given through WithOptions hears of every
// request's call, with its outcome and the Operation's namespace.
func TestObserver(t *testing.T) {
	var mu sync.Mutex
	var outcomes []string
	obs := &idem.Observer{Done: func(_ context.Context, c idem.Call, end idem.CallEnd) {
		mu.Lock()
		outcomes = append(outcomes, c.Namespace+":"+end.Info.Outcome.String())
		mu.Unlock()
	}}
	e := start(t, memstore.New(), createHandler, httpadapter.WithScope(nil), httpadapter.WithOptions(idem.WithNamespace("orders"), idem.WithObserver(obs)))
	key := newKey()
	first := e.send(call{key: key, body: `{"item":"book"}`})
	wantNew(t, first, http.StatusCreated)
	wantHit(t, e.send(call{key: key, body: `{"item":"book"}`}), first)
	wantProblem(t, e.send(call{key: key, body: `{"item":"pen"}`}), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"orders:executed", "orders:replayed", "orders:key_reused"}; !slices.Equal(outcomes, want) {
		t.Errorf("observer heard %q, want %q", outcomes, want)
	}
}
