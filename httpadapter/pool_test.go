package httpadapter_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"sync"
	"testing"

	"github.com/idemkit/idem/httpadapter"
	"github.com/idemkit/idem/memstore"
)

// pieceEchoHandler answers 201 with the request body, in pieces, after a line
// naming the key, and headers giving the body's length and digest.
func pieceEchoHandler(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	sum := sha256.Sum256(b)
	h := w.Header()
	h.Set("X-Echo-Len", strconv.Itoa(len(b)))
	h.Set("X-Echo-Sum", hex.EncodeToString(sum[:]))
	h.Set("X-Echo-Key", r.Header.Get(httpadapter.HeaderKey))
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, "key %s\n", r.Header.Get(httpadapter.HeaderKey))
	for len(b) > 0 {
		n := min(len(b), 777)
		_, _ = w.Write(b[:n])
		b = b[n:]
	}
}

// pooledBody returns the body of request i: its own length, some past the
// size of pooled buffers, and its own bytes.
func pooledBody(i int) []byte {
	n := i * 97 % 3000
	if i%13 == 0 {
		n = 70_000 + i
	}
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(i*31 + j*7 + j>>8)
	}
	return b
}

// TestPooledBuffers runs many requests at once, each with its own key and
// body, then replays them while others run for the first time, and checks
// every response byte for byte. A buffer the middleware pools that was
// shared between requests, or kept by a stored response or by the store,
// would mix their bytes up; run it with -race.
func TestPooledBuffers(t *testing.T) {
	t.Parallel()
	h := httpadapter.Middleware(memstore.New())(http.HandlerFunc(pieceEchoHandler))
	const n, workers = 600, 8
	keys := make([]string, 2*n)
	for i := range keys {
		keys[i] = newKey()
	}
	serve := func(i int) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/echo?i="+strconv.Itoa(i), bytes.NewReader(pooledBody(i)))
		r.Header.Set(httpadapter.HeaderKey, keys[i])
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	want := func(i int, w *httptest.ResponseRecorder, status string) error {
		b := pooledBody(i)
		sum := sha256.Sum256(b)
		body := append([]byte("key "+keys[i]+"\n"), b...)
		h := w.Header()
		switch {
		case w.Code != http.StatusCreated:
			return fmt.Errorf("request %d: status %d, body %.100q", i, w.Code, w.Body.Bytes())
		case h.Get(httpadapter.HeaderStatus) != status:
			return fmt.Errorf("request %d: %s = %q, want %s", i, httpadapter.HeaderStatus, h.Get(httpadapter.HeaderStatus), status)
		case h.Get(httpadapter.HeaderKey) != keys[i] || h.Get("X-Echo-Key") != keys[i]:
			return fmt.Errorf("request %d: key headers %q and %q, want %q", i, h.Get(httpadapter.HeaderKey), h.Get("X-Echo-Key"), keys[i])
		case h.Get("X-Echo-Len") != strconv.Itoa(len(b)) || h.Get("X-Echo-Sum") != hex.EncodeToString(sum[:]):
			return fmt.Errorf("request %d: echo headers %q %q, want %d %x", i, h.Get("X-Echo-Len"), h.Get("X-Echo-Sum"), len(b), sum)
		case !bytes.Equal(w.Body.Bytes(), body):
			return fmt.Errorf("request %d: body of %d bytes differs from the %d expected", i, w.Body.Len(), len(body))
		}
		return nil
	}
	run := func(tasks func(yield func(int) bool), check func(i int) error) {
		t.Helper()
		ch := make(chan int)
		errs := make(chan error, 2*n)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for i := range ch {
					if err := check(i); err != nil {
						errs <- err
					}
				}
			})
		}
		for i := range tasks {
			ch <- i
		}
		close(ch)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
	first := make([]*httptest.ResponseRecorder, 2*n)
	run(func(yield func(int) bool) {
		for i := range n {
			if !yield(i) {
				return
			}
		}
	}, func(i int) error {
		first[i] = serve(i)
		return want(i, first[i], httpadapter.StatusNew)
	})
	// Replays of the first half, interleaved with first runs of the
	// second.
	run(func(yield func(int) bool) {
		for i := range n {
			if !yield(i) || !yield(n+i) {
				return
			}
		}
	}, func(i int) error {
		if i >= n {
			return want(i, serve(i), httpadapter.StatusNew)
		}
		w := serve(i)
		if err := want(i, w, httpadapter.StatusHit); err != nil {
			return err
		}
		if !bytes.Equal(w.Body.Bytes(), first[i].Body.Bytes()) {
			return fmt.Errorf("request %d: replay differs from the first response", i)
		}
		return nil
	})
}

