package redisstore_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/redisstore"
	"github.com/redis/go-redis/v9"
)

// callers is how many goroutines call at once in the throughput benchmarks:
// a busy service, more callers than cores and than the client's default
// pool (10 per GOMAXPROCS).
const callers = 64

// hitKeys is how many keys, filled before the timer, the replay
// sub-benchmarks cycle over.
const hitKeys = 1000

// BenchmarkThroughput measures what 64 concurrent callers get through one
// go-redis client, in one run, on the single node and on the cluster:
//
//   - GET: a plain GET of a value the size of a stored record, the yardstick;
//   - ReplayHit: Operation.Do on keys that hold a record (1,000 keys filled
//     before the timer, the callers cycling over them);
//   - ReplayHitLocalCache: the same with idem.WithLocalCache(4096), warmed by
//     one pass of replays over the keys (records learned from the store, not
//     from this process's commits);
//   - FirstExecution: Do on fresh keys, fn answering at once.
//
// Run it with
//
//	go test -run '^$' -bench BenchmarkThroughput -benchmem ./redisstore
//
// Besides ns/op, B/op and allocs/op, each sub-benchmark reports:
//
//   - req/s: calls per second, b.N over the elapsed time;
//   - x-get: req/s divided by that of GET in the same run on the same client
//     (reported only when GET ran first, so filter with -bench on the parent,
//     not on one sub-benchmark); the goals are >= 0.8 for replays and >= 0.4
//     for first executions;
//   - rt/op: Redis round trips (commands or pipelines) per call, counted by a
//     client hook with an atomic counter (tripCounter), which adds no lock
//     and no allocation to the calls measured;
//   - redis-us/op: Redis server time per call in command execution, the sum
//     of usec over INFO commandstats (reset by CONFIG RESETSTAT before the
//     timed loop) on every master. A command run by a script counts in its
//     own line and again inside the script's time;
//   - redis-cpu-us/op: the redis-server processes' whole CPU per call
//     (INFO cpu, user + sys), which adds what commandstats leaves out:
//     reading, parsing and answering requests.
//
// Callers, the Go client and redis-server share the machine's cores, so the
// absolute rates depend on the machine; the ratios are what to compare.
func BenchmarkThroughput(b *testing.B) {
	clients := []struct {
		name   string
		client func(testing.TB) redis.UniversalClient
	}{
		{"single", func(tb testing.TB) redis.UniversalClient { return redistest.Single(tb) }},
		{"cluster", func(tb testing.TB) redis.UniversalClient { return redistest.Cluster(tb) }},
	}
	for _, c := range clients {
		b.Run(c.name, func(b *testing.B) {
			client := c.client(b)
			count := &tripCounter{}
			if cc, ok := client.(*redis.ClusterClient); ok {
				cc.OnNewNode(func(n *redis.Client) { n.AddHook(count) })
			} else {
				client.AddHook(count)
			}
			throughput(b, client, count)
		})
	}
}

func throughput(b *testing.B, client redis.UniversalClient, count *tripCounter) {
	ctx := context.Background()
	// A new prefix per run, so that no run finds keys of an earlier one.
	// With -count, the testing package repeats each leaf sub-benchmark
	// within one run of this function, hence the keys of FirstExecution
	// numbered across repetitions. Everything written expires on its own
	// (idem.DefaultTTL), and the servers die with the test binary.
	prefix := "tp:" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	store := redisstore.New(client, redisstore.WithPrefix(prefix))
	op := idem.New[string, benchResult](store)
	cached := idem.New[string, benchResult](store, idem.WithLocalCache(4096))
	fn := func(context.Context, string) (benchResult, error) { return benchRes, nil }

	hits := fill(b, ctx, op, fn)
	plain := plainKeys(b, ctx, client, prefix)
	// Warm the cache the way a replica of a service would: by replays of
	// records another process committed.
	for _, k := range hits {
		if _, err := cached.Do(ctx, k, "req", fn); err != nil {
			b.Fatal(err)
		}
	}

	var getRate float64
	b.Run("GET", func(b *testing.B) {
		getRate = measured(b, ctx, client, count, 0, func(i uint64) error {
			return client.Get(ctx, plain[i%hitKeys]).Err()
		})
	})
	b.Run("ReplayHit", func(b *testing.B) {
		measured(b, ctx, client, count, getRate, func(i uint64) error {
			_, err := op.Do(ctx, hits[i%hitKeys], "req", fn)
			return err
		})
	})
	b.Run("ReplayHitLocalCache", func(b *testing.B) {
		measured(b, ctx, client, count, getRate, func(i uint64) error {
			_, err := cached.Do(ctx, hits[i%hitKeys], "req", fn)
			return err
		})
	})
	var seq atomic.Uint64 // across the sub-benchmark's calls with growing b.N
	b.Run("FirstExecution", func(b *testing.B) {
		keys := make([]string, b.N)
		for i := range keys {
			keys[i] = "new-" + strconv.FormatUint(seq.Add(1), 36)
		}
		measured(b, ctx, client, count, getRate, func(i uint64) error {
			_, err := op.Do(ctx, keys[i], "req", fn)
			return err
		})
	})
}

