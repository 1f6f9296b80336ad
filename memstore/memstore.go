// Package memstore is an in-process idem.Store: leases and records live in
// this process's memory.
//
// It suits a single instance of a service, tests, and queue consumers whose
// redeliveries reach the same process. It is safe for concurrent use, wakes
// waiters the moment a result lands (no polling), reclaims expired entries as
// it goes (no background goroutine, no full scans), and can be bounded in size.
// Its contents are lost when the process exits; use redisstore to share
// results between processes or keep them across restarts.
package memstore

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/idemkit/idem"
)

// ErrFull is returned (wrapped) by Acquire when the store holds its maximum
// number of entries and all of them are in-flight leases, so none can be
// evicted.
var ErrFull = errors.New("memstore: full")

// An Option configures a Store.
type Option func(*Store)

// WithMaxEntries bounds the number of keys held. When a new key would exceed
// it, the completed record closest to expiry is evicted; a later call with
// that key runs afresh. Leases are never evicted: if only leases are held,
// Acquire fails with ErrFull. n <= 0 means no bound (the default).
func WithMaxEntries(n int) Option {
	return func(s *Store) { s.max = n }
}

// Store is an in-memory idem.Store. Create it with New.
type Store struct {
	mu      sync.Mutex
	entries map[string]*entry
	leases  expiryHeap // live leases, soonest expiry first
	records expiryHeap // completed records, soonest expiry first
	max     int
	tokens  uint64
}

var _ idem.Store = (*Store)(nil)

// New returns an empty Store.
func New(opts ...Option) *Store {
	s := &Store{entries: make(map[string]*entry)}
	for _, o := range opts {
		if o != nil {
			o(s)
		}
	}
	return s
}

type entry struct {
	key     string
	expires time.Time
	index   int // position in its heap

	// Lease state: token != 0.
	token       uint64
	fingerprint string
	done        chan struct{} // closed when the lease ends

	// Record state: token == 0.
	record    []byte
	committer uint64 // the token of the lease that committed the record
}

func (e *entry) leased() bool { return e.token != 0 }

// Len returns the number of keys held, including expired ones not yet
// reclaimed.
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
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.reclaim(now)
	if e, ok := s.entries[key]; ok {
		if e.leased() {
			return idem.Acquisition{Holder: e.fingerprint}, nil
		}
		return idem.Acquisition{Record: e.record}, nil
	}
	if s.max > 0 && len(s.entries) >= s.max {
		if s.records.Len() == 0 {
			return idem.Acquisition{}, fmt.Errorf("%w: %d in-flight leases", ErrFull, len(s.entries))
		}
		s.remove(s.records[0])
	}
	s.tokens++
	e := &entry{key: key, expires: now.Add(ttl), token: s.tokens, fingerprint: fingerprint, done: make(chan struct{})}
	s.entries[key] = e
	heap.Push(&s.leases, e)
	return idem.Acquisition{Lease: &lease{s: s, key: key, token: e.token}}, nil
}

// Wait implements idem.Store. It returns when the lease on key is committed,
// released or expires, without polling.
func (s *Store) Wait(ctx context.Context, key string) error {
	s.mu.Lock()
	e, ok := s.entries[key]
	if !ok || !e.leased() || !time.Now().Before(e.expires) {
		s.mu.Unlock()
		return nil
	}
	done, expires := e.done, e.expires
	s.mu.Unlock()

	t := time.NewTimer(time.Until(expires))
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

// reclaim removes the entries that have expired by now. Each call costs
// O(log n) per removed entry and O(1) otherwise.
func (s *Store) reclaim(now time.Time) {
	for _, h := range []*expiryHeap{&s.leases, &s.records} {
		for h.Len() > 0 && !now.Before((*h)[0].expires) {
			s.remove((*h)[0])
		}
	}
}

// remove deletes e from the map and its heap, waking its waiters.
func (s *Store) remove(e *entry) {
	delete(s.entries, e.key)
	if e.leased() {
		heap.Remove(&s.leases, e.index)
		close(e.done)
	} else {
		heap.Remove(&s.records, e.index)
	}
}

// held returns the entry for key if it is still the live lease token.
func (s *Store) held(key string, token uint64) (*entry, error) {
	now := time.Now()
	s.reclaim(now)
	e, ok := s.entries[key]
	if !ok || e.token != token {
		return nil, idem.ErrLeaseLost
	}
	return e, nil
}

type lease struct {
	s     *Store
	key   string
	token uint64
}

func (l *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	e, err := l.s.held(l.key, l.token)
	if err != nil {
		return err
	}
	e.expires = time.Now().Add(ttl)
	heap.Fix(&l.s.leases, e.index)
	return nil
}

func (l *lease) Commit(ctx context.Context, record []byte, ttl time.Duration) error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	e, err := l.s.held(l.key, l.token)
	if err != nil {
		if e, ok := l.s.entries[l.key]; ok && !e.leased() && e.committer == l.token && bytes.Equal(e.record, record) {
			return nil // this lease's commit, repeated
		}
		return err
	}
	heap.Remove(&l.s.leases, e.index)
	close(e.done)
	e.committer = e.token
	e.token, e.fingerprint, e.done = 0, "", nil
	e.record = append(make([]byte, 0, len(record)), record...) // non-nil even when empty
	e.expires = time.Now().Add(ttl)
	heap.Push(&l.s.records, e)
	return nil
}

func (l *lease) Release(ctx context.Context) error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	e, err := l.s.held(l.key, l.token)
	if err != nil {
		return err
	}
	l.s.remove(e)
	return nil
}

// expiryHeap orders entries by expiry, soonest first.
type expiryHeap []*entry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires.Before(h[j].expires) }
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
