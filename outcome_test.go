package idem_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// TestOutcomes checks Info.Outcome, and Outcome.Ran, for every way a call
// can end.
func TestOutcomes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		s := memstore.New()
		op := idem.New[string, int](s, idem.WithLockTTL(time.Second), idem.WithDisposition(func(err error) idem.Disposition {
			if err.Error() == "hold" {
				return idem.Hold
			}
			return idem.Release
		}))
		ok := func(context.Context, string) (int, error) { return 1, nil }
		fail := func(msg string) func(context.Context, string) (int, error) {
			return func(context.Context, string) (int, error) { return 0, errors.New(msg) }
		}
		cancelled, cancel := context.WithCancel(ctx)
		cancel()

		// A key held by another call, for in flight and key reused.
		held := make(chan struct{})
		release := make(chan struct{})
		go func() {
			_, _ = op.Do(ctx, "busy", "r", func(context.Context, string) (int, error) {
				close(held)
				<-release
				return 1, nil
			})
		}()
		<-held
		defer close(release)
		commitRaw(t, s, "corrupt", []byte("garbage"))

		for _, tc := range []struct {
			name string
			op   *idem.Operation[string, int]
			ctx  context.Context
			key  string
			req  string
			fn   func(context.Context, string) (int, error)
			want idem.Outcome
		}{
			{"executed", op, ctx, "a", "r", ok, idem.OutcomeExecuted},
			{"replayed", op, ctx, "a", "r", ok, idem.OutcomeReplayed},
			{"key reused", op, ctx, "a", "other", ok, idem.OutcomeKeyReused},
			{"final error", op, ctx, "b", "r", func(context.Context, string) (int, error) { return 0, idem.Final(errors.New("declined")) }, idem.OutcomeFinalError},
			{"final error replayed", op, ctx, "b", "r", ok, idem.OutcomeReplayed},
			{"fn error", op, ctx, "c", "r", fail("x"), idem.OutcomeFnError},
			{"fn error released", op, ctx, "c", "r", ok, idem.OutcomeExecuted},
			{"held", op, ctx, "d", "r", fail("hold"), idem.OutcomeHeld},
			{"in flight after hold", op, ctx, "d", "r", ok, idem.OutcomeInFlight},
			{"in flight", op, ctx, "busy", "r", ok, idem.OutcomeInFlight},
			{"key reused in flight", op, ctx, "busy", "other", ok, idem.OutcomeKeyReused},
			{"not stored", idem.New[string, int](losingStore{memstore.New()}, idem.WithLockTTL(30*time.Millisecond)), ctx, "e", "r",
				func(ctx context.Context, _ string) (int, error) { <-ctx.Done(); return 1, nil }, idem.OutcomeNotStored},
			{"store error", idem.New[string, int](brokenStore{}), ctx, "f", "r", ok, idem.OutcomeStoreError},
			{"invalid key", op, ctx, "", "r", ok, idem.OutcomeInvalidKey},
			{"corrupt record", op, ctx, "corrupt", "r", ok, idem.OutcomeCorruptRecord},
			{"canceled", op, cancelled, "busy", "r", ok, idem.OutcomeCanceled},
			{"invalid", idem.New[string, int](s, idem.WithTTL(-time.Second)), ctx, "g", "r", ok, idem.OutcomeInvalid},
		} {
			_, info, err := tc.op.DoInfo(tc.ctx, tc.key, tc.req, tc.fn)
			if info.Outcome != tc.want {
				t.Errorf("%s: outcome %v (err %v), want %v", tc.name, info.Outcome, err, tc.want)
			}
			if info.Replayed != (tc.want == idem.OutcomeReplayed) {
				t.Errorf("%s: Replayed = %v with outcome %v", tc.name, info.Replayed, info.Outcome)
			}
		}
		// The hold ends with the lease: then fn runs again.
		time.Sleep(1100 * time.Millisecond)
		if _, info, _ := op.DoInfo(ctx, "d", "r", ok); info.Outcome != idem.OutcomeExecuted {
			t.Errorf("after the hold: %v, want executed", info.Outcome)
		}
	})
}

