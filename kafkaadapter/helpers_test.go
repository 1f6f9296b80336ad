package kafkaadapter_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/kafkaadapter"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/queue"
)

// testTimeout bounds every wait of a test on the fake cluster, so that a
// bug fails the test instead of hanging it.
const testTimeout = 15 * time.Second

// newStoreFunc returns the store a test runs on. The store may be shared
// with other tests: tests keep apart by their group names (groupName).
type newStoreFunc func(t *testing.T) idem.Store

func newMemstore(*testing.T) idem.Store { return memstore.New() }

// groups numbers the names groupName returns.
var groups atomic.Int64

// groupName returns a consumer group name of t's own, fresh on every run,
// so that tests sharing a store (Redis, also across -count runs) never
// share keys.
func groupName(t *testing.T) string { return fmt.Sprintf("g-%s-%d", t.Name(), groups.Add(1)) }

// newCluster starts a one-broker fake Kafka cluster with topic "t" of the
// given partitions, stopped when t ends, and returns its seed option.
func newCluster(t *testing.T, partitions int32) kgo.Opt {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, "t"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return kgo.SeedBrokers(c.ListenAddrs()...)
}

// rec returns a record for topic "t" with value v and, unless key is
// empty, the idempotency key header.
func rec(key, v string) *kgo.Record {
	r := &kgo.Record{Topic: "t", Value: []byte(v)}
	if key != "" {
		r.Headers = []kgo.RecordHeader{{Key: kafkaadapter.DefaultKeyHeader, Value: []byte(key)}}
	}
	return r
}

// produce writes recs to the cluster, in order.
func produce(t *testing.T, seeds kgo.Opt, recs ...*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(seeds)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	for _, r := range recs {
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}

// consumer returns a group member of group consuming topic "t", set up as
// the package documentation says, and closed when t ends unless the test
// closed it first.
func consumer(t *testing.T, seeds kgo.Opt, group string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{
		seeds,
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics("t"),
		kgo.AutoCommitMarks(),
		kgo.BlockRebalanceOnPoll(),
		kgo.HeartbeatInterval(100 * time.Millisecond),
		kgo.FetchMaxWait(200 * time.Millisecond),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.CloseAllowingRebalance)
	return cl
}

// pollN polls cl until it has n records, and returns them. It may run in a
// goroutine other than the test's.
func pollN(cl *kgo.Client, n int) ([]*kgo.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var recs []*kgo.Record
	for len(recs) < n {
		f := cl.PollRecords(ctx, n-len(recs))
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("polled %d records of %d: %w", len(recs), n, err)
		}
		if err := f.Err(); err != nil {
			return nil, err
		}
		recs = append(recs, f.Records()...)
		cl.AllowRebalance()
	}
	return recs, nil
}

func mustPoll(t *testing.T, cl *kgo.Client, n int) []*kgo.Record {
	t.Helper()
	recs, err := pollN(cl, n)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// outcome is one Process call of consume: the record and its Result.
type outcome struct {
	rec *kgo.Record
	res kafkaadapter.Result
}

// consume runs the poll loop of the package documentation on cl until n
// records were committable (Result.Commit), and returns every Process
// call's record and Result, in order. It commits the marks before it
// returns. It may run in a goroutine other than the test's.
func consume(cl *kgo.Client, proc *kafkaadapter.Processor, n int) ([]outcome, error) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var out []outcome
	for done := 0; done < n; {
		fetches := cl.PollRecords(ctx, 100)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			return out, fmt.Errorf("%d records of %d committable: %w", done, n, ctx.Err())
		}
		if err := fetches.Err(); err != nil {
			return out, err
		}
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			for _, rec := range p.Records {
				res := proc.Process(ctx, rec)
				out = append(out, outcome{rec, res})
				if !res.Commit() {
					// Fetch rec, and the records after it, again.
					cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{
						rec.Topic: {rec.Partition: {Epoch: rec.LeaderEpoch, Offset: rec.Offset}},
					})
					return // the rest of the partition waits
				}
				cl.MarkCommitRecords(rec)
				done++
			}
		})
		cl.AllowRebalance()
	}
	return out, cl.CommitMarkedOffsets(ctx)
}

func mustConsume(t *testing.T, cl *kgo.Client, proc *kafkaadapter.Processor, n int) []outcome {
	t.Helper()
	out, err := consume(cl, proc, n)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// committed returns the offset cl committed for partition 0 of topic "t".
func committed(cl *kgo.Client) int64 {
	return cl.CommittedOffsets()["t"][0].Offset
}

// counter counts fn's runs per record value.
type counter struct {
	mu   sync.Mutex
	runs map[string]int
	all  atomic.Int64
}

func (c *counter) add(rec *kgo.Record) int {
	c.all.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.runs == nil {
		c.runs = map[string]int{}
	}
	c.runs[string(rec.Value)]++
	return c.runs[string(rec.Value)]
}

func (c *counter) get(value string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs[value]
}

// process returns an fn that counts its runs in c and succeeds.
func (c *counter) process(ctx context.Context, rec *kgo.Record) error {
	c.add(rec)
	return nil
}

// waitSignal is a Store that closes waiting the first time a call waits
// for an in-flight key, so that a test knows a duplicate is waiting.
type waitSignal struct {
	idem.Store
	once    sync.Once
	waiting chan struct{}
}

func newWaitSignal(s idem.Store) *waitSignal {
	return &waitSignal{Store: s, waiting: make(chan struct{})}
}

func (w *waitSignal) Wait(ctx context.Context, key string) error {
	w.once.Do(func() { close(w.waiting) })
	return w.Store.Wait(ctx, key)
}

// wantResult checks a Result's action, outcome and committability.
func wantResult(t *testing.T, what string, res kafkaadapter.Result, action queue.Action, o idem.Outcome, commit bool) {
	t.Helper()
	if res.Action != action || res.Info.Outcome != o || res.Commit() != commit {
		t.Errorf("%s: Result %v/%v (Commit %v, err %v, terminate err %v), want %v/%v (Commit %v)",
			what, res.Action, res.Info.Outcome, res.Commit(), res.Err, res.TerminateErr, action, o, commit)
	}
}

// recv receives from ch, or fails t after testTimeout.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}
