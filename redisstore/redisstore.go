// Package redisstore is an idem.Store on Redis, shared by every process that
// uses the same Redis: a single server, a Sentinel-managed primary, or a
// Redis Cluster, through any go-redis v9 redis.UniversalClient.
//
// # Layout
//
// Each idempotency key is one Redis string key, prefix + key ("idem:" by
// default). While an execution is in flight it holds the lease: a
// bsm/redislock lock value, token + request fingerprint, with a PX expiry.
// When the execution completes, one Lua script replaces the lease with the
// record, only if the key still holds this caller's exact lease value, and
// sets the record's PX expiry. One Redis key per idempotency key means one
// hash slot, so Redis Cluster needs no hash tags and no key is ever split
// across slots. Expiry is always Redis's, never an application clock.
//
// # Round trips
//
// A replay costs one round trip: a script reads the key and finds the record.
// A first execution costs two: the same script finds the key absent and sets
// the lease in the same call, and the commit script stores the record. The
// lease value is written in bsm/redislock's format with a token of our own,
// so the first refresh (after a third of the lease TTL) adopts it as a
// redislock.Lock through redislock's token re-obtain, and later refreshes and
// the release on failure go through that lock. Waiting duplicates poll the
// key with exponential backoff (redislock's) until the lease is gone.
//
// # Client settings
//
// Create the client with ContextTimeoutEnabled: true, so that context
// deadlines bound each Redis call; without it go-redis waits for its own
// ReadTimeout (3 s by default) whatever the context says.
package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bsm/redislock"
	"github.com/idemkit/idem"
	"github.com/redis/go-redis/v9"
)

// Value markers. A token starts with leaseMark, a record with recordMark;
// neither can be mistaken for the other, and anything else under a key is
// foreign data.
const (
	leaseMark  = "\x00L"
	recordMark = "\x00R"
	tokenLen   = len(leaseMark) + 22 // 16 random bytes, base64url
)

// DefaultPrefix is put before every idempotency key to form its Redis key.
const DefaultPrefix = "idem:"

// acquire returns the value under KEYS[1] or, when there is none, sets the
// lease ARGV[1] with expiry ARGV[2] ms and returns false (nil).
var acquireScript = redis.NewScript(`
local v = redis.call("GET", KEYS[1])
if v then return v end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
return false
`)

