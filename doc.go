// Package idem makes an operation idempotent: it runs the operation once per
// idempotency key, replays the stored result to every retry with that key,
// and refuses a key reused for a different request.
//
// A payment, order or messaging service wraps the code that must not run
// twice:
//
//	charges := idem.New[ChargeRequest, Charge](store, idem.WithWaitTimeout(5*time.Second))
//	if err := charges.Err(); err != nil {
//		log.Fatal(err) // invalid options fail at start, not on every call
//	}
//
//	key := idem.ScopedKey(accountID, idempotencyKey) // keys private to the caller
//	charge, err := charges.Do(ctx, key, req, func(ctx context.Context, req ChargeRequest) (Charge, error) {
//		return gateway.Charge(ctx, req)
//	})
//
// # What Do does
//
// Do fingerprints the request (SHA-256 of a canonical encoding; see
// Fingerprint and WithFingerprint) and asks the Store for the key:
//
//   - Completed: the stored result is decoded and returned; fn does not run.
//     If the stored fingerprint differs from this request's, Do returns
//     ErrKeyReused instead.
//   - Absent: Do holds a lease on the key, runs fn, refreshes the lease while
//     fn runs, stores the result for the TTL (WithTTL) and returns it.
//   - In flight elsewhere: Do waits up to the wait timeout (WithWaitTimeout)
//     for the result and replays it, or returns ErrInFlight. A different
//     request is refused with ErrKeyReused at once.
//
// With WithLocalCache, a key completed or replayed in this process is
// answered from memory, with the same checks and no store round trip,
// until the stored record's TTL ends.
//
// When fn returns an error, its disposition decides (WithDisposition): by
// default nothing is stored and the lease is released, so a retry runs fn
// again (Release); errors marked with Final are stored and replayed
// (Record); Hold stores nothing but refuses the key until the lease
// expires, for outcomes whose effect is unknown. When fn panics, the lease
// is released and the panic goes on. When the lease is lost while fn runs
// (no refresh got through for a whole lease TTL), fn's context is cancelled
// with ErrLeaseLost as its cause when the lease expires, and the final write
// is refused by the store so that it cannot overwrite the result of whoever
// took over; Do then reports ErrNotStored. A caller paused between taking
// the lease and starting fn (a GC pause, a stopped process) confirms the
// lease with a refresh first, and takes the key again if it was lost,
// rather than start fn on a lease another caller may have taken.
//
// Info.Outcome (DoInfo) names what happened in the call, from
// OutcomeExecuted to OutcomeCanceled, so that callers, adapters and metrics
// read it rather than reconstruct it from errors.
//
// # Words
//
// The lease is the exclusive, expiring right to run fn for one key, which
// other idempotency libraries call the lock (hence WithLockTTL). The
// fingerprint identifies a request (Info.Fingerprint); the signature that
// WithSignatureValidation validates is the same thing. A disposition says
// what becomes of an outcome: Record, Release or Hold.
//
// # The same value
//
// A replay returns the same value fn returned, or the first caller is told:
// Do stores a result only if the codec brings it back equal by these rules,
// and otherwise returns fn's value with ErrNotStored and holds the key.
//
//   - Values of different types differ; inside interfaces (an any field, a
//     map[string]any) the dynamic types must match too, so a struct that
//     comes back as a map, or an int that comes back as an int8 (msgpack)
//     or a float64 (JSON), differs. Use concrete types in results.
//   - A time.Time equals another that is the same instant at the same
//     offset from UTC, so that both format the same in RFC 3339 and with
//     encoding/json. The location's name and the monotonic clock reading
//     do not count. codec.MsgPack keeps the instant and decodes it in
//     time.Local: a time at another offset than time.Local's is refused
//     (return times in UTC on servers whose time.Local is UTC, or use
//     codec.JSON, which keeps the offset).
//   - A type that encodes itself (it or its pointer has a MarshalBinary,
//     MarshalText, MarshalJSON, MarshalMsgpack or EncodeMsgpack method),
//     such as big.Int or a UUID, equals another that the codec encodes to
//     the same bytes.
//   - Floats are equal when their bits are (NaN equals NaN, -0 differs
//     from 0); other basic values compare with ==.
//   - Slices, maps and pointers are nil together or not, and equal element
//     by element; a nil slice differs from an empty one. Struct fields
//     count, unexported ones included, so a field the codec does not store
//     must hold its zero value. New refuses result types that keep all
//     their state in unexported fields and have no marshaler.
//
// Records also name the request and result types of the Operation that
// stored them; a record of other types is refused with ErrKeyReused, never
// decoded as the wrong type (see New).
//
// # Stores
//
// memstore keeps everything in the process; redisstore shares it through
// Redis, Sentinel or Redis Cluster. Any other backend implements Store, and
// the idemtest package checks that it keeps the contract.
//
// # Adapters
//
// httpadapter is net/http middleware for the Idempotency-Key header;
// grpcadapter holds gRPC unary interceptors for idempotency-key metadata.
// Queue consumers call Do with the message ID as the key.
package idem
