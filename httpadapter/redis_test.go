package httpadapter_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/httpadapter"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/redisstore"
)

func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }

// TestRedis runs every middleware test on a real Redis.
func TestRedis(t *testing.T) {
	t.Parallel()
	s := redisstore.New(redistest.Single(t))
	testMiddleware(t, func(*testing.T) idem.Store { return s })
}

// BenchmarkRedis measures the middleware in process on a real Redis: a
// replayed response (Hit) and a first execution, against a plain GET of the
// stored record in the same run (x-get is ns/op over the GET's).
func BenchmarkRedis(b *testing.B) {
	client := redistest.Single(b)
	ctx := context.Background()
	prefix := fmt.Sprint("bench-http:", time.Now().UnixNano(), ":")
	bare := http.HandlerFunc(benchHandler)
	h := httpadapter.Middleware(redisstore.New(client, redisstore.WithPrefix(prefix)))(bare)
	req := httptest.NewRequest(http.MethodPost, "/orders", nil)
	req.Header.Set("Content-Type", "application/json")
	body := &benchBodyReader{}
	w := &benchWriter{h: make(http.Header)}
	serve := func(b *testing.B, key string) {
		body.Reset(benchBody)
		req.Body, req.ContentLength = body, int64(len(benchBody))
		req.Header[httpadapter.HeaderKey] = []string{key}
		clear(w.h)
		w.status = 0
		h.ServeHTTP(w, req)
		if w.status != http.StatusCreated {
			b.Fatalf("status %d, want 201", w.status)
		}
	}
	serve(b, "hit")
	keys, err := client.Keys(ctx, prefix+"*").Result()
	if err != nil || len(keys) != 1 {
		b.Fatalf("stored keys %v, %v", keys, err)
	}
	var getNs float64
	perOp := func(b *testing.B) float64 { return float64(b.Elapsed().Nanoseconds()) / float64(b.N) }
	b.Run("GET", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := client.Get(ctx, keys[0]).Err(); err != nil {
				b.Fatal(err)
			}
		}
		getNs = perOp(b)
	})
	b.Run("Hit", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			serve(b, "hit")
		}
		b.ReportMetric(perOp(b)/getNs, "x-get")
	})
	i := 0 // outside b.Run: with -count, each run needs new keys
	b.Run("FirstExecution", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			i++
			serve(b, "new-"+strconv.Itoa(i))
		}
		b.ReportMetric(perOp(b)/getNs, "x-get")
	})
}

// TestRedisCluster runs every middleware test on the 3-master Redis Cluster.
func TestRedisCluster(t *testing.T) {
	t.Parallel()
	s := redisstore.New(redistest.Cluster(t))
	testMiddleware(t, func(*testing.T) idem.Store { return s })
}
