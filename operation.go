package idem

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Operation runs a function at most once per idempotency key and replays its
// result to later calls with that key. Build it with New; it is safe for
// concurrent use, and one Operation serves any number of keys.
type Operation[Req, Resp any] struct {
	store       Store
	cfg         *config
	fingerprint func(Req) (string, error)
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
	// Replayed is true when the result (or a final error) came from a stored
	// record, false when fn ran in this call or did not run at all.
	Replayed bool
}

// New returns an Operation that keeps its leases and results in store.
// Invalid options are reported by every call of Do as ErrInvalidOption.
func New[Req, Resp any](store Store, opts ...Option) *Operation[Req, Resp] {
	cfg := newConfig(opts)
	o := &Operation[Req, Resp]{store: store, cfg: cfg}
	o.fingerprint = func(r Req) (string, error) { return Fingerprint(r) }
	switch f := cfg.fingerprint.(type) {
	case nil:
	case func(Req) ([]byte, error):
		o.fingerprint = func(r Req) (string, error) {
			b, err := f(r)
			if err != nil {
				return "", fmt.Errorf("%w: %w", ErrFingerprint, err)
			}
			return hashHex(b), nil
		}
	default:
		var r Req
		cfg.invalid("WithFingerprint: function is %T, want func(%T) ([]byte, error)", f, r)
	}
	if store == nil {
		cfg.invalid("nil Store")
	}
	o.err = cfg.err()
	return o
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
// When fn returns an error, nothing is stored (unless the error is final, see
// Final), the lease is released, and the error is returned as it is, so a
// retry runs fn again. When fn panics, the lease is released and the panic
// continues. Errors of Do itself wrap the package's sentinel errors.
func (o *Operation[Req, Resp]) Do(ctx context.Context, key string, req Req, fn func(context.Context, Req) (Resp, error)) (Resp, error) {
	resp, _, err := o.DoInfo(ctx, key, req, fn)
	return resp, err
}

// DoInfo is Do, and also reports whether the result was replayed and the
// request's fingerprint.
func (o *Operation[Req, Resp]) DoInfo(ctx context.Context, key string, req Req, fn func(context.Context, Req) (Resp, error)) (Resp, Info, error) {
	var zero Resp
	info := Info{Key: key}
	if o.err != nil {
		return zero, info, o.err
	}
	if err := ValidateKey(key); err != nil {
		return zero, info, err
	}
	fp, err := o.fingerprint(req)
	if err != nil {
		return zero, info, err
	}
	info.Fingerprint = fp
	// Always "namespace:key", also with no namespace (":key"): a namespace
	// holds no ':', so no key of one namespace can name another's record.
	skey := o.cfg.namespace + ":" + key

	var waitCtx context.Context
	for {
		sent := time.Now()
		acq, err := o.store.Acquire(ctx, skey, fp, o.cfg.lockTTL)
		if err != nil {
			if ctx.Err() != nil {
				return zero, info, fmt.Errorf("idem: acquiring key: %w", ctx.Err())
			}
			return zero, info, fmt.Errorf("%w: acquiring key: %w", ErrStore, err)
		}
		switch {
		case acq.Record != nil:
			resp, err := o.replay(acq.Record, fp)
			info.Replayed = err == nil || errors.Is(err, ErrReplayed)
			return resp, info, err
		case acq.Lease != nil:
			resp, err := o.execute(ctx, acq.Lease, sent, fp, req, fn)
			return resp, info, err
		}
		if o.cfg.validate && acq.Holder != fp {
			return zero, info, fmt.Errorf("%w (request in flight)", ErrKeyReused)
		}
		if o.cfg.wait <= 0 {
			return zero, info, ErrInFlight
		}
		if waitCtx == nil {
			var cancel context.CancelFunc
			waitCtx, cancel = context.WithTimeout(ctx, o.cfg.wait)
			defer cancel()
		}
		if waitCtx.Err() != nil {
			// The wait ran out, and Acquire has looked once more since.
			if ctx.Err() != nil {
				return zero, info, fmt.Errorf("idem: waiting for in-flight request: %w", ctx.Err())
			}
			return zero, info, fmt.Errorf("%w (waited %v)", ErrInFlight, o.cfg.wait)
		}
		switch err := o.store.Wait(waitCtx, skey); {
		case err == nil, ctx.Err() == nil && waitCtx.Err() != nil:
			// Look again; when the wait ran out, this is the last look.
		case ctx.Err() != nil:
			return zero, info, fmt.Errorf("idem: waiting for in-flight request: %w", ctx.Err())
		default:
			return zero, info, fmt.Errorf("%w: waiting: %w", ErrStore, err)
		}
	}
}

// replay decodes a stored record into the result it holds.
func (o *Operation[Req, Resp]) replay(b []byte, fp string) (Resp, error) {
	var resp Resp
	r, err := decodeRecord(b)
	if err != nil {
		return resp, err
	}
	if o.cfg.validate && string(r.fingerprint) != fp {
		return resp, ErrKeyReused
	}
	if r.kind == kindError {
		return resp, &ReplayedError{Message: string(r.payload)}
	}
	if string(r.codec) != o.cfg.codec.Name() {
		return resp, fmt.Errorf("%w: written by codec %q, reading with %q", ErrCorruptRecord, r.codec, o.cfg.codec.Name())
	}
	if err := o.cfg.codec.Unmarshal(r.payload, &resp); err != nil {
		var zero Resp
		return zero, fmt.Errorf("%w: %w", ErrCorruptRecord, err)
	}
	return resp, nil
}

// execute runs fn under lease, granted by an Acquire sent at acquired, and
// stores its outcome.
func (o *Operation[Req, Resp]) execute(ctx context.Context, lease Lease, acquired time.Time, fp string, req Req, fn func(context.Context, Req) (Resp, error)) (Resp, error) {
	fnCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := keepAlive(fnCtx, lease, acquired, o.cfg.lockTTL, cancel)

	returned, settled := false, false
	defer func() {
		stop()
		switch {
		case settled:
		case !returned: // fn panicked or called runtime.Goexit: it did not complete
			o.release(ctx, lease)
		default:
			// The codec or the final-error predicate panicked after fn
			// completed. Its effect stands, so the lease is left to expire
			// rather than released: a retry right now is refused, not run.
		}
	}()
	resp, ferr := fn(fnCtx, req)
	returned = true
	stop()

	rec := record{fingerprint: fp, codec: o.cfg.codec.Name()}
	switch {
	case ferr == nil:
		payload, err := o.encode(resp)
		if err != nil {
			// fn succeeded but its result cannot be stored. As above, the
			// lease is left to expire.
			settled = true
			return resp, fmt.Errorf("%w: %w", ErrNotStored, err)
		}
		rec.kind, rec.payload = kindValue, payload
	case isFinal(ferr, o.cfg.final):
		rec.kind, rec.payload = kindError, []byte(ferr.Error())
	default:
		settled = true
		o.release(ctx, lease)
		return resp, ferr
	}
	settled = true
	return resp, o.commit(ctx, lease, rec, ferr)
}

// encode encodes resp, and decodes the result once, so that a value the
// codec cannot bring back (an interface field, a type it encodes but does not
// decode) is refused now instead of stored as a record no call can replay.
func (o *Operation[Req, Resp]) encode(resp Resp) ([]byte, error) {
	payload, err := o.cfg.codec.Marshal(resp)
	if err != nil {
		return nil, fmt.Errorf("encoding result: %w", err)
	}
	var back Resp
	if err := o.cfg.codec.Unmarshal(payload, &back); err != nil {
		return nil, fmt.Errorf("result would not decode: %w", err)
	}
	return payload, nil
}

// commit stores rec under lease. A failure other than a lost lease is
// retried with backoff for as long as the lease may still be held: a
// result not stored means a retry of the whole call runs fn again.
func (o *Operation[Req, Resp]) commit(ctx context.Context, lease Lease, rec record, ferr error) error {
	cctx, cancel := cleanupContext(ctx, o.cfg.lockTTL)
	defer cancel()
	b := rec.encode()
	backoff := 5 * time.Millisecond
	for {
		err := lease.Commit(cctx, b, o.cfg.ttl)
		if err == nil {
			return ferr
		}
		if errors.Is(err, ErrLeaseLost) || errors.Is(err, ErrCorruptRecord) || cctx.Err() != nil {
			return errors.Join(fmt.Errorf("%w: %w", ErrNotStored, err), ferr)
		}
		t := time.NewTimer(backoff)
		select {
		case <-cctx.Done():
			t.Stop()
			return errors.Join(fmt.Errorf("%w: %w", ErrNotStored, err), ferr)
		case <-t.C:
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

func (o *Operation[Req, Resp]) release(ctx context.Context, lease Lease) {
	cctx, cancel := cleanupContext(ctx, o.cfg.lockTTL)
	defer cancel()
	// A failed release leaves the lease to expire on its own; the caller
	// already has fn's outcome, which is what it needs.
	_ = lease.Release(cctx)
}

// cleanupContext returns a context for releasing or committing a lease that
// survives the cancellation of the caller's ctx but not forever.
func cleanupContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}
