package connectadapter

import (
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Domain is the domain of the google.rpc.ErrorInfo detail that every
// refusal of the server interceptor carries, with one of the reasons below
// (AIP-193). It is grpcadapter's.
const Domain = "idem.idemkit.dev"

// Reasons of the google.rpc.ErrorInfo detail of the server interceptor's
// refusals: the handler did not run. They are stable, and grpcadapter's;
// match on them, not on messages.
const (
	// ReasonKeyMissing (InvalidArgument): the call carries no key, and the
	// procedure requires one (see WithKeyRequired).
	ReasonKeyMissing = "IDEMPOTENCY_KEY_MISSING"
	// ReasonKeyInvalid (InvalidArgument): the key is empty, repeated,
	// longer than idem.MaxKeyLen bytes, or holds a control character.
	ReasonKeyInvalid = "IDEMPOTENCY_KEY_INVALID"
	// ReasonKeyReused (FailedPrecondition): the key was first used with
	// another request, to this procedure or another one. Pick a new key.
	ReasonKeyReused = "IDEMPOTENCY_KEY_REUSED"
	// ReasonInFlight (Aborted, or the code set by WithInFlightCode): a
	// call with this key is still running. The error also carries a
	// google.rpc.RetryInfo detail; a retry after that delay receives the
	// stored outcome.
	ReasonInFlight = "IDEMPOTENCY_REQUEST_IN_FLIGHT"
	// ReasonStoreUnavailable (Unavailable): the store failed before the
	// handler ran. The error also carries a google.rpc.RetryInfo detail.
	ReasonStoreUnavailable = "IDEMPOTENCY_STORE_UNAVAILABLE"
	// ReasonInternal (Internal): the interceptor is misconfigured, the
	// request is not a protocol buffer, or a stored outcome could not be
	// read, as when its message type is not registered in
	// protoregistry.GlobalTypes. The hook set by WithErrorHook gets the
	// cause.
	ReasonInternal = "IDEMPOTENCY_INTERNAL"
)

// noRetry marks a refusal without a RetryInfo detail.
const noRetry time.Duration = -1

// refusal returns a connect error with code, msg, an ErrorInfo detail with
// reason, and, unless retry is noRetry, a RetryInfo detail.
func refusal(code connect.Code, reason, msg string, retry time.Duration) *connect.Error {
	ce := connect.NewError(code, refusalError(msg))
	details := []proto.Message{&errdetails.ErrorInfo{Reason: reason, Domain: Domain}}
	if retry != noRetry {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	}
	for _, m := range details {
		if d, err := connect.NewErrorDetail(m); err == nil {
			ce.AddDetail(d)
		}
	}
	return ce
}

// refusalError is the message of a refusal.
type refusalError string

func (e refusalError) Error() string { return string(e) }

// errInternal is the error of calls that fail through no fault of the
// client's; the cause goes to the error hook.
func errInternal() *connect.Error {
	return refusal(connect.CodeInternal, ReasonInternal, "idempotency: internal error", noRetry)
}
