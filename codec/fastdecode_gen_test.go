package codec_test

import (
	"encoding/binary"
)

// fdKeys are the keys fdBuild writes: the field names of the test types,
// in other cases, and unknown ones.
var fdKeys = []string{
	"ID", "Amount", "Currency", "Status", "B", "I", "I8", "I16", "I32", "I64",
	"U", "U8", "U16", "U32", "U64", "F32", "F64", "S", "id", "amount", "Note",
	"Hidden", "Cache", "status", "Level", "Dur", "A", "lower", "Lower", "F0",
	"F3", "F6", "F8", "F9", "f10", "F10", "F11", "F17", "N", "Extra", "T", "x", "",
}

// fdBuild turns fuzz bytes into a msgpack map of keys the test types know
// and values of every encoding, so that the fuzzer explores which
// encodings each kind of field accepts rather than mostly breaking the
// map. Each entry takes a key byte, a value byte and up to 8 bytes of
// payload.
func fdBuild(prog []byte) []byte {
	next := func() byte {
		if len(prog) == 0 {
			return 0
		}
		c := prog[0]
		prog = prog[1:]
		return c
	}
	payload := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = next()
		}
		return b
	}
	n := int(next() % 24)
	var b []byte
	switch {
	case n < 16:
		b = []byte{0x80 | byte(n)}
	case n < 20:
		b = binary.BigEndian.AppendUint16([]byte{0xde}, uint16(n))
	default:
		b = binary.BigEndian.AppendUint32([]byte{0xdf}, uint32(n))
	}
	for range n {
		k := next()
		name := fdKeys[int(k&0x3f)%len(fdKeys)]
		switch k >> 6 {
		case 0, 1:
			b = append(append(b, 0xa0|byte(len(name))), name...)
		case 2:
			b = append(append(b, 0xd9, byte(len(name))), name...) // str8
		default:
			if k&1 == 0 {
				b = append(append(b, 0xc4, byte(len(name))), name...) // bin8
			} else {
				b = append(b, 0xc0) // nil
			}
		}
		v := next()
		switch v % 16 {
		case 0:
			b = append(b, v>>4) // positive fixint
		case 1:
			b = append(b, 0xe0|v>>4) // negative fixint
		case 2: // nil, false, true
			b = append(b, []byte{0xc0, 0xc2, 0xc3}[int(v>>4)%3])
		case 3, 4: // uint8..64, int8..64
			code := byte(0xcc) + (v>>4)%8
			size := 1 << (code & 3)
			b = append(append(b, code), payload(size)...)
		case 5:
			b = append(append(b, 0xca), payload(4)...)
		case 6:
			b = append(append(b, 0xcb), payload(8)...)
		case 7:
			b = append(append(b, 0xa0|(v>>4)), payload(int(v>>4))...) // fixstr
		case 8:
			b = append(append(b, 0xd9, v>>4), payload(int(v>>4))...) // str8
		case 9:
			b = append(append(b, 0xc4, v>>4), payload(int(v>>4))...) // bin8
		case 10:
			b = append(append(b, 0xda, 0, v>>4), payload(int(v>>4))...) // str16
		case 11:
			b = append(b, 0x92, 0x01, 0xa1, 'a') // an array
		case 12:
			b = append(b, 0x81, 0xa1, 'k', 0x90) // a map
		case 13: // a timestamp: fixext 4 or 8, ext8 of 12 bytes
			switch v >> 6 {
			case 0:
				b = append(append(b, 0xd6, 0xff), payload(4)...)
			case 1:
				b = append(append(b, 0xd7, 0xff), payload(8)...)
			default:
				b = append(append(b, 0xc7, 12, 0xff), payload(12)...)
			}
		case 14:
			b = append(append(b, 0xdb, 0, 0, 0, v>>4), payload(int(v>>4))...) // str32
		default:
			b = append(b, payload(1)...) // any byte
		}
	}
	return b
}
