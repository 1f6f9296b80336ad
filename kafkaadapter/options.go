package kafkaadapter

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/idemkit/idem"
)

// DefaultNamespace is the idem namespace of the Processor's records unless
// WithOptions passes another one with idem.WithNamespace. It keeps them
// apart from the records of other Operations sharing the store, such as
// those of httpadapter.
const DefaultNamespace = "kafka"

// DefaultKeyHeader is the record header that carries the idempotency key
// unless WithKeyHeader names another one.
const DefaultKeyHeader = "Idempotency-Key"

// DefaultWaitTimeout is how long Process waits for an attempt of the same
// record that is in flight elsewhere (a zombie member after a rebalance, a
// duplicate produce consumed by another member), unless WithOptions passes
// idem.WithWaitTimeout. It exceeds idem.DefaultLockTTL, so that the lease
// of an attempt whose consumer crashed expires within the wait, and the
// record is processed in the same call.
const DefaultWaitTimeout = idem.DefaultLockTTL + 5*time.Second

// The in-place retries of records whose attempt failed with an error that
// a retry may cure (queue.Retry), unless WithRetries says otherwise: up to
// DefaultRetries more attempts, the n-th after queue.Backoff(n,
// DefaultBackoffMin, DefaultBackoffMax).
const (
	DefaultRetries    = 3
	DefaultBackoffMin = 100 * time.Millisecond
	DefaultBackoffMax = 2 * time.Second
)

// An Option configures a Processor. Options are applied in order; a later
// option overrides an earlier one. An option that cannot be honoured is
// reported by Processor.Err, and makes every Process call fail with
// queue.Retry, so that no record is committed by a misconfigured consumer.
type Option func(*config)

type config struct {
	core        []idem.Option
	header      string
	key         func(*kgo.Record) (string, error) // nil: the header, else the record's position
	retries     int
	backoffMin  time.Duration
	backoffMax  time.Duration
	onTerminate func(ctx context.Context, rec *kgo.Record, err error) error
	errs        []error
}

func newConfig(opts []Option) *config {
	c := &config{
		header:     DefaultKeyHeader,
		retries:    DefaultRetries,
		backoffMin: DefaultBackoffMin,
		backoffMax: DefaultBackoffMax,
	}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	return c
}

func (c *config) invalid(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("%w: kafkaadapter."+format, append([]any{idem.ErrInvalidOption}, args...)...))
}

// WithOptions passes options to the idem.Operation behind the Processor:
// idem.WithTTL (how long a processed record is remembered: longer than a
// record can take to be redelivered, 24 hours by default),
// idem.WithLockTTL, idem.WithWaitTimeout (DefaultWaitTimeout here; keep it
// above the lock TTL), idem.WithNamespace (DefaultNamespace here),
// idem.WithDisposition (what becomes of fn's errors; idem.Final in fn also
// records one), idem.WithLocalCache and idem.WithCodec. They are applied
// after the Processor's defaults, so they override them. Do not pass
// idem.WithFingerprint: the Processor fingerprints records itself (topic,
// key and value). Options given in several calls of WithOptions add up, in
// order.
func WithOptions(opts ...idem.Option) Option {
	return func(c *config) { c.core = append(c.core, opts...) }
}

// WithKeyHeader names the record header that carries the idempotency key,
// DefaultKeyHeader by default. Its name is matched without regard to case
// (strings.EqualFold), so that a producer writing "idempotency-key" is not
// mistaken for one that sent no key. A record without the header is keyed by its
// position (see the package documentation); a header that is present but
// not a valid key (empty, longer than idem.MaxKeyLen, not UTF-8, with
// control characters, or repeated with different values) terminates the
// record.
func WithKeyHeader(name string) Option {
	return func(c *config) {
		if name == "" {
			c.invalid("WithKeyHeader(%q): empty header name", name)
			return
		}
		c.header = name
	}
}

// WithKey replaces how a record's idempotency key is found: key returns it
// (a field of the value, say), and the header and the position are not
// looked at. An error from key, or a key that idem.ValidateKey refuses,
// terminates the record (queue.Terminate): to require the producer's
// header, return an error when it is missing. nil restores the default.
// key must be safe for concurrent use.
func WithKey(key func(rec *kgo.Record) (string, error)) Option {
	return func(c *config) { c.key = key }
}

// WithRetries sets how often Process calls fn again, in place, when an
// attempt fails with an error that a retry may cure (queue.Retry: fn's
// error, a store failure): up to n more attempts, the i-th after
// queue.Backoff(i, lo, hi), before Process reports queue.Retry. n = 0
// reports the first failure. The default is DefaultRetries,
// DefaultBackoffMin and DefaultBackoffMax. Keep n×hi well under the
// group's rebalance timeout (kgo.RebalanceTimeout, 60 s by default) when
// polling with kgo.BlockRebalanceOnPoll.
func WithRetries(n int, lo, hi time.Duration) Option {
	return func(c *config) {
		if n < 0 || lo < 0 || hi < lo {
			c.invalid("WithRetries(%d, %v, %v): want n >= 0 and 0 <= lo <= hi", n, lo, hi)
			return
		}
		c.retries, c.backoffMin, c.backoffMax = n, lo, hi
	}
}

// WithOnTerminate sets a function that Process calls for every record it
// terminates (queue.Terminate: fn's final error, stored or replayed; a key
// reused for another payload; an invalid key): dead-letter it there, for
// instance by producing it to a dead-letter topic, and return nil. The
// record is then committable (Result.Commit). When f returns an error, the
// record is not, so that a dead-letter topic that is down does not lose
// it: its redelivery replays the terminal outcome, fn does not run again,
// and f is called once more. f is therefore called at least once per
// terminated record, and with ctx, the context given to Process. Without
// WithOnTerminate, terminated records are committable, reported only by
// Result. f must be safe for concurrent use.
func WithOnTerminate(f func(ctx context.Context, rec *kgo.Record, err error) error) Option {
	return func(c *config) { c.onTerminate = f }
}
