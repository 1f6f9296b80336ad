// Package natsadapter processes NATS JetStream messages at most once per
// idempotency key, and acks each message as its outcome requires.
//
// Handler wraps a function of a jetstream.Msg into a
// jetstream.MessageHandler for Consumer.Consume (or for messages fetched
// by hand). For every delivery it runs idem's Do with the message's key,
// then, by queue.Decide:
//
//	processed now, or replayed          DoubleAck (the server confirms it)
//	fn failed, store failed, shutdown   NakWithDelay(backoff by delivery count)
//	another attempt in flight, held,    NakWithDelay(lock TTL): never acked,
//	  or result not stored                never dropped
//	final error (stored or replayed),   Term, and the WithOnTerminate hook
//	  key reused, invalid key, corrupt
//
// A redelivery that arrives while the first attempt still runs is not
// acked: it is redelivered after the lock TTL, and then replays the first
// attempt's result, or runs fn if that attempt failed. So no message is
// lost when the first attempt fails.
//
// # Keys and fingerprints
//
// The key is the Nats-Msg-Id header (WithKeyHeader names another), which
// the publisher sets and JetStream also deduplicates on within the stream's
// duplicate window; idem extends that window to the record TTL. A message
// without it is keyed by its stream sequence and the time it was stored,
// which dedups redeliveries of one stored message (also across a stream
// deleted and created again, whose sequences restart). WithKey replaces both. Every key is scoped by the
// message's stream and consumer (idem.ScopedKey): the workers of one
// durable consumer share their records, and two consumers of one stream,
// doing different work on a shared store, never answer each other's
// messages. (A consumer renamed, as an ephemeral one is when recreated,
// starts afresh.) The request fingerprint is the subject and the payload,
// not the headers: two publishes of one logical message with different
// transport headers are the same request, and an ID reused for another
// payload is terminated, not processed.
//
// # AckWait and the lock TTL
//
// While fn runs, the handler tells JetStream the message is in progress
// (InProgress) each time idem refreshes the lease, every third of the
// lock TTL (idem.WithLockTTL), and also while a duplicate waits for an
// in-flight attempt (idem.WithWaitTimeout). Keep the lock TTL below the
// consumer's AckWait, so that JetStream never redelivers a message whose
// attempt is alive: then only a crashed worker's messages are
// redelivered, after AckWait, and their retry runs fn once the crashed
// worker's lease has expired. A message that a worker has pulled but not
// yet handed to the handler (Consume buffers up to PullMaxMessages) is not
// in progress: with a fn that can outlast AckWait, pull one message at a
// time (jetstream.PullMaxMessages(1)), or a batch fn can finish within
// AckWait. A redelivered message is never acked while its first attempt
// runs, so such redeliveries cost a delay, never a message, as long as the
// consumer's MaxDeliver is unset: every nak counts as a delivery, and
// JetStream drops a message that reached MaxDeliver without telling the
// handler. End a message on purpose with idem.Final instead. Header names
// are case-sensitive, as NATS headers are.
//
// fn's context ends when the handler gives up: its lease was lost (then
// idem reports it, and the message is retried), or the context given with
// WithContext ended (shutdown).
package natsadapter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/keyctx"
	"github.com/idemkit/idem/queue"
)

// DefaultKeyHeader is the header a message's idempotency key is read from
// by default: the one JetStream deduplicates publishes on.
const DefaultKeyHeader = "Nats-Msg-Id"

// Option configures a Handler.
type Option func(*config)

type config struct {
	idemOpts    []idem.Option
	keyHeader   string
	key         func(jetstream.Msg) (string, error)
	ctx         context.Context
	onTerminate func(jetstream.Msg, error)
	onError     func(jetstream.Msg, error)
	backoffLo   time.Duration
	backoffHi   time.Duration
	ackTimeout  time.Duration
}

// WithOptions passes options to the idem.Operation the handler runs on:
// its namespace, TTLs, wait timeout, local cache, dispositions.
func WithOptions(opts ...idem.Option) Option {
	return func(c *config) { c.idemOpts = append(c.idemOpts, opts...) }
}

// WithKey sets the function that gives a message's idempotency key,
// instead of the header (or stream and sequence). A message for which it
// returns an error is terminated, and reported to WithOnTerminate.
func WithKey(key func(jetstream.Msg) (string, error)) Option {
	return func(c *config) { c.key = key }
}

// WithKeyHeader reads the idempotency key from the header name instead of
// Nats-Msg-Id. A message without it is keyed by stream and sequence.
func WithKeyHeader(name string) Option {
	return func(c *config) { c.keyHeader = name }
}

