// Package queue tells a message consumer what to do with a message once
// idem has handled it: acknowledge it, have it redelivered later, or
// terminate it (dead-letter it). Every broker delivers at least once, and
// the ack is the hard part: acking a redelivery that arrived while the
// first attempt still runs loses the message if that attempt then fails,
// and terminating a message whose handler failed once drops work that a
// retry would have done.
//
// Decide maps the Info and error of idem's DoInfo to an Action:
//
//	outcome                                        action
//	executed, replayed (a value)                   Ack
//	fn_error, store_error, canceled                Retry (with backoff)
//	in_flight, held, not_stored                    RetryAfterLease
//	final_error, replayed final error, key_reused  Terminate
//	invalid_key, corrupt_record, unfingerprintable Terminate
//	invalid options                                Retry (fix and redeploy)
//
// natsadapter and kafkaadapter apply it; for any other broker (RabbitMQ,
// SQS, Redis streams) it is a switch of a few lines (see the Example).
package queue

import (
	"errors"
	"time"

	"github.com/idemkit/idem"
)

// Action is what a consumer does with a message after Do.
type Action uint8

// The actions.
const (
	// Ack: the message was processed, in this call or an earlier one, and
	// its result is stored. Acknowledge it, durably where the broker
	// allows (JetStream's double ack), so it is not delivered again.
	Ack Action = iota + 1
	// Retry: nothing was settled (fn failed with an ordinary error, the
	// store failed, the consumer is shutting down). Have the message
	// redelivered after a backoff (see Backoff); never drop it.
	Retry
	// RetryAfterLease: another attempt holds the key (in flight), or
	// holds it until its lease expires (a held error, a result not
	// stored). Have the message redelivered after about the lease TTL
	// (idem.WithLockTTL): never ack it, since the other attempt may yet
	// fail, and never drop it.
	RetryAfterLease
	// Terminate: the message is settled as a failure that no redelivery
	// changes (a final error, stored or replayed; a key reused for
	// another payload; an invalid key; a corrupt record). Stop its
	// redelivery, dead-letter it, and report it.
	Terminate
)

var actionNames = [...]string{
	Ack:             "ack",
	Retry:           "retry",
	RetryAfterLease: "retry_after_lease",
	Terminate:       "terminate",
}

// String returns the action's name in snake case ("ack", "retry",
// "retry_after_lease", "terminate"), suitable as a metric label.
func (a Action) String() string {
	if int(a) < len(actionNames) && actionNames[a] != "" {
		return actionNames[a]
	}
	return "unknown"
}

// Decide returns what to do with a message that DoInfo handled, from the
// call's outcome and error. A call that returned no error is always Ack.
// Without an outcome (an Info not filled by DoInfo), Decide reads the
// error alone: it then cannot tell a final or held error of fn's (which
// only the Operation's dispositions know) from an ordinary one, and says
// Retry for both. Pass DoInfo's Info.
func Decide(info idem.Info, err error) Action {
	if err == nil {
		return Ack
	}
	switch info.Outcome {
	case idem.OutcomeExecuted:
		return Ack // fn's value stored; err cannot be set, but be safe
	case idem.OutcomeReplayed, idem.OutcomeFinalError, idem.OutcomeKeyReused,
		idem.OutcomeInvalidKey, idem.OutcomeCorruptRecord:
		return Terminate
	case idem.OutcomeFnError, idem.OutcomeStoreError, idem.OutcomeCanceled:
		return Retry
	case idem.OutcomeInFlight, idem.OutcomeHeld, idem.OutcomeNotStored:
		return RetryAfterLease
	case idem.OutcomeInvalid:
		if errors.Is(err, idem.ErrFingerprint) {
			return Terminate // this message can never be fingerprinted
		}
		return Retry // a misconfigured consumer: keep the messages
	}
	switch {
	case errors.Is(err, idem.ErrNotStored), errors.Is(err, idem.ErrInFlight):
		return RetryAfterLease
	case errors.Is(err, idem.ErrReplayed), errors.Is(err, idem.ErrKeyReused),
		errors.Is(err, idem.ErrInvalidKey), errors.Is(err, idem.ErrCorruptRecord),
		errors.Is(err, idem.ErrFingerprint):
		return Terminate
	}
	return Retry
}

// Backoff returns the delay before redelivery attempt n (1 for the first
// redelivery): lo, doubled for every attempt after the first, at most hi.
func Backoff(n int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		if d > hi/2 {
			return hi
		}
		d *= 2
	}
	return min(d, hi)
}
