// Package redisstore is an idem.Store on Redis, shared by every process that
// uses the same Redis: a single server, a Sentinel-managed primary, or a
// Redis Cluster, through any go-redis v9 redis.UniversalClient.
//
// # Layout
//
// Each idempotency key is one Redis string key, prefix + key ("idem:" by
// default). While an execution is in flight it holds the lease: a
// bsm/redislock lock value, token + request fingerprint, with a PX expiry.
// A token is "\x00L" and 22 random base64url characters (16 random bytes),
// one per Acquire. When the execution completes, one Lua script replaces the
// lease with the record value, only if the key still holds this caller's
// exact lease value, and sets the record's PX expiry. The record value is
// "\x00R", the 22 random characters of the committing lease's token, then
// the record idem gave to Commit:
//
//	lease:  \x00L | 22-byte token | fingerprint
//	record: \x00R | 22-byte token of the lease that committed it | record
//
// The token in the record is what makes Commit idempotent for its own lease
// only: a Commit repeated after a lost reply finds the record it wrote and
// succeeds, while the Commit of a lease that expired and was taken over
// fails with idem.ErrLeaseLost even when its record has the same bytes as
// the one the new holder committed. A value starting with "\x00R" but too
// short to hold a token, or with any other start, is foreign data, which
// idem reports as idem.ErrCorruptRecord. One Redis key per idempotency key
// means one hash slot, so Redis Cluster needs no hash tags and no key is
// ever split across slots. Expiry is always Redis's, never an application
// clock.
//
// # Round trips
//
// A replay costs one round trip and a first execution two. On Redis 7.0
// and newer, Acquire sends the one plain command SET key lease NX GET PX
// ttl, which sets the lease when the key is absent and returns the record
// (or the holder's lease) when it is not, so a replay runs no script on the
// server. When its ctx asks for the record's TTL (idem.TTLRequested: an
// idem.Operation with idem.WithLocalCache), it sends the same SET with a
// PTTL of the key in one transaction (MULTI/EXEC), to tell the cache how
// long a record has left (idem.Acquisition.TTL). On older servers, learned
// from the syntax error they give the newer command, it sends a
// transaction of a GET of the key and redislock's obtain script, and the
// PTTL when asked. The
// commit script is the second round trip. Refreshes while fn runs and the
// release on failure go through a redislock.Lock, whose scripts act only
// while the key holds this caller's exact lease value. A waiting duplicate
// polls the key with exponential backoff (redislock's) until the lease is
// gone.
//
// # Deployment
//
// Every key idem writes carries a TTL. Run Redis with maxmemory-policy
// noeviction (the default), and no other policy: under any volatile-* or
// allkeys-* policy, Redis may drop a lease or a record under memory
// pressure, and the next call with that key runs fn again. Likewise a
// failover to a replica that had not yet received a write (replication is
// asynchronous) can lose a lease or a record.
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
	"math"
	"strings"
	"sync/atomic"
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
	// recordHead is the length of what precedes the record in a stored
	// record value: recordMark, then the committing lease's token without
	// its leaseMark.
	recordHead = len(recordMark) + tokenLen - len(leaseMark)
)

// DefaultPrefix is put before every idempotency key to form its Redis key.
const DefaultPrefix = "idem:"

// commit replaces the lease value ARGV[1] under KEYS[1] by the record value
// ARGV[2] with expiry ARGV[3] ms, and returns 1. It also returns 1, writing
// nothing, when the key already holds exactly ARGV[2], so that a commit
// retried after a lost reply (go-redis retries, or idem's own) reports
// success instead of a lost lease. ARGV[2] carries this lease's token (see
// recordValue), so only this lease's own commit matches: a lease that
// expired and was taken over, whose record has the same bytes as the one the
// new holder committed, gets 0. Otherwise it returns 0 and writes nothing.
var commitScript = redis.NewScript(`
local v = redis.call("GET", KEYS[1])
if v == ARGV[1] then
	redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3])
	return 1
end
if v == ARGV[2] then return 1 end
return 0
`)