// TestLateUse checks that a handler that keeps its ResponseWriter and
// request body past its return can neither write into a later response
// nor read a later request's body.
func TestLateUse(t *testing.T) {
	t.Parallel()
	var kept struct {
		w    http.ResponseWriter
		body io.Reader
	}
	h := httpadapter.Middleware(memstore.New())(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if kept.w == nil {
			kept.w, kept.body = w, r.Body
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, "first")
			return // the body is left unread
		}
		pieceEchoHandler(w, r)
	}))
	serve := func(key, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader([]byte(body)))
		r.Header.Set(httpadapter.HeaderKey, key)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	k1, k2 := newKey(), newKey()
	if w := serve(k1, "unread body"); w.Body.String() != "first" {
		t.Fatalf("first response %q", w.Body)
	}
	if n, err := kept.w.Write([]byte("late")); n != 0 || err == nil {
		t.Errorf("late Write = %d, %v; want an error", n, err)
	}
	if n, err := io.WriteString(kept.w, "late"); n != 0 || err == nil {
		t.Errorf("late WriteString = %d, %v; want an error", n, err)
	}
	if b, err := io.ReadAll(kept.body); len(b) != 0 || err != nil {
		t.Errorf("late read of the body = %q, %v; want nothing", b, err)
	}
	w := serve(k2, "second body")
	if want := "key " + k2 + "\nsecond body"; w.Body.String() != want {
		t.Errorf("second response %q, want %q", w.Body, want)
	}
	if b, err := io.ReadAll(kept.body); len(b) != 0 || err != nil {
		t.Errorf("late read of the body = %q, %v; want nothing", b, err)
	}
	if _, err := kept.w.Write([]byte("late")); err == nil {
		t.Error("late Write succeeded")
	}
	if w := serve(k1, "unread body"); w.Body.String() != "first" || w.Header().Get(httpadapter.HeaderStatus) != httpadapter.StatusHit {
		t.Errorf("replay %q, %s = %q", w.Body, httpadapter.HeaderStatus, w.Header().Get(httpadapter.HeaderStatus))
	}
}

// TestReplayedHeadersKept checks that the headers of a response, first
// sent or replayed, stay as they were while later requests run and replay:
// the middleware reuses the maps it builds headers in, never the values it
// hands to the ResponseWriter. Appending to the values of one header leaves
// the others alone.
func TestReplayedHeadersKept(t *testing.T) {
	t.Parallel()
	h := httpadapter.Middleware(memstore.New())(http.HandlerFunc(pieceEchoHandler))
	const n = 50
	keys := make([]string, n)
	for i := range keys {
		keys[i] = newKey()
	}
	serve := func(i int) http.Header {
		r := httptest.NewRequest(http.MethodPost, "/echo", bytes.NewReader(pooledBody(i)))
		r.Header.Set(httpadapter.HeaderKey, keys[i])
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		got := w.Header()
		if w.Code != http.StatusCreated || got.Get("X-Echo-Len") != strconv.Itoa(len(pooledBody(i))) || got.Get("X-Echo-Key") != keys[i] {
			t.Fatalf("request %d: status %d, header %v", i, w.Code, got)
		}
		return got
	}
	var kept []http.Header
	var want []http.Header
	for round := range 3 {
		for i := range n {
			got := serve(i)
			kept, want = append(kept, got), append(want, got.Clone())
			if round > 0 {
				got["X-Echo-Len"] = append(got["X-Echo-Len"], "appended")
				want[len(want)-1]["X-Echo-Len"] = append(want[len(want)-1]["X-Echo-Len"], "appended")
			}
		}
	}
	for i := range kept {
		if !reflect.DeepEqual(kept[i], want[i]) {
			t.Errorf("response %d: header changed to\n%v\nfrom\n%v", i, kept[i], want[i])
		}
	}
}