func TestOutcomeNames(t *testing.T) {
	ran := map[idem.Outcome]bool{
		idem.OutcomeExecuted: true, idem.OutcomeFinalError: true, idem.OutcomeFnError: true,
		idem.OutcomeHeld: true, idem.OutcomeNotStored: true,
	}
	seen := map[string]bool{}
	for o := idem.OutcomeExecuted; o <= idem.OutcomeInvalid; o++ {
		name := o.String()
		if name == "unknown" || seen[name] {
			t.Errorf("outcome %d is named %q", o, name)
		}
		seen[name] = true
		if o.Ran() != ran[o] {
			t.Errorf("%v.Ran() = %v", o, o.Ran())
		}
	}
	if idem.Outcome(0).String() != "unknown" || idem.Outcome(200).String() != "unknown" {
		t.Error("outcomes out of range are not unknown")
	}
	for d, want := range map[idem.Disposition]string{idem.Release: "release", idem.Record: "record", idem.Hold: "hold", 9: "unknown"} {
		if d.String() != want {
			t.Errorf("Disposition(%d) = %q, want %q", d, d.String(), want)
		}
	}
}

// TestErrAtConstruction checks that invalid configuration is reported by
// Err as soon as the Operation is built, and by every call.
func TestErrAtConstruction(t *testing.T) {
	type money struct {
		amount   int64
		currency string
	}
	type charge struct {
		ID     string
		Amount money
	}
	for name, err := range map[string]error{
		"negative TTL":      idem.New[string, int](memstore.New(), idem.WithTTL(-time.Second)).Err(),
		"fingerprint type":  idem.New[string, int](memstore.New(), idem.WithFingerprint(func(int) ([]byte, error) { return nil, nil })).Err(),
		"nil store":         idem.New[string, int](nil).Err(),
		"opaque result":     idem.New[string, money](memstore.New()).Err(),
		"opaque field":      idem.New[string, charge](memstore.New()).Err(),
		"opaque in a slice": idem.New[string, map[string][]*money](memstore.New()).Err(),
	} {
		if !errors.Is(err, idem.ErrInvalidOption) {
			t.Errorf("%s: Err() = %v, want ErrInvalidOption", name, err)
		}
	}
	type embedded struct{ Name string }
	type withEmbedded struct {
		embedded
		At time.Time
	}
	for name, err := range map[string]error{
		"valid":                idem.New[string, int](memstore.New(), idem.WithTTL(time.Hour)).Err(),
		"time":                 idem.New[string, time.Time](memstore.New()).Err(),
		"embedded unexported":  idem.New[string, withEmbedded](memstore.New()).Err(),
		"empty struct":         idem.New[string, struct{}](memstore.New()).Err(),
		"interface not walked": idem.New[string, any](memstore.New()).Err(),
	} {
		if err != nil {
			t.Errorf("%s: Err() = %v, want nil", name, err)
		}
	}
	op := idem.New[string, money](memstore.New())
	if _, err := op.Do(context.Background(), "k", "r", func(context.Context, string) (money, error) {
		t.Error("fn ran")
		return money{amount: 1999, currency: "EUR"}, nil
	}); !errors.Is(err, idem.ErrInvalidOption) {
		t.Errorf("Do on an invalid Operation: %v, want ErrInvalidOption", err)
	}
}

// pausingStore stalls the first caller between Acquire and fn for as long
// as pause, as a GC pause or a stopped process would, and lets the test
// know when that caller has its lease.
type pausingStore struct {
	*memstore.Store
	pause   time.Duration
	leased  chan struct{}
	resumed chan struct{}
	first   bool
}

func (s *pausingStore) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	a, err := s.Store.Acquire(ctx, key, fp, ttl)
	if a.Lease != nil && !s.first {
		s.first = true
		close(s.leased)
		time.Sleep(s.pause)
		close(s.resumed)
	}
	return a, err
}

