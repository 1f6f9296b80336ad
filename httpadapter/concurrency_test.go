package httpadapter_test

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/httpadapter"
)

// gate blocks handlers until it is opened; the test's cleanup opens it, so
// that a failing test does not leave the server hanging.
type gate struct {
	started chan struct{}
	open    chan struct{}
	once    sync.Once
}

func newGate(t *testing.T) *gate {
	g := &gate{started: make(chan struct{}, 100), open: make(chan struct{})}
	t.Cleanup(g.release)
	return g
}

func (g *gate) release() { g.once.Do(func() { close(g.open) }) }

// handler reports that it started, waits for the gate, then runs h.
func (g *gate) handler(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		g.started <- struct{}{}
		select {
		case <-g.open:
		case <-r.Context().Done():
		}
		h(w, r)
	}
}

// sendAsync sends c from another goroutine. The test waits for the send
// before it ends, so that an error is reported to the test, never after it
// (the client gives up after 10 s).
func (e *env) sendAsync(c call) <-chan reply {
	ch := make(chan reply, 1)
	done := make(chan struct{})
	e.t.Cleanup(func() { <-done })
	go func() {
		defer close(done)
		r, err := e.try(c)
		if err != nil {
			e.t.Error(err)
		}
		ch <- r
	}()
	return ch
}

func testInFlight(t *testing.T, newStore newStoreFunc) {
	g := newGate(t)
	e := start(t, newStore(t), g.handler(createHandler))
	key := newKey()
	firstCh := e.sendAsync(call{key: key, body: "{}"})
	<-g.started

	r := e.send(call{key: key, body: "{}"})
	wantProblem(t, r, http.StatusConflict, httpadapter.ProblemInFlight)
	if got := r.header.Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After = %q, want 1", got)
	}
	if got := r.header.Get(httpadapter.HeaderKey); got != key {
		t.Errorf("409 echoed key %q, want %q", got, key)
	}
	// Another request under the key is a reuse, even while in flight.
	wantProblem(t, e.send(call{key: key, body: `{"other":1}`}), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)

	g.release()
	first := <-firstCh
	wantNew(t, first, http.StatusCreated)
	if got, want := r.header.Get(httpadapter.HeaderSignature), first.header.Get(httpadapter.HeaderSignature); got != want {
		t.Errorf("409 signature %q, want the request's %q", got, want)
	}
	wantHit(t, e.send(call{key: key, body: "{}"}), first)
	e.wantRuns(1)
}

func testWaitTimeout(t *testing.T, newStore newStoreFunc) {
	g := newGate(t)
	store := &waitSignalStore{Store: newStore(t), waiting: make(chan struct{}, 10)}
	e := start(t, store, g.handler(createHandler), httpadapter.WithOptions(idem.WithWaitTimeout(5*time.Second)))
	key := newKey()
	firstCh := e.sendAsync(call{key: key, body: "{}"})
	<-g.started
	secondCh := e.sendAsync(call{key: key, body: "{}"})
	select {
	case <-store.waiting: // the second request waits for the first
	case <-time.After(5 * time.Second):
		t.Fatal("the duplicate never waited for the request in flight")
	}
	g.release()
	first := <-firstCh
	wantNew(t, first, http.StatusCreated)
	wantHit(t, <-secondCh, first)
	e.wantRuns(1)

	// A wait that times out is a 409.
	g2 := newGate(t)
	e2 := start(t, newStore(t), g2.handler(createHandler), httpadapter.WithOptions(idem.WithWaitTimeout(50*time.Millisecond)))
	key = newKey()
	firstCh = e2.sendAsync(call{key: key, body: "{}"})
	<-g2.started
	begin := time.Now()
	wantProblem(t, e2.send(call{key: key, body: "{}"}), http.StatusConflict, httpadapter.ProblemInFlight)
	if d := time.Since(begin); d < 50*time.Millisecond {
		t.Errorf("409 after %v, before the wait timeout", d)
	}
	g2.release()
	wantNew(t, <-firstCh, http.StatusCreated)
	e2.wantRuns(1)
}

// testConcurrent sends 50 identical requests at once: the handler runs once,
// and the others get 409 while it runs.
func testConcurrent(t *testing.T, newStore newStoreFunc) {
	const n = 50
	g := newGate(t)
	e := start(t, newStore(t), g.handler(createHandler))
	key := newKey()
	replies := make(chan reply, n)
	var ready sync.WaitGroup
	ready.Add(n)
	for range n {
		go func() {
			ready.Done()
			ready.Wait()
			r, err := e.try(call{key: key, body: "{}"})
			if err != nil {
				t.Error(err)
			}
			replies <- r
		}()
	}
	for range n - 1 {
		r := <-replies
		wantProblem(t, r, http.StatusConflict, httpadapter.ProblemInFlight)
	}
	g.release()
	first := <-replies
	wantNew(t, first, http.StatusCreated)
	wantHit(t, e.send(call{key: key, body: "{}"}), first)
	e.wantRuns(1)
}

