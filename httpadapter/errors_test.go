package httpadapter_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/codec"
	"github.com/idemkit/idem/httpadapter"
)

func testStoreUnavailable(t *testing.T, newStore newStoreFunc) {
	store := &faultStore{Store: newStore(t)}
	store.failAcquire.Store(true)
	var hook hookLog
	e := start(t, store, createHandler, hook.option())
	key := newKey()
	r := e.send(call{key: key, body: "{}"})
	wantProblem(t, r, http.StatusServiceUnavailable, httpadapter.ProblemStoreUnavailable)
	if got := r.header.Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After = %q, want 1", got)
	}
	e.wantRuns(0)
	hook.want(t, idem.ErrStore)

	store.failAcquire.Store(false)
	wantNew(t, e.send(call{key: key, body: "{}"}), http.StatusCreated)
}

// testNotStored checks the answer when the handler ran but its response
// could not be stored: the client gets the response, marked as not stored,
// and the hook is told.
func testNotStored(t *testing.T, newStore newStoreFunc) {
	store := &faultStore{Store: newStore(t)}
	store.failCommit.Store(true)
	var hook hookLog
	e := start(t, store, createHandler, hook.option())
	key := newKey()
	r := e.send(call{key: key, body: "{}"})
	wantNew(t, r, http.StatusCreated)
	if got := r.header.Get(httpadapter.HeaderStored); got != "false" {
		t.Errorf("%s = %q, want false", httpadapter.HeaderStored, got)
	}
	if !hexSignature.MatchString(r.header.Get(httpadapter.HeaderSignature)) {
		t.Errorf("no signature on the unstored response")
	}
	hook.want(t, idem.ErrNotStored)

	// Nothing was stored: a retry runs the handler again.
	store.failCommit.Store(false)
	first := e.send(call{key: key, body: "{}"})
	wantNew(t, first, http.StatusCreated)
	if first.body == r.body {
		t.Error("retry replayed a response that was not stored")
	}
	wantHit(t, e.send(call{key: key, body: "{}"}), first)
	e.wantRuns(2)
}

// testCorruptRecord puts records the middleware cannot replay under its
// keys: one of an idem.Operation of other types in its namespace, refused as
// a key reused for another request, and records of its own types holding a
// payload that is not a response, or an invalid status.
func testCorruptRecord(t *testing.T, newStore newStoreFunc) {
	store := newStore(t)
	ctx := context.Background()
	var hook hookLog
	e := start(t, store, createHandler, hook.option(), httpadapter.WithOptions(idem.WithSignatureValidation(false)))
	ns := idem.WithNamespace(httpadapter.DefaultNamespace)

	otherTypes := newKey()
	_, err := idem.New[string, string](store, ns).Do(ctx, "0::"+otherTypes, "x",
		func(context.Context, string) (string, error) { return "not a response", nil })
	if err != nil {
		t.Fatal(err)
	}
	wantProblem(t, e.send(call{key: otherTypes, body: "{}"}), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)

	notAResponse, invalidStatus := newKey(), newKey()
	putRecord(t, store, httpadapter.DefaultNamespace+":0::"+notAResponse, mustMsgpack(t, "not a response"))
	putRecord(t, store, httpadapter.DefaultNamespace+":0::"+invalidStatus, mustMsgpack(t, map[string]int{"Status": 42}))
	for _, key := range []string{notAResponse, invalidStatus} {
		wantProblem(t, e.send(call{key: key, body: "{}"}), http.StatusInternalServerError, httpadapter.ProblemInternal)
	}
	e.wantRuns(0)
	hook.want(t, idem.ErrCorruptRecord, idem.ErrCorruptRecord)
}

// putRecord stores, under the store key skey, an idem record of the
// middleware's types whose payload is the msgpack bytes given, as a damaged
// store or a foreign writer could leave it. The layout is idem's record
// format 2 (record.go).
func putRecord(t *testing.T, store idem.Store, skey string, payload []byte) {
	t.Helper()
	const types = "*httpadapter.request -> *httpadapter.response"
	field := func(s string) []byte { return append([]byte{byte(len(s))}, s...) }
	rec := []byte("idm\x02v")
	rec = append(rec, field("fp")...)
	rec = append(rec, field("msgpack")...)
	rec = append(rec, field(types)...)
	rec = append(rec, payload...)
	a, err := store.Acquire(context.Background(), skey, "fp", time.Minute)
	if err != nil || a.Lease == nil {
		t.Fatalf("Acquire(%q) = %+v, %v", skey, a, err)
	}
	if err := a.Lease.Commit(context.Background(), rec, time.Minute); err != nil {
		t.Fatal(err)
	}
}

