package idem

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/idemkit/idem/codec"
)

// Operation runs a function at most once per idempotency key and replays its
// result to later calls with that key. Build it with New; it is safe for
// concurrent use, and one Operation serves any number of keys.
type Operation[Req, Resp any] struct {
	store       Store
	cfg         *config
	fingerprint func(Req) ([]byte, error) // WithFingerprint's; nil: the default
	reqs        sync.Pool                 // of *Req, zeroed, for the default fingerprint
	types       string                    // the request and result types, kept in records
	cache       *localCache               // nil without WithLocalCache
	obs         *Observer                 // nil without WithObserver
	boxes       sync.Pool                 // of *Resp, zeroed, to decode into without allocating
	keepers     keepQueue                 // the keepers of executions in flight, until their first refresh
	err         error
}

// Info describes how Do answered a call. It is known without extra store
// round trips.
type Info struct {
	// Key is the idempotency key as given to Do.
	Key string
	// Fingerprint is the hex SHA-256 fingerprint of the request; empty when
	// Do failed before computing it.
	Fingerprint string
	// Outcome is what happened in the call: whether fn ran, and what
	// became of its outcome, or why it did not run.
	Outcome Outcome
	// Replayed is Outcome == OutcomeReplayed: the result (or a final error)
	// came from a stored record.
	Replayed bool
}

// maxLeaseRetries bounds how often Do acquires a key again because the
// lease it was granted expired before fn could start.
const maxLeaseRetries = 3

// New returns an Operation that keeps its leases and results in store.
//
// Check Err once the Operation is built: options that cannot be honoured, a
// nil store, a WithFingerprint for another request type and a result type
// that no codec can bring back (one that keeps its state in unexported
// fields and has no marshaler) are reported there, and every call of Do
// returns that error.
//
// Records are tagged with the names of Req and Resp (as reflect prints them,
// "pay.ChargeRequest"), and a record of other types is never replayed: two
// Operations that share a store and a namespace, with same-shaped request
// types, refuse each other's keys with ErrKeyReused instead of replaying
// each other's results. Renaming either type, or its package, therefore
// refuses the records stored before the rename (ErrKeyReused, fn not run)
// until they expire; it never replays them as the wrong type nor runs fn
// again. To rename types with records live, give the new Operation a new
// namespace (WithNamespace) once the old records have expired, or rename
// after a TTL without traffic.
func New[Req, Resp any](store Store, opts ...Option) *Operation[Req, Resp] {
	cfg := newConfig(opts)
	o := &Operation[Req, Resp]{store: store, cfg: cfg, types: typeNames[Req, Resp]()}
	o.boxes.New = func() any { return new(Resp) }
	o.reqs.New = func() any { return new(Req) }
	switch f := cfg.fingerprint.(type) {
	case nil:
	case func(Req) ([]byte, error):
		o.fingerprint = f
	default:
		var r Req
		cfg.invalid("WithFingerprint: function is %T, want func(%T) ([]byte, error)", f, r)
	}
	if store == nil {
		cfg.invalid("nil Store")
	}
	if err := checkResultType(reflect.TypeFor[Resp]()); err != nil {
		cfg.invalid("result type %s: %v", reflect.TypeFor[Resp](), err)
	}
	o.err = cfg.err()
	if cfg.cacheSize > 0 {
		o.cache = newLocalCache(cfg.cacheSize)
	}
	o.obs = combine(cfg.observers)
	return o
}

// Forget drops the record of key from this Operation's local cache (see
// WithLocalCache), so that the next call with key asks the store. It does
// not change the store. Without a local cache it does nothing.
func (o *Operation[Req, Resp]) Forget(key string) {
	if o.cache != nil {
		o.cache.forget(o.cfg.namespace + ":" + key)
	}
}

// Store returns the Store the Operation was built on. A store package
// uses it to reach its own Store from an Operation, as pgstore.DoTx does.
func (o *Operation[Req, Resp]) Store() Store { return o.store }

// Err returns the error that every call of Do returns because New was given
// options it cannot honour (wrapping ErrInvalidOption), or nil when the
// Operation is usable. Call it right after New, so that a misconfigured
// service fails when it starts rather than on every request.
func (o *Operation[Req, Resp]) Err() error { return o.err }

// typeNames names the request and result types for records, shortened to
// a digest when longer than a header field holds.
func typeNames[Req, Resp any]() string {
	s := reflect.TypeFor[Req]().String() + " -> " + reflect.TypeFor[Resp]().String()
	if len(s) > maxHeaderPart {
		s = "sha256:" + hashHex([]byte(s))
	}
	return s
}

