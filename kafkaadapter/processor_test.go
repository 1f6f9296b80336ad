package kafkaadapter_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/kafkaadapter"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/queue"
)

// at returns r at partition 0, offset off, with a fixed timestamp, as a
// consumer receives it.
func at(r *kgo.Record, off int64) *kgo.Record {
	r.Offset = off
	r.Timestamp = time.UnixMilli(1_700_000_000_000)
	return r
}

// withHeaders returns r with the headers h (name, value, name, value...).
func withHeaders(r *kgo.Record, h ...string) *kgo.Record {
	r.Headers = nil
	for i := 0; i+1 < len(h); i += 2 {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: h[i], Value: []byte(h[i+1])})
	}
	return r
}

// terminated counts the records given to the WithOnTerminate hook, and
// remembers the last error.
type terminated struct {
	n   atomic.Int64
	err atomic.Pointer[error]
}

func (d *terminated) option() kafkaadapter.Option {
	return kafkaadapter.WithOnTerminate(func(_ context.Context, _ *kgo.Record, err error) error {
		d.n.Add(1)
		d.err.Store(&err)
		return nil
	})
}

func (d *terminated) last() error {
	if p := d.err.Load(); p != nil {
		return *p
	}
	return nil
}

// A key header reused with another payload terminates the record, fn not
// run; the same payload with other transport headers, at another offset,
// is the same message, replayed.
func TestKeyReused(t *testing.T) {
	t.Parallel()
	var c counter
	var d terminated
	proc := kafkaadapter.New(memstore.New(), "g", c.process, d.option())
	ctx := context.Background()
	wantResult(t, "first", proc.Process(ctx, at(rec("k", "v1"), 0)), queue.Ack, idem.OutcomeExecuted, true)

	res := proc.Process(ctx, at(rec("k", "v2"), 1))
	wantResult(t, "other value", res, queue.Terminate, idem.OutcomeKeyReused, true)
	if !errors.Is(res.Err, idem.ErrKeyReused) || d.n.Load() != 1 || !errors.Is(d.last(), idem.ErrKeyReused) {
		t.Errorf("other value: err %v, hook called %d times with %v", res.Err, d.n.Load(), d.last())
	}
	other := at(rec("k", "v1"), 2)
	other.Topic = "t2"
	wantResult(t, "other topic", proc.Process(ctx, other), queue.Terminate, idem.OutcomeKeyReused, true)
	keyed := at(rec("k", "v1"), 3)
	keyed.Key = []byte("partition-key")
	wantResult(t, "other record key", proc.Process(ctx, keyed), queue.Terminate, idem.OutcomeKeyReused, true)

	again := withHeaders(at(rec("", "v1"), 4), "Idempotency-Key", "k", "traceparent", "00-abc-01")
	wantResult(t, "same message, other headers", proc.Process(ctx, again), queue.Ack, idem.OutcomeReplayed, true)
	if n := c.all.Load(); n != 1 {
		t.Errorf("fn ran %d times, want 1", n)
	}
}

// WithKeyHeader names the header; header names match without regard to
// case. A record without the header is keyed by its position.
func TestKeyHeader(t *testing.T) {
	t.Parallel()
	var c counter
	proc := kafkaadapter.New(memstore.New(), "g", c.process, kafkaadapter.WithKeyHeader("X-Request-Id"))
	ctx := context.Background()
	wantResult(t, "first", proc.Process(ctx, withHeaders(at(rec("", "a"), 0), "X-Request-Id", "r1")), queue.Ack, idem.OutcomeExecuted, true)
	wantResult(t, "lower case", proc.Process(ctx, withHeaders(at(rec("", "a"), 1), "x-request-id", "r1")), queue.Ack, idem.OutcomeReplayed, true)
	// Idempotency-Key is not this Processor's header: these records are
	// keyed by their offsets, so both run.
	wantResult(t, "default header", proc.Process(ctx, at(rec("r1", "b"), 2)), queue.Ack, idem.OutcomeExecuted, true)
	wantResult(t, "default header again", proc.Process(ctx, at(rec("r1", "b"), 3)), queue.Ack, idem.OutcomeExecuted, true)
	if c.get("a") != 1 || c.get("b") != 2 {
		t.Errorf("fn ran %d times for a, %d for b; want 1 and 2", c.get("a"), c.get("b"))
	}

	var d counter
	def := kafkaadapter.New(memstore.New(), "g", d.process)
	wantResult(t, "default name", def.Process(ctx, withHeaders(at(rec("", "c"), 0), "IDEMPOTENCY-KEY", "k")), queue.Ack, idem.OutcomeExecuted, true)
	wantResult(t, "default name, other case", def.Process(ctx, withHeaders(at(rec("", "c"), 1), "idempotency-key", "k")), queue.Ack, idem.OutcomeReplayed, true)
}

