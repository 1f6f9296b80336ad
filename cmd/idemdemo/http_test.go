package main

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem/httpadapter"
	"github.com/idemkit/idem/memstore"
)

// statusWriter remembers the status of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// served is what the server answered to a request whose client left.
type served struct {
	status           int
	idemStatus, kept string
}

// TestHTTPSlowCancelled checks that a slow order whose client leaves is
// answered 503 and not stored: a retry runs the handler again rather than
// being replayed an empty 200. The first request is over, key released,
// once the outer handler reported it.
func TestHTTPSlowCancelled(t *testing.T) {
	entered, done := make(chan struct{}, 2), make(chan served, 2)
	record := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			entered <- struct{}{}
			sw := &statusWriter{ResponseWriter: w}
			next.ServeHTTP(sw, r)
			h := w.Header()
			done <- served{sw.status, h.Get(httpadapter.HeaderStatus), h.Get(httpadapter.HeaderStored)}
		})
	}
	h, err := newHTTPHandler(memstore.New())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(record(h))
	defer srv.Close()

	for attempt := 1; attempt <= 2; attempt++ {
		// The client gives up 200 ms after its request reached the server,
		// not 200 ms after it was sent: on a loaded machine that could be
		// before the server saw it.
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-entered:
				time.Sleep(200 * time.Millisecond)
				cancel()
			case <-ctx.Done():
			}
		}()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/orders?slow=1", strings.NewReader(`{"item":"book","qty":1}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(httpadapter.HeaderKey, "slow-cancelled")
		resp, err := srv.Client().Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			t.Fatalf("attempt %d: got %d %s, want the client to give up", attempt, resp.StatusCode, resp.Header.Get(httpadapter.HeaderStatus))
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("attempt %d: %v", attempt, err)
		}
		var s served
		select {
		case s = <-done:
		case <-time.After(httpSlowDelay / 2):
			t.Fatalf("attempt %d: the handler did not stop when its client left", attempt)
		}
		want := served{http.StatusServiceUnavailable, httpadapter.StatusNew, "false"}
		if s != want {
			t.Errorf("attempt %d: served %+v, want %+v (a new, unstored 503)", attempt, s, want)
		}
	}
}
