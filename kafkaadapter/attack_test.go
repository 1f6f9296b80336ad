package kafkaadapter_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/kafkaadapter"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/queue"
	"github.com/idemkit/idem/redisstore"
)

// produceTo writes recs with the manual partitioner (each record's
// Partition is where it goes) and returns, per partition, the offset past
// the last record written.
func produceTo(t *testing.T, seeds kgo.Opt, recs ...*kgo.Record) map[int32]int64 {
	t.Helper()
	ends, err := produceManual(seeds, recs...)
	if err != nil {
		t.Fatal(err)
	}
	return ends
}

func produceManual(seeds kgo.Opt, recs ...*kgo.Record) (map[int32]int64, error) {
	cl, err := kgo.NewClient(seeds, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ends := map[int32]int64{}
	for _, r := range cl.ProduceSync(ctx, recs...) {
		if r.Err != nil {
			return nil, r.Err
		}
		ends[r.Record.Partition] = max(ends[r.Record.Partition], r.Record.Offset+1)
	}
	return ends, nil
}

// Four partitions on one broker, polled 5 records at a time so that most
// of every fetch stays buffered; every 7th record fails twice (no in-place
// retries). Each partition's Process calls must follow its offsets, a
// failed record coming again before any later record of its partition,
// whatever the other partitions do; and the commits are the ends.
func TestAttackRewindOrderManyPartitions(t *testing.T) {
	t.Parallel()
	seeds := newCluster(t, 4)
	const perPartition = 25
	var recs []*kgo.Record
	for off := range perPartition {
		for p := range int32(4) {
			r := rec("", fmt.Sprintf("p%d-%d", p, off))
			r.Partition = p
			recs = append(recs, r)
		}
	}
	produceTo(t, seeds, recs...)
	group := groupName(t)
	var c counter
	proc := kafkaadapter.New(memstore.New(), group, func(_ context.Context, r *kgo.Record) error {
		if c.add(r) <= 2 && r.Offset%7 == 3 {
			return errors.New("transient")
		}
		return nil
	}, kafkaadapter.WithRetries(0, 0, 0))
	cl := consumer(t, seeds, group)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	next := map[int32]int64{}
	settled := 0
	for settled < 4*perPartition {
		fetches := cl.PollRecords(ctx, 5)
		if ctx.Err() != nil {
			t.Fatalf("%d records of %d settled: %v", settled, 4*perPartition, ctx.Err())
		}
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			for _, r := range p.Records {
				if r.Offset != next[r.Partition] {
					t.Errorf("Process(%d/%d), want offset %d of the partition", r.Partition, r.Offset, next[r.Partition])
				}
				if !proc.Process(ctx, r).Commit() {
					cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{
						r.Topic: {r.Partition: {Epoch: r.LeaderEpoch, Offset: r.Offset}},
					})
					return
				}
				next[r.Partition] = r.Offset + 1
				cl.MarkCommitRecords(r)
				settled++
			}
		})
		cl.AllowRebalance()
	}
	if err := cl.CommitMarkedOffsets(ctx); err != nil {
		t.Fatal(err)
	}
	for p := range int32(4) {
		if got := cl.CommittedOffsets()["t"][p].Offset; got != perPartition {
			t.Errorf("partition %d: committed %d, want %d", p, got, perPartition)
		}
	}
	for _, r := range recs {
		want := 1
		if index := strings.IndexByte(string(r.Value), '-'); index > 0 {
			var off int
			fmt.Sscanf(string(r.Value[index+1:]), "%d", &off)
			if off%7 == 3 {
				want = 3
			}
		}
		if got := c.get(string(r.Value)); got != want {
			t.Errorf("%s: fn ran %d times, want %d", r.Value, got, want)
		}
	}
}