// An Option configures a Store.
type Option func(*Store)

// WithPrefix sets the string put before each idempotency key to form its
// Redis key. The default is DefaultPrefix.
func WithPrefix(p string) Option { return func(s *Store) { s.prefix = p } }

// WithPollBackoff sets the bounds of the exponential backoff with which a
// waiting duplicate polls an in-flight key. The defaults are 8ms and 200ms.
// Values below a millisecond are raised to one, and maxWait to at least
// minWait.
func WithPollBackoff(minWait, maxWait time.Duration) Option {
	return func(s *Store) {
		s.pollMin = max(minWait, time.Millisecond)
		s.pollMax = max(maxWait, s.pollMin)
	}
}

// Store is an idem.Store on Redis. Create it with New. It is safe for
// concurrent use.
type Store struct {
	client           redis.UniversalClient
	prefix           string
	pollMin, pollMax time.Duration
	// legacy is set once the server refused SET NX GET (Redis before
	// 7.0): Acquire then sends GET and redislock's obtain script.
	legacy atomic.Bool
}

var _ idem.Store = (*Store)(nil)

// New returns a Store that keeps its leases and records in client's Redis.
func New(client redis.UniversalClient, opts ...Option) *Store {
	s := &Store{
		client:  client,
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

// errNilClient is returned by a Store made with a nil client.
var errNilClient = errors.New("redisstore: nil redis client")

// Acquire implements idem.Store in one round trip. It reports
// Acquisition.TTL only when ctx asks for it (idem.TTLRequested), adding a
// PTTL of the key to the command, in one transaction (MULTI/EXEC) so that
// the PTTL is that of what the SET found, with no other client's command
// between them.
//
// On Redis 7.0 and newer it sends the one plain command SET key lease NX GET
// PX ttl, which takes the lease when the key is absent and returns what
// holds the key otherwise, so a replay runs no script on the server and no
// lock machinery in the client. When the SET took the lease, redislock
// makes the Lock for it (its obtain is answered locally, the lease being
// set already), and that Lock's scripts refresh and release it. Older
// servers answer the command with a syntax error (NX and GET together came
// in 7.0); the Store then keeps to a transaction (MULTI/EXEC) of GET and
// redislock's obtain script, for this call and every later one.
//
// A reply may be lost after the command was applied. go-redis may then
// send a plain command again by itself, and does not resend a
// transaction; Acquire sends either again, up to twice, with the same lease
// value, which the SET (or the obtain script) then finds and recognises as
// this call's own; if every try fails, it deletes the lease it may have
// set, so that the key is not left blocked.
func (s *Store) Acquire(ctx context.Context, key, fingerprint string, ttl time.Duration) (idem.Acquisition, error) {
	withTTL := idem.TTLRequested(ctx)
	if s.client == nil {
		return idem.Acquisition{}, errNilClient
	}
	rkey, value, err := keyAndLease(s.prefix, key, fingerprint)
	if err != nil {
		return idem.Acquisition{}, err
	}
	ttl = ceilMillis(ttl)
	for try := 1; ; try++ {
		a, err := s.try(ctx, rkey, value, fingerprint, ttl, withTTL)
		if err == nil || !transient(ctx, err) {
			return a, wrapErr(err)
		}
		if try == 3 {
			s.abandon(ctx, rkey, value, fingerprint, ttl)
			return a, wrapErr(err)
		}
	}
}

// transient reports whether err, from a call under ctx, may be a reply
// lost on the way: not an answer of Redis, nor the end of ctx.
func transient(ctx context.Context, err error) bool {
	var answer redis.Error
	return ctx.Err() == nil && !errors.As(err, &answer) && !errors.Is(err, redislock.ErrNotObtained) && !errors.Is(err, redis.ErrClosed)
}

// try is one try of acquire with the lease value value.
func (s *Store) try(ctx context.Context, rkey, value, fingerprint string, ttl time.Duration, withTTL bool) (idem.Acquisition, error) {
	token := value[:tokenLen]
	var p *peek
	if !s.legacy.Load() {
		found, held, pttl, err := s.setNXGet(ctx, rkey, value, ttl, withTTL)
		switch {
		case err != nil && strings.HasPrefix(err.Error(), "ERR syntax error"):
			s.legacy.Store(true)
		case err != nil:
			return idem.Acquisition{}, err
		case found:
			return acquisition(held, pttl), nil
		default:
			p = &peek{UniversalClient: s.client, key: rkey, set: true}
		}
	}
	if p == nil {
		p = &peek{UniversalClient: s.client, key: rkey, withTTL: withTTL}
	}
	// The key was free, and p's obtain either confirms the lease that
	// setNXGet took or (on older servers) takes it with the script.
	octx := ctx
	if p.set {
		// Nothing is sent; a deadline spares redislock the timer it would
		// start to bound its retries.
		octx = deadlined{ctx, time.Now().Add(ttl)}
	}
	lock, err := redislock.New(p).Obtain(octx, rkey, ttl, &redislock.Options{Token: token, Metadata: fingerprint})
	switch {
	case err == nil:
		return idem.Acquisition{Lease: &lease{s: s, lock: lock}}, nil
	case !errors.Is(err, redislock.ErrNotObtained) || !p.sent:
		return idem.Acquisition{}, err
	case p.err != nil:
		return idem.Acquisition{}, p.err
	case p.found:
		return acquisition(p.held, p.pttl), nil
	}
	// GET and the obtain travel in one transaction, so that the key is
	// free to one and held for the other cannot be.
	return idem.Acquisition{}, fmt.Errorf("redisstore: key %q was free, yet could not be leased", rkey)
}

// abandon deletes the lease value value from rkey if the key holds it: a
// lease that a try of Acquire may have set before its reply was lost. It
// is best effort; a lease left behind expires after ttl.
func (s *Store) abandon(ctx context.Context, rkey, value, fingerprint string, ttl time.Duration) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ttl)
	defer cancel()
	p := &peek{UniversalClient: s.client, key: rkey, set: true}
	lock, err := redislock.New(p).Obtain(deadlined{cctx, time.Now().Add(ttl)}, rkey, ttl, &redislock.Options{Token: value[:tokenLen], Metadata: fingerprint})
	if err == nil {
		_ = lock.Release(cctx)
	}
}

