package redisstore_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/codec"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/redisstore"
	"github.com/redis/go-redis/v9"
)

// counter is a go-redis hook that counts round trips (a command or a
// pipeline) and records command names.
type counter struct {
	mu    sync.Mutex
	trips int
	names []string
}

func (c *counter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.mu.Lock()
		c.trips++
		c.names = append(c.names, cmd.Name())
		c.mu.Unlock()
		return next(ctx, cmd)
	}
}

func (c *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.mu.Lock()
		c.trips++
		for _, cmd := range cmds {
			c.names = append(c.names, cmd.Name())
		}
		c.mu.Unlock()
		return next(ctx, cmds)
	}
}

func (c *counter) reset() {
	c.mu.Lock()
	c.trips, c.names = 0, nil
	c.mu.Unlock()
}

func (c *counter) read() (int, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.trips, slices.Clone(c.names)
}

// countedClients returns clients of the single node and of the cluster whose
// round trips are counted per node connection.
func countedClients(t *testing.T) map[string]struct {
	client redis.UniversalClient
	count  *counter
} {
	single := redistest.Single(t)
	cs := &counter{}
	single.AddHook(cs)
	cluster := redistest.Cluster(t)
	cc := &counter{}
	// Count on the node clients: what actually travels to Redis.
	cluster.OnNewNode(func(n *redis.Client) { n.AddHook(cc) })
	return map[string]struct {
		client redis.UniversalClient
		count  *counter
	}{"single": {single, cs}, "cluster": {cluster, cc}}
}

// TestRoundTrips counts the round trips and commands of a first execution
// and a replay, on Redis 7.0 and newer (SET NX GET) and the way the Store
// works with older servers (GET and redislock's obtain script), through an
// Operation without a local cache (a replay is the SET alone, no
// transaction, no PTTL) and with one (Acquire asked for the TTL: the SET
// and a PTTL in a transaction on a miss, and nothing once the record is
// cached).
func TestRoundTrips(t *testing.T) {
	ctx := context.Background()
	paths := []struct {
		name          string
		legacy, cache bool
		first, replay []string
	}{
		{"set-nx-get", false, false, []string{"set", "evalsha"}, []string{"set"}},
		{"set-nx-get/local-cache", false, true, []string{"multi", "set", "pttl", "exec", "evalsha"}, []string{"multi", "set", "pttl", "exec"}},
		{"legacy", true, false, []string{"multi", "get", "evalsha", "exec", "evalsha"}, []string{"multi", "get", "evalsha", "exec"}},
		{"legacy/local-cache", true, true, []string{"multi", "get", "evalsha", "pttl", "exec", "evalsha"}, []string{"multi", "get", "evalsha", "pttl", "exec"}},
	}
	for name, c := range countedClients(t) {
		for _, path := range paths {
			t.Run(name+"/"+path.name, func(t *testing.T) {
				s := redisstore.New(c.client, redisstore.WithPrefix(fmt.Sprint("rt:", time.Now().UnixNano(), ":")))
				if path.legacy {
					redisstore.UseLegacyAcquire(s)
				}
				var opts []idem.Option
				if path.cache {
					opts = append(opts, idem.WithLocalCache(64))
				}
				newOp := func() *idem.Operation[string, string] { return idem.New[string, string](s, opts...) }
				op := newOp()
				fn := func(context.Context, string) (string, error) { return "result", nil }
				// Warm up: connections dialled and scripts cached on every
				// node (48 keys reach all three cluster masters).
				for i := range 48 {
					if _, err := op.Do(ctx, fmt.Sprint("warm-", i), "req", fn); err != nil {
						t.Fatal(err)
					}
				}
				expect := func(what string, op *idem.Operation[string, string], k string, replayed bool, trips int, names []string) {
					t.Helper()
					c.count.reset()
					if _, info, err := op.DoInfo(ctx, k, "req", fn); err != nil || info.Replayed != replayed {
						t.Fatalf("%s: %v %+v, want replayed = %v", what, err, info, replayed)
					}
					if n, got := c.count.read(); n != trips || !slices.Equal(got, names) {
						t.Errorf("%s: %d round trips %v, want %d: %v", what, n, got, trips, names)
					}
				}
				for i, k := range []string{"a", "b", "c"} {
					expect(fmt.Sprint("first execution #", i), op, k, false, 2, path.first)
					if !path.cache {
						expect(fmt.Sprint("replay #", i), op, k, true, 1, path.replay)
						continue
					}
					// The record this Operation committed is cached; another
					// Operation (another process) reads it from Redis once,
					// then from its cache.
					expect(fmt.Sprint("replay #", i, ", cached on commit"), op, k, true, 0, nil)
					other := newOp()
					expect(fmt.Sprint("replay #", i, " elsewhere, a cache miss"), other, k, true, 1, path.replay)
					expect(fmt.Sprint("replay #", i, " elsewhere, cached"), other, k, true, 0, nil)
				}
				if got := redisstore.LegacyAcquire(s); got != path.legacy {
					t.Errorf("legacy path = %v, want %v", got, path.legacy)
				}
			})
		}
	}
}

// TestCounterSeesClusterTraffic makes sure counting is wired: a command on
// the cluster passes through the node hooks.
func TestCounterSeesClusterTraffic(t *testing.T) {
	c := countedClients(t)["cluster"]
	ctx := context.Background()
	if err := c.client.Set(ctx, "rt:probe", "v", 0).Err(); err != nil { // dial
		t.Fatal(err)
	}
	c.count.reset()
	if err := c.client.Set(ctx, "rt:probe", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, names := c.count.read(); n != 1 {
		t.Fatalf("hook saw %d round trips %v for one SET, want 1", n, names)
	}
}

// TestRecordMemory measures what one stored record costs Redis (MEMORY
// USAGE), for the README, and keeps the overhead bounded.
func TestRecordMemory(t *testing.T) {
	client := redistest.Single(t)
	ctx := context.Background()
	prefix := fmt.Sprint("mem:", time.Now().UnixNano(), ":")
	op := idem.New[string, benchResult](redisstore.New(client, redisstore.WithPrefix(prefix)))
	res := benchResult{ID: "ch_3Mtw4xLkdIwHu7ix0QjHZyqf", Amount: 1999, Currency: "eur", Status: "succeeded"}
	if _, err := op.Do(ctx, "8e03978e-40d5-43e8-bc93-6894a57f9324", "req", func(context.Context, string) (benchResult, error) { return res, nil }); err != nil {
		t.Fatal(err)
	}
	key := prefix + ":8e03978e-40d5-43e8-bc93-6894a57f9324" // no namespace: ":" + key
	value, _ := client.Get(ctx, key).Result()
	usage, err := client.MemoryUsage(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := codec.MsgPack{}.Marshal(res)
	// The value is "\x00R", the committing lease's 22-byte token, then
	// idem's record: its header and the payload.
	const head = 2 + 22
	if len(value) < head+len(payload) || value[:2] != "\x00R" || value[len(value)-len(payload):] != string(payload) {
		t.Fatalf("stored value %q; want \\x00R, a 22-byte token, a header, the payload", value)
	}
	t.Logf("record for a %d-byte msgpack result: value %d bytes (mark and token %d, record header %d, payload %d), key %d bytes, MEMORY USAGE %d bytes",
		len(payload), len(value), head, len(value)-head-len(payload), len(payload), len(key), usage)
	if overhead := int(usage) - len(value) - len(key); overhead > 128 {
		t.Errorf("Redis overhead per record is %d bytes beyond key and value, want <= 128", overhead)
	}
}