// benchRes is the result fn returns in the throughput benchmarks.
var benchRes = benchResult{ID: "ch_3Mtw4xLkdIwHu7ix0QjHZyqf", Amount: 1999, Currency: "eur", Status: "succeeded"}

// fill completes hitKeys keys through op and returns them.
func fill(b *testing.B, ctx context.Context, op *idem.Operation[string, benchResult], fn func(context.Context, string) (benchResult, error)) []string {
	b.Helper()
	keys := make([]string, hitKeys)
	for i := range keys {
		keys[i] = "hit-" + strconv.Itoa(i)
		if _, err := op.Do(ctx, keys[i], "req", fn); err != nil {
			b.Fatal(err)
		}
	}
	return keys
}

// plainKeys stores under hitKeys plain keys a copy of the raw value of one
// record that fill stored under prefix, found by SCAN so as not to depend on
// how the store names its keys, and returns the keys.
func plainKeys(b *testing.B, ctx context.Context, client redis.UniversalClient, prefix string) []string {
	b.Helper()
	var (
		mu  sync.Mutex
		raw string
	)
	err := forEachMaster(ctx, client, func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, prefix+"*hit-0", 1000).Iterator()
		for iter.Next(ctx) {
			v, err := c.Get(ctx, iter.Val()).Result()
			if err != nil {
				return err
			}
			mu.Lock()
			raw = v
			mu.Unlock()
		}
		return iter.Err()
	})
	if err != nil || raw == "" {
		b.Fatalf("finding the stored record under %q: %q, %v", prefix, raw, err)
	}
	keys := make([]string, hitKeys)
	pipe := client.Pipeline()
	for i := range keys {
		keys[i] = prefix + "plain-" + strconv.Itoa(i)
		pipe.Set(ctx, keys[i], raw, idem.DefaultTTL)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		b.Fatal(err)
	}
	return keys
}

// forEachMaster calls fn with the client of every master: the client itself
// for a single node.
func forEachMaster(ctx context.Context, client redis.UniversalClient, fn func(context.Context, *redis.Client) error) error {
	switch c := client.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, fn)
	case *redis.Client:
		return fn(ctx, c)
	default:
		return fmt.Errorf("forEachMaster: unsupported client %T", client)
	}
}

// parallelism returns the b.SetParallelism factor that gives at least
// callers goroutines.
func parallelism() int {
	procs := runtime.GOMAXPROCS(0)
	return (callers + procs - 1) / procs
}

// parallel runs call(i) for i in [0, b.N) from at least callers goroutines,
// timing only the calls, and returns calls per second.
func parallel(b *testing.B, call func(i uint64) error) float64 {
	b.SetParallelism(parallelism())
	var next atomic.Uint64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := call(next.Add(1) - 1); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	return float64(b.N) / b.Elapsed().Seconds()
}

// measured runs call as parallel does and reports the throughput metrics
// described on BenchmarkThroughput, x-get against getRate unless it is 0.
// It returns the calls per second.
func measured(b *testing.B, ctx context.Context, client redis.UniversalClient, count *tripCounter, getRate float64, call func(i uint64) error) float64 {
	b.ReportAllocs()
	before := stats(b, ctx, client, true)
	count.n.Store(0)
	rate := parallel(b, call)
	trips := count.n.Load()
	after := stats(b, ctx, client, false)
	n := float64(b.N)
	b.ReportMetric(rate, "req/s")
	if getRate > 0 {
		b.ReportMetric(rate/getRate, "x-get")
	}
	b.ReportMetric(float64(trips)/n, "rt/op")
	b.ReportMetric(float64(after.usec)/n, "redis-us/op")
	b.ReportMetric((after.cpu-before.cpu).Seconds()*1e6/n, "redis-cpu-us/op")
	return rate
}

