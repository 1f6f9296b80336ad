package redisstore_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/redisstore"
	"github.com/redis/go-redis/v9"
)

// benchResult is a typical small result: what a payment call might return.
type benchResult struct {
	ID       string
	Amount   int64
	Currency string
	Status   string
}

// BenchmarkRedis measures a replay hit and a first execution against a plain
// GET of a value of similar size, in one run, on the single node and on the
// cluster. rt/op is Redis round trips per call, counted by a hook.
func BenchmarkRedis(b *testing.B) {
	clients := map[string]redis.UniversalClient{
		"single":  redistest.Single(b),
		"cluster": redistest.Cluster(b),
	}
	for _, name := range []string{"single", "cluster"} {
		client := clients[name]
		count := &counter{}
		if cc, ok := client.(*redis.ClusterClient); ok {
			cc.OnNewNode(func(n *redis.Client) { n.AddHook(count) })
		} else {
			client.AddHook(count)
		}
		ctx := context.Background()
		prefix := "bench:" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
		op := idem.New[string, benchResult](redisstore.New(client, redisstore.WithPrefix(prefix)))
		res := benchResult{ID: "ch_3Mtw4xLkdIwHu7ix0QjHZyqf", Amount: 1999, Currency: "eur", Status: "succeeded"}
		fn := func(context.Context, string) (benchResult, error) { return res, nil }
		if _, err := op.Do(ctx, "hit", "req", fn); err != nil {
			b.Fatal(err)
		}
		raw, err := client.Get(ctx, prefix+":hit").Result() // no namespace: ":" + key
		if err != nil {
			b.Fatal(err)
		}
		if err := client.Set(ctx, prefix+"plain", raw, time.Hour).Err(); err != nil {
			b.Fatal(err)
		}

		report := func(b *testing.B) {
			n, _ := count.read()
			b.ReportMetric(float64(n)/float64(b.N), "rt/op")
		}
		b.Run(name+"/GET", func(b *testing.B) {
			b.ReportAllocs()
			count.reset()
			for b.Loop() {
				if err := client.Get(ctx, prefix+"plain").Err(); err != nil {
					b.Fatal(err)
				}
			}
			report(b)
		})
		b.Run(name+"/ReplayHit", func(b *testing.B) {
			b.ReportAllocs()
			count.reset()
			for b.Loop() {
				if _, err := op.Do(ctx, "hit", "req", fn); err != nil {
					b.Fatal(err)
				}
			}
			report(b)
		})
		i := 0 // outside b.Run: with -count, each run needs new keys
		b.Run(name+"/FirstExecution", func(b *testing.B) {
			b.ReportAllocs()
			count.reset()
			for b.Loop() {
				i++
				k := "new-" + strconv.Itoa(i)
				if _, err := op.Do(ctx, k, "req", fn); err != nil {
					b.Fatal(err)
				}
			}
			report(b)
		})
	}
}
