package httpadapter_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/idemkit/idem/httpadapter"
)

var hexSignature = regexp.MustCompile(`^[0-9a-f]{64}$`)

func testReplay(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), createHandler)
	key := newKey()
	first := e.send(call{key: key, body: `{"item":"book"}`})
	wantNew(t, first, http.StatusCreated)
	if got := first.header.Get(httpadapter.HeaderKey); got != key {
		t.Errorf("echoed key = %q, want %q", got, key)
	}
	sig := first.header.Get(httpadapter.HeaderSignature)
	if !hexSignature.MatchString(sig) {
		t.Errorf("signature = %q, want 64 hex digits", sig)
	}
	if first.header.Get(httpadapter.HeaderStored) != "" {
		t.Errorf("stored response has %s", httpadapter.HeaderStored)
	}

	for range 2 {
		again := e.send(call{key: key, body: `{"item":"book"}`})
		wantHit(t, again, first)
		if got := again.header.Get(httpadapter.HeaderKey); got != key {
			t.Errorf("replay echoed key = %q, want %q", got, key)
		}
		if got := again.header.Get(httpadapter.HeaderSignature); got != sig {
			t.Errorf("replay signature = %q, want %q", got, sig)
		}
		if got, want := again.header.Get("Location"), first.header.Get("Location"); got != want {
			t.Errorf("replay Location = %q, want %q", got, want)
		}
	}
	e.wantRuns(1)

	other := e.send(call{key: newKey(), body: `{"item":"pen"}`})
	wantNew(t, other, http.StatusCreated)
	if other.header.Get(httpadapter.HeaderSignature) == sig {
		t.Error("two requests with different bodies have one signature")
	}
	e.wantRuns(2)
}

// testReplayFidelity checks that a replay repeats the status, the headers
// the handler set (every value, in order) and the body, byte for byte.
func testReplayFidelity(t *testing.T, newStore newStoreFunc) {
	var body bytes.Buffer
	for i := range 3 * 256 {
		body.WriteByte(byte(i))
	}
	rest := body.String()[100:]
	e := start(t, newStore(t), func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusEarlyHints) // dropped
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Add("X-Multi", "b")
		h.Add("X-Multi", "a")
		h.Add("X-Multi", "c")
		h["X-Not-Canonical"] = []string{"raw"}
		h.Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusAccepted)
		h.Set("X-Late", "set after WriteHeader") // not sent, as with net/http
		w.Write(body.Bytes()[:100])
		io.WriteString(w, rest) // through io.StringWriter
	})
	key := newKey()
	first := e.send(call{key: key, body: "{}"})
	wantNew(t, first, http.StatusAccepted)
	if first.body != body.String() {
		t.Fatalf("first body differs from what the handler wrote")
	}
	if first.header.Get("X-Late") != "" {
		t.Error("a header set after WriteHeader was sent")
	}
	again := e.send(call{key: key, body: "{}"})
	wantHit(t, again, first)
	volatile := cmpopts.IgnoreMapEntries(func(k string, _ []string) bool {
		return k == "Date" || k == httpadapter.HeaderStatus || k == httpadapter.HeaderReplayed
	})
	if diff := cmp.Diff(first.header, again.header, volatile); diff != "" {
		t.Errorf("replayed headers differ (-first +replay):\n%s", diff)
	}
	if got := again.header.Values("X-Multi"); !cmp.Equal(got, []string{"b", "a", "c"}) {
		t.Errorf("X-Multi = %q, want [b a c]", got)
	}
	e.wantRuns(1)
}

// testEmptyResponses checks that responses without a body, or without an
// explicit status, are stored and replayed like any other.
func testEmptyResponses(t *testing.T, newStore newStoreFunc) {
	writeErr := make(chan error, 1)
	e := start(t, newStore(t), func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/nothing" {
			return // implicit 200, no body
		}
		w.WriteHeader(http.StatusNoContent)
		_, err := w.Write([]byte("not allowed"))
		writeErr <- err
	})
	for _, tc := range []struct {
		path   string
		status int
	}{{"/nothing", http.StatusOK}, {"/no-content", http.StatusNoContent}} {
		key := newKey()
		first := e.send(call{key: key, path: tc.path})
		wantNew(t, first, tc.status)
		if first.body != "" {
			t.Errorf("%s: body %q, want none", tc.path, first.body)
		}
		wantHit(t, e.send(call{key: key, path: tc.path}), first)
	}
	if err := <-writeErr; !errors.Is(err, http.ErrBodyNotAllowed) {
		t.Errorf("Write after 204 = %v, want http.ErrBodyNotAllowed", err)
	}
	e.wantRuns(2)
}

// testHandlerSeesRequest checks that the handler gets the whole body, the
// request headers, and the key.
func testHandlerSeesRequest(t *testing.T, newStore newStoreFunc) {
	type seen struct{ body, key, custom string }
	got := make(chan seen, 2)
	e := start(t, newStore(t), func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{string(b), r.Header.Get(httpadapter.HeaderKey), r.Header.Get("X-Custom")}
	})
	body := strings.Repeat("0123456789", 10_000)
	key := newKey()
	e.send(call{key: key, body: body, header: http.Header{"X-Custom": {"c"}}})
	if diff := cmp.Diff(seen{body, key, "c"}, <-got, cmp.AllowUnexported(seen{})); diff != "" {
		t.Errorf("handler saw (-want +got):\n%s", diff)
	}

	// A body of unknown length (chunked) is read too.
	req, err := http.NewRequest(http.MethodPost, e.url+"/orders", io.MultiReader(strings.NewReader("chunked body")))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(httpadapter.HeaderKey, newKey())
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if s := <-got; s.body != "chunked body" {
		t.Errorf("handler saw chunked body %q", s.body)
	}
}

func testDefaultMethods(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), createHandler)
	for _, method := range []string{http.MethodPost, http.MethodPatch} {
		key := newKey()
		first := e.send(call{method: method, key: key, body: "{}"})
		wantNew(t, first, http.StatusCreated)
		wantHit(t, e.send(call{method: method, key: key, body: "{}"}), first)
	}
	e.wantRuns(2)
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodHead, http.MethodOptions} {
		wantPassThrough(t, e, method)
	}
}

func testWithMethods(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), createHandler, httpadapter.WithMethods(http.MethodPut, http.MethodDelete))
	for _, method := range []string{http.MethodPut, http.MethodDelete} {
		key := newKey()
		first := e.send(call{method: method, key: key, body: "{}"})
		wantNew(t, first, http.StatusCreated)
		wantHit(t, e.send(call{method: method, key: key, body: "{}"}), first)
	}
	for _, method := range []string{http.MethodPost, http.MethodPatch} {
		wantPassThrough(t, e, method)
	}
}

// wantPassThrough checks that requests with method run the handler every
// time, with or without a key, and get no idempotency headers.
func wantPassThrough(t *testing.T, e *env, method string) {
	t.Helper()
	key := newKey()
	before := e.runs.Load()
	for _, k := range []string{key, key, ""} {
		r := e.send(call{method: method, key: k})
		if r.status != http.StatusCreated {
			t.Errorf("%s: status %d, want the handler's 201", method, r.status)
		}
		for _, h := range []string{httpadapter.HeaderKey, httpadapter.HeaderStatus, httpadapter.HeaderSignature, httpadapter.HeaderReplayed} {
			if v := r.header.Get(h); v != "" {
				t.Errorf("%s: unprotected response has %s: %q", method, h, v)
			}
		}
	}
	if n := e.runs.Load() - before; n != 3 {
		t.Errorf("%s: handler ran %d times for 3 requests", method, n)
	}
}