// setNXGet sends SET key value NX GET PX ttl, one round trip; with
// withTTL, in one transaction with a PTTL of key. It reports found, with
// what held the key and, with withTTL, the key's PTTL (0 if unknown), when
// the key was held by another value; otherwise the lease is set.
func (s *Store) setNXGet(ctx context.Context, key, value string, ttl time.Duration, withTTL bool) (found bool, held string, pttl time.Duration, err error) {
	set := newSetNXGet(ctx, key, value, ttl)
	var ttlCmd *redis.DurationCmd
	if withTTL {
		// MULTI/EXEC, in the same round trip: the PTTL must be that of
		// what the SET found, with no other client's command between them.
		pipe := s.client.TxPipeline()
		_ = pipe.Process(ctx, set)
		ttlCmd = pipe.PTTL(ctx, key)
		_, _ = pipe.Exec(ctx) // errors are read from each command
	} else {
		_ = s.client.Process(ctx, set) // the error is read from set
	}
	v, err := set.Result()
	switch {
	case errors.Is(err, redis.Nil), err == nil && v == value:
		// The key was absent, and the lease is ours; or it holds our lease
		// already, set by an earlier try of this Acquire, or by go-redis's
		// own resending of the command, whose reply was lost (the token is
		// new for every Acquire).
		return false, "", 0, nil
	case err == nil:
		return true, v, remaining(ttlCmd), nil
	default:
		return false, "", 0, err
	}
}

