package codec

import (
	"encoding/binary"
	"math"
	"reflect"
	"strings"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
)

// The fast decode path.
//
// msgpack/v5 decodes a small struct mostly by reflection: a decoder
// function per field, a reflect.Value per step, a map lookup per key.
// fastUnmarshal decodes a whitelisted class of struct types directly from
// the bytes, and gives the result msgpack/v5 (v5.4.1) would give, read off
// its decodeStructValue, decodeStruct, getFields, getDecoder and the
// Decode* functions of each kind:
//
//   - the data is a map (fixmap, map16, map32); a key is a str or a bin
//     (decodeStringTemp takes both), or nil, which reads as "";
//   - a key selects the field of that exact name (case-sensitive), its tag
//     name or else its Go name; an unknown key's value is skipped (idem
//     does not set DisallowUnknownFields); when a key repeats, the last
//     value wins, as each is decoded in turn into the same field;
//   - a field absent from the data keeps the value *v had: msgpack/v5 does
//     not zero the struct first;
//   - nil decodes as the zero value into every kind handled here;
//   - an integer field takes any integer encoding and truncates it to the
//     field's size (DecodeInt64 or DecodeUint64, then reflect's SetInt or
//     SetUint); a uint field takes a negative number as its two's
//     complement; no integer field takes a float;
//   - a float32 field takes float32 or an integer (converted from int64,
//     even a uint64 above MaxInt64), but not a float64, which msgpack/v5
//     refuses; a float64 field takes either float or an integer;
//   - a string field takes str or bin, copied.
//
// Anything else (a top-level nil, an array-encoded struct, a key of
// another type, a value of another encoding, bytes that end too soon)
// makes fastUnmarshal give up without touching *v: values are staged and
// stored only once the whole map has decoded, so that msgpack/v5 then
// decodes the same bytes into the same *v, and gives whatever result or
// error it gives. The fast path never returns an error of its own.

// A fastPlan says how to decode a struct type on the fast path.
type fastPlan struct {
	fields []fastField
	// index maps a name to its field, for types with many fields; nil for
	// few, which are found by comparing names in turn.
	index map[string]int
}

// A fastField is one field that msgpack/v5 decodes.
type fastField struct {
	name string
	key  string // name as msgpack/v5 encodes it, the commonest encoding
	// word holds the first 16 bytes of key, little-endian, and mask which
	// of them count; mask[0] is 0 when key is longer.
	word, mask [2]uint64
	off        uintptr
	kind       reflect.Kind
	// width is the field's size in bytes, to store a value's bits (a
	// bool, an integer truncated, a float); 0 for a string.
	width uintptr
}

// fastIndexAfter is the number of fields above which a plan looks names up
// in a map rather than comparing them in turn.
const fastIndexAfter = 8

// fastPlans caches, for each pointer type *T given to Unmarshal, its
// *fastPlan, or a nil *fastPlan when T does not qualify.
var fastPlans sync.Map

// A fastValue is a decoded field value waiting to be stored: the bits to
// store, or for a string where its bytes are in the data (the string is
// made only once the whole map has decoded).
type fastValue struct {
	bits  uint64 // a bool, an integer (as int64 or uint64), a float's bits; a string's start
	n     uint32 // a string's length
	field uint32
}

// fastUnmarshal decodes data into v on the fast path and reports whether
// it did; when it did not, v is untouched. With skipUnknown, the values of
// keys that name no field are skipped, and data must have passed
// checkMsgpack: skipValue walks nested data with no bound on its depth and
// reads past extension types. Without it, such a key makes fastUnmarshal
// give up, and what it decodes is a map of known keys and scalar values,
// every length checked against data, on which checkMsgpack can find no
// fault: data need not have passed it.
func fastUnmarshal(data []byte, v any, skipUnknown bool) bool {
	t := reflect.TypeOf(v)
	if t == nil || t.Kind() != reflect.Pointer {
		return false
	}
	p := planFor(t)
	if p == nil {
		return false
	}
	base := reflect.ValueOf(v).UnsafePointer()
	if base == nil {
		return false
	}
	var buf [16]fastValue
	vals, ok := p.decode(data, buf[:0], skipUnknown)
	if !ok {
		return false
	}
	p.store(base, data, vals)
	return true
}

// planFor returns the plan for pointer type t, building it on first use;
// nil when t's element type does not qualify.
func planFor(t reflect.Type) *fastPlan {
	if p, ok := fastPlans.Load(t); ok {
		return p.(*fastPlan)
	}
	p := buildPlan(t.Elem())
	if p != nil && !p.agrees(t.Elem()) {
		p = nil
	}
	fastPlans.Store(t, p)
	return p
}

