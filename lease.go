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
// it. Until its first refresh a keeper waits in its Operation's keepQueue,
// which one timer serves for all of them, so that a fn that finishes within
// a third of ttl costs no timer of its own and no goroutine. From the first
// refresh on it runs on timers of its own: one that fires keep, and one
// that watches for expiry, which is started then, before the lease can
// expire (Do starts fn less than a third of ttl after the Acquire was
// sent). stop waits for a refresh under way, so that no Lease method runs
// after it returns; it may be called more than once.
type keeper struct {
	ctx    context.Context
	t      *trace // nil without an observer
	lease  Lease
	ttl    time.Duration
	cancel context.CancelCauseFunc
	queue  *keepQueue

	mu       sync.Mutex
	stopped  bool
	running  sync.WaitGroup
	acquired time.Duration // when the Acquire that granted the lease was sent, on mono's scale
	refresh  *time.Timer   // fires keep; nil until the first refresh
	expiry   *time.Timer   // fires expire; nil until the first refresh

	// In queue, under queue.mu: when the first refresh is due (on mono's
	// scale), whether k is queued, and its neighbours, prev due sooner.
	due        time.Duration
	queued     bool
	prev, next *keeper
}

// keepAlive starts keeping lease alive, its first refresh a third of ttl
// from now, started by q. acquired is when the Acquire that granted the
// lease was sent (on mono's scale): the store set the lease's expiry no
// earlier.
func keepAlive(ctx context.Context, q *keepQueue, t *trace, lease Lease, acquired time.Duration, ttl time.Duration, cancel context.CancelCauseFunc) *keeper {
	k := &keeper{ctx: ctx, t: t, lease: lease, ttl: ttl, cancel: cancel, acquired: acquired, queue: q}
	if !q.add(k) {
		k.mu.Lock()
		k.refresh = time.AfterFunc(ttl/3, k.keep)
		k.mu.Unlock()
	}
	return k
}

// keepQueue holds the keepers of one Operation that wait for their first
// refresh, soonest due first, and starts each refresh when it is due. One
// timer serves them all: it is armed when a keeper joins a queue that has
// none armed, and when it fires, it starts the refreshes due and arms the
// next timer for the new head, if any. A keeper that leaves the queue (its
// fn returned) leaves the timer armed; it then fires with nothing due, and
// re-arms for the head or not at all. Joining and leaving thus take a
// mutex and a few pointers, not a runtime timer each, and a queue with no
// keepers has no goroutine and at most one pending timer.
//
// Every keeper of a queue has the same ttl (the Operation's lock TTL), and
// joins at the tail with its due read from the clock under q.mu, so the
// queue is in order of due, and the armed timer, which fires at the due of
// a keeper that joined earlier, fires no later than any keeper joining is
// due. A new timer is made each time one is armed, never a timer reset, so
// the zero keepQueue is ready to use. Should the armed timer be lost (see
// add), a keeper joining later arms a new one.
type keepQueue struct {
	mu         sync.Mutex
	head, tail *keeper
	armed      bool          // a timer will call fire, no later than head is due
	at         time.Duration // when the armed timer fires, on mono's scale
	gen        uint64        // the armed timer's generation; older ones fire, then stop
}

// add queues k, its first refresh due a third of its ttl from now, and
// reports whether it did. It does not in a testing/synctest bubble, which
// it tells by mono being negative there (the bubble's clock starts in
// 2000): a timer made in a bubble stops when the bubble's test returns,
// and the queue, if its Operation outlived the bubble, would wait for it
// for ever. The caller then keeps k on a timer of its own.
func (q *keepQueue) add(k *keeper) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := mono()
	if now < 0 {
		return false
	}
	k.due = monoAdd(now, k.ttl/3)
	k.queued, k.prev, k.next = true, q.tail, nil
	if q.tail == nil {
		q.head = k
	} else {
		q.tail.next = k
	}
	q.tail = k
	// An armed timer that should fire after k is due, or that is overdue
	// by a third of ttl, was armed on another clock or has been lost:
	// made in a testing/synctest bubble whose clock had passed the epoch,
	// say, which never fires once the bubble's test returns. A new timer
	// takes over, and the old one, if it ever fires, starts what is due
	// and stops.
	if !q.armed || q.at > k.due || now > monoAdd(q.at, k.ttl/3) {
		// For the head, which may be overdue when the timer was lost.
		q.arm(now, max(q.head.due-now, 0))
	}
	return true
}

// arm arms a timer to call fire d after now. q.mu is held.
func (q *keepQueue) arm(now, d time.Duration) {
	q.gen++
	gen := q.gen
	q.armed, q.at = true, monoAdd(now, d)
	time.AfterFunc(d, func() { q.fire(gen) })
}

// remove takes k out of q, if it is still queued.
func (q *keepQueue) remove(k *keeper) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if k.queued {
		q.unlink(k)
	}
}

// unlink takes k, queued, out of q. q.mu is held.
func (q *keepQueue) unlink(k *keeper) {
	if k.prev == nil {
		q.head = k.next
	} else {
		k.prev.next = k.next
	}
	if k.next == nil {
		q.tail = k.prev
	} else {
		k.next.prev = k.prev
	}
	k.prev, k.next, k.queued = nil, nil, false
}

// fire starts the refreshes that are due and, when it is the timer of
// generation q.gen, arms the next. Each refresh runs on a goroutine of its
// own, as a timer's callback would, but the last: fire runs on the timer's
// goroutine, and runs that one itself once q is unlocked.
func (q *keepQueue) fire(gen uint64) {
	q.mu.Lock()
	now := mono()
	var last *keeper
	for q.head != nil && q.head.due <= now {
		if last != nil {
			go last.keep()
		}
		last = q.head
		q.unlink(last)
	}
	switch {
	case gen != q.gen: // a newer timer is armed
	case q.head != nil:
		q.arm(now, q.head.due-now)
	default:
		q.armed = false
	}
	q.mu.Unlock()
	if last != nil {
		last.keep()
	}
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
		if k.refresh == nil {
			k.refresh = time.AfterFunc(next, k.keep)
		} else {
			k.refresh.Reset(next)
		}
	}
	k.mu.Unlock()
}

// stop stops refreshing, and waits for a refresh under way.
func (k *keeper) stop() {
	k.mu.Lock()
	k.stopped = true
	if k.refresh != nil {
		k.refresh.Stop()
	}
	if k.expiry != nil {
		k.expiry.Stop()
	}
	k.mu.Unlock()
	k.queue.remove(k)
	k.running.Wait()
}