// Do runs fn once for key and returns its result, or replays the result
// stored by an earlier call with the same key.
//
// On the first call for a key, Do takes a lease on it, runs fn with a context
// derived from ctx, stores fn's result for the TTL and returns it. A call
// that finds the result stored returns it without running fn. A call that
// finds another execution in flight waits for it up to the wait timeout and
// then replays its result; past the timeout it returns ErrInFlight. A call
// whose request fingerprint differs from the one the key was first used with
// returns ErrKeyReused.
//
// A result is stored only if the codec brings it back as the same value
// (see the rules in the package documentation); otherwise Do returns it with
// ErrNotStored and holds the key until the lease expires. When fn returns
// an error, its disposition decides (see WithDisposition and Final): by
// default nothing is stored, the lease is released, and the error is
// returned as it is, so a retry runs fn again. When fn panics, the lease is
// released and the panic continues. Errors of Do itself wrap the package's
// sentinel errors. Whenever fn ran, Do returns what fn returned.
func (o *Operation[Req, Resp]) Do(ctx context.Context, key string, req Req, fn func(context.Context, Req) (Resp, error)) (Resp, error) {
	resp, _, err := o.DoInfo(ctx, key, req, fn)
	return resp, err
}

// DoInfo is Do, and also reports the call's outcome and the request's
// fingerprint.
func (o *Operation[Req, Resp]) DoInfo(ctx context.Context, key string, req Req, fn func(context.Context, Req) (Resp, error)) (Resp, Info, error) {
	if o.obs != nil {
		return o.doObserved(ctx, key, req, fn)
	}
	info := Info{Key: key}
	resp, err := o.do(ctx, nil, &info, req, fn)
	info.Replayed = info.Outcome == OutcomeReplayed
	return resp, info, err
}

// doObserved is DoInfo with observers to tell.
func (o *Operation[Req, Resp]) doObserved(ctx context.Context, key string, req Req, fn func(context.Context, Req) (Resp, error)) (Resp, Info, error) {
	// The trace outlives the call in observers' hands: it holds a copy of
	// the key, which the call uses from here on, so that a caller's key
	// does not escape to the heap in calls without observers (escape
	// analysis judges a parameter by every path).
	t := newTrace(ctx, o.obs, o.cfg.namespace, strings.Clone(key))
	info := Info{Key: t.call.Key}
	returned := false
	defer func() {
		if !returned { // fn panicked: the panic goes on, after Done
			t.done(info.Fingerprint, 0, errPanicked)
		}
	}()
	resp, err := o.do(t.ctx, t, &info, req, fn)
	returned = true
	info.Replayed = info.Outcome == OutcomeReplayed
	t.done(info.Fingerprint, info.Outcome, err)
	return resp, info, err
}

// errPanicked is the error an Observer's Done is given when fn panicked.
var errPanicked = errors.New("idem: fn panicked")

