package httpadapter_test

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/httpadapter"
)

// testOuterHeaders checks that the headers outer middleware set before the
// handler ran are not stored, while the handler's changes to them are.
func testOuterHeaders(t *testing.T, newStore newStoreFunc) {
	var n atomic.Int32
	outer := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Set("X-Outer", strconv.Itoa(int(n.Add(1))))
			h.Set("Vary", "Origin")
			h.Set("X-Removed", "outer")
			h.Set("Content-Type", "text/plain")
			next.ServeHTTP(w, r)
		})
	}
	e := startWrapped(t, newStore(t), outer, func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		if got := h.Get("X-Outer"); got == "" {
			t.Error("handler does not see the outer middleware's headers")
		}
		h.Add("Vary", "Accept-Encoding")
		h.Del("X-Removed")
		h.Set("Content-Type", "application/json")
		h.Set("X-Handler", "h")
		w.WriteHeader(http.StatusCreated)
	})
	key := newKey()
	want := func(r reply, outerValue string) {
		t.Helper()
		got := map[string][]string{}
		for _, k := range []string{"X-Outer", "Vary", "X-Removed", "Content-Type", "X-Handler"} {
			got[k] = r.header.Values(k)
		}
		wantHeaders := map[string][]string{
			"X-Outer":      {outerValue},
			"Vary":         {"Origin", "Accept-Encoding"},
			"X-Removed":    nil,
			"Content-Type": {"application/json"},
			"X-Handler":    {"h"},
		}
		if diff := cmp.Diff(wantHeaders, got); diff != "" {
			t.Errorf("headers (-want +got):\n%s", diff)
		}
	}
	first := e.send(call{key: key})
	wantNew(t, first, http.StatusCreated)
	want(first, "1")
	again := e.send(call{key: key})
	wantHit(t, again, first)
	want(again, "2") // the outer middleware's value now, not the stored one
}

// hopHandler sets Set-Cookie, hop-by-hop headers, a header named by
// Connection, and an ordinary header.
func hopHandler(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Set-Cookie", "session=secret")
	h.Set("Keep-Alive", "timeout=5")
	h.Set("Connection", "X-Conn")
	h.Set("X-Conn", "per-connection")
	h.Set("Upgrade", "example/1")
	h.Set("Proxy-Authenticate", "Basic")
	h.Set("X-Secret", "s")
	h.Set("X-Kept", "k")
	w.WriteHeader(http.StatusCreated)
}

var hopNames = []string{"Set-Cookie", "Keep-Alive", "Connection", "X-Conn", "Upgrade", "Proxy-Authenticate", "X-Secret", "X-Kept"}

// present returns which of names r has.
func present(r reply, names []string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = r.header.Get(n) != ""
	}
	return m
}

func testExcludedHeaders(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), hopHandler)
	key := newKey()
	first := e.send(call{key: key})
	all := map[string]bool{}
	for _, n := range hopNames {
		all[n] = true
	}
	if diff := cmp.Diff(all, present(first, hopNames)); diff != "" {
		t.Errorf("first response headers (-want +got):\n%s", diff)
	}
	again := e.send(call{key: key})
	wantHit(t, again, first)
	want := map[string]bool{}
	for _, n := range hopNames {
		want[n] = n == "X-Kept" || n == "X-Secret"
	}
	if diff := cmp.Diff(want, present(again, hopNames)); diff != "" {
		t.Errorf("replayed headers (-want +got):\n%s", diff)
	}
}

func testWithExcludedHeaders(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), hopHandler, httpadapter.WithExcludedHeaders("x-secret"))
	key := newKey()
	first := e.send(call{key: key})
	again := e.send(call{key: key})
	wantHit(t, again, first)
	want := map[string]bool{}
	for _, n := range hopNames {
		want[n] = n != "X-Secret"
	}
	if diff := cmp.Diff(want, present(again, hopNames)); diff != "" {
		t.Errorf("replayed headers (-want +got):\n%s", diff)
	}
}

// testConnectionRawName checks that the fields a Connection header names are
// not stored when the handler set Connection under a non-canonical name.
func testConnectionRawName(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["connection"] = []string{"x-conn, X-Other"}
		h["x-conn"] = []string{"per-connection"}
		h.Set("X-Other", "o")
		h.Set("X-Kept", "k")
		w.WriteHeader(http.StatusCreated)
	})
	names := []string{"Connection", "X-Conn", "X-Other", "X-Kept"}
	key := newKey()
	first := e.send(call{key: key})
	all := map[string]bool{"Connection": true, "X-Conn": true, "X-Other": true, "X-Kept": true}
	if diff := cmp.Diff(all, present(first, names)); diff != "" {
		t.Errorf("first response headers (-want +got):\n%s", diff)
	}
	again := e.send(call{key: key})
	wantHit(t, again, first)
	want := map[string]bool{"Connection": false, "X-Conn": false, "X-Other": false, "X-Kept": true}
	if diff := cmp.Diff(want, present(again, names)); diff != "" {
		t.Errorf("replayed headers (-want +got):\n%s", diff)
	}
}

// statusHandler answers with the status in the path (/status/503), then
// with 201 once the status was sent twice.
func statusHandler() http.HandlerFunc {
	var n atomic.Int32
	return func(w http.ResponseWriter, r *http.Request) {
		status, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
		if n.Add(1) > 2 {
			status = http.StatusCreated
		}
		w.WriteHeader(status)
		io.WriteString(w, strconv.Itoa(status))
	}
}

