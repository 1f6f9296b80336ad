package queue_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/queue"
)

// brokenStore fails every Acquire, as an unreachable Redis would.
type brokenStore struct{}

func (brokenStore) Acquire(context.Context, string, string, time.Duration) (idem.Acquisition, error) {
	return idem.Acquisition{}, errors.New("connection refused")
}
func (brokenStore) Wait(context.Context, string) error { return nil }

// junkStore returns a record that is not one.
type junkStore struct{}

func (junkStore) Acquire(context.Context, string, string, time.Duration) (idem.Acquisition, error) {
	return idem.Acquisition{Record: []byte("junk")}, nil
}
func (junkStore) Wait(context.Context, string) error { return nil }

func TestDecide(t *testing.T) {
	ctx := context.Background()
	ok := func(context.Context, string) (int, error) { return 1, nil }
	fail := func(context.Context, string) (int, error) { return 0, errors.New("smtp down") }
	final := func(context.Context, string) (int, error) { return 0, idem.Final(errors.New("bad address")) }

	store := memstore.New()
	op := idem.New[string, int](store, idem.WithLockTTL(time.Minute))
	held := idem.New[string, int](store, idem.WithLockTTL(time.Minute), idem.WithDisposition(func(error) idem.Disposition { return idem.Hold }))
	unstorable := idem.New[string, any](store)
	mustDo := func(key string, fn func(context.Context, string) (int, error)) {
		t.Helper()
		_, _, _ = op.DoInfo(ctx, key, "m", fn)
	}
	mustDo("done", ok)
	mustDo("final", final)
	inFlight, release := make(chan struct{}), make(chan struct{})
	go op.Do(ctx, "running", "m", func(context.Context, string) (int, error) { close(inFlight); <-release; return 1, nil })
	<-inFlight
	defer close(release)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()

	for _, tc := range []struct {
		name string
		call func() (idem.Info, error)
		want queue.Action
	}{
		{"executed", func() (idem.Info, error) { _, i, err := op.DoInfo(ctx, "new", "m", ok); return i, err }, queue.Ack},
		{"replayed", func() (idem.Info, error) { _, i, err := op.DoInfo(ctx, "done", "m", ok); return i, err }, queue.Ack},
		{"fn_error", func() (idem.Info, error) { _, i, err := op.DoInfo(ctx, "fails", "m", fail); return i, err }, queue.Retry},
		{"final_error", func() (idem.Info, error) { _, i, err := op.DoInfo(ctx, "final2", "m", final); return i, err }, queue.Terminate},
		{"replayed final error", func() (idem.Info, error) { _, i, err := op.DoInfo(ctx, "final", "m", ok); return i, err }, queue.Terminate},
		{"key_reused", func() (idem.Info, error) { _, i, err := op.DoInfo(ctx, "done", "other", ok); return i, err }, queue.Terminate},
		{"in_flight", func() (idem.Info, error) { _, i, err := op.DoInfo(ctx, "running", "m", ok); return i, err }, queue.RetryAfterLease},
		{"held", func() (idem.Info, error) { _, i, err := held.DoInfo(ctx, "held", "m", fail); return i, err }, queue.RetryAfterLease},
		{"not_stored", func() (idem.Info, error) {
			_, i, err := unstorable.DoInfo(ctx, "unstorable", "m", func(context.Context, string) (any, error) { return struct{ A int }{1}, nil })
			return i, err
		}, queue.RetryAfterLease},
		{"invalid_key", func() (idem.Info, error) { _, i, err := op.DoInfo(ctx, "", "m", ok); return i, err }, queue.Terminate},
		{"store_error", func() (idem.Info, error) {
			_, i, err := idem.New[string, int](brokenStore{}).DoInfo(ctx, "k", "m", ok)
			return i, err
		}, queue.Retry},
		{"corrupt_record", func() (idem.Info, error) {
			_, i, err := idem.New[string, int](junkStore{}).DoInfo(ctx, "k", "m", ok)
			return i, err
		}, queue.Terminate},
		{"canceled", func() (idem.Info, error) {
			_, i, err := idem.New[string, int](store, idem.WithWaitTimeout(time.Minute)).DoInfo(cancelled, "running", "m", ok)
			return i, err
		}, queue.Retry},
		{"invalid option", func() (idem.Info, error) {
			_, i, err := idem.New[string, int](store, idem.WithTTL(-1)).DoInfo(ctx, "k", "m", ok)
			return i, err
		}, queue.Retry},
		{"unfingerprintable", func() (idem.Info, error) {
			_, i, err := idem.New[func(), int](store).DoInfo(ctx, "k", func() {}, func(context.Context, func()) (int, error) { return 1, nil })
			return i, err
		}, queue.Terminate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, err := tc.call()
			if got := queue.Decide(info, err); got != tc.want {
				t.Errorf("Decide(%v, %v) = %v, want %v", info.Outcome, err, got, tc.want)
			}
			// The error alone decides the same, but where only the
			// Operation knows: its dispositions (final, held) are not
			// in the error.
			want := tc.want
			if tc.name == "final_error" || tc.name == "held" {
				want = queue.Retry
			}
			if got := queue.Decide(idem.Info{}, err); got != want {
				t.Errorf("Decide(no outcome, %v) = %v, want %v", err, got, want)
			}
		})
	}
}

func TestDecideWithoutOutcome(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want queue.Action
	}{
		{nil, queue.Ack},
		{errors.New("anything"), queue.Retry},
		{fmt.Errorf("x: %w", idem.ErrStore), queue.Retry},
		{fmt.Errorf("x: %w", idem.ErrNotStored), queue.RetryAfterLease},
		{idem.ErrInFlight, queue.RetryAfterLease},
		{idem.ErrKeyReused, queue.Terminate},
		{fmt.Errorf("x: %w", idem.ErrCorruptRecord), queue.Terminate},
	} {
		if got := queue.Decide(idem.Info{}, tc.err); got != tc.want {
			t.Errorf("Decide(no outcome, %v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		n      int
		lo, hi time.Duration
		want   time.Duration
	}{
		{0, time.Second, time.Minute, time.Second},
		{1, time.Second, time.Minute, time.Second},
		{2, time.Second, time.Minute, 2 * time.Second},
		{4, time.Second, time.Minute, 8 * time.Second},
		{7, time.Second, time.Minute, time.Minute},
		{1000, time.Second, time.Minute, time.Minute},
		{100, time.Second, time.Duration(1<<63 - 1), time.Duration(1<<63 - 1)},
	} {
		if got := queue.Backoff(tc.n, tc.lo, tc.hi); got != tc.want {
			t.Errorf("Backoff(%d, %v, %v) = %v, want %v", tc.n, tc.lo, tc.hi, got, tc.want)
		}
	}
}

func TestActionString(t *testing.T) {
	for a, want := range map[queue.Action]string{queue.Ack: "ack", queue.Retry: "retry", queue.RetryAfterLease: "retry_after_lease", queue.Terminate: "terminate", 0: "unknown", 99: "unknown"} {
		if a.String() != want {
			t.Errorf("Action(%d).String() = %q, want %q", a, a.String(), want)
		}
	}
}
