package idem

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"reflect"
	"slices"
	"time"
)

// Fingerprint returns the default fingerprint of v: the hex SHA-256 of a
// canonical encoding of its value. Equal values give equal fingerprints in
// every process and run, whatever the order of map iteration.
//
// The encoding walks v by reflection. It covers booleans, numbers, strings,
// slices, arrays, maps (entries sorted by encoded key), pointers (followed),
// interfaces (tagged with the dynamic type) and structs: their exported
// fields by name, and the exported fields of embedded structs even when the
// embedded type is unexported; a field tagged `idem:"-"` is left out. A
// time.Time counts as its instant, whatever its location. Other types that
// implement encoding.BinaryMarshaler or encoding.TextMarshaler, on the value
// or the pointer (big.Int, netip.Addr, UUIDs), are encoded with it. Integers
// of any size encode by value, so changing a field from int32 to int64 keeps
// fingerprints. A nil slice or map differs from an empty one, and -0.0 from
// 0.0.
//
// Unexported fields are not part of the fingerprint. A struct that has
// unexported fields but no exported one and no marshaler (an opaque type)
// gives ErrFingerprint rather than a fingerprint that ignores its contents,
// as do funcs, channels, unsafe pointers, pointer cycles, and marshaler types
// reached through an unexported field. Use WithFingerprint for such requests.
func Fingerprint(v any) (string, error) {
	e := canon{buf: make([]byte, 0, 256)}
	if err := e.value(reflect.ValueOf(v), 0); err != nil {
		return "", err
	}
	return hashHex(e.buf), nil
}

func hashHex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// maxDepth bounds nesting, which also ends pointer cycles.
const maxDepth = 100

var (
	timeType           = reflect.TypeFor[time.Time]()
	binaryMarshalerTyp = reflect.TypeFor[encoding.BinaryMarshaler]()
	textMarshalerTyp   = reflect.TypeFor[encoding.TextMarshaler]()
)

// canon appends a self-delimiting encoding of a value to buf: every item
// starts with a tag byte, and variable-length items with their length.
type canon struct{ buf []byte }

func (e *canon) tag(t byte)      { e.buf = append(e.buf, t) }
func (e *canon) uint(u uint64)   { e.buf = binary.AppendUvarint(e.buf, u) }
func (e *canon) int(i int64)     { e.buf = binary.AppendVarint(e.buf, i) }
func (e *canon) float(f float64) { e.buf = binary.BigEndian.AppendUint64(e.buf, math.Float64bits(f)) }
func (e *canon) bytes(b []byte)  { e.uint(uint64(len(b))); e.buf = append(e.buf, b...) }
func (e *canon) string(s string) { e.uint(uint64(len(s))); e.buf = append(e.buf, s...) }
func (e *canon) nilValue()       { e.tag('0') }
func (e *canon) boolean(b bool) {
	if b {
		e.tag('T')
	} else {
		e.tag('F')
	}
}
func (e *canon) header(t byte, n int) { e.tag(t); e.uint(uint64(n)) }