// The store goes down while fn runs, past the lock TTL: fn's context is
// cancelled with idem.ErrLeaseLost, and when fn returns nil anyway, with
// the store back (empty, as after a failover without persistence), its
// outcome cannot be stored. The record must not be committed: it is
// RetryAfterLease (ErrNotStored), fetched again, and runs again, told; the
// next record waits for it.
func TestAttackLeaseLostStoreDown(t *testing.T) {
	t.Parallel()
	srv := redistest.StartSingle(t)
	rc := redis.NewClient(redistest.Options(srv.Addr))
	t.Cleanup(func() { rc.Close() })
	seeds := newCluster(t, 1)
	produce(t, seeds, rec("order-1", "slow"), rec("order-2", "next"))
	group := groupName(t)

	var c counter
	started, restarted := make(chan struct{}), make(chan struct{})
	cause := make(chan error, 1)
	proc := kafkaadapter.New(redisstore.New(rc), group, func(ctx context.Context, r *kgo.Record) error {
		if c.add(r) == 1 && string(r.Value) == "slow" {
			close(started)
			select {
			case <-ctx.Done():
				cause <- context.Cause(ctx)
			case <-time.After(testTimeout):
				cause <- errors.New("fn's context was not cancelled")
			}
			<-restarted
			return nil // its effect happened
		}
		return nil
	}, kafkaadapter.WithRetries(0, 0, 0), kafkaadapter.WithOptions(idem.WithLockTTL(300*time.Millisecond)))
	go func() {
		<-started
		srv.Kill()
		time.Sleep(500 * time.Millisecond) // past the lock TTL
		if err := srv.Restart(); err != nil {
			t.Error(err)
		}
		close(restarted)
	}()
	cl := consumer(t, seeds, group)
	out := mustConsume(t, cl, proc, 2)
	if err := recv(t, cause, "fn's context"); !errors.Is(err, idem.ErrLeaseLost) {
		t.Errorf("fn's context cause %v, want ErrLeaseLost", err)
	}
	// slow: not stored, then (after store errors while the client
	// reconnects, if any) executed; next only after it.
	var got []string
	for _, o := range out {
		got = append(got, fmt.Sprintf("%s:%v:%v", o.rec.Value, o.res.Action, o.res.Info.Outcome))
	}
	seq := strings.Join(got, " ")
	seq = strings.ReplaceAll(seq, " slow:retry:store_error", "")
	if want := "slow:retry_after_lease:not_stored slow:ack:executed next:ack:executed"; seq != want {
		t.Fatalf("Process calls %v, want %s", got, want)
	}
	if !errors.Is(out[0].res.Err, idem.ErrNotStored) || out[0].res.Commit() {
		t.Errorf("first attempt: err %v, Commit %v; want ErrNotStored, false", out[0].res.Err, out[0].res.Commit())
	}
	if c.get("slow") != 2 || c.get("next") != 1 {
		t.Errorf("fn ran %d times for slow, %d for next; want 2 and 1", c.get("slow"), c.get("next"))
	}
	if got := committed(cl); got != 2 {
		t.Errorf("committed %d, want 2", got)
	}
}

// Many goroutines Process deliveries of one message (one key, one payload,
// at different offsets) at once: fn runs once, every delivery is
// committable, one executed and the others replayed.
func TestAttackConcurrentSameKey(t *testing.T) {
	t.Parallel()
	var c counter
	proc := kafkaadapter.New(memstore.New(), "g", func(ctx context.Context, r *kgo.Record) error {
		c.add(r)
		time.Sleep(20 * time.Millisecond)
		return nil
	})
	const n = 64
	results := make([]kafkaadapter.Result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i] = proc.Process(context.Background(), at(rec("k", "v"), int64(i))) })
	}
	wg.Wait()
	executed := 0
	for i, res := range results {
		if !res.Commit() || res.Action != queue.Ack {
			t.Errorf("delivery %d: %v/%v, err %v", i, res.Action, res.Info.Outcome, res.Err)
		}
		if res.Info.Outcome == idem.OutcomeExecuted {
			executed++
		}
	}
	if executed != 1 || c.all.Load() != 1 {
		t.Errorf("%d executed, fn ran %d times; want 1 and 1", executed, c.all.Load())
	}
}

