// Package memstore is an in-process idem.Store: leases and records live in
// this process's memory.
//
// It suits a single instance of a service, tests, and queue consumers whose
// redeliveries reach the same process. It is safe for concurrent use, wakes
// waiters the moment a result lands (no polling), reclaims expired entries as
// it goes (no background goroutine, no full scans), and can be bounded in size.
// Its contents are lost when the process exits; use redisstore to share
// results between processes or keep them across restarts.
//
// Reclaiming is incremental: each call of Acquire, Lease.Refresh,
// Lease.Commit or Lease.Release removes at most 32 expired leases and 32
// expired records, soonest-expired first, so that a mass expiry drains over
// the following calls instead of stalling one of them (and every caller
// waiting for the lock) for the whole backlog. An expired entry not yet
// reclaimed is treated as absent by every method; it still counts in Len and
// toward WithMaxEntries, which drops it first when room is needed.
package memstore

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/idemkit/idem"
)

// ErrFull is returned (wrapped) by Acquire when the store holds its maximum
// number of entries and all of them are in-flight leases, so none can be
// evicted.
var ErrFull = errors.New("idem: memstore: full")

// An Option configures a Store.
type Option func(*Store)

// WithMaxEntries bounds the number of keys held, counting expired entries not
// yet reclaimed. When a new key would exceed it, an expired entry is dropped
// if there is one, and otherwise the completed record closest to expiry is
// evicted; a later call with that key runs afresh. Live leases are never
// evicted: if only live leases are held, Acquire fails with ErrFull. n <= 0
// means no bound (the default).
func WithMaxEntries(n int) Option {
	return func(s *Store) { s.max = n }
}

// reclaimBatch is the most expired entries of each kind (leases, records)
// that one call reclaims. It bounds the time a call holds the lock after a
// mass expiry to a few microseconds; the backlog drains over later calls.
const reclaimBatch = 32

// Store is an in-memory idem.Store. Create it with New.
type Store struct {
	mu      sync.Mutex
	entries map[string]*entry
	leases  expiryHeap // leases, soonest expiry first; may hold expired ones
	records expiryHeap // completed records, soonest expiry first; may hold expired ones
	max     int
	tokens  uint64
	epoch   time.Time // the origin of the store's clock (see now)
}

var _ idem.Store = (*Store)(nil)

// New returns an empty Store.
func New(opts ...Option) *Store {
	s := &Store{entries: make(map[string]*entry), epoch: time.Now()}
	for _, o := range opts {
		if o != nil {
			o(s)
		}
	}
	return s
}

type entry struct {
	key     string
	expires time.Duration // on the store's clock (see Store.now)
	index   int           // position in its heap

	// Lease state: token != 0.
	token       uint64
	fingerprint string
	done        chan struct{} // closed when the lease ends; made by the first Wait
	lease       lease         // what Acquire returned for this entry

	// Record state: token == 0.
	record    []byte
	committer uint64 // the token of the lease that committed the record
}

func (e *entry) leased() bool { return e.token != 0 }

// endLease wakes the lease's waiters, if any.
func (e *entry) endLease() {
	if e.done != nil {
		close(e.done)
	}
}

// live reports whether e has not expired by now.
func (e *entry) live(now time.Duration) bool { return now < e.expires }

// now returns the time on the store's clock: the time since the store was
// made, on the monotonic clock. One clock read, where time.Now takes two,
// and expiries compare as integers; wall clock steps do not move it.
func (s *Store) now() time.Duration { return time.Since(s.epoch) }

// later returns now+ttl, or the end of the clock when that overflows (a
// TTL of math.MaxInt64 means forever).
func later(now, ttl time.Duration) time.Duration {
	if ttl > 0 && now > math.MaxInt64-ttl {
		return math.MaxInt64
	}
	return now + ttl
}

// Len returns the number of keys held, including expired entries not yet
// reclaimed. After many entries expire together Len falls gradually, as
// each call of Acquire, Refresh, Commit or Release reclaims up to 32
// expired leases and 32 expired records. Len itself reclaims nothing.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// Acquire implements idem.Store.
func (s *Store) Acquire(ctx context.Context, key, fingerprint string, ttl time.Duration) (idem.Acquisition, error) {
	if err := ctx.Err(); err != nil {
		return idem.Acquisition{}, err
	}
	now := s.lock()
	defer s.unlock(now)
	if e := s.lookup(key, now); e != nil {
		if e.leased() {
			return idem.Acquisition{Holder: e.fingerprint}, nil
		}
		return idem.Acquisition{Record: e.record, TTL: e.expires - now}, nil
	}
	if s.max > 0 && len(s.entries) >= s.max {
		// Make room without relying on reclaim having run: drop an expired
		// lease, else the record soonest to expire (expired or not). The
		// heaps are ordered by expiry, so if the top lease is live, all are.
		switch {
		case s.leases.Len() > 0 && !s.leases[0].live(now):
			s.remove(s.leases[0])
		case s.records.Len() > 0:
			s.remove(s.records[0])
		default:
			return idem.Acquisition{}, fmt.Errorf("%w: %d in-flight leases", ErrFull, len(s.entries))
		}
	}
	s.tokens++
	e := &entry{key: key, expires: later(now, ttl), token: s.tokens, fingerprint: fingerprint}
	e.lease = lease{s: s, key: key, token: e.token}
	s.entries[key] = e
	heap.Push(&s.leases, e)
	return idem.Acquisition{Lease: &e.lease}, nil
}