// A header that is present but not a valid key terminates the record
// rather than fall back to its position; repeated with the same value, it
// is one key.
func TestKeyHeaderInvalid(t *testing.T) {
	t.Parallel()
	var c counter
	var d terminated
	proc := kafkaadapter.New(memstore.New(), "g", c.process, d.option())
	ctx := context.Background()
	for name, r := range map[string]*kgo.Record{
		"empty":          withHeaders(at(rec("", "v"), 0), "Idempotency-Key", ""),
		"too long":       withHeaders(at(rec("", "v"), 1), "Idempotency-Key", strings.Repeat("k", idem.MaxKeyLen+1)),
		"control":        withHeaders(at(rec("", "v"), 2), "Idempotency-Key", "a\nb"),
		"repeated":       withHeaders(at(rec("", "v"), 3), "Idempotency-Key", "a", "idempotency-key", "b"),
		"not UTF-8":      withHeaders(at(rec("", "v"), 4), "Idempotency-Key", "\xff"),
		"other repeated": withHeaders(at(rec("", "v"), 5), "Idempotency-Key", "", "Idempotency-Key", "a"),
	} {
		res := proc.Process(ctx, r)
		wantResult(t, name, res, queue.Terminate, idem.OutcomeInvalidKey, true)
		if !errors.Is(res.Err, idem.ErrInvalidKey) || res.Attempts != 0 {
			t.Errorf("%s: err %v, %d attempts; want ErrInvalidKey, 0", name, res.Err, res.Attempts)
		}
	}
	if c.all.Load() != 0 || d.n.Load() != 6 {
		t.Errorf("fn ran %d times, hook %d; want 0 and 6", c.all.Load(), d.n.Load())
	}
	same := withHeaders(at(rec("", "v"), 6), "Idempotency-Key", "a", "Idempotency-Key", "a")
	wantResult(t, "repeated, same value", proc.Process(ctx, same), queue.Ack, idem.OutcomeExecuted, true)
}

// WithKey replaces the header and the position; its error, or a key it
// returns that is not valid, terminates the record.
func TestWithKey(t *testing.T) {
	t.Parallel()
	var c counter
	var d terminated
	proc := kafkaadapter.New(memstore.New(), "g", c.process, d.option(), kafkaadapter.WithKey(func(r *kgo.Record) (string, error) {
		if r.Key == nil {
			return "", errors.New("no record key")
		}
		return string(r.Key), nil
	}))
	ctx := context.Background()
	keyed := func(key, v, header string, off int64) *kgo.Record {
		r := at(rec(header, v), off)
		if key != "-" {
			r.Key = []byte(key)
		}
		return r
	}
	wantResult(t, "first", proc.Process(ctx, keyed("order-1", "v", "h1", 0)), queue.Ack, idem.OutcomeExecuted, true)
	wantResult(t, "other header", proc.Process(ctx, keyed("order-1", "v", "h2", 1)), queue.Ack, idem.OutcomeReplayed, true)
	res := proc.Process(ctx, keyed("-", "v", "h1", 2))
	wantResult(t, "WithKey error", res, queue.Terminate, idem.OutcomeInvalidKey, true)
	if !errors.Is(res.Err, idem.ErrInvalidKey) || !strings.Contains(res.Err.Error(), "no record key") {
		t.Errorf("WithKey error: %v", res.Err)
	}
	wantResult(t, "empty key", proc.Process(ctx, keyed("", "v", "", 3)), queue.Terminate, idem.OutcomeInvalidKey, true)
	if c.all.Load() != 1 || d.n.Load() != 2 {
		t.Errorf("fn ran %d times, hook %d; want 1 and 2", c.all.Load(), d.n.Load())
	}
}

