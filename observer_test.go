package idem_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// recorder is an Observer that writes down what it is told.
type recorder struct {
	mu     sync.Mutex
	events []string
	ends   []idem.CallEnd
	ctxOK  bool // every func got the context Start returned
}

type startKey struct{}

func (r *recorder) add(ctx context.Context, e string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	if ctx.Value(startKey{}) != "started" {
		r.ctxOK = false
	}
}

func (r *recorder) observer() *idem.Observer {
	r.ctxOK = true
	return &idem.Observer{
		Start: func(ctx context.Context, c idem.Call) context.Context {
			ctx = context.WithValue(ctx, startKey{}, "started")
			r.add(ctx, "start "+c.Namespace+"/"+c.Key)
			return ctx
		},
		Wait:         func(ctx context.Context, _ idem.Call, d time.Duration) { r.add(ctx, "wait") },
		LeaseRefresh: func(ctx context.Context, _ idem.Call, err error) { r.add(ctx, "refresh "+errString(err)) },
		LeaseLost:    func(ctx context.Context, _ idem.Call) { r.add(ctx, "lease lost") },
		StoreError:   func(ctx context.Context, _ idem.Call, op string, err error) { r.add(ctx, "store error "+op) },
		CommitRetry:  func(ctx context.Context, _ idem.Call, n int, err error) { r.add(ctx, "commit retry") },
		Done: func(ctx context.Context, _ idem.Call, end idem.CallEnd) {
			r.add(ctx, "done "+end.Info.Outcome.String())
			r.mu.Lock()
			r.ends = append(r.ends, end)
			r.mu.Unlock()
		},
	}
}

func (r *recorder) take() ([]string, []idem.CallEnd) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, d := r.events, r.ends
	r.events, r.ends = nil, nil
	return e, d
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func TestObserverOutcomes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var rec recorder
		op := idem.New[string, int](memstore.New(), idem.WithNamespace("pay"), idem.WithObserver(rec.observer()), idem.WithLockTTL(3*time.Second))
		ctx := context.Background()
		slow := func(ctx context.Context, _ string) (int, error) {
			if ctx.Value(startKey{}) != "started" {
				t.Error("fn did not get Start's context")
			}
			time.Sleep(2500 * time.Millisecond) // two refreshes
			return 1, nil
		}
		for _, tc := range []struct {
			key, req string
			fn       func(context.Context, string) (int, error)
			want     []string
		}{
			{"k1", "a", slow, []string{"start pay/k1", "refresh ok", "refresh ok", "done executed"}},
			{"k1", "a", slow, []string{"start pay/k1", "done replayed"}},
			{"k1", "b", slow, []string{"start pay/k1", "done key_reused"}},
			{"k2", "a", func(context.Context, string) (int, error) { return 0, errors.New("no") }, []string{"start pay/k2", "done fn_error"}},
			{"", "a", slow, []string{"start pay/", "done invalid_key"}},
		} {
			_, _, _ = op.DoInfo(ctx, tc.key, tc.req, tc.fn)
			events, ends := rec.take()
			if !slices.Equal(events, tc.want) {
				t.Errorf("%s %s: told %q, want %q", tc.key, tc.req, events, tc.want)
			}
			if len(ends) == 1 && ends[0].Info.Outcome == idem.OutcomeExecuted {
				if e := ends[0]; e.FnDuration != 2500*time.Millisecond || e.Duration != 2500*time.Millisecond || e.RecordSize == 0 || e.Info.Key != "k1" || e.Info.Fingerprint == "" {
					t.Errorf("executed: %+v", e)
				}
			}
		}
		if !rec.ctxOK {
			t.Error("a func was not given Start's context")
		}
	})
}

func TestObserverWaitAndInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var rec recorder
		store := memstore.New()
		op := idem.New[string, int](store, idem.WithObserver(rec.observer()), idem.WithWaitTimeout(time.Minute))
		ctx := context.Background()
		holder := idem.New[string, int](store) // not observed
		go holder.Do(ctx, "k", "r", func(context.Context, string) (int, error) { time.Sleep(time.Second); return 1, nil })
		synctest.Wait()
		_, _, _ = op.DoInfo(ctx, "k", "r", func(context.Context, string) (int, error) { return 2, nil })
		events, ends := rec.take()
		if !slices.Equal(events, []string{"start /k", "wait", "done replayed"}) || ends[0].Waited != time.Second {
			t.Errorf("told %q, waited %v; want a wait of 1s, then the replay", events, ends[0].Waited)
		}
	})
}

