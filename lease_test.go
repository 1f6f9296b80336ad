package idem_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/codec"
	"github.com/idemkit/idem/memstore"
)

// flakyStore wraps a real memstore: its leases' Refresh fails with a
// transient error while refreshFails is set, and the first commitFails
// Commits fail with one. It counts the refreshes asked for.
type flakyStore struct {
	*memstore.Store
	refreshes    atomic.Int32
	refreshFails atomic.Bool
	commitFails  atomic.Int32
	commits      atomic.Int32
	commitErr    error // what the failing Commits return; errBlip when nil
}

var errBlip = errors.New("i/o timeout")

func (s *flakyStore) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	a, err := s.Store.Acquire(ctx, key, fp, ttl)
	if a.Lease != nil {
		a.Lease = &flakyLease{Lease: a.Lease, s: s}
	}
	return a, err
}

type flakyLease struct {
	idem.Lease
	s *flakyStore
}

func (l *flakyLease) Refresh(ctx context.Context, ttl time.Duration) error {
	l.s.refreshes.Add(1)
	if l.s.refreshFails.Load() {
		return errBlip
	}
	return l.Lease.Refresh(ctx, ttl)
}

func (l *flakyLease) Commit(ctx context.Context, rec []byte, ttl time.Duration) error {
	if l.s.commits.Add(1) <= l.s.commitFails.Load() {
		if l.s.commitErr != nil {
			return l.s.commitErr
		}
		return errBlip
	}
	return l.Lease.Commit(ctx, rec, ttl)
}

// TestRefreshFailuresCancelFnAtExpiry: when refreshes keep failing, fn's
// context is cancelled with ErrLeaseLost about one lease TTL after the last
// successful refresh, not later.
func TestRefreshFailuresCancelFnAtExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lockTTL = 300 * time.Millisecond
		s := &flakyStore{Store: memstore.New()}
		s.refreshFails.Store(true)
		op := idem.New[string, int](s, idem.WithLockTTL(lockTTL))
		begin := time.Now()
		var cancelledAfter time.Duration
		_, err := op.Do(context.Background(), "k", "r", func(ctx context.Context, _ string) (int, error) {
			select {
			case <-ctx.Done():
				cancelledAfter = time.Since(begin)
				return 0, context.Cause(ctx)
			case <-time.After(10 * lockTTL):
				return 1, nil
			}
		})
		if !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("err = %v, want fn's context cancelled with ErrLeaseLost", err)
		}
		// The bubble's clock makes this exact: the lease was granted at
		// begin, and no refresh got through.
		if cancelledAfter != lockTTL {
			t.Fatalf("fn cancelled after %v, want the lease TTL %v", cancelledAfter, lockTTL)
		}
	})
}

// TestTransientRefreshFailureKeepsFn: one failed refresh among good ones
// does not cancel fn.
func TestTransientRefreshFailureKeepsFn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lockTTL = 300 * time.Millisecond
		s := &flakyStore{Store: memstore.New()}
		op := idem.New[string, int](s, idem.WithLockTTL(lockTTL))
		r, err := op.Do(context.Background(), "k", "r", func(ctx context.Context, _ string) (int, error) {
			time.Sleep(lockTTL / 2)
			s.refreshFails.Store(true)
			time.Sleep(lockTTL / 3)
			s.refreshFails.Store(false)
			select {
			case <-ctx.Done():
				return 0, context.Cause(ctx)
			case <-time.After(2 * lockTTL):
				return 1, nil
			}
		})
		if err != nil || r != 1 {
			t.Fatalf("Do = %d, %v; want fn to finish despite one failed refresh", r, err)
		}
	})
}

func TestCommitRetriedAfterTransientFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &flakyStore{Store: memstore.New()}
		s.commitFails.Store(2)
		op := idem.New[string, int](s)
		runs := 0
		fn := func(context.Context, string) (int, error) { runs++; return 5, nil }
		if r, err := op.Do(context.Background(), "k", "r", fn); err != nil || r != 5 {
			t.Fatalf("Do = %d, %v; want the commit retried until it succeeds", r, err)
		}
		if r, info, err := op.DoInfo(context.Background(), "k", "r", fn); err != nil || r != 5 || !info.Replayed || runs != 1 {
			t.Fatalf("replay = %d, %+v, %v, runs %d", r, info, err, runs)
		}
		if n := s.commits.Load(); n != 3 {
			t.Fatalf("%d commits, want 3 (two failures, one success)", n)
		}
	})
}

