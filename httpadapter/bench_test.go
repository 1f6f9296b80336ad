package httpadapter_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/idemkit/idem/httpadapter"
	"github.com/idemkit/idem/memstore"
)

var benchBody = []byte(`{"item":"book","qty":1}`)

// benchHandler is a small JSON endpoint: it decodes the order, and answers
// 201 with it and an ID.
func benchHandler(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Item string `json:"item"`
		Qty  int    `json:"qty"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/orders/ord_1")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(struct {
		ID   string `json:"id"`
		Item string `json:"item"`
		Qty  int    `json:"qty"`
	}{"ord_1", in.Item, in.Qty})
}

// benchWriter is a ResponseWriter that keeps the status and discards the
// body, so that the benchmarks measure the handlers rather than a recorder.
type benchWriter struct {
	h      http.Header
	status int
}

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) WriteHeader(code int)        { w.status = code }
func (w *benchWriter) Write(p []byte) (int, error) { return len(p), nil }

type benchBodyReader struct{ bytes.Reader }

func (*benchBodyReader) Close() error { return nil }

// measure serves request 0 to warm up (and, for Hit, store the response),
// then request i on the i-th iteration. It remembers the ns/op of a Bare
// benchmark in bareNs, and reports that of any other as the x-bare ratio.
func measure(b *testing.B, serve func(i int), bareNs *float64) {
	serve(0)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		serve(i)
	}
	ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	if strings.HasSuffix(b.Name(), "/Bare") {
		*bareNs = ns // the latest Bare run
	} else {
		b.ReportMetric(ns / *bareNs, "x-bare")
	}
}

// BenchmarkMiddleware measures the middleware in process, on memstore,
// against the bare handler: a replayed response (Hit), a first execution
// under a new key (FirstExecution), and an unprotected PUT (PassThrough).
// The x-bare metric is ns/op over that of the latest Bare in the same run.
func BenchmarkMiddleware(b *testing.B) {
	var bareNs float64
	run := func(b *testing.B, h http.Handler, method string, key func(i int) []string) {
		req := httptest.NewRequest(method, "/orders", nil)
		req.Header.Set("Content-Type", "application/json")
		body := &benchBodyReader{}
		w := &benchWriter{h: make(http.Header)}
		serve := func(i int) {
			body.Reset(benchBody)
			req.Body, req.ContentLength = body, int64(len(benchBody))
			if key != nil {
				req.Header[httpadapter.HeaderKey] = key(i)
			}
			clear(w.h)
			w.status = 0
			h.ServeHTTP(w, req)
			if w.status != http.StatusCreated {
				b.Fatalf("status %d, want 201", w.status)
			}
		}
		measure(b, serve, &bareNs)
	}
	bare := http.HandlerFunc(benchHandler)
	b.Run("Bare", func(b *testing.B) { run(b, bare, http.MethodPost, nil) })
	if bareNs == 0 {
		b.Skip("Bare did not run")
	}
	b.Run("Hit", func(b *testing.B) {
		h := httpadapter.Middleware(memstore.New())(bare)
		key := []string{"8e03978e-40d5-43e8-bc93-6894a57f9324"}
		run(b, h, http.MethodPost, func(int) []string { return key })
	})
	b.Run("FirstExecution", func(b *testing.B) {
		h := httpadapter.Middleware(memstore.New())(bare)
		// Making the key costs one allocation of the op's.
		key, buf := make([]string, 1), []byte("k")
		run(b, h, http.MethodPost, func(i int) []string {
			key[0] = string(strconv.AppendInt(buf[:1], int64(i), 10))
			return key
		})
	})
	b.Run("PassThrough", func(b *testing.B) {
		h := httpadapter.Middleware(memstore.New())(bare)
		run(b, h, http.MethodPut, nil)
	})
}

// BenchmarkServer measures whole requests over loopback, through an
// httptest.Server, with the middleware and without.
func BenchmarkServer(b *testing.B) {
	var bareNs float64
	run := func(b *testing.B, h http.Handler, key func(i int) string) {
		srv := httptest.NewServer(h)
		defer srv.Close()
		client := srv.Client()
		serve := func(i int) {
			req, err := http.NewRequest(http.MethodPost, srv.URL+"/orders", bytes.NewReader(benchBody))
			if err != nil {
				b.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			if key != nil {
				req.Header.Set(httpadapter.HeaderKey, key(i))
			}
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusCreated {
				b.Fatalf("status %d, %v", resp.StatusCode, err)
			}
		}
		measure(b, serve, &bareNs)
	}
	bare := http.HandlerFunc(benchHandler)
	b.Run("Bare", func(b *testing.B) { run(b, bare, nil) })
	if bareNs == 0 {
		b.Skip("Bare did not run")
	}
	b.Run("Hit", func(b *testing.B) {
		run(b, httpadapter.Middleware(memstore.New())(bare), func(int) string { return "k" })
	})
	b.Run("FirstExecution", func(b *testing.B) {
		run(b, httpadapter.Middleware(memstore.New())(bare), func(i int) string { return "k" + strconv.Itoa(i) })
	})
}