func testUnstoredStatuses(t *testing.T, newStore newStoreFunc) {
	store := newStore(t)
	var hook hookLog
	defer hook.want(t) // a status not stored is no failure
	for _, status := range []int{500, 502, 503, 504, 429} {
		e := start(t, store, statusHandler(), hook.option())
		key := newKey()
		path := "/status/" + strconv.Itoa(status)
		for range 2 {
			r := e.send(call{key: key, path: path})
			wantNew(t, r, status)
			if r.header.Get(httpadapter.HeaderStored) != "false" {
				t.Errorf("%d: %s = %q, want false", status, httpadapter.HeaderStored, r.header.Get(httpadapter.HeaderStored))
			}
		}
		// The key was released each time: the handler runs again, and its
		// 201 is stored.
		first := e.send(call{key: key, path: path})
		wantNew(t, first, http.StatusCreated)
		wantHit(t, e.send(call{key: key, path: path}), first)
		e.wantRuns(3)
	}
	for _, status := range []int{200, 400, 404, 409, 422, 499} {
		e := start(t, store, statusHandler())
		key := newKey()
		path := "/status/" + strconv.Itoa(status)
		first := e.send(call{key: key, path: path})
		wantNew(t, first, status)
		wantHit(t, e.send(call{key: key, path: path}), first)
		e.wantRuns(1)
	}
}

func testWithDisposition(t *testing.T, newStore newStoreFunc) {
	store := newStore(t)
	only2xx := httpadapter.WithDisposition(func(status int) idem.Disposition {
		if status < 300 {
			return idem.Record
		}
		return idem.Release
	})
	e := start(t, store, statusHandler(), only2xx)
	key := newKey()
	r := e.send(call{key: key, path: "/status/400"})
	wantNew(t, r, http.StatusBadRequest)
	wantUnstored(t, r)
	wantNew(t, e.send(call{key: key, path: "/status/400"}), http.StatusBadRequest)
	e.wantRuns(2)

	e = start(t, store, statusHandler(), httpadapter.WithDisposition(func(int) idem.Disposition { return idem.Record }))
	key = newKey()
	first := e.send(call{key: key, path: "/status/500"})
	wantHit(t, e.send(call{key: key, path: "/status/500"}), first)
	e.wantRuns(1)

	// nil restores the default.
	e = start(t, store, statusHandler(), only2xx, httpadapter.WithDisposition(nil))
	key = newKey()
	first = e.send(call{key: key, path: "/status/400"})
	wantHit(t, e.send(call{key: key, path: "/status/400"}), first)

	// Hold: sent as not stored, and the key refused with 409 until the
	// lease expires; then the handler runs again. The lease is long enough
	// for a loaded machine to send the 409 probe within it.
	const lockTTL = time.Second
	e = start(t, store, statusHandler(),
		httpadapter.WithDisposition(func(status int) idem.Disposition {
			if status == http.StatusGatewayTimeout {
				return idem.Hold
			}
			return httpadapter.DefaultDisposition(status)
		}),
		httpadapter.WithOptions(idem.WithLockTTL(lockTTL)))
	key = newKey()
	held := e.send(call{key: key, path: "/status/504"})
	wantNew(t, held, http.StatusGatewayTimeout)
	wantUnstored(t, held)
	wantProblem(t, e.send(call{key: key, path: "/status/504"}), http.StatusConflict, httpadapter.ProblemInFlight)
	e.wantRuns(1)
	time.Sleep(lockTTL)
	r = e.send(call{key: key, path: "/status/504"})
	for deadline := time.Now().Add(10 * time.Second); r.status == http.StatusConflict && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		r = e.send(call{key: key, path: "/status/504"})
	}
	wantNew(t, r, http.StatusGatewayTimeout)
	e.wantRuns(2)
}

func testBodyLimit(t *testing.T, newStore newStoreFunc) {
	store := newStore(t)
	e := start(t, store, createHandler)
	key := newKey()
	wantProblem(t, e.send(call{key: key, body: strings.Repeat("x", httpadapter.DefaultMaxBodyBytes+1)}),
		http.StatusRequestEntityTooLarge, httpadapter.ProblemBodyTooLarge)
	e.wantRuns(0)
	wantNew(t, e.send(call{key: key, body: strings.Repeat("x", httpadapter.DefaultMaxBodyBytes)}), http.StatusCreated)

	e = start(t, store, createHandler, httpadapter.WithMaxBodyBytes(10))
	key = newKey()
	r := e.send(call{key: key, body: "0123456789x"})
	wantProblem(t, r, http.StatusRequestEntityTooLarge, httpadapter.ProblemBodyTooLarge)
	if got := r.header.Get(httpadapter.HeaderKey); got != key {
		t.Errorf("413 echoed key %q, want %q", got, key)
	}
	// Chunked: the length is unknown until read.
	req, err := http.NewRequest(http.MethodPost, e.url+"/orders", io.MultiReader(strings.NewReader("0123456789x")))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(httpadapter.HeaderKey, key)
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked body over the limit: status %d, want 413", resp.StatusCode)
	}
	e.wantRuns(0)
	wantNew(t, e.send(call{key: key, body: "0123456789"}), http.StatusCreated)
}