// TestCommitNotStoredIsFinal: a Commit error that wraps ErrNotStored says no
// retry can store the record (pgstore's, once fn's transaction is over), so
// Do returns it at once instead of retrying for a lease TTL.
func TestCommitNotStoredIsFinal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errOver := fmt.Errorf("%w: the transaction is over", idem.ErrNotStored)
		s := &flakyStore{Store: memstore.New(), commitErr: errOver}
		s.commitFails.Store(100)
		op := idem.New[string, int](s)
		begin := time.Now()
		r, info, err := op.DoInfo(context.Background(), "k", "r", func(context.Context, string) (int, error) { return 5, nil })
		if r != 5 || !errors.Is(err, errOver) || err.Error() != errOver.Error() || info.Outcome != idem.OutcomeNotStored {
			t.Fatalf("Do = %d, %v, %v; want fn's value and the Commit's error as it is", r, info.Outcome, err)
		}
		if n := s.commits.Load(); n != 1 || time.Since(begin) != 0 {
			t.Fatalf("%d commits over %v, want 1 at once", n, time.Since(begin))
		}
	})
}

// waitFailStore holds every key for someone else and cannot wait.
type waitFailStore struct{}

func (waitFailStore) Acquire(context.Context, string, string, time.Duration) (idem.Acquisition, error) {
	fp, _ := idem.Fingerprint("r")
	return idem.Acquisition{Holder: fp}, nil
}
func (waitFailStore) Wait(context.Context, string) error { return errBlip }

func TestWaitFailureIsStoreError(t *testing.T) {
	op := idem.New[string, int](waitFailStore{}, idem.WithWaitTimeout(time.Second))
	_, err := op.Do(context.Background(), "k", "r", mustNotRun[string, int](t))
	if !errors.Is(err, idem.ErrStore) || !errors.Is(err, errBlip) {
		t.Fatalf("err = %v, want ErrStore wrapping the Wait failure", err)
	}
}

// TestPanicAfterFnKeepsLease: when the disposition function (or the codec)
// panics after fn returned, fn's effect stands, so the lease is not released
// for an immediate re-run: it expires after the lease TTL. The panic reaches
// the caller.
func TestPanicAfterFnKeepsLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lockTTL = 200 * time.Millisecond
		s := memstore.New()
		ctx := context.Background()
		boom := idem.New[string, int](s, idem.WithLockTTL(lockTTL), idem.WithDisposition(func(error) idem.Disposition { panic("predicate") }))
		func() {
			defer func() {
				if r := recover(); r != "predicate" {
					t.Errorf("recovered %v, want the predicate's panic", r)
				}
			}()
			_, _ = boom.Do(ctx, "k", "r", func(context.Context, string) (int, error) { return 0, errors.New("x") })
		}()
		op := idem.New[string, int](s, idem.WithLockTTL(lockTTL))
		if _, err := op.Do(ctx, "k", "r", mustNotRun[string, int](t)); !errors.Is(err, idem.ErrInFlight) {
			t.Fatalf("right after the panic: %v, want ErrInFlight (lease kept)", err)
		}
		time.Sleep(lockTTL + 50*time.Millisecond)
		if r, err := op.Do(ctx, "k", "r", func(context.Context, string) (int, error) { return 1, nil }); err != nil || r != 1 {
			t.Fatalf("after the lease expired: %d, %v; want fn to run", r, err)
		}
	})
}

func TestNamespacesCannotCollide(t *testing.T) {
	s := memstore.New()
	ctx := context.Background()
	ns := idem.New[string, string](s, idem.WithNamespace("charges"))
	plain := idem.New[string, string](s)
	_, _ = ns.Do(ctx, "k", "r", func(context.Context, string) (string, error) { return "namespaced", nil })
	r, err := plain.Do(ctx, "charges:k", "r", func(context.Context, string) (string, error) { return "plain", nil })
	if err != nil || r != "plain" {
		t.Fatalf("key %q without a namespace got %q, %v; want its own execution", "charges:k", r, err)
	}
}

type longNameCodec struct{ codec.JSON }

func (longNameCodec) Name() string { return strings.Repeat("x", 256) }

func TestCodecNameTooLong(t *testing.T) {
	op := idem.New[string, int](memstore.New(), idem.WithCodec(longNameCodec{}))
	if _, err := op.Do(context.Background(), "k", "r", mustNotRun[string, int](t)); !errors.Is(err, idem.ErrInvalidOption) {
		t.Fatalf("err = %v, want ErrInvalidOption", err)
	}
}

// stopStore grants leases whose first Refresh is still under way when fn
// returns, and whose Commit outlasts the lease TTL, recording the cause of
// fn's context meanwhile.
type stopStore struct {
	refreshing, fnDone chan struct{}
	fnCtx              context.Context
	causeInCommit      error
}

func (s *stopStore) Acquire(context.Context, string, string, time.Duration) (idem.Acquisition, error) {
	return idem.Acquisition{Lease: &stopLease{s}}, nil
}
func (s *stopStore) Wait(context.Context, string) error { return nil }

type stopLease struct{ s *stopStore }

func (l *stopLease) Refresh(context.Context, time.Duration) error {
	select {
	case <-l.s.refreshing:
	default:
		close(l.s.refreshing)
	}
	<-l.s.fnDone
	time.Sleep(20 * time.Millisecond) // stop has stopped the timers by now
	return nil
}