// testConcurrentWait sends 50 identical requests at once with a wait
// timeout: the handler runs once, and all get its response.
func testConcurrentWait(t *testing.T, newStore newStoreFunc) {
	const n = 50
	e := start(t, newStore(t), func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(200 * time.Millisecond)
		createHandler(w, r)
	}, httpadapter.WithOptions(idem.WithWaitTimeout(5*time.Second)))
	key := newKey()
	replies := make([]reply, n)
	var wg sync.WaitGroup
	var ready sync.WaitGroup
	ready.Add(n)
	for i := range n {
		wg.Go(func() {
			ready.Done()
			ready.Wait()
			r, err := e.try(call{key: key, body: "{}"})
			if err != nil {
				t.Error(err)
			}
			replies[i] = r
		})
	}
	wg.Wait()
	var news, hits int
	for _, r := range replies {
		switch r.header.Get(httpadapter.HeaderStatus) {
		case httpadapter.StatusNew:
			news++
		case httpadapter.StatusHit:
			hits++
		}
		if r.status != http.StatusCreated || r.body != replies[0].body {
			t.Errorf("got %d %q, want 201 %q", r.status, r.body, replies[0].body)
		}
	}
	if news != 1 || hits != n-1 {
		t.Errorf("%d new and %d hits, want 1 and %d", news, hits, n-1)
	}
	e.wantRuns(1)
}

// testSlowerThanLease runs a handler for more than twice the lease TTL: the
// lease is refreshed, so duplicates never run it again. The lease is long
// enough (1 s) that a loaded machine still refreshes it in time, and the
// handler runs until the test has sent its duplicates, not for a fixed time,
// so that slow sends cannot leave too few of them.
func testSlowerThanLease(t *testing.T, newStore newStoreFunc) {
	const lease = time.Second
	store := newStore(t)
	var started atomic.Int64
	var entered atomic.Int32
	proceed := make(chan struct{})
	slow := func(w http.ResponseWriter, r *http.Request) {
		if entered.Add(1) == 1 { // a second run, a failure, answers at once
			started.Store(time.Now().UnixNano())
			select { // ignores r's context: the effect happens
			case <-proceed:
			case <-time.After(20 * time.Second):
			}
		}
		createHandler(w, r)
	}
	e := start(t, store, slow, httpadapter.WithOptions(idem.WithLockTTL(lease)))
	key := newKey()
	firstCh := e.sendAsync(call{key: key, body: "{}"})
	for started.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	begin := time.Unix(0, started.Load())
	var dups int
	for dups < 4 || time.Since(begin) < 2*lease {
		time.Sleep(lease / 4)
		at := time.Since(begin)
		if r := e.send(call{key: key, body: "{}"}); r.status != http.StatusConflict {
			t.Errorf("duplicate sent at %v: status %d (%s), want 409 while the handler runs",
				at, r.status, r.header.Get(httpadapter.HeaderStatus))
		}
		dups++
	}
	close(proceed)
	first := <-firstCh
	wantNew(t, first, http.StatusCreated)
	if got := first.header.Get(httpadapter.HeaderStored); got != "" {
		t.Errorf("%s = %q on the first response, want it stored", httpadapter.HeaderStored, got)
	}
	wantHit(t, e.send(call{key: key, body: "{}"}), first)
	e.wantRuns(1)

	// A duplicate that waits past the lease TTL gets the response.
	const run = 5 * lease / 2
	slow = func(w http.ResponseWriter, r *http.Request) {
		started.Store(time.Now().UnixNano())
		time.Sleep(run)
		createHandler(w, r)
	}
	e = start(t, store, slow, httpadapter.WithOptions(idem.WithLockTTL(lease), idem.WithWaitTimeout(30*time.Second)))
	started.Store(0)
	key = newKey()
	firstCh = e.sendAsync(call{key: key, body: "{}"})
	for started.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	second := e.send(call{key: key, body: "{}"})
	first = <-firstCh
	wantNew(t, first, http.StatusCreated)
	wantHit(t, second, first)
	e.wantRuns(1)
}

// testPanic checks that a handler that panics stores nothing: a retry runs
// it again. WriteHeader with an invalid code panics, as with net/http.
func testPanic(t *testing.T, newStore newStoreFunc) {
	var n atomic.Int32
	e := start(t, newStore(t), func(w http.ResponseWriter, r *http.Request) {
		switch n.Add(1) {
		case 1:
			w.WriteHeader(http.StatusCreated)
			panic(http.ErrAbortHandler)
		case 2:
			w.WriteHeader(42)
		default:
			createHandler(w, r)
		}
	})
	e.client.Transport.(*http.Transport).DisableKeepAlives = true // no retries by the client
	key := newKey()
	for range 2 {
		if r, err := e.try(call{key: key, body: "{}"}); err == nil {
			t.Fatalf("handler panicked, yet got %d %q", r.status, r.body)
		}
	}
	wantNew(t, e.send(call{key: key, body: "{}"}), http.StatusCreated)
	e.wantRuns(3)
}
