package idem

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// A record is what Commit stores: a small header, then the payload.
//
//	magic "idm" | version 1 | kind | len(fingerprint) | fingerprint |
//	len(codec name) | codec name | payload
//
// The payload is the codec's encoding of the result (kindValue) or the
// message of a final error (kindError).
const (
	recordMagic   = "idm\x01"
	kindValue     = 'v'
	kindError     = 'e'
	maxHeaderPart = 255
)

type record struct {
	kind        byte
	fingerprint string
	codec       string
	payload     []byte
}

func (r record) encode() []byte {
	b := make([]byte, 0, len(recordMagic)+3+len(r.fingerprint)+len(r.codec)+len(r.payload))
	b = append(b, recordMagic...)
	b = append(b, r.kind, byte(len(r.fingerprint)))
	b = append(b, r.fingerprint...)
	b = append(b, byte(len(r.codec)))
	b = append(b, r.codec...)
	return append(b, r.payload...)
}

var errShort = errors.New("truncated")

// recordView is a decoded record whose fields point into the stored bytes,
// so that replaying allocates nothing for them.
type recordView struct {
	kind        byte
	fingerprint []byte
	codec       []byte
	payload     []byte
}

func decodeRecord(b []byte) (recordView, error) {
	var r recordView
	if len(b) < len(recordMagic) || string(b[:len(recordMagic)]) != recordMagic {
		return r, fmt.Errorf("%w: not an idem record", ErrCorruptRecord)
	}
	b = b[len(recordMagic):]
	if len(b) < 2 {
		return r, fmt.Errorf("%w: %w header", ErrCorruptRecord, errShort)
	}
	r.kind = b[0]
	if r.kind != kindValue && r.kind != kindError {
		return r, fmt.Errorf("%w: unknown kind %q", ErrCorruptRecord, r.kind)
	}
	fp, b, ok := cut(b[1:])
	if !ok {
		return r, fmt.Errorf("%w: %w fingerprint", ErrCorruptRecord, errShort)
	}
	cd, b, ok := cut(b)
	if !ok {
		return r, fmt.Errorf("%w: %w codec name", ErrCorruptRecord, errShort)
	}
	r.fingerprint, r.codec, r.payload = fp, cd, b
	if r.kind == kindError && !utf8.Valid(r.payload) {
		return r, fmt.Errorf("%w: error message is not UTF-8", ErrCorruptRecord)
	}
	return r, nil
}

// cut splits a length-prefixed field off b.
func cut(b []byte) (field, rest []byte, ok bool) {
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return nil, nil, false
	}
	n := 1 + int(b[0])
	return b[1:n], b[n:], true
}