// Shutdown while fn runs: fn that stops on ctx is Retry, not committable,
// and the redelivery runs it and commits; a fn that completes anyway is
// stored and committable. A final error whose dead-letter hook sees the
// ended ctx is not committable; its redelivery replays it.
func TestAttackCancelMidFn(t *testing.T) {
	t.Parallel()
	var c counter
	var hookCalls atomic.Int64
	started := make(chan struct{}, 1)
	proc := kafkaadapter.New(memstore.New(), "g", func(ctx context.Context, r *kgo.Record) error {
		if c.add(r) > 1 {
			return nil // the redelivery
		}
		started <- struct{}{}
		<-ctx.Done() // shutdown
		switch string(r.Value) {
		case "stops":
			return ctx.Err()
		case "final":
			return idem.Final(errors.New("declined"))
		}
		return nil // completes anyway
	}, kafkaadapter.WithOnTerminate(func(ctx context.Context, _ *kgo.Record, _ error) error {
		hookCalls.Add(1)
		return ctx.Err()
	}))
	for _, tt := range []struct {
		value  string
		first  queue.Action
		o      idem.Outcome
		commit bool
		then   idem.Outcome
	}{
		{"stops", queue.Retry, idem.OutcomeFnError, false, idem.OutcomeExecuted},
		{"completes", queue.Ack, idem.OutcomeExecuted, true, idem.OutcomeReplayed},
		{"final", queue.Terminate, idem.OutcomeFinalError, false, idem.OutcomeReplayed},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan kafkaadapter.Result, 1)
		go func() { done <- proc.Process(ctx, at(rec("k-"+tt.value, tt.value), 0)) }()
		recv(t, started, tt.value+"'s fn to start")
		cancel()
		wantResult(t, tt.value+", cancelled", recv(t, done, "Process"), tt.first, tt.o, tt.commit)
		res := proc.Process(context.Background(), at(rec("k-"+tt.value, tt.value), 0))
		wantResult(t, tt.value+", redelivered", res, res.Action, tt.then, true)
	}
	if hookCalls.Load() != 2 || c.get("final") != 1 || c.get("stops") != 2 || c.get("completes") != 1 {
		t.Errorf("hook called %d times, fn ran %d/%d/%d times (stops/completes/final); want 2, 2/1/1",
			hookCalls.Load(), c.get("stops"), c.get("completes"), c.get("final"))
	}
}

// Key header edge cases: a null header value is a present, empty key
// (terminated); a 1 MiB value is refused without trouble; the header
// repeated with the same value under other cases is one key; a header
// whose name only starts like the key header is not it.
func TestAttackKeyHeaderEdges(t *testing.T) {
	t.Parallel()
	var c counter
	var d terminated
	proc := kafkaadapter.New(memstore.New(), "g", c.process, d.option())
	ctx := context.Background()

	null := at(rec("", "v"), 0)
	null.Headers = []kgo.RecordHeader{{Key: "Idempotency-Key", Value: nil}}
	wantResult(t, "null value", proc.Process(ctx, null), queue.Terminate, idem.OutcomeInvalidKey, true)
	huge := withHeaders(at(rec("", "v"), 1), "Idempotency-Key", strings.Repeat("k", 1<<20))
	wantResult(t, "1 MiB", proc.Process(ctx, huge), queue.Terminate, idem.OutcomeInvalidKey, true)
	cases := withHeaders(at(rec("", "w"), 2), "idempotency-key", "a", "IDEMPOTENCY-KEY", "a", "Idempotency-Key", "a")
	wantResult(t, "cases", proc.Process(ctx, cases), queue.Ack, idem.OutcomeExecuted, true)
	wantResult(t, "cases, again", proc.Process(ctx, withHeaders(at(rec("", "w"), 3), "Idempotency-Key", "a")), queue.Ack, idem.OutcomeReplayed, true)
	prefix := withHeaders(at(rec("", "x"), 4), "Idempotency-Key-Old", "a")
	res := proc.Process(ctx, prefix)
	wantResult(t, "other header", res, queue.Ack, idem.OutcomeExecuted, true)
	if want := idem.ScopedKey("g/position", "t/0/4@1700000000000"); res.Info.Key != want {
		t.Errorf("other header: key %q, want the position %q", res.Info.Key, want)
	}
	if d.n.Load() != 2 || c.all.Load() != 2 {
		t.Errorf("hook called %d times, fn ran %d; want 2 and 2", d.n.Load(), c.all.Load())
	}
}

