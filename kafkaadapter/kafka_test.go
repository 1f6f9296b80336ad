package kafkaadapter_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/kafkaadapter"
	"github.com/idemkit/idem/queue"
)

// TestMemstore runs the poll-loop scenarios on a fake Kafka cluster with
// memstore; TestRedis runs them with Redis.
func TestMemstore(t *testing.T) {
	t.Parallel()
	testKafka(t, newMemstore)
}

// testKafka runs every poll-loop scenario, in parallel, each on its own
// fake cluster and on a store from newStore.
func testKafka(t *testing.T, newStore newStoreFunc) {
	tests := []struct {
		name string
		fn   func(*testing.T, newStoreFunc)
	}{
		{"RedeliveryAfterRestart", testRedeliveryAfterRestart},
		{"InFlightAfterRebalance", testInFlightAfterRebalance},
		{"InFlightAttemptFails", testInFlightAttemptFails},
		{"ErrorsRetried", testErrorsRetried},
		{"RetryRewinds", testRetryRewinds},
		{"FinalError", testFinalError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, newStore)
		})
	}
}

// A consumer that processed records but stopped before committing them
// gets them again on restart: they are replayed, fn does not run again,
// and they are committed. Records with and without a key header.
func testRedeliveryAfterRestart(t *testing.T, newStore newStoreFunc) {
	seeds := newCluster(t, 1)
	produce(t, seeds, rec("order-1", "one"), rec("order-2", "two"), rec("", "three"))
	store, group := newStore(t), groupName(t)
	var c counter
	ctx := context.Background()

	a := consumer(t, seeds, group)
	procA := kafkaadapter.New(store, group, c.process)
	for _, r := range mustPoll(t, a, 3) {
		wantResult(t, "first delivery of "+string(r.Value), procA.Process(ctx, r), queue.Ack, idem.OutcomeExecuted, true)
		// Not marked: the consumer stops before it commits.
	}
	a.CloseAllowingRebalance()

	b := consumer(t, seeds, group) // the restarted consumer
	procB := kafkaadapter.New(store, group, c.process)
	out := mustConsume(t, b, procB, 3)
	if len(out) != 3 {
		t.Fatalf("%d Process calls after the restart, want 3", len(out))
	}
	for _, o := range out {
		wantResult(t, "redelivery of "+string(o.rec.Value), o.res, queue.Ack, idem.OutcomeReplayed, true)
	}
	for _, v := range []string{"one", "two", "three"} {
		if n := c.get(v); n != 1 {
			t.Errorf("fn ran %d times for %q, want 1", n, v)
		}
	}
	if got := committed(b); got != 3 {
		t.Errorf("committed offset %d, want 3", got)
	}
}

// zombie starts processing the only record of a new cluster in member A,
// with an fn that blocks until release receives its return value, and
// makes A leave the group while fn runs, as a member kicked out of the
// group does (a zombie). Member B, which joined the group before, then gets
// the partition and runs the poll loop, whose Process calls resB returns
// once the record is committable. zombie returns once B waits for A's
// attempt.
// The store is newStore's, wrapped in a waitSignal.
func zombie(t *testing.T, newStore newStoreFunc, c *counter) (store *waitSignal, release chan<- error, resA <-chan kafkaadapter.Result, resB <-chan []outcome) {
	seeds := newCluster(t, 1)
	produce(t, seeds, rec("", "slow")) // keyed by its position
	store, group := newWaitSignal(newStore(t)), groupName(t)
	started, rel := make(chan struct{}), make(chan error, 1)
	procA := kafkaadapter.New(store, group, func(_ context.Context, r *kgo.Record) error {
		c.add(r)
		close(started)
		return <-rel
	}, kafkaadapter.WithRetries(0, 0, 0)) // the zombie gives up after one attempt
	procB := kafkaadapter.New(store, group, c.process)

	a := consumer(t, seeds, group)
	r := mustPoll(t, a, 1)[0]
	ra := make(chan kafkaadapter.Result, 1)
	go func() { ra <- procA.Process(context.Background(), r) }()
	recv(t, started, "A's fn to start")

	// B joins the group (a rebalance, after which A keeps the partition),
	// then A leaves it without committing (another rebalance, which moves
	// the partition to B) while A's fn still runs.
	var joined sync.Once
	joinedCh := make(chan struct{})
	b := consumer(t, seeds, group, kgo.OnPartitionsAssigned(func(context.Context, *kgo.Client, map[string][]int32) {
		joined.Do(func() { close(joinedCh) })
	}))
	recv(t, joinedCh, "B to join the group")
	a.CloseAllowingRebalance()
	rb := make(chan []outcome, 1)
	go func() {
		out, err := consume(b, procB, 1)
		if err != nil {
			t.Error(err)
		}
		rb <- out
	}()
	recv(t, store.waiting, "B to wait for A's attempt")
	select {
	case out := <-rb:
		t.Fatalf("B did not wait for A's attempt: %+v", out)
	case <-time.After(50 * time.Millisecond):
	}
	return store, rel, ra, rb
}