func TestObserverLeaseAndStoreFaults(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var rec recorder
		s := &flakyStore{Store: memstore.New()}
		s.commitFails.Store(2)
		op := idem.New[string, int](s, idem.WithObserver(rec.observer()))
		_, _, _ = op.DoInfo(context.Background(), "k", "r", func(context.Context, string) (int, error) { return 1, nil })
		events, _ := rec.take()
		want := []string{"start /k", "store error commit", "commit retry", "store error commit", "commit retry", "done executed"}
		if !slices.Equal(events, want) {
			t.Errorf("commit failing twice: told %q, want %q", events, want)
		}

		// Refreshes failing for a lease TTL: the lease is lost, told once.
		s.refreshFails.Store(true)
		op = idem.New[string, int](s, idem.WithObserver(rec.observer()), idem.WithLockTTL(300*time.Millisecond))
		_, _, _ = op.DoInfo(context.Background(), "k2", "r", func(ctx context.Context, _ string) (int, error) {
			<-ctx.Done()
			return 0, context.Cause(ctx)
		})
		events, _ = rec.take()
		lost, storeErrs := 0, 0
		for _, e := range events {
			switch e {
			case "lease lost":
				lost++
			case "store error refresh":
				storeErrs++
			}
		}
		if lost != 1 || storeErrs == 0 || events[len(events)-1] != "done fn_error" {
			t.Errorf("refreshes failing: told %q; want refresh store errors, one lease loss, then fn_error", events)
		}

		_, _, _ = idem.New[string, int](brokenStore{}, idem.WithObserver(rec.observer())).DoInfo(context.Background(), "k", "r", nil)
		if events, _ := rec.take(); !slices.Equal(events, []string{"start /k", "store error acquire", "done store_error"}) {
			t.Errorf("store down: told %q", events)
		}
	})
}

func TestObserversCombine(t *testing.T) {
	var a, b recorder
	op := idem.New[string, int](memstore.New(), idem.WithObserver(a.observer()), idem.WithObserver(nil), idem.WithObserver(b.observer()))
	_, _, _ = op.DoInfo(context.Background(), "k", "r", func(context.Context, string) (int, error) { return 1, nil })
	ea, _ := a.take()
	eb, _ := b.take()
	want := []string{"start /k", "done executed"}
	if !slices.Equal(ea, want) || !slices.Equal(eb, want) {
		t.Errorf("told %q and %q, want %q each", ea, eb, want)
	}
}

func TestObserverPanic(t *testing.T) {
	var rec recorder
	op := idem.New[string, int](memstore.New(), idem.WithObserver(rec.observer()))
	func() {
		defer func() {
			if recover() == nil {
				t.Error("the panic did not go on")
			}
		}()
		_, _ = op.Do(context.Background(), "k", "r", func(context.Context, string) (int, error) { panic("boom") })
	}()
	events, ends := rec.take()
	if !slices.Equal(events, []string{"start /k", "done unknown"}) || ends[0].Err == nil || ends[0].FnDuration != 0 {
		t.Errorf("told %q, %+v; want Done with outcome 0 and an error", events, ends)
	}
}

// TestObserverCallerCancelIsNotAStoreError: a caller that gives up before
// Acquire answers is not a store error (idemotel would count it in
// idem.store.errors, which an alert watches).
func TestObserverCallerCancelIsNotAStoreError(t *testing.T) {
	var rec recorder
	op := idem.New[string, int](memstore.New(), idem.WithObserver(rec.observer()))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, info, _ := op.DoInfo(ctx, "k", "r", func(context.Context, string) (int, error) { return 1, nil })
	events, _ := rec.take()
	if info.Outcome != idem.OutcomeCanceled {
		t.Fatalf("outcome %v, want canceled", info.Outcome)
	}
	if want := []string{"start /k", "done canceled"}; !slices.Equal(events, want) {
		t.Errorf("caller cancelled: told %q, want %q (no store error)", events, want)
	}
}

// TestObserverNothingAfterDone: when fn returns at the instant its lease
// expires, the keeper's expiry must not tell the Observer of a loss after
// Done (an event on an ended span): stop waits for it. Found by review;
// the race detector's scheduler makes it show in a few hundred rounds.
func TestObserverNothingAfterDone(t *testing.T) {
	bad := 0
	for i := 0; i < 2000 && bad == 0; i++ {
		synctest.Test(t, func(t *testing.T) {
			var rec recorder
			s := &flakyStore{Store: memstore.New()}
			s.refreshFails.Store(true)
			op := idem.New[string, int](s, idem.WithObserver(rec.observer()), idem.WithLockTTL(300*time.Millisecond))
			_, _, _ = op.DoInfo(context.Background(), "k", "r", func(ctx context.Context, _ string) (int, error) {
				time.Sleep(300 * time.Millisecond)
				return 1, nil
			})
			synctest.Wait()
			events, _ := rec.take()
			if i := slices.IndexFunc(events, func(e string) bool { return len(e) > 4 && e[:4] == "done" }); i != len(events)-1 {
				t.Errorf("told %q: an event after Done", events)
				bad++
			}
		})
	}
}
