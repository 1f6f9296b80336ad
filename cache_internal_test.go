package idem

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// check verifies the queue and the map agree, and the bound holds.
func (c *localCache) check(t *testing.T) {
	t.Helper()
	c.mu.RLock()
	defer c.mu.RUnlock()
	n := 0
	var prev *cacheEntry
	for e := c.head; e != nil; e = e.next {
		if e.prev != prev || c.entries[e.key] != e {
			t.Fatalf("queue broken at %q", e.key)
		}
		prev, n = e, n+1
	}
	if prev != c.tail || n != len(c.entries) || n > c.max {
		t.Fatalf("queue holds %d, map %d, max %d", n, len(c.entries), c.max)
	}
}

func TestLocalCacheBound(t *testing.T) {
	c := newLocalCache(10)
	exp := monoAdd(mono(), time.Hour)
	for i := range 100 {
		c.put(fmt.Sprint(i), []byte{byte(i)}, exp)
		c.check(t)
	}
	if n := c.len(); n != 10 {
		t.Fatalf("len = %d, want 10", n)
	}
	// The newest keys are there.
	for i := 90; i < 100; i++ {
		if rec, ok := c.get(fmt.Sprint(i), mono()); !ok || rec[0] != byte(i) {
			t.Errorf("key %d: %v %v", i, rec, ok)
		}
	}
}

// TestLocalCacheSieve checks the eviction order: a key read since the hand
// last passed survives; the oldest unread one goes.
func TestLocalCacheSieve(t *testing.T) {
	c := newLocalCache(4)
	exp := monoAdd(mono(), time.Hour)
	for _, k := range []string{"a", "b", "c", "d"} {
		c.put(k, []byte(k), exp)
	}
	c.get("a", mono())
	c.get("c", mono())
	c.put("e", []byte("e"), exp) // evicts b: a was read
	c.put("f", []byte("f"), exp) // evicts d: c was read, a's bit was cleared but the hand moved past it
	c.check(t)
	for k, want := range map[string]bool{"a": true, "b": false, "c": true, "d": false, "e": true, "f": true} {
		if _, ok := c.get(k, mono()); ok != want {
			t.Errorf("%s cached = %v, want %v", k, ok, want)
		}
	}
}

func TestLocalCacheExpiry(t *testing.T) {
	c := newLocalCache(4)
	now := mono()
	c.put("past", []byte("x"), monoAdd(now, -time.Millisecond))
	if c.len() != 0 {
		t.Fatal("an expired record was cached")
	}
	c.put("k", []byte("x"), monoAdd(now, time.Hour))
	if _, ok := c.get("k", monoAdd(now, time.Hour)); ok {
		t.Fatal("a record was returned at its expiry")
	}
	if c.len() != 0 {
		t.Fatal("an expired record was kept after a get found it expired")
	}
	// An expired entry is evicted before a live one, read or not.
	c.put("old", []byte("x"), monoAdd(now, 50*time.Millisecond))
	for _, k := range []string{"b", "c", "d"} {
		c.put(k, []byte(k), monoAdd(now, time.Hour))
	}
	c.get("old", now)
	time.Sleep(60 * time.Millisecond)
	c.put("e", []byte("e"), monoAdd(now, time.Hour))
	for _, k := range []string{"b", "c", "d", "e"} {
		if _, ok := c.get(k, mono()); !ok {
			t.Errorf("%s was evicted instead of the expired entry", k)
		}
	}
	c.forget("b")
	if _, ok := c.get("b", mono()); ok {
		t.Error("forget did not drop b")
	}
	c.check(t)
}

// TestLocalCacheConcurrent mixes gets, puts and forgets from many
// goroutines; run with -race.
func TestLocalCacheConcurrent(t *testing.T) {
	c := newLocalCache(16)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 2000 {
				k := fmt.Sprint(r.IntN(40))
				switch r.IntN(10) {
				case 0:
					c.forget(k)
				case 1, 2, 3:
					c.put(k, []byte(k), monoAdd(mono(), time.Duration(r.IntN(5))*time.Millisecond))
				default:
					if rec, ok := c.get(k, mono()); ok && string(rec) != k {
						t.Errorf("key %s holds %q", k, rec)
					}
				}
			}
		})
	}
	wg.Wait()
	c.check(t)
}