// do is DoInfo's work; t observes it, when not nil.
func (o *Operation[Req, Resp]) do(ctx context.Context, t *trace, info *Info, req Req, fn func(context.Context, Req) (Resp, error)) (Resp, error) {
	var zero Resp
	if o.err != nil {
		info.Outcome = OutcomeInvalid
		return zero, o.err
	}
	if err := ValidateKey(info.Key); err != nil {
		info.Outcome = OutcomeInvalidKey
		return zero, err
	}
	var hex [2 * sha256.Size]byte
	fpb, err := o.appendFingerprint(hex[:0], req)
	if err != nil {
		info.Outcome = OutcomeInvalid
		return zero, err
	}
	// The store key is always "namespace:key", also with no namespace
	// (":key"): a namespace holds no ':', so no key of one namespace can
	// name another's record. It and the fingerprint share one allocation.
	s := o.cfg.namespace + ":" + info.Key + string(fpb)
	skey, fp := s[:len(s)-len(fpb)], s[len(s)-len(fpb):]
	info.Fingerprint = fp
	if o.cache != nil {
		if rec, ok := o.cache.get(skey, mono()); ok {
			resp, outcome, err := o.replay(rec, fp)
			info.Outcome = outcome
			return resp, err
		}
	}

	// The local cache needs to know how long a record has left.
	actx := ctx
	if o.cache != nil {
		actx = ContextWithTTLRequest(ctx)
	}
	var waitCtx context.Context
	for lost := 0; ; {
		sent := mono()
		acq, err := o.store.Acquire(actx, skey, fp, o.cfg.lockTTL)
		if err != nil {
			switch {
			case ctx.Err() != nil: // the caller gave up: not the store's failure
				info.Outcome = OutcomeCanceled
				return zero, fmt.Errorf("idem: acquiring key: %w", ctx.Err())
			case errors.Is(err, ErrCorruptRecord):
				t.storeError("acquire", err)
				info.Outcome = OutcomeCorruptRecord
			default:
				t.storeError("acquire", err)
				info.Outcome = OutcomeStoreError
			}
			return zero, fmt.Errorf("%w: acquiring key: %w", ErrStore, err)
		}
		switch {
		case acq.Record != nil:
			resp, outcome, err := o.replay(acq.Record, fp)
			if o.cache != nil && acq.TTL > 0 && outcome != OutcomeCorruptRecord {
				o.cache.put(skey, acq.Record, monoAdd(sent, acq.TTL))
			}
			info.Outcome = outcome
			return resp, err
		case acq.Lease != nil:
			resp, err := o.execute(ctx, t, info, acq.Lease, sent, skey, fp, req, fn)
			if !errors.Is(err, errLeaseExpired) {
				return resp, err
			}
			if lost++; lost == maxLeaseRetries {
				info.Outcome = OutcomeStoreError
				return zero, fmt.Errorf("%w: %d leases in a row expired before fn could start: %w", ErrStore, lost, ErrLeaseLost)
			}
			continue
		}
		if o.cfg.validate && acq.Holder != fp {
			info.Outcome = OutcomeKeyReused
			return zero, fmt.Errorf("%w (request in flight)", ErrKeyReused)
		}
		if o.cfg.wait <= 0 {
			info.Outcome = OutcomeInFlight
			return zero, ErrInFlight
		}
		if waitCtx == nil {
			var cancel context.CancelFunc
			waitCtx, cancel = context.WithTimeout(ctx, o.cfg.wait)
			defer cancel()
		}
		if waitCtx.Err() != nil {
			// The wait ran out, and Acquire has looked once more since.
			if ctx.Err() != nil {
				info.Outcome = OutcomeCanceled
				return zero, fmt.Errorf("idem: waiting for in-flight request: %w", ctx.Err())
			}
			info.Outcome = OutcomeInFlight
			return zero, fmt.Errorf("%w (waited %v)", ErrInFlight, o.cfg.wait)
		}
		began := time.Now()
		err = o.store.Wait(waitCtx, skey)
		t.wait(time.Since(began))
		switch {
		case err == nil, ctx.Err() == nil && waitCtx.Err() != nil:
			// Look again; when the wait ran out, this is the last look.
		case ctx.Err() != nil:
			info.Outcome = OutcomeCanceled
			return zero, fmt.Errorf("idem: waiting for in-flight request: %w", ctx.Err())
		default:
			t.storeError("wait", err)
			info.Outcome = OutcomeStoreError
			return zero, fmt.Errorf("%w: waiting: %w", ErrStore, err)
		}
	}
}

// appendFingerprint appends the hex fingerprint of req to dst: the SHA-256
// of what WithFingerprint's function returns, or else the default
// fingerprint, computed on a pooled copy of req so that req is not boxed
// into an interface (an allocation) on the way.
func (o *Operation[Req, Resp]) appendFingerprint(dst []byte, req Req) ([]byte, error) {
	if o.fingerprint != nil {
		b, err := o.fingerprint(req)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrFingerprint, err)
		}
		return appendHashHex(dst, b), nil
	}
	box := o.reqs.Get().(*Req)
	*box = req
	dst, err := appendFingerprintValue(dst, reflect.ValueOf(box).Elem())
	var zero Req
	*box = zero
	o.reqs.Put(box)
	return dst, err
}

// replay decodes a stored record into the result it holds.
func (o *Operation[Req, Resp]) replay(b []byte, fp string) (Resp, Outcome, error) {
	var resp Resp
	r, err := decodeRecord(b)
	if err != nil {
		return resp, OutcomeCorruptRecord, err
	}
	if o.cfg.validate && string(r.fingerprint) != fp {
		return resp, OutcomeKeyReused, ErrKeyReused
	}
	if string(r.types) != o.types {
		return resp, OutcomeKeyReused, fmt.Errorf("%w: the record was stored by an Operation on %q, this one is on %q", ErrKeyReused, r.types, o.types)
	}
	if r.kind == kindError {
		return resp, OutcomeReplayed, &ReplayedError{Message: string(r.payload)}
	}
	if string(r.codec) != o.cfg.codec.Name() {
		return resp, OutcomeCorruptRecord, fmt.Errorf("%w: written by codec %q, reading with %q", ErrCorruptRecord, r.codec, o.cfg.codec.Name())
	}
	box := o.box()
	err = o.cfg.codec.Unmarshal(r.payload, box)
	resp = o.unbox(box)
	if err != nil {
		var zero Resp
		return zero, OutcomeCorruptRecord, fmt.Errorf("%w: %w", ErrCorruptRecord, err)
	}
	return resp, OutcomeReplayed, nil
}

