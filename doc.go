// Package idem makes an operation idempotent: it runs the operation once per
// idempotency key, replays the stored result to every retry with that key,
// and refuses a key reused for a different request.
//
// A payment, order or messaging service wraps the code that must not run
// twice:
//
//	charges := idem.New[ChargeRequest, Charge](store, idem.WithWaitTimeout(5*time.Second))
//
//	charge, err := charges.Do(ctx, idempotencyKey, req, func(ctx context.Context, req ChargeRequest) (Charge, error) {
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
// When fn returns an error, nothing is stored and the lease is released, so
// a retry runs fn again; errors marked with Final (or chosen by
// WithFinalErrors) are stored and replayed instead. When fn panics, the lease
// is released and the panic goes on. When the lease is lost while fn runs
// (no refresh got through for a whole lease TTL), fn's context is cancelled
// with ErrLeaseLost as its cause when the lease expires, and the final write
// is refused by the store so that it cannot overwrite the result of whoever
// took over; Do then reports ErrNotStored.
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