func (e *canon) value(v reflect.Value, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("%w: nested deeper than %d (a pointer cycle?)", ErrFingerprint, maxDepth)
	}
	if !v.IsValid() {
		e.nilValue()
		return nil
	}
	t := v.Type()
	if t == timeType || t.Kind() != reflect.Pointer && t.Kind() != reflect.Interface && marshals(t) && !promoted(t) {
		return e.marshaled(v)
	}
	switch t.Kind() {
	case reflect.Bool:
		e.boolean(v.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		e.tag('i')
		e.int(v.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		e.tag('u')
		e.uint(v.Uint())
	case reflect.Float32, reflect.Float64:
		e.tag('f')
		e.float(v.Float())
	case reflect.Complex64, reflect.Complex128:
		e.tag('c')
		e.float(real(v.Complex()))
		e.float(imag(v.Complex()))
	case reflect.String:
		e.tag('s')
		e.string(v.String())
	case reflect.Slice:
		if v.IsNil() {
			e.nilValue()
			return nil
		}
		if t.Elem().Kind() == reflect.Uint8 {
			e.tag('B')
			e.bytes(v.Bytes())
			return nil
		}
		return e.list(v, depth)
	case reflect.Array:
		return e.list(v, depth)
	case reflect.Map:
		if v.IsNil() {
			e.nilValue()
			return nil
		}
		return e.mapValue(v, depth)
	case reflect.Pointer:
		if v.IsNil() {
			e.nilValue()
			return nil
		}
		e.tag('p')
		return e.value(v.Elem(), depth+1)
	case reflect.Interface:
		if v.IsNil() {
			e.nilValue()
			return nil
		}
		e.tag('I')
		e.string(v.Elem().Type().String())
		return e.value(v.Elem(), depth+1)
	case reflect.Struct:
		return e.structValue(v, depth)
	default:
		return fmt.Errorf("%w: unsupported type %s", ErrFingerprint, t)
	}
	return nil
}

func (e *canon) list(v reflect.Value, depth int) error {
	e.header('l', v.Len())
	for i := range v.Len() {
		if err := e.value(v.Index(i), depth+1); err != nil {
			return err
		}
	}
	return nil
}

// marshals reports whether t or *t implements a marshaler the encoding uses.
func marshals(t reflect.Type) bool {
	pt := reflect.PointerTo(t)
	return t.Implements(binaryMarshalerTyp) || t.Implements(textMarshalerTyp) ||
		pt.Implements(binaryMarshalerTyp) || pt.Implements(textMarshalerTyp)
}

// promoted reports whether struct type t gets a marshaler from an embedded
// field, as struct{ time.Time; Amount int } gets time.Time's: such a
// marshaler encodes the embedded value only, so the fields are walked
// instead.
func promoted(t reflect.Type) bool {
	if t.Kind() != reflect.Struct {
		return false
	}
	for i := range t.NumField() {
		if f := t.Field(i); f.Anonymous && (f.Type == timeType || marshals(f.Type) || f.Type.Kind() == reflect.Pointer && marshals(f.Type.Elem())) {
			return true
		}
	}
	return false
}

// marshaled encodes a time.Time by its instant, and other values with their
// binary or text marshaler. A marshaler that panics gives ErrFingerprint.
func (e *canon) marshaled(v reflect.Value) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s: marshaler panicked: %v", ErrFingerprint, v.Type(), r)
		}
	}()
	t := v.Type()
	if !v.CanInterface() {
		return fmt.Errorf("%w: %s reached through an unexported field", ErrFingerprint, t)
	}
	if t == timeType {
		tm := v.Interface().(time.Time)
		e.tag('t')
		e.int(tm.Unix())
		e.int(int64(tm.Nanosecond()))
		return nil
	}
	if !v.CanAddr() { // for pointer-receiver methods
		c := reflect.New(t).Elem()
		c.Set(v)
		v = c
	}
	var b []byte
	switch m := v.Addr().Interface().(type) {
	case encoding.BinaryMarshaler:
		e.tag('M')
		b, err = m.MarshalBinary()
	case encoding.TextMarshaler:
		e.tag('X')
		b, err = m.MarshalText()
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrFingerprint, t, err)
	}
	e.bytes(b)
	return nil
}

func (e *canon) structValue(v reflect.Value, depth int) error {
	e.tag('S')
	n, err := e.fields(v, depth)
	if err != nil {
		return err
	}
	if n == 0 && hasUnexported(v.Type()) {
		return fmt.Errorf("%w: %s has no exported fields and no marshaler (an opaque type)", ErrFingerprint, v.Type())
	}
	e.tag('E')
	return nil
}

// fields encodes the exported fields of struct v, and those promoted from
// its unexported embedded structs, and returns how many it encoded.
func (e *canon) fields(v reflect.Value, depth int) (int, error) {
	if depth > maxDepth {
		return 0, fmt.Errorf("%w: nested deeper than %d (a pointer cycle?)", ErrFingerprint, maxDepth)
	}
	t := v.Type()
	n := 0
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Tag.Get("idem") == "-" {
			continue
		}
		if f.Anonymous && !f.IsExported() {
			fv := v.Field(i)
			if fv.Kind() == reflect.Pointer {
				if fv.IsNil() {
					continue
				}
				fv = fv.Elem()
			}
			if fv.Kind() == reflect.Struct {
				m, err := e.fields(fv, depth+1)
				if err != nil {
					return 0, err
				}
				n += m
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		e.tag('n')
		e.string(f.Name)
		if err := e.value(v.Field(i), depth+1); err != nil {
			return 0, err
		}
		n++
	}
	return n, nil
}

func hasUnexported(t reflect.Type) bool {
	for i := range t.NumField() {
		if !t.Field(i).IsExported() {
			return true
		}
	}
	return false
}

// mapValue encodes the entries of a map sorted by the encoding of their keys,
// so that the result does not depend on iteration order.
func (e *canon) mapValue(v reflect.Value, depth int) error {
	start := len(e.buf)
	type span struct{ from, keyEnd, to int }
	spans := make([]span, 0, v.Len())
	// SetIterKey and SetIterValue reuse k and val instead of allocating a
	// copy of every entry.
	k := reflect.New(v.Type().Key()).Elem()
	val := reflect.New(v.Type().Elem()).Elem()
	it := v.MapRange()
	for it.Next() {
		s := span{from: len(e.buf)}
		k.SetIterKey(it)
		if err := e.value(k, depth+1); err != nil {
			return err
		}
		s.keyEnd = len(e.buf)
		val.SetIterValue(it)
		if err := e.value(val, depth+1); err != nil {
			return err
		}
		s.to = len(e.buf)
		spans = append(spans, s)
	}
	entries := slices.Clone(e.buf[start:])
	slices.SortFunc(spans, func(a, b span) int {
		return bytes.Compare(entries[a.from-start:a.keyEnd-start], entries[b.from-start:b.keyEnd-start])
	})
	e.buf = e.buf[:start]
	e.header('m', len(spans))
	for _, s := range spans {
		e.buf = append(e.buf, entries[s.from-start:s.to-start]...)
	}
	return nil
}
