// Package grpcadapter makes unary gRPC methods idempotent: a call that
// carries an idempotency key in its metadata runs the handler at most once
// per key, and its retries receive the stored outcome.
//
// # Server
//
// UnaryServerInterceptor protects every unary method by default (see
// WithMethods). A call without the idempotency-key metadata goes through
// untouched, as AIP-155 makes the request ID optional, unless its method
// requires a key (see WithKeyRequired). A call is identified by a
// fingerprint of its full method name and the deterministic wire encoding
// of its request, so the same key sent to another method is a reused key.
// Keys are shared by all callers unless WithScope makes them private to a
// scope, such as the caller's tenant. Adding, removing or changing the
// scope on a live service changes every stored key, so a retry across the
// deploy runs the handler again: deploy such a change during low traffic,
// quickly, and expect no records under the old keys once a TTL has passed
// (see WithScope). For each key:
//
//   - The first call runs the handler. Its response is stored (its message
//     type's full name and wire encoding, with the header and trailer
//     metadata the handler set), then returned with the header
//     idempotency-status: new. The type must be registered in
//     protoregistry.GlobalTypes, as generated types are, for the response
//     to be replayed: otherwise retries fail with Internal until the
//     record expires.
//   - A retry with the same fingerprint receives the stored response, as a
//     message of the same type, with the same metadata and
//     idempotency-status: hit. The handler does not run.
//   - A call with another fingerprint is refused with FailedPrecondition,
//     whether the first call is done or still running.
//   - A retry while the first call is still running is refused with
//     Aborted (see WithInFlightCode) and a RetryInfo detail or, with
//     idem.WithWaitTimeout, waits for the stored response. Give clients
//     that retry a wait of a few seconds (at least the handler's p99, below
//     their deadline), or they may give up on a call that succeeds. The key stays
//     held while the handler runs, however long it takes: idem refreshes
//     its lease.
//
// Errors of the handler are not stored: the key is released, and a retry
// runs the handler again. WithDisposition, with RecordCodes, chooses status codes (such as
// InvalidArgument or NotFound) that are stored and replayed like responses,
// message and details intact. A handler that panics stores nothing.
//
// With an error, idempotency-status goes in the trailer metadata rather
// than the header, so that the error stays a trailers-only response, which
// gRPC's retry policy can retry: a call is committed, never to be retried,
// once its response header arrives. An outcome that was not stored (an
// error that is not final, or one the store failed to keep after the
// handler ran, idem.ErrNotStored) also carries idempotency-stored: false; in
// the second case the handler's outcome is returned all the same, and the
// failure is reported to the hook set by WithErrorHook.
//
// Refusals, where the handler does not run, carry a google.rpc.ErrorInfo
// detail with Domain and one of the Reason constants:
//
//	situation                            code                reason
//	key missing (where required)         InvalidArgument     ReasonKeyMissing
//	key empty, too long or repeated      InvalidArgument     ReasonKeyInvalid
//	key used for another call            FailedPrecondition  ReasonKeyReused
//	call with the key in flight          Aborted (*)         ReasonInFlight
//	store failed                         Unavailable (*)     ReasonStoreUnavailable
//	misconfiguration, unreadable record  Internal            ReasonInternal
//
// (*) with a google.rpc.RetryInfo detail (see WithRetryDelay). A call whose
// deadline passes, or that is cancelled, while the interceptor waits for the
// store or for an in-flight call ends with DeadlineExceeded or Canceled.
//
// To record the metadata the handler sets, the interceptor gives it a
// context whose grpc.ServerTransportStream wraps the call's. Through it,
// grpc.SendHeader marks the header as sent but leaves it to go out with the
// response, so that idempotency-status can join it; a unary client sees no
// difference. grpc.SetSendCompressor and grpc.ClientSupportedCompressors,
// which need the call's own stream, fail in a protected call with a key.
//
// # Client
//
// UnaryClientInterceptor gives every call of a protected method a key:
// the caller's, or a fresh one. It sets it before the call is made, so that
// every attempt of the call sends it: the retries of gRPC's retry policy,
// and those of retrying interceptors chained after it. CallKey passes a
// chosen key with one call, for instance to the attempts of the caller's own
// retry loop. Attempts that run at once, as with hedging, need the server
// to tolerate them (see UnaryClientInterceptor).
//
// # Streams
//
// Streaming methods are out of scope: there are no stream interceptors. A
// stream's messages are not one outcome that could be stored and replayed.
package grpcadapter