// An in-flight duplicate from a second group member after a rebalance
// waits for the first attempt and replays it: fn runs once.
func testInFlightAfterRebalance(t *testing.T, newStore newStoreFunc) {
	var c counter
	_, release, resA, resB := zombie(t, newStore, &c)
	release <- nil
	wantResult(t, "A", recv(t, resA, "A's Result"), queue.Ack, idem.OutcomeExecuted, true)
	out := recv(t, resB, "B's Results")
	if len(out) != 1 {
		t.Fatalf("B: %d Process calls, want 1", len(out))
	}
	wantResult(t, "B", out[0].res, queue.Ack, idem.OutcomeReplayed, true)
	if n := c.all.Load(); n != 1 {
		t.Errorf("fn ran %d times, want 1", n)
	}
}

// When the first attempt fails, the waiting member's wait ends and it runs
// fn: the record is not lost, and runs once more only because the first
// attempt failed.
func testInFlightAttemptFails(t *testing.T, newStore newStoreFunc) {
	var c counter
	_, release, resA, resB := zombie(t, newStore, &c)
	release <- errors.New("payment gateway down")
	wantResult(t, "A", recv(t, resA, "A's Result"), queue.Retry, idem.OutcomeFnError, false)
	out := recv(t, resB, "B's Results")
	if len(out) != 1 {
		t.Fatalf("B: %d Process calls, want 1", len(out))
	}
	wantResult(t, "B", out[0].res, queue.Ack, idem.OutcomeExecuted, true)
	if n := c.all.Load(); n != 2 {
		t.Errorf("fn ran %d times, want 2 (A's failed attempt, B's)", n)
	}
}

// fn's errors are retried in place with backoff; the record is committed
// once fn succeeds.
func testErrorsRetried(t *testing.T, newStore newStoreFunc) {
	seeds := newCluster(t, 1)
	produce(t, seeds, rec("order-1", "flaky"))
	store, group := newStore(t), groupName(t)
	var c counter
	proc := kafkaadapter.New(store, group, func(_ context.Context, r *kgo.Record) error {
		if c.add(r) <= 2 {
			return errors.New("transient")
		}
		return nil
	}, kafkaadapter.WithRetries(3, time.Millisecond, 5*time.Millisecond))
	cl := consumer(t, seeds, group)
	out := mustConsume(t, cl, proc, 1)
	if len(out) != 1 {
		t.Fatalf("%d Process calls, want 1", len(out))
	}
	wantResult(t, "flaky", out[0].res, queue.Ack, idem.OutcomeExecuted, true)
	if out[0].res.Attempts != 3 || c.get("flaky") != 3 {
		t.Errorf("%d attempts, fn ran %d times; want 3 and 3", out[0].res.Attempts, c.get("flaky"))
	}
	if got := committed(cl); got != 1 {
		t.Errorf("committed offset %d, want 1", got)
	}
}

