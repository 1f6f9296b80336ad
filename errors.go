package idem

import "errors"

// ErrReplayed is wrapped by every error that Do replays from a stored record
// rather than receiving from fn. See ReplayedError.
var ErrReplayed = errors.New("idem: replayed error")

// Final marks err as a final outcome of fn, whose disposition is Record
// whatever WithDisposition says: Do stores it, and replays it to later calls
// with the same key as a *ReplayedError. The call that ran fn gets err itself
// back (errors.Is and errors.As see through the marking). Final(nil)
// returns nil. It is Dispose(err, Record).
func Final(err error) error { return Dispose(err, Record) }

// Dispose marks err with the disposition d, which Do applies to it whatever
// WithDisposition says: for an fn that knows what its failure means, such
// as an adapter that decided by a status code. The call that ran fn gets err
// itself back (errors.Is and errors.As see through the marking).
// Dispose(nil, d) returns nil.
func Dispose(err error, d Disposition) error {
	if err == nil {
		return nil
	}
	return &disposedError{err, d}
}

type disposedError struct {
	err error
	d   Disposition
}

func (e *disposedError) Error() string { return e.err.Error() }
func (e *disposedError) Unwrap() error { return e.err }

// dispose returns the disposition of fn's error err: the one it was marked
// with (Final, Dispose), else what decide says, else Release.
func dispose(err error, decide func(error) Disposition) Disposition {
	var de *disposedError
	switch {
	case errors.As(err, &de):
		return de.d
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

// Error returns Message, the Error() text of the original error, so that a
// replayed error reads as the first caller's did.
func (e *ReplayedError) Error() string { return e.Message }

// Unwrap returns ErrReplayed.
func (e *ReplayedError) Unwrap() error { return ErrReplayed }
