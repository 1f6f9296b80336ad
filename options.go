package idem

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/idemkit/idem/codec"
)

// Defaults used when an option is not given.
const (
	DefaultTTL     = 24 * time.Hour
	DefaultLockTTL = 10 * time.Second
)

// An Option configures an Operation. Options are applied in order; a later
// option overrides an earlier one.
type Option func(*config)

type config struct {
	ttl         time.Duration
	lockTTL     time.Duration
	wait        time.Duration
	validate    bool
	codec       codec.Codec
	namespace   string
	fingerprint any // func(Req) ([]byte, error), checked by New
	dispose     func(error) Disposition
	cacheSize   int
	observers   []*Observer
	errs        []error
}

func newConfig(opts []Option) *config {
	c := &config{
		ttl:      DefaultTTL,
		lockTTL:  DefaultLockTTL,
		validate: true,
		codec:    codec.MsgPack{},
	}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	return c
}

func (c *config) invalid(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...))
}

func (c *config) err() error { return errors.Join(c.errs...) }

// WithTTL sets how long a completed result is kept and replayed. After it,
// the key is free and a call executes afresh. The default is DefaultTTL.
func WithTTL(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.invalid("WithTTL(%v): must be positive", d)
			return
		}
		c.ttl = d
	}
}

// WithLockTTL sets the TTL of the lease on an in-flight execution. The
// lease is what other idempotency libraries call the lock: the exclusive,
// expiring right to run fn for one key, granted by Store.Acquire. It is
// refreshed every third of d while fn runs, so d bounds how long a key stays
// blocked after its holder crashed, not how long fn may run. The default is
// DefaultLockTTL.
func WithLockTTL(d time.Duration) Option {
	return func(c *config) {
		if d < 3*time.Millisecond {
			c.invalid("WithLockTTL(%v): must be at least 3ms", d)
			return
		}
		c.lockTTL = d
	}
}

// WithWaitTimeout sets how long a call waits for an in-flight execution of
// the same key to finish, so that it can replay its result instead of
// returning ErrInFlight. Zero, the default, returns ErrInFlight at once.
func WithWaitTimeout(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.invalid("WithWaitTimeout(%v): must not be negative", d)
			return
		}
		c.wait = d
	}
}

// WithSignatureValidation sets whether a key reused with a request of another
// fingerprint is refused with ErrKeyReused (true, the default) or served the
// stored result regardless (false). The signature is the request
// fingerprint (Info.Fingerprint); the name is kept from the decorator this
// library follows. With validation off, a record stored by an Operation of
// other request or result types is still refused (see New).
func WithSignatureValidation(on bool) Option {
	return func(c *config) { c.validate = on }
}

// WithCodec sets how results are encoded for the store. The default is
// codec.MsgPack. Records written with one codec are reported as
// ErrCorruptRecord when read with another.
func WithCodec(cd codec.Codec) Option {
	return func(c *config) {
		if cd == nil {
			c.invalid("WithCodec(nil)")
			return
		}
		if n := len(cd.Name()); n == 0 || n > maxHeaderPart {
			c.invalid("WithCodec: name %q must be 1 to %d bytes", cd.Name(), maxHeaderPart)
			return
		}
		c.codec = cd
	}
}

// WithNamespace separates Operations that share one store: the same key in
// two namespaces names two different records. A namespace must not contain
// ':' (it separates the namespace from the key) or control characters.
func WithNamespace(ns string) Option {
	return func(c *config) {
		if strings.Contains(ns, ":") || ValidateKey(ns) != nil && ns != "" {
			c.invalid("WithNamespace(%q): must be printable and hold no ':'", ns)
			return
		}
		c.namespace = ns
	}
}

// WithFingerprint replaces the default request fingerprint: f returns bytes
// that identify the request (for example, selected fields, or a body with its
// volatile parts removed), and the fingerprint is their SHA-256. Req must be
// the Operation's request type, else every Do returns ErrInvalidOption.
func WithFingerprint[Req any](f func(Req) ([]byte, error)) Option {
	return func(c *config) {
		if f == nil {
			c.invalid("WithFingerprint(nil)")
			return
		}
		c.fingerprint = f
	}
}

// WithDisposition sets what happens to fn's errors: decide returns Record
// (store the error and replay it, as Stripe stores a declined charge),
// Release (store nothing; a retry runs fn again) or Hold (store nothing, and
// refuse the key until the lease expires). Errors marked with Final
// (recorded) or Dispose keep their mark whatever decide says. The default,
// and a nil decide, releases every other error. decide is not asked about
// an error fn returns after its context ended (the caller's context, or a
// lost lease): that error is the interruption, not an outcome to replay,
// and is released unless fn marked it. decide must be safe for concurrent
// use; if it panics, the key is held.
func WithDisposition(decide func(err error) Disposition) Option {
	return func(c *config) { c.dispose = decide }
}

// WithLocalCache keeps up to n completed records in this process, so that a
// call whose key was completed or replayed here before is answered without
// a store round trip. n = 0 turns the cache off (the default).
//
// Only records the store confirmed are cached: the record of a Commit that
// succeeded, and a record that Store.Acquire returned together with its
// remaining TTL (Acquisition.TTL). Leases and in-flight states never are,
// so a cache never answers for a key whose execution is under way. Every
// check runs on a hit as on a record read from the store: a request whose
// fingerprint differs gets ErrKeyReused, and the codec and the record's
// types are checked. A cached record expires no later than the stored one:
// its expiry is counted from when the store was asked (Commit sent, or
// Acquire sent plus the TTL the store reported), not from when the cache
// learned of it. Writes go through: the store always holds the record, so
// other processes see it.
//
// Eviction is SIEVE, a scan-resistant relative of LRU whose hits take no
// exclusive lock: a key read again stays cached, while keys used once (most
// idempotency keys) pass through without displacing it.
//
// The cache has one weakness: a record that leaves the store before its
// TTL ends is still replayed from the cache of every process that holds
// it, until the record's TTL (WithTTL) would have ended, while a call
// elsewhere finds the key free and runs fn again. That happens when an
// operator purges a key, when memstore's WithMaxEntries evicts a live
// record, and when Redis evicts a key (any maxmemory-policy but noeviction)
// or loses it in a failover. Call Operation.Forget in each process, once
// the purge is done, to drop it sooner; do not combine the cache with a
// store that evicts live records. The bound n counts records, not bytes:
// budget n times the size of the largest record.
func WithLocalCache(n int) Option {
	return func(c *config) {
		if n < 0 {
			c.invalid("WithLocalCache(%d): must not be negative", n)
			return
		}
		c.cacheSize = n
	}
}
