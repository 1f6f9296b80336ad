package idem

import (
	"context"
	"sync/atomic"
	"time"
)

// Observer learns what happens in calls of Do, for metrics, traces and
// logs: it is given to WithObserver, in the manner of
// net/http/httptrace.ClientTrace. Every field may be nil. The funcs are
// called synchronously, from the goroutine that called Do or, for lease
// refreshes, from the one that refreshes the lease while fn runs: they must
// be fast and safe for concurrent use.
//
// Call.Key is the idempotency key as the caller gave it. Keys can be
// unbounded in number and can carry customer data: never use one as a
// metric attribute, and log or trace it only hashed, or when the operator
// chose to.
type Observer struct {
	// Start is called when Do begins. The context it returns, derived
	// from ctx, is the call's from then on: the store and fn get it, and
	// so do the funcs below, so that a trace span started here is the
	// parent of the store's spans. A nil return keeps ctx.
	Start func(ctx context.Context, c Call) context.Context
	// Wait is called after each wait for an in-flight call, with how long
	// it took.
	Wait func(ctx context.Context, c Call, d time.Duration)
	// LeaseRefresh is called after each refresh of the lease, while fn
	// runs or just before it starts; err is nil when it succeeded.
	LeaseRefresh func(ctx context.Context, c Call, err error)
	// LeaseLost is called, at most once per call, when the call's lease
	// is found lost: a refresh or the commit found it gone, or it expired
	// with no refresh getting through. fn is then cancelled, or its
	// outcome not stored (ErrNotStored): page on it.
	LeaseLost func(ctx context.Context, c Call)
	// StoreError is called for every store operation that failed for a
	// reason other than a lost lease. op is one of "acquire", "wait",
	// "refresh", "commit" and "release".
	StoreError func(ctx context.Context, c Call, op string, err error)
	// CommitRetry is called before a failed Commit is tried again;
	// attempt counts the failures so far, from 1.
	CommitRetry func(ctx context.Context, c Call, attempt int, err error)
	// Done is called when Do returns, and also when fn panicked: then
	// before the panic goes on, with an Info.Outcome of 0 (its String is
	// "unknown") and an error saying that fn panicked.
	Done func(ctx context.Context, c Call, end CallEnd)
}

// Call names the call of Do an Observer hears about.
type Call struct {
	// Namespace is the Operation's (WithNamespace), "" by default.
	Namespace string
	// Key is the idempotency key as given to Do. See Observer on keeping
	// it out of metrics.
	Key string
}

// CallEnd is how a call of Do ended, as given to Observer.Done.
type CallEnd struct {
	// Info is what DoInfo returns: the outcome, the fingerprint.
	Info Info
	// Err is the error Do returns.
	Err error
	// Duration is the whole call's time.
	Duration time.Duration
	// FnDuration is how long fn ran, 0 when it did not run.
	FnDuration time.Duration
	// Waited is the time spent waiting for an in-flight call.
	Waited time.Duration
	// RecordSize is the size in bytes of the record this call stored, 0
	// when it stored none.
	RecordSize int
}

// WithObserver has o told about every call of Do (see Observer). Several
// observers may be given, in several options: each is told, in the order
// given, and each Start's context is given to the next. A nil o is
// ignored. Without an observer, Do costs nothing more.
func WithObserver(o *Observer) Option {
	return func(c *config) {
		if o != nil {
			c.observers = append(c.observers, o)
		}
	}
}

// combine returns one Observer that tells each of obs, or nil for none.
func combine(obs []*Observer) *Observer {
	switch len(obs) {
	case 0:
		return nil
	case 1:
		return obs[0]
	}
	return &Observer{
		Start: func(ctx context.Context, c Call) context.Context {
			for _, o := range obs {
				if o.Start != nil {
					if next := o.Start(ctx, c); next != nil {
						ctx = next
					}
				}
			}
			return ctx
		},
		Wait: func(ctx context.Context, c Call, d time.Duration) {
			for _, o := range obs {
				if o.Wait != nil {
					o.Wait(ctx, c, d)
				}
			}
		},
		LeaseRefresh: func(ctx context.Context, c Call, err error) {
			for _, o := range obs {
				if o.LeaseRefresh != nil {
					o.LeaseRefresh(ctx, c, err)
				}
			}
		},
		LeaseLost: func(ctx context.Context, c Call) {
			for _, o := range obs {
				if o.LeaseLost != nil {
					o.LeaseLost(ctx, c)
				}
			}
		},
		StoreError: func(ctx context.Context, c Call, op string, err error) {
			for _, o := range obs {
				if o.StoreError != nil {
					o.StoreError(ctx, c, op, err)
				}
			}
		},
		CommitRetry: func(ctx context.Context, c Call, attempt int, err error) {
			for _, o := range obs {
				if o.CommitRetry != nil {
					o.CommitRetry(ctx, c, attempt, err)
				}
			}
		},
		Done: func(ctx context.Context, c Call, end CallEnd) {
			for _, o := range obs {
				if o.Done != nil {
					o.Done(ctx, c, end)
				}
			}
		},
	}
}

// trace is one observed call of Do; a nil *trace observes nothing, so that
// a call without an observer pays only nil checks.
type trace struct {
	obs   *Observer
	ctx   context.Context
	call  Call
	begin time.Time
	lost  atomic.Bool // LeaseLost was told

	// Set by the goroutine that called Do.
	fnDuration time.Duration
	waited     time.Duration
	recordSize int
}

func newTrace(ctx context.Context, obs *Observer, namespace, key string) *trace {
	t := &trace{obs: obs, ctx: ctx, call: Call{Namespace: namespace, Key: key}, begin: time.Now()}
	if obs.Start != nil {
		if c := obs.Start(ctx, t.call); c != nil {
			t.ctx = c
		}
	}
	return t
}

func (t *trace) wait(d time.Duration) {
	if t == nil {
		return
	}
	t.waited += d
	if t.obs.Wait != nil {
		t.obs.Wait(t.ctx, t.call, d)
	}
}

func (t *trace) refreshed(err error) {
	if t != nil && t.obs.LeaseRefresh != nil {
		t.obs.LeaseRefresh(t.ctx, t.call, err)
	}
}

func (t *trace) leaseLost() {
	if t != nil && t.obs.LeaseLost != nil && t.lost.CompareAndSwap(false, true) {
		t.obs.LeaseLost(t.ctx, t.call)
	}
}

func (t *trace) storeError(op string, err error) {
	if t != nil && t.obs.StoreError != nil {
		t.obs.StoreError(t.ctx, t.call, op, err)
	}
}

func (t *trace) commitRetry(attempt int, err error) {
	if t != nil && t.obs.CommitRetry != nil {
		t.obs.CommitRetry(t.ctx, t.call, attempt, err)
	}
}

// done tells of the call's end. It is given the Info's fields but the key,
// and rebuilds it around the trace's copy of the key, so that the caller's
// key does not escape to the heap (escape analysis does not tell a
// struct's fields apart).
func (t *trace) done(fingerprint string, outcome Outcome, err error) {
	if t.obs.Done != nil {
		t.obs.Done(t.ctx, t.call, CallEnd{
			Info:       Info{Key: t.call.Key, Fingerprint: fingerprint, Outcome: outcome, Replayed: outcome == OutcomeReplayed},
			Err:        err,
			Duration:   time.Since(t.begin),
			FnDuration: t.fnDuration,
			Waited:     t.waited,
			RecordSize: t.recordSize,
		})
	}
}