// TestPausedAfterAcquire checks that a caller paused between Acquire and
// fn for longer than its lease does not run fn on the expired lease: the
// key was taken and completed meanwhile, and the paused caller replays the
// result instead of running fn a second time.
func TestPausedAfterAcquire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lockTTL = time.Second
		s := &pausingStore{Store: memstore.New(), pause: 3 * lockTTL, leased: make(chan struct{}), resumed: make(chan struct{})}
		op := idem.New[string, int](s, idem.WithLockTTL(lockTTL))
		ctx := context.Background()
		runs := 0
		fn := func(context.Context, string) (int, error) { runs++; return runs, nil }

		type result struct {
			v    int
			info idem.Info
			err  error
		}
		paused := make(chan result)
		go func() {
			v, info, err := op.DoInfo(ctx, "k", "r", fn)
			paused <- result{v, info, err}
		}()
		<-s.leased
		time.Sleep(lockTTL + time.Millisecond) // the paused caller's lease expires
		v, info, err := op.DoInfo(ctx, "k", "r", fn)
		if err != nil || info.Outcome != idem.OutcomeExecuted || v != 1 {
			t.Fatalf("second caller: %d, %v, %v; want it to run fn", v, info.Outcome, err)
		}
		r := <-paused
		if r.err != nil || r.info.Outcome != idem.OutcomeReplayed || r.v != 1 {
			t.Errorf("paused caller: %d, %v, %v; want the replay of the second caller's result", r.v, r.info.Outcome, r.err)
		}
		if runs != 1 {
			t.Errorf("fn ran %d times, want 1", runs)
		}
	})
}

// TestPausedButLeaseLive checks the other side: a caller paused for less
// than its lease confirms the lease with a refresh and runs fn.
func TestPausedButLeaseLive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lockTTL = time.Second
		s := &pausingStore{Store: memstore.New(), pause: lockTTL / 2, leased: make(chan struct{}), resumed: make(chan struct{})}
		op := idem.New[string, int](s, idem.WithLockTTL(lockTTL))
		v, info, err := op.DoInfo(context.Background(), "k", "r", func(ctx context.Context, _ string) (int, error) {
			// The lease was refreshed before fn: it outlives the original
			// expiry.
			time.Sleep(lockTTL * 3 / 4)
			if ctx.Err() != nil {
				return 0, context.Cause(ctx)
			}
			return 7, nil
		})
		if err != nil || v != 7 || info.Outcome != idem.OutcomeExecuted {
			t.Fatalf("Do = %d, %v, %v; want fn to run on the confirmed lease", v, info.Outcome, err)
		}
	})
}

// TestDisposeOverridesDecision checks that an error marked with Dispose
// keeps its disposition whatever WithDisposition decides, and that the
// caller gets fn's own error back.
func TestDisposeOverridesDecision(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		op := idem.New[string, int](memstore.New(), idem.WithLockTTL(time.Second),
			idem.WithDisposition(func(error) idem.Disposition { return idem.Record }))
		cause := errors.New("timeout")
		for key, tc := range map[string]struct {
			mark  idem.Disposition
			want  idem.Outcome
			retry idem.Outcome
		}{
			"held":     {idem.Hold, idem.OutcomeHeld, idem.OutcomeInFlight},
			"released": {idem.Release, idem.OutcomeFnError, idem.OutcomeExecuted},
			"recorded": {idem.Record, idem.OutcomeFinalError, idem.OutcomeReplayed},
		} {
			_, info, err := op.DoInfo(ctx, key, "r", func(context.Context, string) (int, error) { return 0, idem.Dispose(cause, tc.mark) })
			if info.Outcome != tc.want || !errors.Is(err, cause) {
				t.Errorf("%s: %v, %v; want %v and fn's error", key, info.Outcome, err, tc.want)
			}
			if _, info, _ := op.DoInfo(ctx, key, "r", func(context.Context, string) (int, error) { return 1, nil }); info.Outcome != tc.retry {
				t.Errorf("%s: retry %v, want %v", key, info.Outcome, tc.retry)
			}
		}
		if idem.Dispose(nil, idem.Hold) != nil || idem.Final(nil) != nil {
			t.Error("marking a nil error is not nil")
		}
	})
}
