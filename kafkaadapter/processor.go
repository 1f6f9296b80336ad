package kafkaadapter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/keyctx"
	"github.com/idemkit/idem/queue"
)

// Processor runs a function at most once per record idempotency key, and
// tells the poll loop whether each record may be marked for commit. Build
// it with New; it is safe for concurrent use, by any number of partitions'
// goroutines.
type Processor struct {
	op    *idem.Operation[message, struct{}]
	group string
	fn    func(ctx context.Context, rec *kgo.Record) error
	cfg   *config
	err   error
}

// message is what identifies a record's request, its fingerprint: the
// topic, key and value. Headers are left out, so that two produces of one
// logical message whose transport headers differ (a trace ID, a retry
// count) are the same request; the same idempotency key with another
// topic, key or value is a reused key.
type message struct {
	Topic string
	Key   []byte
	Value []byte
}

// New returns a Processor that runs fn for the records given to Process,
// once per idempotency key, keeping its leases and records in store.
//
// group names the consumer whose records these are: pass the consumer
// group's ID (the one given to kgo.ConsumerGroup). Keys are scoped by it
// (idem.ScopedKey), so that two groups reading the same topic with the same
// store each process every record, rather than the second replaying what
// the first did; the members of one group, which must share their records,
// must pass the same group. To move a consumer to another group ID without
// processing again what it processed, keep passing the old name.
//
// fn receives a context derived from the one given to Process (cancelled
// with idem.ErrLeaseLost as its cause if the lease is lost while fn runs)
// and the record. Its
// error is retried (see WithRetries), unless it is final: return
// idem.Final(err) for a failure that no retry changes, which is stored,
// replayed to redeliveries, and terminates the record (see WithOnTerminate).
//
// Check Err once the Processor is built.
func New(store idem.Store, group string, fn func(ctx context.Context, rec *kgo.Record) error, opts ...Option) *Processor {
	cfg := newConfig(opts)
	if group == "" {
		cfg.invalid("New: empty group")
	}
	if fn == nil {
		cfg.invalid("New: nil fn")
	}
	core := append([]idem.Option{
		idem.WithNamespace(DefaultNamespace),
		idem.WithWaitTimeout(DefaultWaitTimeout),
	}, cfg.core...)
	op := idem.New[message, struct{}](store, core...)
	return &Processor{
		op:    op,
		group: group,
		fn:    fn,
		cfg:   cfg,
		err:   errors.Join(errors.Join(cfg.errs...), op.Err()),
	}
}

// Err returns the error that every Process call reports because New was
// given options it cannot honour (wrapping idem.ErrInvalidOption), or nil
// when the Processor is usable. Call it right after New, so that a
// misconfigured consumer fails when it starts.
func (p *Processor) Err() error { return p.err }

// Result is what Process did with a record.
type Result struct {
	// Action is what the poll loop does with the record; Commit says it
	// in one bit. Ack: processed, now or before. Retry: not processed,
	// in place retries exhausted. RetryAfterLease: another attempt holds
	// the key, or holds it until its lease expires. Terminate: settled
	// as a failure that no redelivery changes.
	Action queue.Action
	// Info describes the last call of idem's Do: its Outcome, the key
	// given to Do (scoped by the group) and the record's fingerprint.
	Info idem.Info
	// Err is the last attempt's error (fn's, or idem's), or the reason
	// the record has no valid key; nil when Action is Ack.
	Err error
	// Attempts is how many times Process called Do for the record: 1,
	// plus the in-place retries (WithRetries). It is 0 when the record
	// has no valid key or the Processor is misconfigured.
	Attempts int
	// TerminateErr is the error the WithOnTerminate function returned for
	// a terminated record. The record is then not committable.
	TerminateErr error
}

// Commit reports whether the poll loop may mark the record for commit
// (kgo.Client.MarkCommitRecords): it was processed (Ack), or it is
// terminated and the WithOnTerminate function, if any, took it. When
// Commit is false, the loop must mark neither the record nor any later
// record of its partition (a commit covers every offset below it), and
// have the record fetched again; see the package documentation.
func (r Result) Commit() bool {
	switch r.Action {
	case queue.Ack:
		return true
	case queue.Terminate:
		return r.TerminateErr == nil
	}
	return false
}