// box returns a zero Resp from o.boxes: the codec decodes into a pointer,
// and a pooled one spares the allocation that a pointer to a local
// variable would cost.
func (o *Operation[Req, Resp]) box() *Resp { return o.boxes.Get().(*Resp) }

// unbox returns the value in box and puts box back, zeroed so that the
// pool holds no references into results.
func (o *Operation[Req, Resp]) unbox(box *Resp) Resp {
	v := *box
	var zero Resp
	*box = zero
	o.boxes.Put(box)
	return v
}

// errLeaseExpired is what execute returns, without running fn, when the
// lease it was given may have expired already.
var errLeaseExpired = errors.New("idem: lease expired before fn started")

// execute runs fn under lease on skey, granted by an Acquire sent at
// acquired (on mono's scale), and stores its outcome.
func (o *Operation[Req, Resp]) execute(ctx context.Context, t *trace, info *Info, lease Lease, acquired time.Duration, skey, fp string, req Req, fn func(context.Context, Req) (Resp, error)) (Resp, error) {
	var zero Resp
	// A caller paused between Acquire and here (a GC pause, a descheduled
	// or stopped process) may hold a lease that has expired, and whose key
	// another caller took and completed meanwhile: running fn would run it
	// twice. When a refresh would have been due already, refresh now, which
	// the store grants only to a live lease, before fn starts.
	if mono()-acquired >= o.cfg.lockTTL/3 {
		sent := mono()
		rctx := newCleanupContext(ctx, o.cfg.lockTTL/3)
		err := lease.Refresh(rctx, o.cfg.lockTTL)
		rctx.end()
		t.refreshed(err)
		switch {
		case errors.Is(err, ErrLeaseLost):
			return zero, errLeaseExpired
		case err != nil:
			t.storeError("refresh", err)
			o.release(ctx, t, lease)
			info.Outcome = OutcomeStoreError
			return zero, fmt.Errorf("%w: confirming the lease before fn: %w", ErrStore, err)
		}
		acquired = sent
	}

	fnCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	keeper := keepAlive(fnCtx, &o.keepers, t, lease, acquired, o.cfg.lockTTL, cancel)

	returned, settled := false, false
	defer func() {
		keeper.stop()
		switch {
		case settled:
		case !returned: // fn panicked or called runtime.Goexit: it did not complete
			o.release(ctx, t, lease)
		default:
			// The codec or the disposition function panicked after fn
			// completed. Its effect stands, so the key is held: the lease
			// is left to expire, and a retry right now is refused, not run.
		}
	}()
	var began time.Time
	if t != nil {
		began = time.Now()
	}
	resp, ferr := fn(fnCtx, req)
	// Whether fn's context had ended when fn returned, not later (a
	// deadline passing while the keeper stops must not count).
	interrupted := fnCtx.Err() != nil
	returned = true
	keeper.stop()
	if t != nil {
		t.fnDuration = time.Since(began)
	}

	rec := record{fingerprint: fp, codec: o.cfg.codec.Name(), types: o.types}
	var b []byte // the encoded record
	if ferr == nil {
		rec.kind = kindValue
		var err error
		if b, err = o.encode(rec, resp); err != nil {
			// fn succeeded but its result cannot be stored: held, as above.
			settled = true
			info.Outcome = OutcomeNotStored
			return resp, fmt.Errorf("%w: %w", ErrNotStored, err)
		}
		info.Outcome = OutcomeExecuted
	} else {
		// An error fn returns after its context ended (the caller gave
		// up, or the lease was lost) is the interruption, not fn's
		// outcome: WithDisposition is not asked, and only fn's own mark
		// (Final, Dispose) can have it recorded or held.
		decide := o.cfg.dispose
		if interrupted {
			decide = nil
		}
		switch dispose(ferr, decide) {
		case Record:
			// Store only what can be read back: a message that is not
			// UTF-8 would make every replay a corrupt record.
			rec.kind, rec.payload = kindError, []byte(strings.ToValidUTF8(ferr.Error(), "\uFFFD"))
			b = rec.encode()
			info.Outcome = OutcomeFinalError
		case Hold:
			settled = true
			info.Outcome = OutcomeHeld
			return resp, ferr
		default:
			settled = true
			o.release(ctx, t, lease)
			info.Outcome = OutcomeFnError
			return resp, ferr
		}
	}
	settled = true
	err := o.commit(ctx, t, lease, skey, b, ferr)
	if errors.Is(err, ErrNotStored) {
		info.Outcome = OutcomeNotStored
	}
	return resp, err
}