func (l *stopLease) Commit(context.Context, []byte, time.Duration) error {
	time.Sleep(200 * time.Millisecond) // longer than the lease TTL
	l.s.causeInCommit = context.Cause(l.s.fnCtx)
	return nil
}

func (l *stopLease) Release(context.Context) error { return nil }

// TestRefreshUnderWayAtStop: a refresh that succeeds after fn returned must
// not re-arm the lease-expiry timer that stop has stopped, which would
// cancel fn's context with ErrLeaseLost during Commit.
func TestRefreshUnderWayAtStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &stopStore{refreshing: make(chan struct{}), fnDone: make(chan struct{})}
		op := idem.New[string, int](s, idem.WithLockTTL(90*time.Millisecond))
		_, err := op.Do(context.Background(), "k", "r", func(ctx context.Context, _ string) (int, error) {
			s.fnCtx = ctx
			<-s.refreshing
			close(s.fnDone)
			return 1, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if errors.Is(s.causeInCommit, idem.ErrLeaseLost) {
			t.Error("fn's context was cancelled with ErrLeaseLost during Commit: the stopped expiry timer was re-armed")
		}
	})
}

// TestInterruptedErrorNotRecorded: with a disposition that records every
// error, an error fn returns after its context ended (here the caller
// gave up) is released, not stored as the key's outcome; an error fn
// marks itself still is.
func TestInterruptedErrorNotRecorded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		op := idem.New[string, int](memstore.New(), idem.WithDisposition(func(error) idem.Disposition { return idem.Record }))
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(time.Second, cancel)
		interrupted := func(ctx context.Context, _ string) (int, error) { <-ctx.Done(); return 0, ctx.Err() }
		_, info, err := op.DoInfo(ctx, "k", "r", interrupted)
		if !errors.Is(err, context.Canceled) || info.Outcome != idem.OutcomeFnError {
			t.Fatalf("interrupted call = %v, %v; want fn's error, released", info.Outcome, err)
		}
		r, info, err := op.DoInfo(context.Background(), "k", "r", func(context.Context, string) (int, error) { return 7, nil })
		if err != nil || r != 7 || info.Outcome != idem.OutcomeExecuted {
			t.Fatalf("retry = %d, %v, %v; want fn run again", r, info.Outcome, err)
		}
		// Marked by fn itself, it is recorded even so.
		ctx, cancel = context.WithCancel(context.Background())
		time.AfterFunc(time.Second, cancel)
		_, info, _ = op.DoInfo(ctx, "k2", "r", func(ctx context.Context, _ string) (int, error) {
			<-ctx.Done()
			return 0, idem.Final(errors.New("settled anyway"))
		})
		if info.Outcome != idem.OutcomeFinalError {
			t.Errorf("a Final error after the context ended: %v, want final_error", info.Outcome)
		}
	})
}

// slowRefreshStore is memstore whose lease refreshes take a second.
type slowRefreshStore struct{ *memstore.Store }

func (s slowRefreshStore) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	a, err := s.Store.Acquire(ctx, key, fp, ttl)
	if a.Lease != nil {
		a.Lease = slowRefreshLease{a.Lease}
	}
	return a, err
}

type slowRefreshLease struct{ idem.Lease }

func (l slowRefreshLease) Refresh(ctx context.Context, ttl time.Duration) error {
	time.Sleep(time.Second)
	return l.Lease.Refresh(ctx, ttl)
}

// TestGenuineErrorJudgedWhenFnReturns: fn returns a genuine error while
// its context is still live, so WithDisposition is asked, even when the
// caller's deadline passes while the keeper stops (which waits for a
// refresh under way): whether fn was interrupted is judged as it returns.
func TestGenuineErrorJudgedWhenFnReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		asked := 0
		op := idem.New[string, int](slowRefreshStore{memstore.New()},
			idem.WithLockTTL(3*time.Second),
			idem.WithDisposition(func(error) idem.Disposition { asked++; return idem.Record }))
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		declined := errors.New("card declined")
		var ctxErrAtReturn error
		_, info, err := op.DoInfo(ctx, "k", "r", func(ctx context.Context, _ string) (int, error) {
			time.Sleep(1200 * time.Millisecond) // the refresh sent at 1s is under way until 2s
			ctxErrAtReturn = ctx.Err()
			return 0, declined
		})
		if ctxErrAtReturn != nil {
			t.Fatalf("test setup: fn's context had ended when it returned: %v", ctxErrAtReturn)
		}
		if info.Outcome != idem.OutcomeFinalError || asked != 1 {
			t.Errorf("genuine error returned at 1.2s, deadline 1.5s: outcome %v (err %v), decide asked %d times; want final_error, decide asked once", info.Outcome, err, asked)
		}
	})
}
