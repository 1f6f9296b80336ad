package grpcadapter

import (
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Domain is the domain of the google.rpc.ErrorInfo detail that every
// refusal of the server interceptor carries, with one of the Reason constants
// (AIP-193).
const Domain = "idem.idemkit.dev"

// Reasons of the google.rpc.ErrorInfo detail of the server interceptor's
// refusals: the handler did not run. They are stable; match on them, not on
// messages.
const (
	// ReasonKeyMissing (InvalidArgument): the call carries no key, and the
	// method requires one (see WithKeyRequired).
	ReasonKeyMissing = "IDEMPOTENCY_KEY_MISSING"
	// ReasonKeyInvalid (InvalidArgument): the key is empty, repeated,
	// longer than idem.MaxKeyLen bytes, or holds a control character. The
	// client interceptor refuses an invalid CallKey this way too, without
	// sending the call.
	ReasonKeyInvalid = "IDEMPOTENCY_KEY_INVALID"
	// ReasonKeyReused (FailedPrecondition): the key was first used with
	// another request, to this method or another one. Pick a new key.
	ReasonKeyReused = "IDEMPOTENCY_KEY_REUSED"
	// ReasonInFlight (Aborted, or the code set by WithInFlightCode): a
	// call with this key is still running. The status also carries a
	// google.rpc.RetryInfo detail; a retry after that delay receives the
	// stored outcome.
	ReasonInFlight = "IDEMPOTENCY_REQUEST_IN_FLIGHT"
	// ReasonStoreUnavailable (Unavailable): the store failed before the
	// handler ran. The status also carries a google.rpc.RetryInfo detail.
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

// refusal returns a status error with code, msg, an ErrorInfo detail with
// reason, and, unless retry is noRetry, a RetryInfo detail.
func refusal(code codes.Code, reason, msg string, retry time.Duration) error {
	st := status.New(code, msg)
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: reason, Domain: Domain}}
	if retry != noRetry {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	}
	if withDetails, err := st.WithDetails(details...); err == nil {
		st = withDetails
	}
	return st.Err()
}

// errInternal is the error of calls that fail through no fault of the
// client's; the cause goes to the error hook.
func errInternal() error {
	return refusal(codes.Internal, ReasonInternal, "idempotency: internal error", noRetry)
}
