package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
)

var errMsgpack = errors.New("codec: msgpack: malformed data")

// checkMsgpack walks one msgpack value in b without decoding it, and fails
// unless every declared length fits in the bytes that remain. msgpack/v5
// pre-allocates containers by their declared length (up to a million
// elements), so ten corrupt bytes could otherwise cost hundreds of megabytes;
// after this check no container can claim more elements than there are bytes
// left.
//
// It also fails, with an error wrapping ErrTooDeep, when maps and arrays
// are nested more than MaxDepth levels deep: msgpack/v5 decodes them by
// recursion and has no bound, so two million bytes of 0x91 would make it
// overflow the stack. An empty map or array is a level too, as the walk of
// Marshal counts it. The extension types, other than the timestamp, are
// refused.
//
// For data nested at most 32 levels deep it allocates nothing.
func checkMsgpack(b []byte) error {
	// open holds, for each map and array being read, outermost first, how
	// many of its values are still to read. Exhausted ones are dropped
	// before the next value is read, not as the last value starts (which
	// may be a map or an array), so len(open) is the level of that value.
	var stack [32]uint64
	open := stack[:0]
	pending := uint64(1) // values still to read, in all
	for pending > 0 {
		if len(b) == 0 {
			return fmt.Errorf("%w: truncated", errMsgpack)
		}
		for len(open) > 0 && open[len(open)-1] == 0 {
			open = open[:len(open)-1]
		}
		if len(open) > 0 {
			open[len(open)-1]--
		}
		c := b[0]
		b = b[1:]
		pending--
		var skip, count uint64 // bytes to skip; values this one contains
		container := false     // a map or an array
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		case c&0xf0 == 0x80:
			count = 2 * uint64(c&0x0f)
			container = true
		case c&0xf0 == 0x90:
			count = uint64(c & 0x0f)
			container = true
		case c&0xe0 == 0xa0:
			skip = uint64(c & 0x1f)
		default:
			var n uint64
			var err error
			switch c {
			case 0xc4, 0xd9: // bin8, str8
				n, b, err = length(b, 1)
				skip = n
			case 0xc5, 0xda:
				n, b, err = length(b, 2)
				skip = n
			case 0xc6, 0xdb:
				n, b, err = length(b, 4)
				skip = n
			case 0xc7: // ext8: length, type, data
				n, b, err = length(b, 1)
				skip = n + 1
				err = errors.Join(err, timestampExt(b, n))
			case 0xc8:
				n, b, err = length(b, 2)
				skip = n + 1
				err = errors.Join(err, timestampExt(b, n))
			case 0xc9:
				n, b, err = length(b, 4)
				skip = n + 1
				err = errors.Join(err, timestampExt(b, n))
			case 0xca, 0xce, 0xd2:
				skip = 4
			case 0xcb, 0xcf, 0xd3:
				skip = 8
			case 0xcc, 0xd0:
				skip = 1
			case 0xcd, 0xd1:
				skip = 2
			case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1, 2, 4, 8, 16 plus type
				skip = 1 + 1<<(c-0xd4)
				err = timestampExt(b, skip-1)
			case 0xdc:
				count, b, err = length(b, 2)
				container = true
			case 0xdd:
				count, b, err = length(b, 4)
				container = true
			case 0xde:
				n, b, err = length(b, 2)
				count = 2 * n
				container = true
			case 0xdf:
				n, b, err = length(b, 4)
				count = 2 * n
				container = true
			default: // 0xc1 is never used
				return fmt.Errorf("%w: byte %#x", errMsgpack, c)
			}
			if err != nil {
				return err
			}
		}
		if skip > uint64(len(b)) {
			return fmt.Errorf("%w: %d bytes declared, %d left", errMsgpack, skip, len(b))
		}
		b = b[skip:]
		pending += count
		if pending > uint64(len(b)) {
			return fmt.Errorf("%w: %d values declared, %d bytes left", errMsgpack, pending, len(b))
		}
		if container {
			if len(open) >= MaxDepth {
				return errMsgpackTooDeep
			}
			if count > 0 {
				open = append(open, count)
			}
		}
	}
	return nil
}

// errMsgpackTooDeep is the error for data nested more than MaxDepth levels.
var errMsgpackTooDeep error = &tooDeepError{
	msg:   fmt.Sprintf("%v: nested more than %d levels deep", errMsgpack, MaxDepth),
	cause: errMsgpack,
}

// timestampExt accepts only msgpack's timestamp extension (type -1, 4, 8 or
// 12 bytes) at b, which starts with the type byte. msgpack/v5 decodes other
// extension types it does not know by reading past their data, which corrupt
// bytes can turn into a huge allocation.
func timestampExt(b []byte, n uint64) error {
	if len(b) < 1 || int8(b[0]) != -1 || n != 4 && n != 8 && n != 12 {
		return fmt.Errorf("%w: only the timestamp extension is supported", errMsgpack)
	}
	return nil
}

// length reads a big-endian length of size bytes from b.
func length(b []byte, size int) (uint64, []byte, error) {
	if len(b) < size {
		return 0, nil, fmt.Errorf("%w: truncated length", errMsgpack)
	}
	var n uint64
	switch size {
	case 1:
		n = uint64(b[0])
	case 2:
		n = uint64(binary.BigEndian.Uint16(b))
	default:
		n = uint64(binary.BigEndian.Uint32(b))
	}
	return n, b[size:], nil
}
