// Package connectadapter makes unary Connect RPCs (connectrpc.com/connect)
// idempotent: a call that carries an idempotency key in its
// Idempotency-Key header runs the handler at most once per key, and its
// retries receive the stored outcome. It works the same with the Connect,
// gRPC and gRPC-Web protocols, and mirrors grpcadapter: same options, same
// reasons, same header values (with the gRPC protocol, the header is the
// idempotency-key metadata that grpcadapter's client sends).
//
// # Server
//
// NewInterceptor protects every unary procedure by default, except those
// declared free of side effects (connect.WithIdempotency with
// connect.IdempotencyNoSideEffects), whose calls pass through; WithMethods
// and WithMethodFilter choose otherwise. A call without the key goes
// through untouched unless its procedure requires one (WithKeyRequired). A
// call is identified by a fingerprint of its procedure and the
// deterministic protobuf encoding of its request
// (proto.MarshalOptions{Deterministic: true}): stable within one binary,
// but a schema change during a rolling deploy can turn a retry into a
// reused key. Keys are shared by all callers unless WithScope makes them
// private to a scope. For each key:
//
//   - The first call runs the handler. Its response is stored (its message
//     type's full name and wire encoding, with the response header and
//     trailer the handler set, on the connect.Response or through
//     connect.CallInfo), then returned with Idempotency-Status: new.
//   - A retry with the same fingerprint receives the stored response with
//     the same header and trailer and Idempotency-Status: hit. The handler
//     does not run. The message is decoded as the stored type, found in
//     protoregistry.GlobalTypes (generated types register themselves), or
//     else in the procedure's schema (connect.WithSchema, as generated
//     code sets it); if neither knows it, retries fail with Internal until
//     the record expires. Interceptors wrapped outside this one see it as
//     a *Replayed, not the handler's Go type (see Replayed).
//   - A call with another fingerprint is refused with FailedPrecondition,
//     whether the first call is done or still running.
//   - A retry while the first call still runs is refused with Aborted (see
//     WithInFlightCode) and a RetryInfo detail or, with
//     idem.WithWaitTimeout, waits for the stored response.
//
// Errors of the handler are not stored: the key is released, and a retry
// runs the handler again. WithDisposition (with RecordCodes, say) chooses
// errors that are stored and replayed like responses, with their code,
// message, details and metadata, or that hold the key. A handler that
// panics stores nothing. With an error, Idempotency-Status goes in the
// response trailer, which clients read in connect.Error.Meta. An outcome
// that was not stored also carries Idempotency-Stored: false.
//
// Refusals, where the handler does not run, are connect errors with a
// google.rpc.ErrorInfo detail with Domain and a reason:
//
//	situation                            code                reason
//	key missing (where required)         InvalidArgument     ReasonKeyMissing
//	key empty, too long or repeated      InvalidArgument     ReasonKeyInvalid
//	key used for another call            FailedPrecondition  ReasonKeyReused
//	call with the key in flight          Aborted (*)         ReasonInFlight
//	store failed                         Unavailable (*)     ReasonStoreUnavailable
//	misconfiguration, unreadable record  Internal            ReasonInternal
//
// (*) with a google.rpc.RetryInfo detail (see WithRetryDelay).
//
// # Client
//
// NewClientInterceptor gives every call of a protected procedure a key:
// the one the caller set in the request header, or a fresh one. Set the
// same key on the attempts of your own retry loop.
//
// # Streams
//
// Streaming procedures are out of scope: both interceptors let them pass
// through untouched. A stream's messages are not one outcome that could be
// stored and replayed.
package connectadapter
