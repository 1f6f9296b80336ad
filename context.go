package idem

import (
	"context"
	"sync"
	"time"
)

// cleanupContext is a context for committing, refreshing or releasing a
// lease: it carries ctx's values, survives ctx's cancellation, and ends
// when d has passed. It is context.WithTimeout(context.WithoutCancel(ctx),
// d), made cheap for the usual case in which the store only reads its
// deadline or looks at Err: the timer that closes Done is started the first
// time Done is called. Call end when done with it.
type cleanupContext struct {
	context.Context // ctx without its cancellation: values only
	deadline        time.Time

	mu    sync.Mutex
	done  chan struct{} // made by the first Done
	timer *time.Timer   // closes done at the deadline
	err   error
}

func newCleanupContext(ctx context.Context, d time.Duration) *cleanupContext {
	return newCleanupContextAt(ctx, time.Now(), d)
}

// newCleanupContextAt is newCleanupContext for a caller that has just read
// the clock: now.
func newCleanupContextAt(ctx context.Context, now time.Time, d time.Duration) *cleanupContext {
	return &cleanupContext{Context: context.WithoutCancel(ctx), deadline: now.Add(d)}
}

func (c *cleanupContext) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *cleanupContext) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.err != nil {
			close(c.done)
		} else {
			c.timer = time.AfterFunc(time.Until(c.deadline), c.expire)
		}
	}
	return c.done
}

// Err returns context.DeadlineExceeded once the deadline has passed, also
// before the timer has fired (Done is then closed on the way), and
// context.Canceled after end; once it returns an error, it returns that
// error ever after.
func (c *cleanupContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && !time.Now().Before(c.deadline) {
		c.finishLocked(context.DeadlineExceeded)
	}
	return c.err
}

func (c *cleanupContext) String() string { return "idem.cleanupContext" }

func (c *cleanupContext) expire() { c.finish(context.DeadlineExceeded) }

// end cancels c, as the CancelFunc of context.WithTimeout would.
func (c *cleanupContext) end() { c.finish(context.Canceled) }

func (c *cleanupContext) finish(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.finishLocked(err)
}

// finishLocked ends c with err, unless it has ended. c.mu is held.
func (c *cleanupContext) finishLocked(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.done != nil {
		close(c.done)
	}
}