// Process runs fn for rec unless a record with rec's idempotency key was
// processed already, and says what the poll loop does with rec.
//
// A record whose key another attempt holds (a zombie member still
// processing it after a rebalance, or a duplicate produce processed by
// another member) waits for that attempt, up to the wait timeout
// (DefaultWaitTimeout), then reports Ack if the attempt succeeded, runs fn
// itself if the attempt failed, or reports RetryAfterLease if it is still
// running. An attempt that fails with an error a retry may cure is retried
// in place (WithRetries), then reported as Retry. Process returns early,
// with Retry, when ctx ends. A terminated record is given to the
// WithOnTerminate function before Process returns.
//
// Process never runs fn twice for one key at once, nor again once an
// attempt succeeded and its outcome was stored, within the records' TTL
// (idem.WithTTL). An outcome that could not be stored (idem.ErrNotStored:
// the store failed, or the lease was lost, after fn ran) is
// RetryAfterLease, and its redelivery may run fn again, as with idem's Do.
func (p *Processor) Process(ctx context.Context, rec *kgo.Record) Result {
	if p.err != nil {
		return Result{Action: queue.Retry, Info: idem.Info{Outcome: idem.OutcomeInvalid}, Err: p.err}
	}
	if rec == nil {
		return Result{Action: queue.Retry, Info: idem.Info{Outcome: idem.OutcomeInvalid},
			Err: fmt.Errorf("%w: kafkaadapter: Process(nil)", idem.ErrInvalidOption)}
	}
	key, err := p.key(rec)
	if err != nil {
		return p.terminate(ctx, rec, Result{Action: queue.Terminate, Info: idem.Info{Outcome: idem.OutcomeInvalidKey}, Err: err})
	}
	// Copies: fn may change rec's bytes in place, and every attempt must
	// fingerprint what was received. bytes.Clone keeps nil apart from
	// empty, as the fingerprint does.
	msg := message{Topic: rec.Topic, Key: bytes.Clone(rec.Key), Value: bytes.Clone(rec.Value)}
	fn := func(ctx context.Context, _ message) (struct{}, error) {
		return struct{}{}, p.fn(keyctx.With(ctx, &key), rec)
	}
	for attempt := 1; ; attempt++ {
		_, info, err := p.op.DoInfo(ctx, key.Stored, msg, fn)
		res := Result{Action: queue.Decide(info, err), Info: info, Err: err, Attempts: attempt}
		switch res.Action {
		case queue.Terminate:
			return p.terminate(ctx, rec, res)
		case queue.Retry:
			if attempt > p.cfg.retries || info.Outcome == idem.OutcomeInvalid || !sleep(ctx, queue.Backoff(attempt, p.cfg.backoffMin, p.cfg.backoffMax)) {
				return res
			}
		default:
			return res
		}
	}
}

// terminate gives a terminated record to the WithOnTerminate function.
func (p *Processor) terminate(ctx context.Context, rec *kgo.Record, res Result) Result {
	if p.cfg.onTerminate != nil {
		if err := p.cfg.onTerminate(ctx, rec, res.Err); err != nil {
			res.TerminateErr = fmt.Errorf("kafkaadapter: WithOnTerminate: %w", err)
		}
	}
	return res
}

// key returns the key given to Do for rec: WithKey's, else the header's,
// else rec's position, scoped by the group.
func (p *Processor) key(rec *kgo.Record) (Key, error) {
	var k string
	switch {
	case p.cfg.key != nil:
		var err error
		if k, err = p.cfg.key(rec); err != nil {
			return Key{}, fmt.Errorf("%w: kafkaadapter: WithKey: %w", idem.ErrInvalidKey, err)
		}
		if err := idem.ValidateKey(k); err != nil {
			return Key{}, fmt.Errorf("kafkaadapter: WithKey: %w", err)
		}
	default:
		v, found, err := header(rec, p.cfg.header)
		switch {
		case err != nil:
			return Key{}, err
		case found:
			if err := idem.ValidateKey(v); err != nil {
				return Key{}, fmt.Errorf("kafkaadapter: header %q: %w", p.cfg.header, err)
			}
			k = v
		default:
			// A position key may exceed idem.MaxKeyLen (topic names
			// reach 249 bytes): ScopedKey then hashes it. It has a
			// scope of its own, so that no producer's header value
			// can name a position.
			pos, scope := positionKey(rec), p.group+"/position"
			return Key{Raw: pos, Scope: scope, Stored: idem.ScopedKey(scope, pos)}, nil
		}
	}
	return Key{Raw: k, Scope: p.group, Stored: idem.ScopedKey(p.group, k)}, nil
}

// header returns the value of rec's header name, compared without regard
// to case, and whether rec has it. The header repeated with
// different values is an error.
func header(rec *kgo.Record, name string) (string, bool, error) {
	var v []byte
	found := false
	for _, h := range rec.Headers {
		if !strings.EqualFold(h.Key, name) {
			continue
		}
		if found && string(h.Value) != string(v) {
			return "", false, fmt.Errorf("%w: kafkaadapter: header %q repeated with different values", idem.ErrInvalidKey, name)
		}
		v, found = h.Value, true
	}
	return string(v), found, nil
}

// positionKey returns the key of a record without one:
// "topic/partition/offset@timestamp", the timestamp in Unix milliseconds.
// A redelivery of the record has the same position and timestamp; the
// timestamp tells it from another record at the same offset of a topic
// that was deleted and created again, or of a partition truncated by an
// unclean leader election, which must be processed and not replayed.
func positionKey(rec *kgo.Record) string {
	b := make([]byte, 0, len(rec.Topic)+48)
	b = append(b, rec.Topic...)
	b = append(b, '/')
	b = strconv.AppendInt(b, int64(rec.Partition), 10)
	b = append(b, '/')
	b = strconv.AppendInt(b, rec.Offset, 10)
	b = append(b, '@')
	b = strconv.AppendInt(b, rec.Timestamp.UnixMilli(), 10)
	return string(b)
}

// sleep waits d, and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
