package idem

import (
	"sync"
	"sync/atomic"
	"time"
)

// localCache keeps completed records in the process (see WithLocalCache),
// up to max of them, each until the expiry the store gave it.
//
// Eviction follows SIEVE (Zhang et al., NSDI 2024): entries form a queue,
// newest at the head; a hit only sets the entry's visited bit; to make
// room, a hand moves from the tail towards the head, clearing visited bits
// and evicting the first entry it finds unvisited (or expired). Like LRU it
// keeps what is read again, unlike LRU a hit moves nothing, so hits need
// only a read lock: replays of one hot key from many goroutines do not
// queue on a mutex. One-off keys, the common case for idempotency keys,
// pass through the queue without displacing the keys being retried.
type localCache struct {
	mu         sync.RWMutex
	entries    map[string]*cacheEntry
	head, tail *cacheEntry // head is the newest
	hand       *cacheEntry // where the next eviction search starts; nil: the tail
	max        int
}

type cacheEntry struct {
	key        string
	record     []byte        // shared with the store's copy; never modified
	expires    time.Duration // on mono's scale
	visited    atomic.Bool
	prev, next *cacheEntry // prev is towards the head
}

func newLocalCache(max int) *localCache {
	return &localCache{entries: make(map[string]*cacheEntry, min(max, 1024)), max: max}
}

// get returns the record cached under key, if it has not expired by now.
func (c *localCache) get(key string, now time.Duration) ([]byte, bool) {
	c.mu.RLock()
	e := c.entries[key]
	var rec []byte
	live := false
	if e != nil {
		rec, live = e.record, now < e.expires
	}
	c.mu.RUnlock()
	if e == nil {
		return nil, false
	}
	if !live {
		c.drop(key, e)
		return nil, false
	}
	if !e.visited.Load() {
		e.visited.Store(true)
	}
	return rec, true
}

// put caches record under key until expires (on mono's scale), replacing
// what was cached.
func (c *localCache) put(key string, record []byte, expires time.Duration) {
	if mono() >= expires {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.entries[key]; old != nil {
		c.unlink(old)
	}
	for len(c.entries) >= c.max {
		c.evict()
	}
	e := &cacheEntry{key: key, record: record, expires: expires, next: c.head}
	if c.head != nil {
		c.head.prev = e
	}
	c.head = e
	if c.tail == nil {
		c.tail = e
	}
	c.entries[key] = e
}

// forget removes key from the cache.
func (c *localCache) forget(key string) {
	c.mu.Lock()
	if e := c.entries[key]; e != nil {
		c.unlink(e)
	}
	c.mu.Unlock()
}

// drop removes e, found expired, unless key was cached anew meanwhile.
func (c *localCache) drop(key string, e *cacheEntry) {
	c.mu.Lock()
	if c.entries[key] == e {
		c.unlink(e)
	}
	c.mu.Unlock()
}

// evict removes one entry: from the hand towards the head, the first one
// expired or not visited since the hand last passed it. c.mu is held.
func (c *localCache) evict() {
	now := mono()
	e := c.hand
	if e == nil {
		e = c.tail
	}
	for e.visited.Load() && now < e.expires {
		e.visited.Store(false)
		if e = e.prev; e == nil {
			e = c.tail
		}
	}
	c.hand = e // unlink moves the hand on to e.prev
	c.unlink(e)
}

// unlink removes e from the map and the queue. c.mu is held.
func (c *localCache) unlink(e *cacheEntry) {
	delete(c.entries, e.key)
	if c.hand == e {
		c.hand = e.prev
	}
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		c.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		c.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

// len returns the number of entries cached, expired ones included.
func (c *localCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}