// WithContext sets the context every call derives from, Background by
// default. Cancel it at shutdown: fn's context ends, and the messages in
// hand are negatively acknowledged for redelivery.
func WithContext(ctx context.Context) Option {
	return func(c *config) { c.ctx = ctx }
}

// WithOnTerminate sets a function called with every message the handler
// terminates (Term), and the reason: a final error of fn's, stored or
// replayed, a key reused for another payload, an invalid key, a corrupt
// record. Dead-letter the message there, or alert.
func WithOnTerminate(f func(msg jetstream.Msg, err error)) Option {
	return func(c *config) { c.onTerminate = f }
}

// WithOnError sets a function called when the handler cannot ack, nak or
// terminate a message (JetStream then redelivers it after AckWait, and the
// retry replays), when the Operation's options are invalid, and when fn ran
// but its outcome could not be stored (the error wraps idem.ErrNotStored):
// the message is redelivered, and may run fn again, so alert on that one.
func WithOnError(f func(msg jetstream.Msg, err error)) Option {
	return func(c *config) { c.onError = f }
}

// WithBackoff sets the redelivery delay after fn failed: lo for the first
// redelivery, doubled for each one after, at most hi (1 s and 1 min by
// default). See queue.Backoff.
func WithBackoff(lo, hi time.Duration) Option {
	return func(c *config) { c.backoffLo, c.backoffHi = lo, hi }
}

// message is the request idem fingerprints: the subject and payload.
type message struct {
	Subject string
	Data    []byte
}

// Handler returns a jetstream.MessageHandler that runs fn at most once per
// message key on store, and acks, naks or terminates every message as
// the package documentation says. fn returns nil when the message is
// processed; an error wrapped with idem.Final terminates the message, and
// any other error has it redelivered with backoff.
func Handler(store idem.Store, fn func(ctx context.Context, msg jetstream.Msg) error, opts ...Option) jetstream.MessageHandler {
	cfg := &config{
		keyHeader:  DefaultKeyHeader,
		ctx:        context.Background(),
		backoffLo:  time.Second,
		backoffHi:  time.Minute,
		ackTimeout: 5 * time.Second,
	}
	for _, o := range opts {
		o(cfg)
	}
	ps := &progressStore{Store: store}
	op := idem.New[message, struct{}](ps, cfg.idemOpts...)
	h := &handler{cfg: cfg, op: op, store: ps, fn: fn}
	return h.handle
}

type handler struct {
	cfg   *config
	op    *idem.Operation[message, struct{}]
	store *progressStore
	fn    func(context.Context, jetstream.Msg) error
}

func (h *handler) handle(msg jetstream.Msg) {
	c := &call{msg: msg}
	ctx := context.WithValue(h.cfg.ctx, callKey{}, c)
	var key Key
	err := h.op.Err() // invalid options come first: retried, never terminated
	if err == nil {
		key, err = h.key(msg)
	}
	var info idem.Info
	switch {
	case err != nil && h.op.Err() != nil:
		info.Outcome = idem.OutcomeInvalid
	case err == nil:
		_, info, err = h.op.DoInfo(ctx, key.Stored, message{Subject: msg.Subject(), Data: msg.Data()}, func(ctx context.Context, _ message) (struct{}, error) {
			return struct{}{}, h.fn(keyctx.With(ctx, &key), msg)
		})
	default:
		info.Outcome = idem.OutcomeInvalidKey
	}
	switch queue.Decide(info, err) {
	case queue.Ack:
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.cfg.ackTimeout)
		h.report(msg, "ack", msg.DoubleAck(actx))
		cancel()
	case queue.Retry:
		if errors.Is(err, idem.ErrInvalidOption) {
			h.report(msg, "options", err)
		}
		h.report(msg, "nak", msg.NakWithDelay(queue.Backoff(deliveries(msg), h.cfg.backoffLo, h.cfg.backoffHi)))
	case queue.RetryAfterLease:
		if info.Outcome == idem.OutcomeNotStored {
			// fn ran, and its outcome is unknown: the redelivery may
			// run it again. Someone must hear of it.
			h.report(msg, "fn ran, but its outcome was not stored", err)
		}
		h.report(msg, "nak", msg.NakWithDelay(c.lockTTL()))
	case queue.Terminate:
		// Term, not TermWithReason: servers before 2.10.4 ignore the
		// latter, and the message would be redelivered.
		h.report(msg, "term", msg.Term())
		if h.cfg.onTerminate != nil {
			h.cfg.onTerminate(msg, err)
		}
	}
}

