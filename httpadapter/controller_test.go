package httpadapter_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/idemkit/idem/httpadapter"
)

type outerKey struct{}

type outerSeen struct {
	w http.ResponseWriter
	r *http.Request
}

// rememberWriter is outer middleware that puts the ResponseWriter and the
// request it got into the request's context.
func rememberWriter(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen := &outerSeen{w: w}
		r = r.WithContext(context.WithValue(r.Context(), outerKey{}, seen))
		seen.r = r
		next.ServeHTTP(w, r)
	})
}

// testResponseControllerPassThrough checks that requests the middleware
// does not protect get the original ResponseWriter and request, so that
// http.ResponseController works in full.
func testResponseControllerPassThrough(t *testing.T, newStore newStoreFunc) {
	e := startWrapped(t, newStore(t), rememberWriter, func(w http.ResponseWriter, r *http.Request) {
		seen := r.Context().Value(outerKey{}).(*outerSeen)
		rc := http.NewResponseController(w)
		if r.URL.Path == "/hijack" {
			conn, buf, err := rc.Hijack()
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			defer conn.Close()
			buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nhijacked")
			buf.Flush()
			return
		}
		w.Header().Set("X-Same", fmt.Sprint(w == seen.w && r == seen.r))
		w.Header().Set("X-Deadlines", fmt.Sprint(rc.SetReadDeadline(time.Now().Add(time.Minute)), rc.SetWriteDeadline(time.Now().Add(time.Minute))))
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, "flush=", rc.Flush())
	}, httpadapter.WithKeyRequired())

	for _, c := range []call{{method: http.MethodGet}, {method: http.MethodPost}} {
		r := e.send(c)
		got := fmt.Sprint(r.status, " ", r.header.Get("X-Same"), " ", r.header.Get("X-Deadlines"), " ", r.body)
		if want := "201 true <nil> <nil> flush=<nil>"; got != want {
			t.Errorf("%s: got %q, want %q", c.method, got, want)
		}
	}
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		if r := e.send(call{method: method, path: "/hijack"}); r.status != http.StatusOK || r.body != "hijacked" {
			t.Errorf("%s hijacked: got %d %q", method, r.status, r.body)
		}
	}
}

// testResponseControllerProtected checks what a protected handler can do
// with http.ResponseController: set deadlines, but not flush or hijack.
func testResponseControllerProtected(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if r.URL.Path == "/past-deadline" {
			// The deadline reaches the connection: the buffered response
			// cannot be written.
			if err := rc.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil {
				t.Error(err)
			}
			w.WriteHeader(http.StatusCreated)
			return
		}
		if r.URL.Path == "/past-read-deadline" {
			// The deadline reaches the connection: net/http's background
			// read fails, which cancels the request's context.
			if err := rc.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
				t.Error(err)
			}
			select {
			case <-r.Context().Done():
				w.WriteHeader(http.StatusCreated)
			case <-time.After(5 * time.Second):
				w.WriteHeader(http.StatusTeapot)
			}
			return
		}
		_, flusher := w.(http.Flusher)
		_, hijacker := w.(http.Hijacker)
		_, _, hijack := rc.Hijack()
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintln(w, "flusher", flusher, "hijacker", hijacker)
		fmt.Fprintln(w, "flush", errors.Is(rc.Flush(), http.ErrNotSupported))
		fmt.Fprintln(w, "hijack", errors.Is(hijack, http.ErrNotSupported))
		fmt.Fprintln(w, "duplex", errors.Is(rc.EnableFullDuplex(), http.ErrNotSupported))
		fmt.Fprintln(w, "deadlines", rc.SetReadDeadline(time.Now().Add(time.Minute)), rc.SetWriteDeadline(time.Now().Add(time.Minute)))
	})
	r := e.send(call{key: newKey(), body: "{}"})
	want := "flusher false hijacker false\nflush true\nhijack true\nduplex true\ndeadlines <nil> <nil>\n"
	if r.status != http.StatusCreated || r.body != want {
		t.Errorf("got %d %q, want 201 %q", r.status, r.body, want)
	}
	r = e.send(call{key: newKey(), path: "/past-read-deadline"})
	wantNew(t, r, http.StatusCreated)

	// A new connection, which http.Transport does not retry on failure.
	req, err := http.NewRequest(http.MethodPost, e.url+"/past-deadline", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(httpadapter.HeaderKey, newKey())
	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	if resp, err := client.Do(req); err == nil {
		resp.Body.Close()
		t.Errorf("write deadline in the past, yet got %d", resp.StatusCode)
	}
}