// commit replaces the lease ARGV[1] under KEYS[1] by the record ARGV[2] with
// expiry ARGV[3] ms; it returns 0 and writes nothing when the key does not
// hold exactly that lease.
var commitScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3])
return 1
`)

// An Option configures a Store.
type Option func(*Store)

// WithPrefix sets the string put before each idempotency key to form its
// Redis key. The default is DefaultPrefix.
func WithPrefix(p string) Option { return func(s *Store) { s.prefix = p } }

// WithPollBackoff sets the bounds of the exponential backoff with which a
// waiting duplicate polls an in-flight key. The defaults are 8ms and 200ms.
func WithPollBackoff(minWait, maxWait time.Duration) Option {
	return func(s *Store) { s.pollMin, s.pollMax = minWait, maxWait }
}

// Store is an idem.Store on Redis. Create it with New. It is safe for
// concurrent use.
type Store struct {
	client           redis.UniversalClient
	locker           *redislock.Client
	prefix           string
	pollMin, pollMax time.Duration
}

var _ idem.Store = (*Store)(nil)

// New returns a Store that keeps its leases and records in client's Redis.
func New(client redis.UniversalClient, opts ...Option) *Store {
	s := &Store{
		client:  client,
		locker:  redislock.New(client),
		prefix:  DefaultPrefix,
		pollMin: 8 * time.Millisecond,
		pollMax: 200 * time.Millisecond,
	}
	for _, o := range opts {
		if o != nil {
			o(s)
		}
	}
	return s
}

// Acquire implements idem.Store in one round trip.
func (s *Store) Acquire(ctx context.Context, key, fingerprint string, ttl time.Duration) (idem.Acquisition, error) {
	token, err := newToken()
	if err != nil {
		return idem.Acquisition{}, err
	}
	rkey := s.prefix + key
	v, err := acquireScript.Run(ctx, s.client, []string{rkey}, token+fingerprint, millis(ttl)).Text()
	switch {
	case errors.Is(err, redis.Nil):
		return idem.Acquisition{Lease: &lease{s: s, key: rkey, token: token, fingerprint: fingerprint}}, nil
	case err != nil:
		return idem.Acquisition{}, wrapErr(err)
	}
	return parse(v), nil
}

// parse interprets a value read from a key.
func parse(v string) idem.Acquisition {
	switch {
	case strings.HasPrefix(v, recordMark):
		return idem.Acquisition{Record: []byte(v[len(recordMark):])}
	case strings.HasPrefix(v, leaseMark) && len(v) >= tokenLen:
		return idem.Acquisition{Holder: v[tokenLen:]}
	default:
		// Foreign data: hand it over as a record, which idem reports as
		// ErrCorruptRecord.
		return idem.Acquisition{Record: []byte(v)}
	}
}

// Wait implements idem.Store by polling key with exponential backoff until it
// no longer holds a lease.
func (s *Store) Wait(ctx context.Context, key string) error {
	backoff := redislock.ExponentialBackoff(s.pollMin, s.pollMax)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		v, err := s.client.Get(ctx, s.prefix+key).Result()
		switch {
		case errors.Is(err, redis.Nil):
			return nil
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return wrapErr(err)
		case !strings.HasPrefix(v, leaseMark):
			return nil
		}
		t.Reset(backoff.NextBackoff())
	}
}

// wrapErr marks data of the wrong Redis type as a corrupt record.
func wrapErr(err error) error {
	if err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE") {
		return fmt.Errorf("%w: %w", idem.ErrCorruptRecord, err)
	}
	return err
}

// millis converts d to whole milliseconds for PX, at least 1.
func millis(d time.Duration) int64 { return max(1, d.Milliseconds()) }

func newToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("redisstore: lease token: %w", err)
	}
	return leaseMark + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// lease is a lease set by Acquire. Its lock is adopted from redislock on the
// first refresh or release.
type lease struct {
	s           *Store
	key         string
	token       string
	fingerprint string
	lock        *redislock.Lock
}

func (l *lease) value() string { return l.token + l.fingerprint }

// adopt turns the lease into a redislock.Lock, extending it to ttl. redislock
// re-obtains a key whose value starts with the caller's token, so this
// succeeds exactly while the key still holds this lease (or is free).
func (l *lease) adopt(ctx context.Context, ttl time.Duration) error {
	lock, err := l.s.locker.Obtain(ctx, l.key, ttl, &redislock.Options{Token: l.token, Metadata: l.fingerprint})
	if err != nil {
		return leaseErr(err)
	}
	l.lock = lock
	return nil
}

func leaseErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, redislock.ErrNotObtained) || errors.Is(err, redislock.ErrLockNotHeld) {
		return idem.ErrLeaseLost
	}
	return wrapErr(err)
}

// Refresh implements idem.Lease.
func (l *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if l.lock == nil {
		return l.adopt(ctx, ttl)
	}
	return leaseErr(l.lock.Refresh(ctx, ttl, nil))
}

// Commit implements idem.Lease in one round trip.
func (l *lease) Commit(ctx context.Context, record []byte, ttl time.Duration) error {
	n, err := commitScript.Run(ctx, l.s.client, []string{l.key}, l.value(), recordMark+string(record), millis(ttl)).Int()
	if err != nil {
		return wrapErr(err)
	}
	if n != 1 {
		return idem.ErrLeaseLost
	}
	return nil
}

// Release implements idem.Lease.
func (l *lease) Release(ctx context.Context) error {
	if l.lock == nil {
		// Adopting extends the lease for a moment only to delete it.
		if err := l.adopt(ctx, time.Second); err != nil {
			return err
		}
	}
	return leaseErr(l.lock.Release(ctx))
}