// serverStats is what INFO says, summed over the masters.
type serverStats struct {
	usec int64         // command execution time, commandstats
	cpu  time.Duration // process CPU, user + sys
}

// stats returns the server statistics of every master of client, summed,
// after a CONFIG RESETSTAT if reset. The commands that reset and read them
// are left out of usec.
func stats(b *testing.B, ctx context.Context, client redis.UniversalClient, reset bool) serverStats {
	b.Helper()
	var (
		mu  sync.Mutex
		sum serverStats
	)
	err := forEachMaster(ctx, client, func(ctx context.Context, c *redis.Client) error {
		if reset {
			if err := c.ConfigResetStat(ctx).Err(); err != nil {
				return err
			}
		}
		info, err := c.Info(ctx, "commandstats", "cpu").Result()
		if err != nil {
			return err
		}
		s, err := parseInfo(info)
		mu.Lock()
		sum.usec += s.usec
		sum.cpu += s.cpu
		mu.Unlock()
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return sum
}

// parseInfo sums the usec of the cmdstat_ lines of info other than CONFIG
// and INFO, and used_cpu_user and used_cpu_sys.
func parseInfo(info string) (serverStats, error) {
	var s serverStats
	for line := range strings.Lines(info) {
		line = strings.TrimSpace(line)
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch {
		case name == "used_cpu_user", name == "used_cpu_sys":
			f, err := strconv.ParseFloat(value, 64)
			if err != nil {
				return s, fmt.Errorf("INFO %s: %w", line, err)
			}
			s.cpu += time.Duration(f * float64(time.Second))
		case strings.HasPrefix(name, "cmdstat_config"), strings.HasPrefix(name, "cmdstat_info"):
		case strings.HasPrefix(name, "cmdstat_"):
			for field := range strings.SplitSeq(value, ",") {
				if v, ok := strings.CutPrefix(field, "usec="); ok {
					us, err := strconv.ParseInt(v, 10, 64)
					if err != nil {
						return s, fmt.Errorf("INFO %s: %w", line, err)
					}
					s.usec += us
				}
			}
		}
	}
	return s, nil
}

// BenchmarkPoolSize measures how the go-redis pool settings of one client
// change what 64 concurrent callers get through it, for a plain GET and for
// a replay hit, on the single node: the figures behind the advice on
// PoolSize, MinIdleConns and ContextTimeoutEnabled. Run it with
//
//	go test -run '^$' -bench BenchmarkPoolSize -benchmem ./redisstore
//
// Each configuration is redistest.Options with the fields its name gives
// changed ("default" is go-redis's: PoolSize 10 per GOMAXPROCS). Every call
// carries a context with a deadline, as a request handler's would, so that
// ContextTimeoutEnabled has something to act on. Besides req/s and x-get
// (ReplayHit over GET of the same configuration), each sub-benchmark reports:
//
//   - conns: connections open after the run, main pool plus go-redis's
//     dedicated pipeline pool (pipelines, such as the store's Acquire, take
//     up to PipelinePoolSize = 10 connections of their own there, and spill
//     to the main pool beyond that);
//   - wait-us/op: time callers spent waiting for a free connection of the
//     main pool, per call;
//   - cold-ms: the time 64 simultaneous first calls take on a client just
//     created (given time to dial its MinIdleConns first), the median of 7
//     clients, measured once per configuration (so the same in every
//     repetition of -count): what MinIdleConns is for. go-redis never pre-dials the
//     pipeline pool, so for replays MinIdleConns only helps with
//     PipelinePoolSize -1 (pipelines on the main pool).
func BenchmarkPoolSize(b *testing.B) {
	addr := redistest.SingleServer(b).Addr
	ctx := context.Background()
	prefix := "ps:" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	setup := redistest.Single(b)
	fn := func(context.Context, string) (benchResult, error) { return benchRes, nil }
	hits := fill(b, ctx, idem.New[string, benchResult](redisstore.New(setup, redisstore.WithPrefix(prefix))), fn)
	plain := plainKeys(b, ctx, setup, prefix)

	def := 10 * runtime.GOMAXPROCS(0)
	configs := []struct {
		name string
		set  func(*redis.Options)
	}{
		{"PoolSize=4", func(o *redis.Options) { o.PoolSize = 4 }},
		{"PoolSize=10", func(o *redis.Options) { o.PoolSize = 10 }},
		{"PoolSize=default", func(*redis.Options) {}},
		{"PoolSize=64", func(o *redis.Options) { o.PoolSize = 64 }},
		{"PoolSize=default+MinIdleConns=default", func(o *redis.Options) { o.MinIdleConns = def }},
		{"PoolSize=64+MinIdleConns=64", func(o *redis.Options) { o.PoolSize, o.MinIdleConns = 64, 64 }},
		{"PoolSize=default+ContextTimeoutEnabled=false", func(o *redis.Options) { o.ContextTimeoutEnabled = false }},
		{"PoolSize=default+PipelinePoolSize=-1", func(o *redis.Options) { o.PipelinePoolSize = -1 }},
		{"PoolSize=default+MinIdleConns=default+PipelinePoolSize=-1", func(o *redis.Options) { o.MinIdleConns, o.PipelinePoolSize = def, -1 }},
	}
	for _, cfg := range configs {
		options := func() *redis.Options {
			o := redistest.Options(addr)
			cfg.set(o)
			return o
		}
		b.Run(cfg.name, func(b *testing.B) {
			// Each call has a deadline, as a request handler's would.
			get := func(c *redis.Client) func(uint64) error {
				return func(i uint64) error {
					ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
					defer cancel()
					return c.Get(ctx, plain[i%hitKeys]).Err()
				}
			}
			replay := func(c *redis.Client) func(uint64) error {
				op := idem.New[string, benchResult](redisstore.New(c, redisstore.WithPrefix(prefix)))
				return func(i uint64) error {
					ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
					defer cancel()
					_, err := op.Do(ctx, hits[i%hitKeys], "req", fn)
					return err
				}
			}
			// Before the benchmarked client exists, so that its own
			// pre-dialling does not compete.
			coldGet := cold(b, options, get)
			coldReplay := cold(b, options, replay)
			client := redis.NewClient(options())
			b.Cleanup(func() { client.Close() })

			var getRate float64
			b.Run("GET", func(b *testing.B) {
				getRate = pooled(b, client, 0, coldGet, get(client))
			})
			b.Run("ReplayHit", func(b *testing.B) {
				pooled(b, client, getRate, coldReplay, replay(client))
			})
		})
	}
}

// pooled runs call as parallel does and reports the metrics described on
// BenchmarkPoolSize. It returns the calls per second.
func pooled(b *testing.B, client *redis.Client, getRate float64, cold time.Duration, call func(i uint64) error) float64 {
	b.ReportAllocs()
	before := client.PoolStats().WaitDurationNs
	rate := parallel(b, call)
	st := client.PoolStats()
	conns := st.TotalConns
	if st.PipelineStats != nil {
		conns += st.PipelineStats.TotalConns
	}
	b.ReportMetric(rate, "req/s")
	if getRate > 0 {
		b.ReportMetric(rate/getRate, "x-get")
	}
	b.ReportMetric(float64(conns), "conns")
	b.ReportMetric(float64(st.WaitDurationNs-before)/1e3/float64(b.N), "wait-us/op")
	b.ReportMetric(float64(cold)/1e6, "cold-ms")
	return rate
}

// cold returns the median, over 7 new clients, of the time callers
// simultaneous first calls made by newCall(client) take. Each client is
// given up to a second to dial its MinIdleConns, and then 50ms, as a
// service's client created at start-up has before its first requests.
func cold(b *testing.B, options func() *redis.Options, newCall func(*redis.Client) func(i uint64) error) time.Duration {
	b.Helper()
	times := make([]time.Duration, 7)
	for r := range times {
		o := options()
		c := redis.NewClient(o)
		call := newCall(c)
		for deadline := time.Now().Add(time.Second); int(c.PoolStats().IdleConns) < o.MinIdleConns && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
		var (
			wg    sync.WaitGroup
			errs  = make(chan error, callers)
			start = time.Now()
		)
		for i := range callers {
			wg.Go(func() {
				if err := call(uint64(i)); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		times[r] = time.Since(start)
		c.Close()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	slices.Sort(times)
	return times[len(times)/2]
}

// tripCounter is a go-redis hook that counts round trips (a command or a
// pipeline) with an atomic, for benchmarks: roundtrip_test.go's counter
// also records command names, under a mutex that 64 callers would contend
// for.
type tripCounter struct{ n atomic.Int64 }

func (*tripCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *tripCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}

func (c *tripCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}