// newSetNXGet returns the command SET key value PX ttl NX GET. Its
// arguments are plain values, so that go-redis's hooks, logs and traces
// show them as the command Redis receives.
func newSetNXGet(ctx context.Context, key, value string, ttl time.Duration) *redis.StringCmd {
	return redis.NewStringCmd(ctx, "set", key, value, "px", ttl.Milliseconds(), "nx", "get")
}

// remaining is what a PTTL read, or 0 when it was not sent or did not
// give a remaining lifetime.
func remaining(cmd *redis.DurationCmd) time.Duration {
	if cmd == nil {
		return 0
	}
	d, err := cmd.Result()
	if err != nil || d < 0 {
		return 0
	}
	return d
}

// deadlined is ctx with a deadline, for an Obtain answered locally: its
// Done is ctx's, since nothing waits on it.
type deadlined struct {
	context.Context
	d time.Time
}

func (c deadlined) Deadline() (time.Time, bool) { return c.d, true }

// peek is the redis.Scripter given to redislock for one Obtain. Its first
// script call, the obtain, is answered with success locally when the lease
// is set already (set), and otherwise sent in one transaction with a GET of
// the key (and a PTTL, withTTL), so that a failed obtain costs no extra
// round trip to learn what holds the key, nor how long a record has left.
// Later calls (the Lock's refreshes and release) go straight through.
type peek struct {
	redis.UniversalClient
	key     string
	set     bool // the lease is set already: the obtain succeeds without a call
	withTTL bool // read the key's PTTL with it

	sent  bool          // the obtain was answered
	found bool          // the key held something else: held
	held  string        // what the key held, if found
	err   error         // reading the key failed
	pttl  time.Duration // the key's remaining TTL, if withTTL and known
}

// acquisition is what a key held, with pttl as the TTL of a record.
func acquisition(held string, pttl time.Duration) idem.Acquisition {
	a := parse(held)
	if a.Record != nil {
		a.TTL = pttl
	}
	return a
}

func (p *peek) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	if p.sent {
		return p.UniversalClient.EvalSha(ctx, sha1, keys, args...)
	}
	return p.obtain(ctx, func(pipe redis.Pipeliner) *redis.Cmd { return pipe.EvalSha(ctx, sha1, keys, args...) })
}

func (p *peek) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	if p.sent {
		return p.UniversalClient.Eval(ctx, script, keys, args...)
	}
	return p.obtain(ctx, func(pipe redis.Pipeliner) *redis.Cmd { return pipe.Eval(ctx, script, keys, args...) })
}

// obtain answers the obtain script's call: "OK" when the lease is set
// already, else the script's own reply, sent in one transaction with a GET of
// the key and, withTTL, a PTTL.
func (p *peek) obtain(ctx context.Context, script func(redis.Pipeliner) *redis.Cmd) *redis.Cmd {
	p.sent = true
	if p.set {
		cmd := redis.NewCmd(ctx)
		cmd.SetVal("OK")
		return cmd
	}
	pipe := p.TxPipeline() // see setNXGet
	get := pipe.Get(ctx, p.key)
	cmd := script(pipe)
	var pttl *redis.DurationCmd
	if p.withTTL {
		pttl = pipe.PTTL(ctx, p.key)
	}
	_, _ = pipe.Exec(ctx) // errors are read from each command
	p.pttl = remaining(pttl)
	v, err := get.Result()
	switch {
	case err == nil:
		p.found, p.held = true, v
	case !errors.Is(err, redis.Nil):
		p.err = err
	}
	return cmd
}

// recordValue is what a lease with token stores for record: recordMark,
// the token without its leaseMark, and the record.
func recordValue(token string, record []byte) string {
	return recordMark + token[len(leaseMark):] + string(record)
}