// A record without a key is keyed by its position and timestamp: a
// redelivery is replayed; another record at the same offset (a topic
// created again) runs. Long topic names work.
func TestPositionKey(t *testing.T) {
	t.Parallel()
	var c counter
	proc := kafkaadapter.New(memstore.New(), "g", c.process)
	ctx := context.Background()
	wantResult(t, "first", proc.Process(ctx, at(rec("", "v"), 7)), queue.Ack, idem.OutcomeExecuted, true)
	res := proc.Process(ctx, at(rec("", "v"), 7))
	wantResult(t, "redelivery", res, queue.Ack, idem.OutcomeReplayed, true)
	if want := idem.ScopedKey("g/position", "t/0/7@1700000000000"); res.Info.Key != want {
		t.Errorf("key %q, want %q", res.Info.Key, want)
	}
	wantResult(t, "next offset", proc.Process(ctx, at(rec("", "v"), 8)), queue.Ack, idem.OutcomeExecuted, true)
	recreated := at(rec("", "v"), 7)
	recreated.Timestamp = recreated.Timestamp.Add(time.Hour)
	wantResult(t, "topic created again", proc.Process(ctx, recreated), queue.Ack, idem.OutcomeExecuted, true)
	other := at(rec("", "v"), 7)
	other.Partition = 1
	wantResult(t, "other partition", proc.Process(ctx, other), queue.Ack, idem.OutcomeExecuted, true)

	long := at(rec("", "w"), 1<<62)
	long.Topic, long.Partition = strings.Repeat("x", 249), 1<<30
	wantResult(t, "long topic", proc.Process(ctx, long), queue.Ack, idem.OutcomeExecuted, true)
	wantResult(t, "long topic again", proc.Process(ctx, long), queue.Ack, idem.OutcomeReplayed, true)
	if c.get("v") != 4 || c.get("w") != 1 {
		t.Errorf("fn ran %d and %d times, want 4 and 1", c.get("v"), c.get("w"))
	}
}

// Two groups reading one topic with one store each process every record;
// the members of one group share their records.
func TestGroups(t *testing.T) {
	t.Parallel()
	store := memstore.New()
	var billing, emails counter
	ctx := context.Background()
	r := at(rec("order-1", "v"), 0)
	wantResult(t, "billing", kafkaadapter.New(store, "billing", billing.process).Process(ctx, r), queue.Ack, idem.OutcomeExecuted, true)
	wantResult(t, "emails", kafkaadapter.New(store, "emails", emails.process).Process(ctx, r), queue.Ack, idem.OutcomeExecuted, true)
	wantResult(t, "billing, other member", kafkaadapter.New(store, "billing", billing.process).Process(ctx, r), queue.Ack, idem.OutcomeReplayed, true)
	if billing.all.Load() != 1 || emails.all.Load() != 1 {
		t.Errorf("billing ran %d times, emails %d; want 1 and 1", billing.all.Load(), emails.all.Load())
	}
}

// A hook that fails keeps the record uncommittable; the redelivery
// replays the final error, fn not run, and calls the hook again.
func TestTerminateHookFails(t *testing.T) {
	t.Parallel()
	var c counter
	var calls atomic.Int64
	dlq := errors.New("dead-letter topic unavailable")
	proc := kafkaadapter.New(memstore.New(), "g", func(ctx context.Context, r *kgo.Record) error {
		c.add(r)
		return idem.Final(errors.New("invalid order"))
	}, kafkaadapter.WithOnTerminate(func(context.Context, *kgo.Record, error) error {
		if calls.Add(1) == 1 {
			return dlq
		}
		return nil
	}))
	ctx := context.Background()
	res := proc.Process(ctx, at(rec("k", "v"), 0))
	wantResult(t, "hook fails", res, queue.Terminate, idem.OutcomeFinalError, false)
	if !errors.Is(res.TerminateErr, dlq) {
		t.Errorf("TerminateErr %v, want %v", res.TerminateErr, dlq)
	}
	res = proc.Process(ctx, at(rec("k", "v"), 0))
	wantResult(t, "redelivery", res, queue.Terminate, idem.OutcomeReplayed, true)
	if res.TerminateErr != nil || calls.Load() != 2 || c.all.Load() != 1 {
		t.Errorf("TerminateErr %v, hook called %d times, fn ran %d; want nil, 2, 1", res.TerminateErr, calls.Load(), c.all.Load())
	}
}

// Without WithOnTerminate, a terminated record is committable.
func TestTerminateWithoutHook(t *testing.T) {
	t.Parallel()
	proc := kafkaadapter.New(memstore.New(), "g", func(context.Context, *kgo.Record) error {
		return idem.Final(errors.New("invalid order"))
	})
	wantResult(t, "final", proc.Process(context.Background(), at(rec("k", "v"), 0)), queue.Terminate, idem.OutcomeFinalError, true)
}

