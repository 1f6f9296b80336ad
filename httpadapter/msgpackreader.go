package httpadapter

import (
	"errors"
	"fmt"
	"math"
)

// msgpackReader reads MessagePack values from a slice.
type msgpackReader struct {
	b       []byte
	i       int  // where the next value starts
	skipped bool // skip was called
}

// maxSkipDepth bounds the nesting of the unknown values skipped.
const maxSkipDepth = 100

var errShort = errors.New("httpadapter: msgpack: unexpected end of data")

// MessagePack format codes (see the specification, or msgpack/v5's
// msgpcode package).
const (
	mpNil      = 0xc0
	mpFalse    = 0xc2
	mpTrue     = 0xc3
	mpBin8     = 0xc4
	mpBin16    = 0xc5
	mpBin32    = 0xc6
	mpExt8     = 0xc7
	mpExt16    = 0xc8
	mpExt32    = 0xc9
	mpFloat32  = 0xca
	mpFloat64  = 0xcb
	mpUint8    = 0xcc
	mpUint16   = 0xcd
	mpUint32   = 0xce
	mpUint64   = 0xcf
	mpInt8     = 0xd0
	mpInt16    = 0xd1
	mpInt32    = 0xd2
	mpInt64    = 0xd3
	mpFixExt1  = 0xd4
	mpFixExt16 = 0xd8
	mpStr8     = 0xd9
	mpStr16    = 0xda
	mpStr32    = 0xdb
	mpArray16  = 0xdc
	mpArray32  = 0xdd
	mpMap16    = 0xde
	mpMap32    = 0xdf
)

func (r *msgpackReader) code() (byte, error) {
	if r.i >= len(r.b) {
		return 0, errShort
	}
	c := r.b[r.i]
	r.i++
	return c, nil
}

// take returns the next n bytes.
func (r *msgpackReader) take(n int) ([]byte, error) {
	if n < 0 || n > len(r.b)-r.i {
		return nil, errShort
	}
	p := r.b[r.i : r.i+n]
	r.i += n
	return p, nil
}

// uint reads a big-endian unsigned integer of size bytes.
func (r *msgpackReader) uint(size int) (uint64, error) {
	p, err := r.take(size)
	var v uint64
	for _, c := range p {
		v = v<<8 | uint64(c)
	}
	return v, err
}

// length reads a length of size bytes.
func (r *msgpackReader) length(size int) (int, error) {
	v, err := r.uint(size)
	if v > math.MaxInt32 {
		return 0, fmt.Errorf("httpadapter: msgpack: length %d too large", v)
	}
	return int(v), err
}

func invalid(c byte, what string) error {
	return fmt.Errorf("httpadapter: msgpack: invalid code %#x decoding %s", c, what)
}

// mapLen reads a map length, -1 for nil.
func (r *msgpackReader) mapLen() (int, error) {
	return r.containerLen(0x80, mpMap16, mpMap32, "a map length")
}

// arrayLen reads an array length, -1 for nil.
func (r *msgpackReader) arrayLen() (int, error) {
	return r.containerLen(0x90, mpArray16, mpArray32, "an array length")
}

// containerLen reads the length of a map or an array, whose fix codes run
// from fix to fix+0x0f and whose longer forms are c16 and c32; -1 for nil.
func (r *msgpackReader) containerLen(fix, c16, c32 byte, what string) (int, error) {
	c, err := r.code()
	switch {
	case err != nil:
		return 0, err
	case c == mpNil:
		return -1, nil
	case c >= fix && c <= fix+0x0f:
		return int(c & 0x0f), nil
	case c == c16:
		return r.length(2)
	case c == c32:
		return r.length(4)
	}
	return 0, invalid(c, what)
}

// str reads a string or binary, as the bytes of r; isNil reports a nil.
func (r *msgpackReader) str() (b []byte, isNil bool, err error) {
	c, err := r.code()
	var n int
	switch {
	case err != nil:
		return nil, false, err
	case c == mpNil:
		return nil, true, nil
	case c >= 0xa0 && c <= 0xbf:
		n = int(c & 0x1f)
	case c == mpStr8 || c == mpBin8:
		n, err = r.length(1)
	case c == mpStr16 || c == mpBin16:
		n, err = r.length(2)
	case c == mpStr32 || c == mpBin32:
		n, err = r.length(4)
	default:
		return nil, false, invalid(c, "a string")
	}
	if err != nil {
		return nil, false, err
	}
	b, err = r.take(n)
	return b, false, err
}

// int reads an integer, 0 for nil, as msgpack's Decoder.DecodeInt64.
func (r *msgpackReader) int() (int64, error) {
	c, err := r.code()
	if err != nil {
		return 0, err
	}
	if c <= 0x7f || c >= 0xe0 {
		return int64(int8(c)), nil
	}
	var v uint64
	switch c {
	case mpNil:
		return 0, nil
	case mpUint8:
		v, err = r.uint(1)
	case mpInt8:
		v, err = r.uint(1)
		v = uint64(int8(v))
	case mpUint16:
		v, err = r.uint(2)
	case mpInt16:
		v, err = r.uint(2)
		v = uint64(int16(v))
	case mpUint32:
		v, err = r.uint(4)
	case mpInt32:
		v, err = r.uint(4)
		v = uint64(int32(v))
	case mpUint64, mpInt64:
		v, err = r.uint(8)
	default:
		return 0, invalid(c, "an integer")
	}
	return int64(v), err
}

// skip skips a value, at depth in those skipped.
func (r *msgpackReader) skip(depth int) error {
	r.skipped = true
	if depth > maxSkipDepth {
		return fmt.Errorf("httpadapter: msgpack: nested deeper than %d levels", maxSkipDepth)
	}
	c, err := r.code()
	if err != nil {
		return err
	}
	var n, size int // n values to skip, or size bytes
	switch {
	case c <= 0x7f || c >= 0xe0, c == mpNil, c == mpFalse, c == mpTrue:
		return nil
	case c >= 0x80 && c <= 0x8f:
		n = 2 * int(c&0x0f)
	case c >= 0x90 && c <= 0x9f:
		n = int(c & 0x0f)
	case c >= 0xa0 && c <= 0xbf:
		size = int(c & 0x1f)
	case c >= mpFixExt1 && c <= mpFixExt16:
		size = 1 + 1<<(c-mpFixExt1) // the type, then 1 to 16 bytes
	default:
		switch c {
		case mpUint8, mpInt8:
			size = 1
		case mpUint16, mpInt16:
			size = 2
		case mpUint32, mpInt32, mpFloat32:
			size = 4
		case mpUint64, mpInt64, mpFloat64:
			size = 8
		case mpBin8, mpStr8:
			size, err = r.length(1)
		case mpBin16, mpStr16:
			size, err = r.length(2)
		case mpBin32, mpStr32:
			size, err = r.length(4)
		case mpExt8:
			size, err = r.length(1)
			size++
		case mpExt16:
			size, err = r.length(2)
			size++
		case mpExt32:
			size, err = r.length(4)
			size++
		case mpArray16:
			n, err = r.length(2)
		case mpArray32:
			n, err = r.length(4)
		case mpMap16:
			n, err = r.length(2)
			n *= 2
		case mpMap32:
			n, err = r.length(4)
			n *= 2
		default:
			return invalid(c, "a value")
		}
	}
	if err != nil {
		return err
	}
	if _, err := r.take(size); err != nil {
		return err
	}
	for range n {
		if err := r.skip(depth + 1); err != nil {
			return err
		}
	}
	return nil
}
