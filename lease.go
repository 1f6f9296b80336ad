package idem

import (
	"context"
	"errors"
	"sync"
	"time"
)

// keeper keeps a lease alive while fn runs, until stop is called.
//
// It refreshes the lease every third of ttl, and retries a failed refresh
// every tenth. It cancels fn's context with ErrLeaseLost as the cause when a
// refresh finds the lease lost, and also when ttl has passed since the last
// refresh that succeeded was sent (or, before the first, since the Acquire
// that granted the lease was sent): from then on the store may have let the
// lease go, and fn should stop before someone else's execution overlaps with
// it. It runs on timers, so a fn that finishes within a third of ttl costs
// no goroutine, and only one timer: the timer that watches for expiry is
// started with the first refresh, which comes before the lease can expire
// (Do starts fn less than a third of ttl after the Acquire was sent). stop
// waits for a refresh under way, so that no Lease method runs after it
// returns; it may be called more than once.
type keeper struct {
	ctx    context.Context
	t      *trace // nil without an observer
	lease  Lease
	ttl    time.Duration
	cancel context.CancelCauseFunc

	mu       sync.Mutex
	stopped  bool
	running  sync.WaitGroup
	acquired time.Duration // when the Acquire that granted the lease was sent, on mono's scale
	refresh  *time.Timer   // fires keep
	expiry   *time.Timer   // fires expire; nil until the first refresh
}

// keepAlive starts keeping lease alive. acquired is when the Acquire that
// granted the lease was sent: the store set the lease's expiry no earlier.
func keepAlive(ctx context.Context, t *trace, lease Lease, acquired time.Duration, ttl time.Duration, cancel context.CancelCauseFunc) *keeper {
	k := &keeper{ctx: ctx, t: t, lease: lease, ttl: ttl, cancel: cancel, acquired: acquired}
	k.mu.Lock()
	k.refresh = time.AfterFunc(ttl/3, k.keep)
	k.mu.Unlock()
	return k
}

func (k *keeper) expire() {
	// Under the same guard as keep, so that stop waits for it: after stop,
	// nothing cancels fn's context nor tells an Observer of a loss.
	k.mu.Lock()
	if k.stopped {
		k.mu.Unlock()
		return
	}
	k.running.Add(1)
	k.mu.Unlock()
	defer k.running.Done()
	k.t.leaseLost()
	k.cancel(ErrLeaseLost)
}

// keep refreshes the lease, and schedules the next refresh.
func (k *keeper) keep() {
	k.mu.Lock()
	if k.stopped {
		k.mu.Unlock()
		return
	}
	if k.expiry == nil {
		k.expiry = time.AfterFunc(monoAdd(k.acquired, k.ttl)-mono(), k.expire)
	}
	k.running.Add(1)
	k.mu.Unlock()
	defer k.running.Done()

	// The caller's ctx ending does not stop refreshing: fn may still be
	// winding down, and Commit or Release ends the lease.
	sent := mono()
	rctx := newCleanupContext(k.ctx, k.ttl/3)
	err := k.lease.Refresh(rctx, k.ttl)
	rctx.end()
	k.t.refreshed(err)
	next := k.ttl / 3
	switch {
	case err == nil:
	case errors.Is(err, ErrLeaseLost):
		k.t.leaseLost()
		k.cancel(ErrLeaseLost)
		return
	default:
		k.t.storeError("refresh", err)
		next = k.ttl / 10
	}
	k.mu.Lock()
	if !k.stopped {
		if err == nil {
			// The store extended the lease to ttl after it received the
			// refresh, which was after sent.
			k.expiry.Reset(monoAdd(sent, k.ttl) - mono())
		}
		k.refresh.Reset(next)
	}
	k.mu.Unlock()
}

// stop stops refreshing, and waits for a refresh under way.
func (k *keeper) stop() {
	k.mu.Lock()
	k.stopped = true
	k.refresh.Stop()
	if k.expiry != nil {
		k.expiry.Stop()
	}
	k.mu.Unlock()
	k.running.Wait()
}
