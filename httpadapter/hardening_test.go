package httpadapter_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/httpadapter"
	"github.com/idemkit/idem/memstore"
)

// abandonKey is the context key under which sendAbandoned passes the
// handler its client's cancel function.
type abandonKey struct{}

// abandoningHandler waits for its request's context to end, as a handler
// whose client timed out does, and returns without writing; it answers 201
// when the context stays live. For a request from sendAbandoned, the client
// gives up as the handler starts.
func abandoningHandler(w http.ResponseWriter, r *http.Request) {
	if leave, ok := r.Context().Value(abandonKey{}).(context.CancelFunc); ok {
		leave()
	}
	select {
	case <-r.Context().Done():
		return // gave up: no response written
	case <-time.After(300 * time.Millisecond):
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"id":"ord_1"}`))
	}
}

// sendAbandoned sends a request with key that the client abandons once the
// handler started, and returns once the middleware answered it. (A fixed
// deadline could end it, on a loaded machine, before the handler ran.)
func sendAbandoned(t *testing.T, h http.Handler, key string) http.Header {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctx = context.WithValue(ctx, abandonKey{}, cancel)
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/orders", strings.NewReader("{}"))
	req.Header.Set(httpadapter.HeaderKey, key)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || rec.Body.Len() != 0 {
		t.Fatalf("abandoned request: %d %q, want the implicit empty 200", rec.Code, rec.Body)
	}
	return rec.Header()
}

// TestAbandonedNotStored checks that an empty implicit 200 returned after
// the request's context ended is not stored by default: the retry runs the
// handler, which then does its work, instead of being replayed an empty
// 200 for work never done (as a Stripe SDK with a short timeout would see).
func TestAbandonedNotStored(t *testing.T) {
	store := memstore.New()
	mw, err := httpadapter.New(store, httpadapter.WithScope(nil))
	if err != nil {
		t.Fatal(err)
	}
	runs := 0
	h := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { runs++; abandoningHandler(w, r) }))
	hdr := sendAbandoned(t, h, "k1")
	if hdr.Get(httpadapter.HeaderStored) != "false" || hdr.Get(httpadapter.HeaderStatus) != httpadapter.StatusNew {
		t.Errorf("abandoned response headers %v, want status new, stored false", hdr)
	}
	req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader("{}"))
	req.Header.Set(httpadapter.HeaderKey, "k1")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusCreated || rec.Header().Get(httpadapter.HeaderStatus) != httpadapter.StatusNew || runs != 2 {
		t.Fatalf("retry: %d %s, runs %d; want the handler to run again and answer 201", rec.Code, rec.Header().Get(httpadapter.HeaderStatus), runs)
	}

	// WithAbandoned(idem.Record) stores it as net/http's implicit 200.
	mw, err = httpadapter.New(store, httpadapter.WithScope(nil), httpadapter.WithAbandoned(idem.Record))
	if err != nil {
		t.Fatal(err)
	}
	h = mw(http.HandlerFunc(abandoningHandler))
	if hdr := sendAbandoned(t, h, "k2"); hdr.Get(httpadapter.HeaderStored) != "" {
		t.Errorf("with WithAbandoned(Record): %s = %q, want it stored", httpadapter.HeaderStored, hdr.Get(httpadapter.HeaderStored))
	}
	req = httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader("{}"))
	req.Header.Set(httpadapter.HeaderKey, "k2")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || rec.Header().Get(httpadapter.HeaderStatus) != httpadapter.StatusHit {
		t.Errorf("retry with WithAbandoned(Record): %d %s, want the stored empty 200", rec.Code, rec.Header().Get(httpadapter.HeaderStatus))
	}

	// A handler that returns without writing while its context is live is
	// stored as any 200.
	mw, _ = httpadapter.New(store, httpadapter.WithScope(nil))
	h = mw(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	for i, want := range []string{httpadapter.StatusNew, httpadapter.StatusHit} {
		req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader("{}"))
		req.Header.Set(httpadapter.HeaderKey, "k3")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || rec.Header().Get(httpadapter.HeaderStatus) != want {
			t.Errorf("call %d: %d %s, want 200 %s", i, rec.Code, rec.Header().Get(httpadapter.HeaderStatus), want)
		}
	}
}

// TestNewReportsInvalidOptions checks that New reports an option that
// cannot be honoured when the middleware is built.
func TestNewReportsInvalidOptions(t *testing.T) {
	for name, opts := range map[string][]httpadapter.Option{
		"WithMaxBodyBytes(0)":   {httpadapter.WithMaxBodyBytes(0)},
		"WithKeyRequired(\"\")": {httpadapter.WithKeyRequired("")},
		"core option":           {httpadapter.WithOptions(idem.WithTTL(-time.Second))},
	} {
		mw, err := httpadapter.New(memstore.New(), opts...)
		if !errors.Is(err, idem.ErrInvalidOption) || mw != nil {
			t.Errorf("%s: New = %v, %v; want no middleware and ErrInvalidOption", name, mw != nil, err)
		}
	}
	if _, err := httpadapter.New(nil); !errors.Is(err, idem.ErrInvalidOption) {
		t.Errorf("nil store: %v, want ErrInvalidOption", err)
	}
	if mw, err := httpadapter.New(memstore.New(), httpadapter.WithScope(nil)); err != nil || mw == nil {
		t.Errorf("valid options: %v", err)
	}
}

// TestProblemWriter checks that refusals can be rendered in an API's own
// error shape, with the idempotency headers and Retry-After already set.
func TestProblemWriter(t *testing.T) {
	type stripeError struct {
		Error struct {
			Type    string `json:"type"`
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	var got []httpadapter.Problem
	mw, err := httpadapter.New(memstore.New(), httpadapter.WithScope(nil),
		httpadapter.WithProblemWriter(func(w http.ResponseWriter, r *http.Request, p httpadapter.Problem) {
			got = append(got, p)
			var e stripeError
			e.Error.Type, e.Error.Code, e.Error.Message = "idempotency_error", p.Type[strings.LastIndex(p.Type, "/")+1:], p.Title
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(p.Status)
			_ = json.NewEncoder(w).Encode(e)
		}))
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	started := make(chan struct{})
	h := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		w.WriteHeader(http.StatusCreated)
	}))
	send := func(key, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/charges", strings.NewReader(body))
		if key != "" {
			req.Header.Set(httpadapter.HeaderKey, key)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	var wg sync.WaitGroup
	wg.Go(func() { send("k", "a") })
	<-started
	inFlight := send("k", "a")
	reused := send("k", "b")
	missing := send("", "a")
	close(release)
	wg.Wait()

	for _, tc := range []struct {
		rec    *httptest.ResponseRecorder
		status int
		typ    string
	}{
		{inFlight, http.StatusConflict, httpadapter.ProblemInFlight},
		{reused, http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused},
		{missing, http.StatusBadRequest, httpadapter.ProblemKeyMissing},
	} {
		var e stripeError
		if err := json.Unmarshal(tc.rec.Body.Bytes(), &e); err != nil || tc.rec.Code != tc.status || e.Error.Type != "idempotency_error" ||
			!strings.HasSuffix(tc.typ, "/"+e.Error.Code) {
			t.Errorf("%s: %d %s, want %d in the API's own shape", tc.typ, tc.rec.Code, tc.rec.Body, tc.status)
		}
	}
	if inFlight.Header().Get("Retry-After") == "" || inFlight.Header().Get(httpadapter.HeaderKey) != "k" {
		t.Errorf("409 headers %v, want Retry-After and the key echoed", inFlight.Header())
	}
	if len(got) != 3 || got[0].Status != http.StatusConflict || got[0].Detail == "" {
		t.Errorf("writer got %+v", got)
	}
}

// TestScopeWarning checks the one-time warning when protected requests carry
// credentials and no scope was chosen, and that choosing one, even
// WithScope(nil), silences it.
func TestScopeWarning(t *testing.T) {
	var buf bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	defer slog.SetDefault(prev)

	send := func(h http.Handler, key string, header string) {
		req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader("{}"))
		req.Header.Set(httpadapter.HeaderKey, key)
		if header != "" {
			req.Header.Set(header, "secret")
		}
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) })

	unscoped, _ := httpadapter.New(memstore.New())
	h := unscoped(ok)
	send(h, "a", "")
	if buf.Len() != 0 {
		t.Fatalf("warned without credentials: %s", &buf)
	}
	send(h, "b", "Authorization")
	send(h, "c", "Cookie")
	if n := strings.Count(buf.String(), "level=WARN"); n != 1 {
		t.Fatalf("warnings: %q, want exactly one", buf.String())
	}
	buf.Reset()
	for _, opt := range []httpadapter.Option{
		httpadapter.WithScope(nil),
		httpadapter.WithScope(func(r *http.Request) string { return r.Header.Get("Authorization") }),
	} {
		mw, _ := httpadapter.New(memstore.New(), opt)
		send(mw(ok), "d", "Authorization")
	}
	if buf.Len() != 0 {
		t.Errorf("warned with a scope chosen: %s", &buf)
	}
}
