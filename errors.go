package idem

import "errors"

// ErrReplayed is wrapped by every error that Do replays from a stored record
// rather than receiving from fn. See ReplayedError.
var ErrReplayed = errors.New("idem: replayed error")

// Final marks err as a final outcome of fn, whose disposition is Record
// whatever WithDisposition says: Do stores it, and replays it to later calls
// with the same key as a *ReplayedError. The call that ran fn gets err itself
// back (errors.Is and errors.As see through the marking). Final(nil)
// returns nil.
func Final(err error) error {
	if err == nil {
		return nil
	}
	return &finalError{err}
}

type finalError struct{ err error }

func (e *finalError) Error() string { return e.err.Error() }
func (e *finalError) Unwrap() error { return e.err }

// dispose returns the disposition of fn's error err: Record for errors
// marked with Final, else what decide says, else Release.
func dispose(err error, decide func(error) Disposition) Disposition {
	var f *finalError
	switch {
	case errors.As(err, &f):
		return Record
	case decide != nil:
		return decide(err)
	}
	return Release
}

// ReplayedError is the error Do returns when it replays a stored final error
// (see Final and WithDisposition). Only the message survives storage, with
// any bytes that are not UTF-8 replaced by U+FFFD; the error matches
// ErrReplayed under errors.Is.
type ReplayedError struct {
	// Message is the Error() text of the original error.
	Message string
}

func (e *ReplayedError) Error() string { return e.Message }

// Unwrap returns ErrReplayed.
func (e *ReplayedError) Unwrap() error { return ErrReplayed }