// A record that still fails after the in-place retries is not committed:
// the loop rewinds its partition, the record is fetched again and
// processed, and the records after it are processed once, after it.
func testRetryRewinds(t *testing.T, newStore newStoreFunc) {
	seeds := newCluster(t, 1)
	produce(t, seeds, rec("k-a", "a"), rec("k-b", "b"), rec("k-c", "c"))
	store, group := newStore(t), groupName(t)
	var c counter
	proc := kafkaadapter.New(store, group, func(_ context.Context, r *kgo.Record) error {
		if c.add(r) <= 3 && string(r.Value) == "b" {
			return errors.New("transient")
		}
		return nil
	}, kafkaadapter.WithRetries(1, time.Millisecond, time.Millisecond))
	cl := consumer(t, seeds, group)
	out := mustConsume(t, cl, proc, 3)
	var got []string
	for _, o := range out {
		got = append(got, string(o.rec.Value)+":"+o.res.Action.String())
	}
	want := []string{"a:ack", "b:retry", "b:ack", "c:ack"}
	if !slices.Equal(got, want) {
		t.Fatalf("Process calls %v, want %v", got, want)
	}
	if out[1].res.Attempts != 2 || out[2].res.Attempts != 2 {
		t.Errorf("b: %d and %d attempts, want 2 and 2", out[1].res.Attempts, out[2].res.Attempts)
	}
	for v, n := range map[string]int{"a": 1, "b": 4, "c": 1} {
		if c.get(v) != n {
			t.Errorf("fn ran %d times for %q, want %d", c.get(v), v, n)
		}
	}
	if got := committed(cl); got != 3 {
		t.Errorf("committed offset %d, want 3", got)
	}
}

// A final error terminates the record: the hook dead-letters it, and it is
// committable. Redelivered (the consumer stopped before committing), it
// is terminated again from the stored error, fn not run, and given to the
// hook again.
func testFinalError(t *testing.T, newStore newStoreFunc) {
	seeds := newCluster(t, 1)
	produce(t, seeds, rec("charge-1", "declined"))
	store, group := newStore(t), groupName(t)
	var c counter
	var mu sync.Mutex
	var dead []error
	opts := []kafkaadapter.Option{kafkaadapter.WithOnTerminate(func(_ context.Context, _ *kgo.Record, err error) error {
		mu.Lock()
		defer mu.Unlock()
		dead = append(dead, err)
		return nil
	})}
	fn := func(_ context.Context, r *kgo.Record) error {
		c.add(r)
		return idem.Final(errors.New("card declined"))
	}

	a := consumer(t, seeds, group)
	res := kafkaadapter.New(store, group, fn, opts...).Process(context.Background(), mustPoll(t, a, 1)[0])
	wantResult(t, "first delivery", res, queue.Terminate, idem.OutcomeFinalError, true)
	if res.Err == nil || res.Err.Error() != "card declined" || len(dead) != 1 || dead[0] != res.Err {
		t.Errorf("first delivery: err %v, hook got %v; want card declined, once", res.Err, dead)
	}
	a.CloseAllowingRebalance() // stopped before committing

	b := consumer(t, seeds, group)
	out := mustConsume(t, b, kafkaadapter.New(store, group, fn, opts...), 1)
	if len(out) != 1 {
		t.Fatalf("%d Process calls, want 1", len(out))
	}
	res = out[0].res
	wantResult(t, "redelivery", res, queue.Terminate, idem.OutcomeReplayed, true)
	if !errors.Is(res.Err, idem.ErrReplayed) || res.Err.Error() != "card declined" {
		t.Errorf("redelivery: err %v, want the replayed card declined", res.Err)
	}
	if len(dead) != 2 || c.get("declined") != 1 {
		t.Errorf("hook called %d times, fn ran %d times; want 2 and 1", len(dead), c.get("declined"))
	}
	if got := committed(b); got != 1 {
		t.Errorf("committed offset %d, want 1", got)
	}
}
