package idem

import (
	"context"
	"errors"
	"sync"
	"time"
)

// keepAlive keeps lease alive while fn runs, until stop is called.
//
// It refreshes the lease every third of ttl, and retries a failed refresh
// every tenth. It cancels fn's context with ErrLeaseLost as the cause when a
// refresh finds the lease lost, and also when ttl has passed since the last
// refresh that succeeded was sent: from then on the store may have let the
// lease go, and fn should stop before someone else's execution overlaps with
// it. It runs on timers, so a fn that finishes within a third of ttl costs
// no goroutine. stop waits for a refresh under way, so that no Lease method
// runs after it returns; it may be called more than once.
//
// acquired is when the Acquire that granted the lease was sent: the store
// set the lease's expiry no earlier.
func keepAlive(ctx context.Context, lease Lease, acquired time.Time, ttl time.Duration, cancel context.CancelCauseFunc) (stop func()) {
	var (
		mu      sync.Mutex
		stopped bool
		running sync.WaitGroup
		timer   *time.Timer
		expiry  *time.Timer
	)
	refresh := func() {
		mu.Lock()
		if stopped {
			mu.Unlock()
			return
		}
		running.Add(1)
		mu.Unlock()
		defer running.Done()

		// The caller's ctx ending does not stop refreshing: fn may still be
		// winding down, and Commit or Release ends the lease.
		sent := time.Now()
		rctx, rcancel := cleanupContext(ctx, ttl/3)
		err := lease.Refresh(rctx, ttl)
		rcancel()
		next := ttl / 3
		switch {
		case err == nil:
		case errors.Is(err, ErrLeaseLost):
			cancel(ErrLeaseLost)
			return
		default:
			next = ttl / 10
		}
		mu.Lock()
		if !stopped {
			if err == nil {
				// The store extended the lease to ttl after it received
				// the refresh, which was after sent.
				expiry.Reset(time.Until(sent.Add(ttl)))
			}
			timer.Reset(next)
		}
		mu.Unlock()
	}
	mu.Lock()
	expiry = time.AfterFunc(time.Until(acquired.Add(ttl)), func() { cancel(ErrLeaseLost) })
	timer = time.AfterFunc(ttl/3, refresh)
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		timer.Stop()
		expiry.Stop()
		mu.Unlock()
		running.Wait()
	}
}