// encode returns the record rec with resp as its payload. It decodes the
// payload once and compares it with resp, so that a value the codec cannot
// bring back as the same value (a struct in an interface field, a type it
// encodes but does not decode) is refused now instead of replayed as
// something else, or stored as a record no call can replay. With the
// default codec, codec.MsgPack, the payload is written behind the header,
// in one allocation for most results. Only that codec's own type is asked
// to append: a codec that embeds MsgPack and overrides Marshal would
// inherit AppendMarshal, and have its own encoding bypassed.
func (o *Operation[Req, Resp]) encode(rec record, resp Resp) ([]byte, error) {
	var b, payload []byte
	var err error
	switch o.cfg.codec.(type) {
	case codec.MsgPack, *codec.MsgPack:
		h := rec.appendHeader(make([]byte, 0, rec.headerLen()+128))
		if b, err = (codec.MsgPack{}).AppendMarshal(h, resp); err == nil {
			payload = b[len(h):]
		}
	default:
		if payload, err = o.cfg.codec.Marshal(resp); err == nil {
			rec.payload = payload
			b = rec.encode()
			payload = b[len(b)-len(payload):]
		}
	}
	if err != nil {
		return nil, fmt.Errorf("encoding result: %w", err)
	}
	orig, back := o.box(), o.box()
	defer o.unbox(orig)
	defer o.unbox(back)
	if err := o.cfg.codec.Unmarshal(payload, back); err != nil {
		return nil, fmt.Errorf("result would not decode: %w", err)
	}
	*orig = resp
	if err := checkReplay(reflect.ValueOf(orig).Elem(), reflect.ValueOf(back).Elem(), o.cfg.codec.Marshal); err != nil {
		return nil, fmt.Errorf("result would not replay as the same value: %w", err)
	}
	return b, nil
}

// commit stores the record b under lease on skey. A failure other than a
// lost lease, a corrupt record or one wrapping ErrNotStored is retried with
// backoff for as long as the lease may still be held: a result not stored
// means a retry of the whole call runs fn again. A
// record stored is also cached locally (WithLocalCache), to expire a TTL
// after the first Commit was sent: a retried Commit may find the record
// that an earlier one stored, whose expiry the store counted from then.
func (o *Operation[Req, Resp]) commit(ctx context.Context, t *trace, lease Lease, skey string, b []byte, ferr error) error {
	first := time.Now()
	cctx := newCleanupContextAt(ctx, first, o.cfg.lockTTL)
	defer cctx.end()
	backoff := 5 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := lease.Commit(cctx, b, o.cfg.ttl)
		if err == nil {
			if o.cache != nil {
				o.cache.put(skey, b, monoAdd(first.Sub(epoch), o.cfg.ttl))
			}
			if t != nil {
				t.recordSize = len(b)
			}
			return ferr
		}
		if errors.Is(err, ErrLeaseLost) {
			t.leaseLost()
		} else {
			t.storeError("commit", err)
		}
		if errors.Is(err, ErrNotStored) {
			// The store knows that no retry can store the record.
			return errors.Join(err, ferr)
		}
		if errors.Is(err, ErrLeaseLost) || errors.Is(err, ErrCorruptRecord) || cctx.Err() != nil {
			return errors.Join(fmt.Errorf("%w: %w", ErrNotStored, err), ferr)
		}
		t.commitRetry(attempt, err)
		tm := time.NewTimer(backoff)
		select {
		case <-cctx.Done():
			tm.Stop()
			return errors.Join(fmt.Errorf("%w: %w", ErrNotStored, err), ferr)
		case <-tm.C:
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

func (o *Operation[Req, Resp]) release(ctx context.Context, t *trace, lease Lease) {
	cctx := newCleanupContext(ctx, o.cfg.lockTTL)
	defer cctx.end()
	// A failed release leaves the lease to expire on its own; the caller
	// already has fn's outcome, which is what it needs.
	if err := lease.Release(cctx); err != nil && !errors.Is(err, ErrLeaseLost) {
		t.storeError("release", err)
	}
}