// An attempt in flight past the wait timeout is RetryAfterLease, not
// retried in place; a Process whose ctx ends while it waits is Retry.
// Neither is committable, nor runs fn.
func TestInFlight(t *testing.T) {
	t.Parallel()
	store := memstore.New()
	started, release := make(chan struct{}), make(chan struct{})
	slow := kafkaadapter.New(store, "g", func(context.Context, *kgo.Record) error {
		close(started)
		<-release
		return nil
	})
	done := make(chan kafkaadapter.Result)
	r := at(rec("k", "v"), 0)
	go func() { done <- slow.Process(context.Background(), r) }()
	<-started

	var c counter
	short := kafkaadapter.New(store, "g", c.process, kafkaadapter.WithOptions(idem.WithWaitTimeout(20*time.Millisecond)))
	res := short.Process(context.Background(), r)
	wantResult(t, "past the wait", res, queue.RetryAfterLease, idem.OutcomeInFlight, false)
	if !errors.Is(res.Err, idem.ErrInFlight) || res.Attempts != 1 {
		t.Errorf("past the wait: err %v, %d attempts; want ErrInFlight, 1", res.Err, res.Attempts)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	res = kafkaadapter.New(store, "g", c.process).Process(ctx, r)
	wantResult(t, "ctx ends", res, queue.Retry, idem.OutcomeCanceled, false)
	if !errors.Is(res.Err, context.DeadlineExceeded) || res.Attempts != 1 {
		t.Errorf("ctx ends: err %v, %d attempts; want DeadlineExceeded, 1", res.Err, res.Attempts)
	}

	close(release)
	wantResult(t, "first attempt", <-done, queue.Ack, idem.OutcomeExecuted, true)
	if c.all.Load() != 0 {
		t.Errorf("fn ran %d times, want 0", c.all.Load())
	}
}

// A held error (unknown effect) is RetryAfterLease; the redelivery waits
// for the lease to expire and runs fn.
func TestHeld(t *testing.T) {
	t.Parallel()
	var c counter
	proc := kafkaadapter.New(memstore.New(), "g", func(_ context.Context, r *kgo.Record) error {
		if c.add(r) == 1 {
			return idem.Dispose(errors.New("gateway timeout"), idem.Hold)
		}
		return nil
	}, kafkaadapter.WithOptions(idem.WithLockTTL(30*time.Millisecond)))
	ctx := context.Background()
	wantResult(t, "held", proc.Process(ctx, at(rec("k", "v"), 0)), queue.RetryAfterLease, idem.OutcomeHeld, false)
	wantResult(t, "redelivery", proc.Process(ctx, at(rec("k", "v"), 0)), queue.Ack, idem.OutcomeExecuted, true)
	if c.all.Load() != 2 {
		t.Errorf("fn ran %d times, want 2", c.all.Load())
	}
}

// fn's errors are retried in place up to WithRetries' n, then Retry; a
// Process whose ctx ends during the backoff returns at once.
func TestRetries(t *testing.T) {
	t.Parallel()
	var c counter
	fail := errors.New("transient")
	proc := kafkaadapter.New(memstore.New(), "g", func(_ context.Context, r *kgo.Record) error {
		c.add(r)
		return fail
	}, kafkaadapter.WithRetries(2, time.Millisecond, 2*time.Millisecond))
	res := proc.Process(context.Background(), at(rec("k", "v"), 0))
	wantResult(t, "failing", res, queue.Retry, idem.OutcomeFnError, false)
	if res.Err != fail || res.Attempts != 3 || c.all.Load() != 3 {
		t.Errorf("err %v, %d attempts, fn ran %d times; want %v, 3, 3", res.Err, res.Attempts, c.all.Load(), fail)
	}

	slow := kafkaadapter.New(memstore.New(), "g", func(context.Context, *kgo.Record) error { return fail },
		kafkaadapter.WithRetries(5, time.Hour, time.Hour))
	// Long enough for the first attempt to run on a loaded machine; the
	// hour's backoff then outlasts it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	res = slow.Process(ctx, at(rec("k", "v"), 0))
	wantResult(t, "ctx ends in backoff", res, queue.Retry, idem.OutcomeFnError, false)
	if d := time.Since(start); d > 5*time.Second || res.Attempts != 1 {
		t.Errorf("returned after %v and %d attempts, want at once and 1", d, res.Attempts)
	}

	var none counter
	zero := kafkaadapter.New(memstore.New(), "g", func(_ context.Context, r *kgo.Record) error {
		none.add(r)
		return fail
	}, kafkaadapter.WithRetries(0, 0, 0))
	if res := zero.Process(context.Background(), at(rec("k", "v"), 0)); res.Attempts != 1 || none.all.Load() != 1 {
		t.Errorf("WithRetries(0): %d attempts, fn ran %d times; want 1 and 1", res.Attempts, none.all.Load())
	}
}

// failingStore fails every call.
type failingStore struct{}

var errDown = errors.New("store down")

func (failingStore) Acquire(context.Context, string, string, time.Duration) (idem.Acquisition, error) {
	return idem.Acquisition{}, errDown
}
func (failingStore) Wait(context.Context, string) error { return errDown }

// A store failure is retried in place, then Retry; fn does not run.
func TestStoreFailure(t *testing.T) {
	t.Parallel()
	var c counter
	proc := kafkaadapter.New(failingStore{}, "g", c.process, kafkaadapter.WithRetries(1, time.Millisecond, time.Millisecond))
	res := proc.Process(context.Background(), at(rec("k", "v"), 0))
	wantResult(t, "store down", res, queue.Retry, idem.OutcomeStoreError, false)
	if !errors.Is(res.Err, idem.ErrStore) || !errors.Is(res.Err, errDown) || res.Attempts != 2 || c.all.Load() != 0 {
		t.Errorf("err %v, %d attempts, fn ran %d times", res.Err, res.Attempts, c.all.Load())
	}
}

// Invalid options are reported by Err, and every Process is Retry, fn not
// run and nothing committable.
func TestInvalidOptions(t *testing.T) {
	t.Parallel()
	var c counter
	store := memstore.New()
	for name, proc := range map[string]*kafkaadapter.Processor{
		"nil store":        kafkaadapter.New(nil, "g", c.process),
		"empty group":      kafkaadapter.New(store, "", c.process),
		"nil fn":           kafkaadapter.New(store, "g", nil),
		"negative retries": kafkaadapter.New(store, "g", c.process, kafkaadapter.WithRetries(-1, 0, 0)),
		"lo above hi":      kafkaadapter.New(store, "g", c.process, kafkaadapter.WithRetries(1, time.Second, time.Millisecond)),
		"empty header":     kafkaadapter.New(store, "g", c.process, kafkaadapter.WithKeyHeader("")),
		"idem option":      kafkaadapter.New(store, "g", c.process, kafkaadapter.WithOptions(idem.WithTTL(-1))),
		"namespace":        kafkaadapter.New(store, "g", c.process, kafkaadapter.WithOptions(idem.WithNamespace("a:b"))),
	} {
		if err := proc.Err(); !errors.Is(err, idem.ErrInvalidOption) {
			t.Errorf("%s: Err() = %v, want ErrInvalidOption", name, err)
		}
		res := proc.Process(context.Background(), at(rec("k", "v"), 0))
		wantResult(t, name, res, queue.Retry, idem.OutcomeInvalid, false)
		if !errors.Is(res.Err, idem.ErrInvalidOption) {
			t.Errorf("%s: Process err %v, want ErrInvalidOption", name, res.Err)
		}
	}
	if c.all.Load() != 0 {
		t.Errorf("fn ran %d times, want 0", c.all.Load())
	}
	if err := kafkaadapter.New(store, "g", c.process, nil, kafkaadapter.WithKey(nil), kafkaadapter.WithOnTerminate(nil)).Err(); err != nil {
		t.Errorf("nil options: %v", err)
	}
	msg := kafkaadapter.New(store, "g", c.process, kafkaadapter.WithRetries(-1, 0, 0)).Err().Error()
	if !strings.HasPrefix(msg, "idem: invalid option: kafkaadapter.WithRetries(-1, 0s, 0s)") {
		t.Errorf("error %q, want it to name the option", msg)
	}
	if res := kafkaadapter.New(store, "g", c.process).Process(context.Background(), nil); res.Commit() || !errors.Is(res.Err, idem.ErrInvalidOption) {
		t.Errorf("Process(nil): %+v", res)
	}
}

// Result.Commit for every action.
func TestResultCommit(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		res  kafkaadapter.Result
		want bool
	}{
		{kafkaadapter.Result{Action: queue.Ack}, true},
		{kafkaadapter.Result{Action: queue.Terminate}, true},
		{kafkaadapter.Result{Action: queue.Terminate, TerminateErr: errDown}, false},
		{kafkaadapter.Result{Action: queue.Retry}, false},
		{kafkaadapter.Result{Action: queue.RetryAfterLease}, false},
		{kafkaadapter.Result{}, false},
	} {
		if got := tt.res.Commit(); got != tt.want {
			t.Errorf("%+v.Commit() = %v, want %v", tt.res, got, tt.want)
		}
	}
}