// Wait implements idem.Store. It returns when the lease on key is committed,
// released or expires, without polling.
func (s *Store) Wait(ctx context.Context, key string) error {
	s.mu.Lock()
	e, ok := s.entries[key]
	if !ok || !e.leased() || !e.live(s.now()) {
		s.mu.Unlock()
		return nil
	}
	if e.done == nil {
		e.done = make(chan struct{})
	}
	done, expires := e.done, e.expires
	s.mu.Unlock()

	// The timer, not reclaim, wakes waiters when the lease expires: an
	// expired lease may stay in the map, its done channel open, until a
	// later call reclaims it.
	t := time.NewTimer(expires - s.now())
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reclaim removes up to reclaimBatch leases and as many records that have
// expired by now, soonest-expired first. It costs O(log n) per removed
// entry, so O(reclaimBatch log n) at most, and O(1) when nothing expired.
// Each call of Acquire, Refresh, Commit and Release runs it once, after its
// own work. Nothing depends on it for correctness: entries it leaves behind
// are treated as absent by lookup, held, Wait and the WithMaxEntries bound.
func (s *Store) reclaim(now time.Duration) {
	for _, h := range []*expiryHeap{&s.leases, &s.records} {
		for range reclaimBatch {
			if h.Len() == 0 || (*h)[0].live(now) {
				break
			}
			s.remove((*h)[0])
		}
	}
}

// lookup returns the live entry for key, or nil. An expired entry found
// under key is removed on the way.
func (s *Store) lookup(key string, now time.Duration) *entry {
	e, ok := s.entries[key]
	if !ok {
		return nil
	}
	if !e.live(now) {
		s.remove(e)
		return nil
	}
	return e
}

// remove deletes e from the map and its heap, waking its waiters.
func (s *Store) remove(e *entry) {
	delete(s.entries, e.key)
	if e.leased() {
		heap.Remove(&s.leases, e.index)
		e.endLease()
	} else {
		heap.Remove(&s.records, e.index)
	}
}

// held returns the entry for key if it is still the live lease token.
func (s *Store) held(key string, token uint64, now time.Duration) (*entry, error) {
	e := s.lookup(key, now)
	if e == nil || e.token != token {
		return nil, idem.ErrLeaseLost
	}
	return e, nil
}

// lock locks s and returns the time the call works at. The call defers
// unlock with that time.
func (s *Store) lock() time.Duration {
	s.mu.Lock()
	return s.now()
}

// unlock reclaims a batch of entries expired by now, then unlocks s.
func (s *Store) unlock(now time.Duration) {
	s.reclaim(now)
	s.mu.Unlock()
}

type lease struct {
	s     *Store
	key   string
	token uint64
}

func (l *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	now := l.s.lock()
	defer l.s.unlock(now)
	e, err := l.s.held(l.key, l.token, now)
	if err != nil {
		return err
	}
	e.expires = later(now, ttl)
	heap.Fix(&l.s.leases, e.index)
	return nil
}

func (l *lease) Commit(ctx context.Context, record []byte, ttl time.Duration) error {
	now := l.s.lock()
	defer l.s.unlock(now)
	e, err := l.s.held(l.key, l.token, now)
	if err != nil {
		// An expired record counts as absent here too (held has removed
		// it already; the check does not rely on that).
		if e, ok := l.s.entries[l.key]; ok && e.live(now) && !e.leased() && e.committer == l.token && bytes.Equal(e.record, record) {
			return nil // this lease's commit, repeated
		}
		return err
	}
	heap.Remove(&l.s.leases, e.index)
	e.endLease()
	e.committer = e.token
	e.token, e.fingerprint, e.done = 0, "", nil
	e.record = record // the caller does not modify it (idem.Lease)
	if e.record == nil {
		e.record = []byte{} // a record, even when empty
	}
	e.expires = later(now, ttl)
	heap.Push(&l.s.records, e)
	return nil
}

func (l *lease) Release(ctx context.Context) error {
	now := l.s.lock()
	defer l.s.unlock(now)
	e, err := l.s.held(l.key, l.token, now)
	if err != nil {
		return err
	}
	l.s.remove(e)
	return nil
}

// expiryHeap orders entries by expiry, soonest first.
type expiryHeap []*entry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires < h[j].expires }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *expiryHeap) Push(x any) {
	e := x.(*entry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}