// Records without a key or value, through the fake cluster: a null value
// and an empty value are both processed once per key, and a producer's
// second send of each is replayed.
func TestAttackNilKeyAndValue(t *testing.T) {
	t.Parallel()
	seeds := newCluster(t, 1)
	null := func(k string) *kgo.Record { r := rec(k, ""); r.Value = nil; return r }
	empty := func(k string) *kgo.Record { r := rec(k, ""); r.Value = []byte{}; return r }
	produce(t, seeds, null("k1"), empty("k2"), null("k1"), empty("k2"), null(""), empty(""))
	group := groupName(t)
	var runs atomic.Int64
	proc := kafkaadapter.New(memstore.New(), group, func(context.Context, *kgo.Record) error { runs.Add(1); return nil })
	out := mustConsume(t, consumer(t, seeds, group), proc, 6)
	var got []string
	for _, o := range out {
		got = append(got, fmt.Sprintf("%d:%v", o.rec.Offset, o.res.Info.Outcome))
	}
	if want := "0:executed 1:executed 2:replayed 3:replayed 4:executed 5:executed"; strings.Join(got, " ") != want {
		t.Errorf("Process calls %v, want %s", got, want)
	}
	if runs.Load() != 4 {
		t.Errorf("fn ran %d times, want 4", runs.Load())
	}
}

// TestAttackFnModifyingValueBreaksReplay: an fn that works on rec.Value in
// place (decrypting, normalizing) and fails once must not have its success
// stored under the fingerprint of the bytes it changed: the redelivery of
// the unchanged record would be refused as a reused key and dead-lettered
// instead of replayed. It was, until Process fingerprinted copies of the
// record's bytes.
func TestAttackFnModifyingValueBreaksReplay(t *testing.T) {
	t.Parallel()
	var runs atomic.Int64
	proc := kafkaadapter.New(memstore.New(), "g", func(_ context.Context, r *kgo.Record) error {
		for i, b := range r.Value { // normalize in place
			if 'a' <= b && b <= 'z' {
				r.Value[i] = b - 'a' + 'A'
			}
		}
		if runs.Add(1) == 1 {
			return errors.New("transient")
		}
		return nil
	}, kafkaadapter.WithRetries(1, 0, 0))
	ctx := context.Background()
	res := proc.Process(ctx, at(rec("order-1", "charge 10 eur"), 0))
	wantResult(t, "first delivery", res, queue.Ack, idem.OutcomeExecuted, true)
	res = proc.Process(ctx, at(rec("order-1", "charge 10 eur"), 0)) // as fetched again
	wantResult(t, "redelivery", res, queue.Ack, idem.OutcomeReplayed, true)
	if runs.Load() != 2 {
		t.Errorf("fn ran %d times, want 2", runs.Load())
	}
}

// TestAttackHeaderKeyCollidesWithPositionKey: a producer's header value
// that looks like a record's position (a relay republishing records with
// their source position as key) must not name the keyless record at that
// position. It did, until position keys got a scope of their own.
func TestAttackHeaderKeyCollidesWithPositionKey(t *testing.T) {
	t.Parallel()
	var c counter
	proc := kafkaadapter.New(memstore.New(), "g", func(ctx context.Context, r *kgo.Record) error {
		c.add(r)
		return nil
	})
	ctx := context.Background()
	keyless := at(rec("", "+1"), 5)
	wantResult(t, "keyless record", proc.Process(ctx, keyless), queue.Ack, idem.OutcomeExecuted, true)
	keyed := at(rec("t/0/5@1700000000000", "+1"), 9)
	wantResult(t, "another record, keyed by its header", proc.Process(ctx, keyed), queue.Ack, idem.OutcomeExecuted, true)
	if n := c.get("+1"); n != 2 {
		t.Errorf("fn ran %d times for two records with different keys, want 2", n)
	}
}
