package idem

// Outcome is how Do answered one call: what happened to fn and to the
// stored record. Info.Outcome carries it, so that callers, adapters and
// metrics read it instead of reconstructing it from errors.
type Outcome uint8

// The outcomes of a call. Exactly one applies to every call that returns.
const (
	// OutcomeExecuted: fn ran in this call, returned a value, and the value
	// was stored; retries replay it.
	OutcomeExecuted Outcome = iota + 1
	// OutcomeReplayed: a stored record answered the call, a value or a
	// final error (then the error wraps ErrReplayed); fn did not run.
	OutcomeReplayed
	// OutcomeFinalError: fn ran and returned an error whose disposition is
	// Record (see Final and WithDisposition); it was stored, and retries
	// replay it.
	OutcomeFinalError
	// OutcomeFnError: fn ran and returned an error whose disposition is
	// Release: nothing was stored, and the key was released, so a retry
	// runs fn again.
	OutcomeFnError
	// OutcomeHeld: fn ran and returned an error whose disposition is Hold:
	// nothing was stored, and the key stays refused (ErrInFlight) until its
	// lease expires, a lease TTL at most.
	OutcomeHeld
	// OutcomeNotStored: fn ran, but its outcome could not be stored (the
	// lease was lost, the store failed, or the value would not come back
	// equal from the codec); Do returns ErrNotStored. The outcome of such a
	// call is best treated as unknown.
	OutcomeNotStored
	// OutcomeInFlight: another call holds the key and did not finish within
	// the wait timeout; fn did not run (ErrInFlight).
	OutcomeInFlight
	// OutcomeKeyReused: the key is stored or held for another request
	// (ErrKeyReused); fn did not run.
	OutcomeKeyReused
	// OutcomeStoreError: the store failed before fn could run (ErrStore).
	OutcomeStoreError
	// OutcomeInvalidKey: the key is not a valid idempotency key
	// (ErrInvalidKey); the store was not called.
	OutcomeInvalidKey
	// OutcomeCorruptRecord: the stored record cannot be read
	// (ErrCorruptRecord); fn did not run.
	OutcomeCorruptRecord
	// OutcomeCanceled: the caller's context ended before fn ran, while Do
	// waited for the store or for an in-flight call.
	OutcomeCanceled
	// OutcomeInvalid: the Operation was built with invalid options
	// (ErrInvalidOption, see Operation.Err), or the request cannot be
	// fingerprinted (ErrFingerprint); the store was not called.
	OutcomeInvalid
)

var outcomeNames = [...]string{
	OutcomeExecuted:      "executed",
	OutcomeReplayed:      "replayed",
	OutcomeFinalError:    "final_error",
	OutcomeFnError:       "fn_error",
	OutcomeHeld:          "held",
	OutcomeNotStored:     "not_stored",
	OutcomeInFlight:      "in_flight",
	OutcomeKeyReused:     "key_reused",
	OutcomeStoreError:    "store_error",
	OutcomeInvalidKey:    "invalid_key",
	OutcomeCorruptRecord: "corrupt_record",
	OutcomeCanceled:      "canceled",
	OutcomeInvalid:       "invalid",
}

// String returns the outcome's name in snake case ("executed",
// "in_flight"...), suitable as a metric label.
func (o Outcome) String() string {
	if int(o) < len(outcomeNames) && outcomeNames[o] != "" {
		return outcomeNames[o]
	}
	return "unknown"
}

// Ran reports whether fn ran in the call: true for OutcomeExecuted,
// OutcomeFinalError, OutcomeFnError, OutcomeHeld and OutcomeNotStored. Do
// then returns what fn returned, whatever else it reports.
func (o Outcome) Ran() bool {
	switch o {
	case OutcomeExecuted, OutcomeFinalError, OutcomeFnError, OutcomeHeld, OutcomeNotStored:
		return true
	}
	return false
}

// Disposition says what happens to an outcome of fn: whether it is stored
// and replayed, or forgotten, or held for a while. Every layer names it the
// same way: WithDisposition in the core decides it for fn's errors, and the
// adapters' WithDisposition options decide it for HTTP statuses and gRPC
// statuses.
//
// A value returned by fn without an error is always recorded.
type Disposition uint8

// The dispositions. The zero value is Release.
const (
	// Release stores nothing and releases the key at once, so a retry runs
	// fn again: for failures that did nothing (a refused precondition, a
	// dependency that was unavailable). It is the default for errors, as in
	// AWS Powertools; Stripe stores 500s instead (Record).
	Release Disposition = iota
	// Record stores the outcome and replays it to every retry for the TTL:
	// for outcomes a retry would only repeat, such as a declined card. A
	// recorded error is replayed as a *ReplayedError carrying its message.
	Record
	// Hold stores nothing, but keeps the key refused (ErrInFlight) until
	// the lease expires, a lease TTL (WithLockTTL) at most; a retry after
	// that runs fn again. It is for outcomes whose side effects are
	// unknown, such as a downstream timeout: retrying at once could repeat
	// an effect that is still landing. idem also holds the key this way
	// when fn's value cannot be stored.
	Hold
)

var dispositionNames = [...]string{Release: "release", Record: "record", Hold: "hold"}

// String returns "release", "record" or "hold".
func (d Disposition) String() string {
	if int(d) < len(dispositionNames) {
		return dispositionNames[d]
	}
	return "unknown"
}
