package codec

import (
	"encoding/binary"
	"math"
	"reflect"
	"unsafe"
)

// The byte-level half of the fast decode path (fastdecode.go): reading a
// msgpack map into staged values, and storing them.

// decode decodes the map in b into vals, in the order of the data.
func (p *fastPlan) decode(b []byte, vals []fastValue, skipUnknown bool) ([]fastValue, bool) {
	if len(b) == 0 {
		return nil, false
	}
	var n uint64
	i := 1
	switch c := b[0]; {
	case c&0xf0 == 0x80:
		n = uint64(c & 0x0f)
	case c == 0xde, c == 0xdf:
		var ok bool
		if n, i, ok = readLen(b, i, 2<<(c-0xde)); !ok {
			return nil, false
		}
	default:
		return nil, false // nil, an array, anything else
	}
	fs := p.fields
	next := 0 // the field expected next: keys usually come in field order
	for ; n > 0; n-- {
		var f *fastField
		if next < len(fs) && fs[next].keyAt(b, i) {
			f = &fs[next]
			i += len(f.key)
			next++
		} else {
			key, j, ok := readKey(b, i)
			if !ok {
				return nil, false
			}
			i = j
			k := p.lookup(key)
			if k < 0 {
				if !skipUnknown {
					return nil, false
				}
				if i, ok = skipValue(b, i); !ok {
					return nil, false
				}
				continue
			}
			f, next = &fs[k], k+1
		}
		if i >= len(b) {
			return nil, false
		}
		vals = append(vals, fastValue{field: uint32(next - 1)})
		v := &vals[len(vals)-1]
		c := b[i]
		i++
		switch {
		case f.width == 0 && c&0xe0 == 0xa0: // a fixstr into a string
			n := int(c & 0x1f)
			if n > len(b)-i {
				return nil, false
			}
			v.bits, v.n = uint64(i), uint32(n)
			i += n
		case c <= 0x7f && f.kind >= reflect.Int && f.kind <= reflect.Uint64: // a positive fixint into an integer
			v.bits = uint64(c)
		default:
			var ok bool
			if i, ok = f.value(b, i, c, v); !ok {
				return nil, false
			}
		}
	}
	return vals, true
}

// keyAt reports whether f's key, in its commonest encoding, is at b[i].
func (f *fastField) keyAt(b []byte, i int) bool {
	if f.mask[0] != 0 && len(b)-i >= 16 {
		le := binary.LittleEndian
		return le.Uint64(b[i:])&f.mask[0] == f.word[0] && le.Uint64(b[i+8:])&f.mask[1] == f.word[1]
	}
	return len(f.key) <= len(b)-i && string(b[i:i+len(f.key)]) == f.key
}

// lookup returns the index of the field named key, or -1.
func (p *fastPlan) lookup(key []byte) int {
	if p.index != nil {
		if f, ok := p.index[string(key)]; ok {
			return f
		}
		return -1
	}
	for f := range p.fields {
		if string(key) == p.fields[f].name {
			return f
		}
	}
	return -1
}

// value decodes the value for field f whose code c has been read, with
// the rest at b[i:], into v, and returns the index past it; false if the
// fast path cannot decode it.
func (f *fastField) value(b []byte, i int, c byte, v *fastValue) (int, bool) {
	switch f.kind {
	case reflect.String:
		s, j, ok := readStr(b, i, c)
		v.bits, v.n = uint64(j-len(s)), uint32(len(s))
		return j, ok
	case reflect.Bool:
		switch c {
		case 0xc0, 0xc2:
		case 0xc3:
			v.bits = 1
		default:
			return 0, false
		}
		return i, true
	case reflect.Float32:
		var f32 float32
		if c == 0xca {
			u, j, ok := readLen(b, i, 4)
			if !ok {
				return 0, false
			}
			f32, i = math.Float32frombits(uint32(u)), j
		} else {
			n, j, ok := readInt(b, i, c)
			if !ok {
				return 0, false
			}
			f32, i = float32(int64(n)), j
		}
		// msgpack/v5 hands float64(f32) to reflect's SetFloat, which
		// converts it back: a signalling NaN comes out quiet.
		v.bits = uint64(math.Float32bits(float32(widen(f32))))
		return i, true
	case reflect.Float64:
		switch c {
		case 0xca:
			u, j, ok := readLen(b, i, 4)
			v.bits = math.Float64bits(float64(math.Float32frombits(uint32(u))))
			return j, ok
		case 0xcb:
			u, j, ok := readLen(b, i, 8)
			v.bits = u
			return j, ok
		}
		n, j, ok := readInt(b, i, c)
		v.bits = math.Float64bits(float64(int64(n)))
		return j, ok
	default: // the integers
		n, j, ok := readInt(b, i, c)
		v.bits = n
		return j, ok
	}
}

// widen converts f to float64; not inlined, so that the compiler cannot
// fold float32(float64(f)) into f.
//
//go:noinline
func widen(f float32) float64 { return float64(f) }

// store writes the staged values into the struct at base, in order, so
// that the last of repeated keys wins, making the strings from data.
// Integers are truncated to the field's size, as reflect's SetInt and
// SetUint do.
func (p *fastPlan) store(base unsafe.Pointer, data []byte, vals []fastValue) {
	for k := range vals {
		v := &vals[k]
		f := &p.fields[v.field]
		ptr := unsafe.Add(base, f.off)
		switch f.width {
		case 0:
			*(*string)(ptr) = string(data[v.bits : v.bits+uint64(v.n)]) // a copy; "" when empty
		case 1:
			*(*uint8)(ptr) = uint8(v.bits)
		case 2:
			*(*uint16)(ptr) = uint16(v.bits)
		case 4:
			*(*uint32)(ptr) = uint32(v.bits)
		case 8:
			*(*uint64)(ptr) = v.bits
		}
	}
}