// parse interprets a value read from a key. A record is copied out of v:
// go-redis reads a reply into a buffer of its own today, but nothing
// promises that it will not reuse one, and a record aliasing a reused
// buffer would replay another request's bytes.
func parse(v string) idem.Acquisition {
	switch {
	case strings.HasPrefix(v, recordMark) && len(v) >= recordHead:
		return idem.Acquisition{Record: []byte(v[recordHead:])}
	case strings.HasPrefix(v, leaseMark) && len(v) >= tokenLen:
		return idem.Acquisition{Holder: v[tokenLen:]}
	default:
		// Foreign data, or a record value too short to hold the token:
		// hand it over as a record, which idem reports as
		// ErrCorruptRecord.
		return idem.Acquisition{Record: []byte(v)}
	}
}

// Wait implements idem.Store by polling key with exponential backoff until it
// no longer holds a lease.
func (s *Store) Wait(ctx context.Context, key string) error {
	backoff := redislock.ExponentialBackoff(s.pollMin, s.pollMax)
	// The caller has just seen the lease; look again after the first backoff.
	t := time.NewTimer(s.pollMin)
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

// ceilMillis rounds d up to a whole number of milliseconds, at least one:
// redislock truncates lease TTLs to milliseconds, which would make a lease
// up to 1 ms shorter than idem's keep-alive assumes, and turn a refresh
// below 1 ms into PEXPIRE 0, deleting the lease while reporting success.
// It does not overflow: a TTL within a millisecond of the largest Duration
// (math.MaxInt64, "forever") is rounded down instead, by less than 1 ms.
func ceilMillis(d time.Duration) time.Duration {
	r := d.Truncate(time.Millisecond)
	if r < d && r <= math.MaxInt64-time.Millisecond {
		r += time.Millisecond
	}
	return max(time.Millisecond, r)
}

// keyAndLease returns the Redis key, prefix + key, and a new lease value: a
// new token (leaseMark and 16 random bytes in base64url), then
// fingerprint; both in one allocation.
func keyAndLease(prefix, key, fingerprint string) (rkey, value string, err error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("redisstore: lease token: %w", err)
	}
	var t [tokenLen]byte
	copy(t[:], leaseMark)
	base64.RawURLEncoding.Encode(t[len(leaseMark):], b[:])
	var sb strings.Builder
	sb.Grow(len(prefix) + len(key) + tokenLen + len(fingerprint))
	sb.WriteString(prefix)
	sb.WriteString(key)
	sb.Write(t[:])
	sb.WriteString(fingerprint)
	all := sb.String()
	n := len(prefix) + len(key)
	return all[:n], all[n:], nil
}

// lease is a lease taken by Acquire: a redislock.Lock on the key.
type lease struct {
	s    *Store
	lock *redislock.Lock
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

// Refresh implements idem.Lease through redislock.
func (l *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	return leaseErr(l.lock.Refresh(ctx, ceilMillis(ttl), nil))
}

// Commit implements idem.Lease in one round trip. A repeated Commit of the
// same record by the same lease succeeds; a Commit by a lease that expired
// returns idem.ErrLeaseLost, also when the key now holds the same record
// bytes committed by whoever took it over.
func (l *lease) Commit(ctx context.Context, record []byte, ttl time.Duration) error {
	value := l.lock.Token() + l.lock.Metadata()
	// Rounded up, as leases are: a record must live at least ttl, or a
	// local cache (idem.WithLocalCache), which keeps it for ttl, would
	// outlive it.
	n, err := commitScript.Run(ctx, l.s.client, []string{l.lock.Key()}, value, recordValue(l.lock.Token(), record), ceilMillis(ttl).Milliseconds()).Int()
	if err != nil {
		return wrapErr(err)
	}
	if n != 1 {
		return idem.ErrLeaseLost
	}
	return nil
}

// Release implements idem.Lease through redislock.
func (l *lease) Release(ctx context.Context) error {
	return leaseErr(l.lock.Release(ctx))
}
