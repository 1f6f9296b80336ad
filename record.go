package idem

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// A record is what Commit stores: a small header, then the payload.
//
//	magic "idm" | version 2 | kind | len(fingerprint) | fingerprint |
//	len(codec name) | codec name | len(types) | types | payload
//
// The payload is the codec's encoding of the result (kindValue) or the
// message of a final error (kindError). types names the request and result
// types of the Operation that stored it (see Operation's identity).
const (
	recordMagic   = "idm\x02"
	kindValue     = 'v'
	kindError     = 'e'
	maxHeaderPart = 255
)

type record struct {
	kind        byte
	fingerprint string
	codec       string
	types       string
	payload     []byte
}

func (r record) encode() []byte {
	b := r.appendHeader(make([]byte, 0, r.headerLen()+len(r.payload)))
	return append(b, r.payload...)
}

// headerLen is the length of r's header: all of the record but its payload.
func (r record) headerLen() int {
	return len(recordMagic) + 4 + len(r.fingerprint) + len(r.codec) + len(r.types)
}

// appendHeader appends r's header to b.
func (r record) appendHeader(b []byte) []byte {
	b = append(b, recordMagic...)
	b = append(b, r.kind, byte(len(r.fingerprint)))
	b = append(b, r.fingerprint...)
	b = append(b, byte(len(r.codec)))
	b = append(b, r.codec...)
	b = append(b, byte(len(r.types)))
	return append(b, r.types...)
}

var errShort = errors.New("truncated")

// recordView is a decoded record whose fields point into the stored bytes,
// so that replaying allocates nothing for them.
type recordView struct {
	kind        byte
	fingerprint []byte
	codec       []byte
	types       []byte
	payload     []byte
}

func decodeRecord(b []byte) (recordView, error) {
	var r recordView
	if len(b) < len(recordMagic) || string(b[:len(recordMagic)-1]) != recordMagic[:len(recordMagic)-1] {
		return r, fmt.Errorf("%w: not an idem record", ErrCorruptRecord)
	}
	if v := b[len(recordMagic)-1]; v != recordMagic[len(recordMagic)-1] {
		return r, fmt.Errorf("%w: record format version %d, this release reads %d", ErrCorruptRecord, v, recordMagic[len(recordMagic)-1])
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
	ty, b, ok := cut(b)
	if !ok {
		return r, fmt.Errorf("%w: %w type names", ErrCorruptRecord, errShort)
	}
	r.fingerprint, r.codec, r.types, r.payload = fp, cd, ty, b
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