func mustMsgpack(t *testing.T, v any) []byte {
	t.Helper()
	b, err := codec.MsgPack{}.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testInvalidOptions(t *testing.T, newStore newStoreFunc) {
	for name, tc := range map[string]struct {
		store idem.Store
		opt   httpadapter.Option
	}{
		"WithMaxBodyBytes(0)":          {newStore(t), httpadapter.WithMaxBodyBytes(0)},
		"WithMaxBodyBytes(-1)":         {newStore(t), httpadapter.WithMaxBodyBytes(-1)},
		"WithMethods empty":            {newStore(t), httpadapter.WithMethods("")},
		"WithFingerprintHeaders(\"\")": {newStore(t), httpadapter.WithFingerprintHeaders("")},
		"core WithTTL(0)":              {newStore(t), httpadapter.WithOptions(idem.WithTTL(0))},
		"core bad namespace":           {newStore(t), httpadapter.WithOptions(idem.WithNamespace("a:b"))},
		"nil store":                    {nil, nil},
	} {
		var hook hookLog
		e := start(t, tc.store, createHandler, tc.opt, hook.option())
		r := e.send(call{key: newKey(), body: "{}"})
		if r.status != http.StatusInternalServerError {
			t.Errorf("%s: status %d, want 500", name, r.status)
			continue
		}
		wantProblem(t, r, http.StatusInternalServerError, httpadapter.ProblemInternal)
		wantProblem(t, e.send(call{body: "{}"}), http.StatusInternalServerError, httpadapter.ProblemInternal)
		e.wantRuns(0)
		hook.want(t, idem.ErrInvalidOption, idem.ErrInvalidOption)
		// Unprotected requests still pass through.
		if r := e.send(call{method: http.MethodGet}); r.status != http.StatusCreated {
			t.Errorf("%s: GET status %d, want the handler's", name, r.status)
		}
	}
}

// testCoreOptions checks that WithOptions reaches the idem.Operation.
func testCoreOptions(t *testing.T, newStore newStoreFunc) {
	store := newStore(t)
	const ttl = time.Second // long enough for two requests under load
	e := start(t, store, createHandler, httpadapter.WithOptions(idem.WithTTL(ttl)))
	key := newKey()
	first := e.send(call{key: key, body: "{}"})
	wantHit(t, e.send(call{key: key, body: "{}"}), first)
	time.Sleep(ttl + 200*time.Millisecond)
	wantNew(t, e.send(call{key: key, body: "{}"}), http.StatusCreated)
	e.wantRuns(2)

	e = start(t, store, createHandler, httpadapter.WithOptions(idem.WithSignatureValidation(false)))
	key = newKey()
	first = e.send(call{key: key, body: `{"a":1}`})
	wantHit(t, e.send(call{key: key, body: `{"a":2}`}), first)

	// idem.WithDisposition is overridden: a 5xx is never stored.
	final := httpadapter.WithOptions(idem.WithDisposition(func(error) idem.Disposition { return idem.Record }))
	e = start(t, store, statusHandler(), final)
	key = newKey()
	wantNew(t, e.send(call{key: key, path: "/status/500"}), http.StatusInternalServerError)
	wantNew(t, e.send(call{key: key, path: "/status/500"}), http.StatusInternalServerError)
	e.wantRuns(2)
}

// testNamespace checks that the middleware's keys do not meet those of
// other Operations on the store, or of another namespace.
func testNamespace(t *testing.T, newStore newStoreFunc) {
	store := newStore(t)
	key := newKey()
	// The middleware's store key for key, outside its namespace.
	if _, err := idem.New[string, string](store).Do(context.Background(), "0::"+key, "x",
		func(context.Context, string) (string, error) { return "other", nil }); err != nil {
		t.Fatal(err)
	}
	e := start(t, store, createHandler)
	first := e.send(call{key: key, body: "{}"})
	wantNew(t, first, http.StatusCreated)

	a := start(t, store, createHandler, httpadapter.WithOptions(idem.WithNamespace("a")))
	wantNew(t, a.send(call{key: key, body: "{}"}), http.StatusCreated)
	b := start(t, store, createHandler)
	wantHit(t, b.send(call{key: key, body: "{}"}), first) // same namespace, same store
}

// testClientGone checks that a client leaving while its request waits for
// an in-flight one is not reported as a failure.
func testClientGone(t *testing.T, newStore newStoreFunc) {
	g := newGate(t)
	entered, served := make(chan struct{}, 10), make(chan struct{}, 10)
	signal := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			entered <- struct{}{}
			next.ServeHTTP(w, r)
			served <- struct{}{}
		})
	}
	var hook hookLog
	e := startWrapped(t, newStore(t), signal, g.handler(createHandler), hook.option(),
		httpadapter.WithOptions(idem.WithWaitTimeout(5*time.Second)))
	key := newKey()
	firstCh := e.sendAsync(call{key: key, body: "{}"})
	<-g.started
	<-entered

	// The client leaves once its request reached the server, and had a
	// moment to start waiting: a fixed deadline could end it, on a loaded
	// machine, before the server ever saw it.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-entered:
			time.Sleep(50 * time.Millisecond)
			cancel()
		case <-ctx.Done():
		}
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url+"/orders", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(httpadapter.HeaderKey, key)
	req.Header.Set("Content-Type", "application/json")
	if resp, err := e.client.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("got %d while the first request was held", resp.StatusCode)
	}
	select {
	case <-served: // the server is done with the request that left
	case <-time.After(5 * time.Second):
		t.Fatal("the server did not finish the request whose client left")
	}
	hook.want(t)

	g.release()
	wantNew(t, <-firstCh, http.StatusCreated)
	e.wantRuns(1)
}
