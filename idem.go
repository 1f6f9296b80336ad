package idem

import (
	"context"
	"errors"
	"time"
)

// Errors returned by Do. Test for them with errors.Is; the errors Do returns
// wrap them together with whatever detail or cause applies.
var (
	// ErrInvalidKey reports an idempotency key that is empty, longer than
	// MaxKeyLen bytes, not valid UTF-8, or holds a control character. The
	// store is not called.
	ErrInvalidKey = errors.New("idem: invalid idempotency key")

	// ErrInFlight reports that another execution holds the key and did not
	// finish within the wait timeout (immediately, when the timeout is 0).
	// Retrying later is safe.
	ErrInFlight = errors.New("idem: request with this idempotency key is in flight")

	// ErrKeyReused reports that the key was first used with a request whose
	// fingerprint differs from this one. The caller must pick another key.
	ErrKeyReused = errors.New("idem: idempotency key reused with a different request")

	// ErrStore wraps a failure of the Store (for example, Redis unreachable)
	// that happened before fn ran: fn was not run.
	ErrStore = errors.New("idem: store failure")

	// ErrNotStored reports that fn ran but its outcome could not be stored,
	// because the lease was lost, the store failed, or the codec could not
	// encode the result. Do still returns what fn returned. A retry may run
	// fn again, so the outcome of such a call is best treated as unknown.
	ErrNotStored = errors.New("idem: result not stored")

	// ErrCorruptRecord reports a stored record that cannot be decoded: it
	// was damaged, written by something else, or written with another codec.
	ErrCorruptRecord = errors.New("idem: corrupt stored record")

	// ErrInvalidOption reports an option that cannot be honoured, such as a
	// negative duration or a fingerprint function for another request type.
	// Every call of an Operation built with it returns this error.
	ErrInvalidOption = errors.New("idem: invalid option")

	// ErrFingerprint reports a request that cannot be fingerprinted (for
	// example, one holding a func or a channel).
	ErrFingerprint = errors.New("idem: cannot fingerprint request")

	// ErrLeaseLost is returned by Lease methods when the key no longer holds
	// the caller's lease: it expired, and may have been taken by another
	// caller. Do reports it wrapped in ErrNotStored, and cancels fn's context
	// with it as the cause when a refresh finds the lease lost.
	ErrLeaseLost = errors.New("idem: lease lost")
)

// Store keeps leases on in-flight executions and the records of completed
// ones. Keys arrive already validated and namespaced; a Store may prefix
// them further. All methods must be safe for concurrent use, also from
// other processes when the Store is shared (as redisstore is).
//
// The contract, which the idemtest package checks:
//
//   - A key is in one of three states: absent, leased (one holder, with the
//     fingerprint given to Acquire and an expiry), or completed (an opaque
//     record with an expiry). Expired leases and records count as absent.
//     Expiry should be decided by the store's own clock (Redis: PX), so that
//     clock skew between callers does not matter.
//   - Acquire is atomic: two callers can never both receive a Lease on one
//     key while the first lease is live.
//   - Only the holder of a live lease can turn it into a record (Commit) or
//     delete it (Release); a holder whose lease expired gets ErrLeaseLost and
//     changes nothing, so it cannot overwrite a new holder's state.
//
// For Redis the contract is reachable with one round trip for a replay hit
// (Acquire finds the record) and two for a first execution (Acquire, then
// Commit).
type Store interface {
	// Acquire looks at key and, atomically:
	//   - if a record is stored, returns it in Acquisition.Record;
	//   - if the key is absent, leases it to the caller for ttl, remembering
	//     fingerprint, and returns the Lease in Acquisition.Lease;
	//   - if another caller holds a live lease, returns that lease's
	//     fingerprint in Acquisition.Holder.
	// An error means the store could not answer; nothing was leased.
	Acquire(ctx context.Context, key, fingerprint string, ttl time.Duration) (Acquisition, error)

	// Wait blocks while key is leased, and returns nil once it may no longer
	// be: a record was committed, the lease was released, or it expired. It
	// may return nil early; the caller then calls Acquire again. It returns
	// ctx.Err() (possibly wrapped) when ctx ends first.
	Wait(ctx context.Context, key string) error
}

// ttlRequestKey is the context key of ContextWithTTLRequest.
type ttlRequestKey struct{}

// ContextWithTTLRequest returns a copy of ctx that asks Store.Acquire for
// Acquisition.TTL. An Operation with a local cache (WithLocalCache) gives
// Acquire such a context, and one without does not, so that a store for
// which the TTL costs extra work (redisstore: a PTTL beside the SET, in a
// MULTI/EXEC) need not pay for it on replays that would not read it. The
// request travels with ctx, so a store that wraps another and passes ctx
// on passes the request on too.
func ContextWithTTLRequest(ctx context.Context) context.Context {
	return context.WithValue(ctx, ttlRequestKey{}, true)
}

// TTLRequested reports whether ctx, given to Store.Acquire, asks for
// Acquisition.TTL (see ContextWithTTLRequest).
func TTLRequested(ctx context.Context) bool {
	v, _ := ctx.Value(ttlRequestKey{}).(bool)
	return v
}

// Acquisition is the result of Store.Acquire. Exactly one of Record and Lease
// is set, or neither, in which case the key is held by another caller whose
// request has fingerprint Holder.
type Acquisition struct {
	// Record is the completed record stored under the key. The caller must
	// not modify it.
	Record []byte
	// Lease is set when the caller now holds the key.
	Lease Lease
	// Holder is the fingerprint given by the caller holding the key.
	Holder string
	// TTL is how long Record had left to live when the store answered, by
	// the store's own clock, or 0 when the store does not say. A store
	// should fill it, rounded down, when it returns a Record to a caller
	// whose ctx asks for it (TTLRequested), and may otherwise: only then
	// may WithLocalCache keep the record, as it must expire no later than
	// the stored one.
	TTL time.Duration
}

// Lease is the exclusive right to execute under one key, granted by
// Store.Acquire. It expires unless refreshed. Its methods are called from one
// goroutine at a time.
type Lease interface {
	// Refresh extends the lease to ttl from now. It returns ErrLeaseLost
	// when the key no longer holds this lease.
	Refresh(ctx context.Context, ttl time.Duration) error
	// Commit atomically replaces the lease with record, kept for ttl. The
	// store may keep record as it is: the caller does not modify it after
	// Commit returns. It
	// returns ErrLeaseLost, and writes nothing, when the key no longer holds
	// this lease. Commit must be idempotent: Do retries a Commit that
	// failed with another error (its reply may have been lost), so a Commit
	// of the same record by the same lease after one that succeeded returns
	// nil. An error that wraps ErrNotStored tells Do that no retry can
	// store the record (a store that wrote it in a transaction that is now
	// over, say); Do returns it as it is, without retrying.
	Commit(ctx context.Context, record []byte, ttl time.Duration) error
	// Release deletes the lease so another caller may acquire the key. It
	// returns ErrLeaseLost, and deletes nothing, when the key no longer holds
	// this lease.
	Release(ctx context.Context) error
}