// report passes a failure to ack, nak or terminate msg to the error hook.
func (h *handler) report(msg jetstream.Msg, what string, err error) {
	if err != nil && h.cfg.onError != nil {
		h.cfg.onError(msg, fmt.Errorf("natsadapter: %s: %w", what, err))
	}
}

// key returns msg's idempotency key, scoped by its stream and consumer.
func (h *handler) key(msg jetstream.Msg) (Key, error) {
	md, mderr := msg.Metadata()
	var k string
	switch {
	case h.cfg.key != nil:
		var err error
		if k, err = h.cfg.key(msg); err != nil {
			return Key{}, fmt.Errorf("%w: natsadapter: %w", idem.ErrInvalidKey, err)
		}
	case msg.Headers().Get(h.cfg.keyHeader) != "":
		k = msg.Headers().Get(h.cfg.keyHeader)
	case mderr != nil:
		return Key{}, fmt.Errorf("%w: natsadapter: message has no %s header and no JetStream metadata: %w", idem.ErrInvalidKey, h.cfg.keyHeader, mderr)
	default:
		// With the time it was stored: a stream deleted and created
		// again restarts its sequences, and its new messages must not
		// replay the old ones' records.
		k = strconv.FormatUint(md.Sequence.Stream, 10) + "@" + strconv.FormatInt(md.Timestamp.UnixNano(), 10)
	}
	if err := idem.ValidateKey(k); err != nil {
		return Key{}, err
	}
	if mderr != nil {
		return Key{Raw: k, Stored: k}, nil // not from JetStream (a test's message): unscoped
	}
	scope := md.Stream + "/" + md.Consumer
	return Key{Raw: k, Scope: scope, Stored: idem.ScopedKey(scope, k)}, nil
}

// deliveries returns how often msg was delivered, 1 when unknown.
func deliveries(msg jetstream.Msg) int {
	if md, err := msg.Metadata(); err == nil && md.NumDelivered > 0 {
		return int(min(md.NumDelivered, 1<<20))
	}
	return 1
}

// callKey marks the context of one delivery; its value is the *call.
type callKey struct{}

// call is one delivery: the message, and the lock TTL idem asked the store
// for.
type call struct {
	msg jetstream.Msg
	mu  sync.Mutex
	ttl time.Duration
}

func (c *call) setTTL(d time.Duration) {
	c.mu.Lock()
	c.ttl = d
	c.mu.Unlock()
}

// lockTTL returns the lock TTL of the call's Operation, or idem's default
// when the store was not asked.
func (c *call) lockTTL() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ttl > 0 {
		return c.ttl
	}
	return idem.DefaultLockTTL
}

// progressStore is the Store the handler's Operation runs on: store,
// with InProgress sent for the delivery whenever its lease is refreshed,
// and while it waits for another attempt.
type progressStore struct {
	idem.Store
}

// Acquire implements idem.Store. It passes ctx on, and with it an
// Operation's request for the record's TTL (idem.TTLRequested).
func (s *progressStore) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	c, _ := ctx.Value(callKey{}).(*call)
	if c != nil {
		c.setTTL(ttl)
	}
	a, err := s.Store.Acquire(ctx, key, fp, ttl)
	if a.Lease != nil && c != nil {
		a.Lease = &progressLease{Lease: a.Lease, msg: c.msg}
	}
	return a, err
}

// Wait implements idem.Store: it tells JetStream the message is in
// progress every third of the lock TTL while it waits.
func (s *progressStore) Wait(ctx context.Context, key string) error {
	c, _ := ctx.Value(callKey{}).(*call)
	if c == nil {
		return s.Store.Wait(ctx, key)
	}
	t := time.NewTicker(max(c.lockTTL()/3, time.Millisecond))
	defer t.Stop()
	done := make(chan error, 1)
	go func() { done <- s.Store.Wait(ctx, key) }()
	for {
		select {
		case err := <-done:
			return err
		case <-t.C:
			_ = c.msg.InProgress()
		}
	}
}

// progressLease is a lease whose refreshes also tell JetStream that its
// message is in progress.
type progressLease struct {
	idem.Lease
	msg jetstream.Msg
}

// Refresh implements idem.Lease.
func (l *progressLease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := l.Lease.Refresh(ctx, ttl); err != nil {
		return err
	}
	_ = l.msg.InProgress()
	return nil
}