// readInt reads the integer encoded at b[i], whose code c has been read,
// as msgpack/v5's DecodeInt64 and DecodeUint64 do (they give the same
// bits): nil is 0, signed encodings are sign-extended.
func readInt(b []byte, i int, c byte) (uint64, int, bool) {
	if c <= 0x7f || c >= 0xe0 {
		return uint64(int64(int8(c))), i, true
	}
	be := binary.BigEndian
	switch c {
	case 0xc0:
		return 0, i, true
	case 0xcc, 0xd0:
		if len(b)-i >= 1 {
			if c == 0xd0 {
				return uint64(int64(int8(b[i]))), i + 1, true
			}
			return uint64(b[i]), i + 1, true
		}
	case 0xcd, 0xd1:
		if len(b)-i >= 2 {
			if c == 0xd1 {
				return uint64(int64(int16(be.Uint16(b[i:])))), i + 2, true
			}
			return uint64(be.Uint16(b[i:])), i + 2, true
		}
	case 0xce, 0xd2:
		if len(b)-i >= 4 {
			if c == 0xd2 {
				return uint64(int64(int32(be.Uint32(b[i:])))), i + 4, true
			}
			return uint64(be.Uint32(b[i:])), i + 4, true
		}
	case 0xcf, 0xd3:
		if len(b)-i >= 8 {
			return be.Uint64(b[i:]), i + 8, true
		}
	}
	return 0, 0, false
}

// readLen reads a big-endian unsigned number of size (1, 2, 4 or 8) bytes
// at b[i].
func readLen(b []byte, i, size int) (uint64, int, bool) {
	if i < 0 || size > len(b)-i {
		return 0, 0, false
	}
	b = b[i:]
	switch size {
	case 1:
		return uint64(b[0]), i + 1, true
	case 2:
		return uint64(binary.BigEndian.Uint16(b)), i + 2, true
	case 4:
		return uint64(binary.BigEndian.Uint32(b)), i + 4, true
	}
	return binary.BigEndian.Uint64(b), i + 8, true
}

// readStr returns the bytes of the str or bin at b[i], whose code c has
// been read, and the index past them; nil is empty.
func readStr(b []byte, i int, c byte) ([]byte, int, bool) {
	var n uint64
	ok := true
	switch {
	case c&0xe0 == 0xa0:
		n = uint64(c & 0x1f)
	case c == 0xc0:
		return nil, i, true
	case c >= 0xd9 && c <= 0xdb: // str 8, 16, 32
		n, i, ok = readLen(b, i, 1<<(c-0xd9))
	case c >= 0xc4 && c <= 0xc6: // bin 8, 16, 32
		n, i, ok = readLen(b, i, 1<<(c-0xc4))
	default:
		return nil, 0, false
	}
	if !ok || n > uint64(len(b)-i) {
		return nil, 0, false
	}
	return b[i : i+int(n)], i + int(n), true
}

// readKey reads a map key at b[i] as msgpack/v5's decodeStringTemp does.
func readKey(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) {
		return nil, 0, false
	}
	return readStr(b, i+1, b[i])
}

// skipValue returns the index past the value at b[i], as msgpack/v5's
// Skip reads it; false if the bytes end too soon or hold an unused code.
func skipValue(b []byte, i int) (int, bool) {
	for pending := uint64(1); pending > 0; pending-- {
		if i >= len(b) {
			return 0, false
		}
		c := b[i]
		i++
		var skip, size uint64 // bytes to skip; bytes of the length before them
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		case c&0xf0 == 0x80:
			pending += 2 * uint64(c&0x0f)
		case c&0xf0 == 0x90:
			pending += uint64(c & 0x0f)
		case c&0xe0 == 0xa0:
			skip = uint64(c & 0x1f)
		case c >= 0xc4 && c <= 0xc6: // bin
			size = 1 << (c - 0xc4)
		case c >= 0xd9 && c <= 0xdb: // str
			size = 1 << (c - 0xd9)
		case c >= 0xc7 && c <= 0xc9: // ext: length, type, data
			size, skip = 1<<(c-0xc7), 1
		case c >= 0xca && c <= 0xd3: // float, double, uint*, int*
			skip = [...]uint64{4, 8, 1, 2, 4, 8, 1, 2, 4, 8}[c-0xca]
		case c >= 0xd4 && c <= 0xd8: // fixext: type, data
			skip = 1 + 1<<(c-0xd4)
		case c == 0xdc || c == 0xdd: // array
			n, j, ok := readLen(b, i, 2<<(c-0xdc))
			if !ok {
				return 0, false
			}
			i, pending = j, pending+n
		case c == 0xde || c == 0xdf: // map
			n, j, ok := readLen(b, i, 2<<(c-0xde))
			if !ok {
				return 0, false
			}
			i, pending = j, pending+2*n
		default: // 0xc1
			return 0, false
		}
		if size > 0 {
			n, j, ok := readLen(b, i, int(size))
			if !ok {
				return 0, false
			}
			i, skip = j, skip+n
		}
		if skip > uint64(len(b)-i) || pending > uint64(len(b)-i)+1 {
			return 0, false
		}
		i += int(skip)
	}
	return i, true
}