// buildPlan returns the plan for struct type t, or nil when it does not
// qualify: t must be a struct that decodes itself in no other way, whose
// fields are all exported, not embedded, of a kind the fast path decodes,
// with no decoding method of their own, and named by distinct simple tags.
// A field tagged "-" is skipped whatever it is, as msgpack/v5 skips it.
func buildPlan(t reflect.Type) *fastPlan {
	if t.Kind() != reflect.Struct || t == timeType || decodesItself(t) {
		return nil
	}
	p := &fastPlan{}
	seen := make(map[string]bool)
	for i := range t.NumField() {
		sf := t.Field(i)
		tag := sf.Tag.Get("msgpack")
		if tag == "-" {
			continue
		}
		name, ok := simpleTagName(tag)
		if !ok || !sf.IsExported() || sf.Anonymous || !fastKind(sf.Type.Kind()) || decodesItself(sf.Type) {
			return nil
		}
		if name == "" {
			name = sf.Name
		}
		if seen[name] {
			return nil // msgpack/v5 logs and keeps the last; keep clear of it
		}
		seen[name] = true
		p.fields = append(p.fields, newFastField(name, sf))
	}
	if len(p.fields) > fastIndexAfter {
		p.index = make(map[string]int, len(p.fields))
		for i, f := range p.fields {
			p.index[f.name] = i
		}
	}
	return p
}

func newFastField(name string, sf reflect.StructField) fastField {
	f := fastField{name: name, key: string(appendStr(nil, name)), off: sf.Offset, kind: sf.Type.Kind(), width: sf.Type.Size()}
	if f.kind == reflect.String {
		f.width = 0
	}
	if len(f.key) <= 16 {
		var w, m [16]byte
		copy(w[:], f.key)
		for i := range len(f.key) {
			m[i] = 0xff
		}
		le := binary.LittleEndian
		f.word = [2]uint64{le.Uint64(w[:]), le.Uint64(w[8:])}
		f.mask = [2]uint64{le.Uint64(m[:]), le.Uint64(m[8:])}
	}
	return f
}

// decodesItself reports whether msgpack/v5 decodes a value of type t (as
// a field, or as a struct behind a pointer) with a method of t or *t.
func decodesItself(t reflect.Type) bool {
	return implementsAny(t, msgpackDecoders) || implementsAny(reflect.PointerTo(t), msgpackDecoders)
}

// fastKind reports whether the fast path decodes fields of kind k.
// (msgpack/v5 has no decoder for uintptr at all.)
func fastKind(k reflect.Kind) bool {
	switch k {
	case reflect.Bool, reflect.String,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

// simpleTagName returns the name in a msgpack tag of the forms "",
// "name", "name,omitempty" and ",omitempty" (an empty name meaning the Go
// name); false for any other tag. Names that tagparser would read in
// another way (quotes, colons, surrounding spaces) are refused.
func simpleTagName(tag string) (string, bool) {
	name, opts, hasOpts := strings.Cut(tag, ",")
	if hasOpts && opts != "omitempty" {
		return "", false
	}
	if name == "-" || strings.TrimSpace(name) != name || strings.ContainsAny(name, ":'\\") {
		return "", false
	}
	return name, true
}

// agrees checks the plan for struct type t against msgpack/v5 itself, on
// a map holding every field: a type or field type registered with
// msgpack.Register or msgpack.RegisterExtDecoder, which the plan cannot
// see, would decode otherwise. (A registration made after the plan is
// built goes unseen; msgpack.RegisterExt needs a type with an
// UnmarshalMsgpack method, which buildPlan refuses anyway.)
func (p *fastPlan) agrees(t reflect.Type) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	b := appendMapLen(nil, len(p.fields))
	for i, f := range p.fields {
		b = appendStr(b, f.name)
		switch f.kind {
		case reflect.Bool:
			b = append(b, 0xc3)
		case reflect.String:
			b = appendStr(b, "v"+f.name)
		case reflect.Float32:
			b = binary.BigEndian.AppendUint32(append(b, 0xca), math.Float32bits(float32(i)+0.5))
		case reflect.Float64:
			b = binary.BigEndian.AppendUint64(append(b, 0xcb), math.Float64bits(float64(i)+0.25))
		default:
			b = append(b, byte(i%100+1))
		}
	}
	want := reflect.New(t)
	if err := msgpack.Unmarshal(b, want.Interface()); err != nil {
		return false
	}
	got := reflect.New(t)
	vals, ok := p.decode(b, nil, false)
	if !ok {
		return false
	}
	p.store(got.UnsafePointer(), b, vals)
	return reflect.DeepEqual(want.Interface(), got.Interface())
}

func appendMapLen(b []byte, n int) []byte {
	if n < 16 {
		return append(b, 0x80|byte(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xdf), uint32(n))
}

// appendStr appends s encoded as msgpack/v5 encodes strings, in the
// shortest form.
func appendStr(b []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		b = append(b, 0xd9, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
	return append(b, s...)
}
