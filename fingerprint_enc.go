package idem

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"sync"
)

// encoderFunc appends the encoding of v, a value of the type it was made
// for, found depth levels down. Its callers check that depth is at most
// maxDepth, most of them by calling it through canon.encode or
// canon.value.
type encoderFunc func(e *canon, v reflect.Value, depth int) error

// encoders caches the encoder of every type fingerprinted, as encoding/json
// caches its encoders: the type is looked at (its kind, its marshalers, the
// fields of a struct) once rather than on every value. The set of types a
// program fingerprints is fixed by its code, so the cache stays small.
var encoders sync.Map // map[reflect.Type]encoderFunc

// typeEncoder returns the encoder of t, building and caching it on first
// use.
func typeEncoder(t reflect.Type) encoderFunc {
	if f, ok := encoders.Load(t); ok {
		return f.(encoderFunc)
	}
	// A recursive type meets itself while its encoder is being built. As
	// encoding/json does, store a placeholder first, which waits for the
	// real encoder, so that building ends; and so that a goroutine that
	// meets the type meanwhile waits for the encoder being built rather
	// than build another.
	var (
		wg sync.WaitGroup
		f  encoderFunc
	)
	wg.Add(1)
	fi, loaded := encoders.LoadOrStore(t, encoderFunc(func(e *canon, v reflect.Value, depth int) error {
		wg.Wait()
		return f(e, v, depth)
	}))
	if loaded {
		return fi.(encoderFunc)
	}
	f = newTypeEncoder(t)
	wg.Done()
	encoders.Store(t, f)
	return f
}

func newTypeEncoder(t reflect.Type) encoderFunc {
	if t == timeType {
		return encodeTime
	}
	k := t.Kind()
	if k != reflect.Pointer && k != reflect.Interface && marshals(t) && !promoted(t) {
		return encodeMarshaled
	}
	switch k {
	case reflect.Bool:
		return encodeBool
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return encodeInt
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return encodeUint
	case reflect.Float32, reflect.Float64:
		return encodeFloat
	case reflect.Complex64, reflect.Complex128:
		return encodeComplex
	case reflect.String:
		return encodeString
	case reflect.Slice:
		return newSliceEncoder(t)
	case reflect.Array:
		return newListEncoder(t)
	case reflect.Map:
		return newMapEncoder(t)
	case reflect.Pointer:
		return newPointerEncoder(t)
	case reflect.Interface:
		return encodeInterface
	case reflect.Struct:
		return newStructEncoder(t)
	default:
		return func(*canon, reflect.Value, int) error {
			return fmt.Errorf("%w: unsupported type %s", ErrFingerprint, t)
		}
	}
}

func encodeBool(e *canon, v reflect.Value, _ int) error {
	e.boolean(v.Bool())
	return nil
}

func encodeInt(e *canon, v reflect.Value, _ int) error {
	e.tag('i')
	e.int(v.Int())
	return nil
}

func encodeUint(e *canon, v reflect.Value, _ int) error {
	e.tag('u')
	e.uint(v.Uint())
	return nil
}

func encodeFloat(e *canon, v reflect.Value, _ int) error {
	e.tag('f')
	e.float(v.Float())
	return nil
}

func encodeComplex(e *canon, v reflect.Value, _ int) error {
	c := v.Complex()
	e.tag('c')
	e.float(real(c))
	e.float(imag(c))
	return nil
}

func encodeString(e *canon, v reflect.Value, _ int) error {
	e.tag('s')
	e.string(v.String())
	return nil
}

// encodeInterface encodes a non-nil interface as its dynamic type's name
// and value.
func encodeInterface(e *canon, v reflect.Value, depth int) error {
	if v.IsNil() {
		e.nilValue()
		return nil
	}
	elem := v.Elem()
	e.tag('I')
	e.string(elem.Type().String())
	return e.value(elem, depth+1)
}

func newPointerEncoder(t reflect.Type) encoderFunc {
	elem := typeEncoder(t.Elem())
	contents := func(e *canon, v reflect.Value, depth int) error {
		return e.encode(elem, v.Elem(), depth+1)
	}
	return func(e *canon, v reflect.Value, depth int) error {
		if v.IsNil() {
			e.nilValue()
			return nil
		}
		e.tag('p')
		return e.ref(v, depth, contents)
	}
}

// newSliceEncoder returns the encoder of slice type t: its bytes for a
// slice of bytes, else a list.
func newSliceEncoder(t reflect.Type) encoderFunc {
	if t.Elem().Kind() == reflect.Uint8 {
		return func(e *canon, v reflect.Value, _ int) error {
			if v.IsNil() {
				e.nilValue()
				return nil
			}
			e.tag('B')
			e.bytes(v.Bytes())
			return nil
		}
	}
	list := newListEncoder(t)
	return func(e *canon, v reflect.Value, depth int) error {
		if v.IsNil() {
			e.nilValue()
			return nil
		}
		return e.ref(v, depth, list)
	}
}

// newListEncoder returns the encoder of the elements of slice or array
// type t.
func newListEncoder(t reflect.Type) encoderFunc {
	elem := typeEncoder(t.Elem())
	return func(e *canon, v reflect.Value, depth int) error {
		n := v.Len()
		e.header('l', n)
		for i := range n {
			if err := e.encode(elem, v.Index(i), depth+1); err != nil {
				return err
			}
		}
		return nil
	}
}

// fieldEncoder is a field of a struct plan, with the encoder of its type.
type fieldEncoder struct {
	planField
	enc encoderFunc
	// plain is the kind that the struct encoder encodes itself, saving a
	// call to enc: bool, int64 for every signed integer, uint64 for every
	// unsigned one, or string, for types without a marshaler; else
	// reflect.Invalid.
	plain reflect.Kind
}

// plainKind returns the kind of field type t for fieldEncoder.plain.
func plainKind(t reflect.Type) reflect.Kind {
	k := t.Kind()
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		k = reflect.Int64
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		k = reflect.Uint64
	case reflect.Bool, reflect.String:
	default:
		return reflect.Invalid
	}
	if marshals(t) {
		return reflect.Invalid
	}
	return k
}

// newStructEncoder returns the encoder of struct type t, which encodes its
// fields as its plan says.
func newStructEncoder(t reflect.Type) encoderFunc {
	p := planFor(t)
	if p.recursive {
		return func(e *canon, v reflect.Value, depth int) error {
			e.tag('S')
			n, err := e.collectedFields(v, p, depth)
			if err != nil {
				return err
			}
			if n == 0 && p.unexported {
				return errOpaque(t)
			}
			e.tag('E')
			return nil
		}
	}
	fields := make([]fieldEncoder, len(p.fields))
	for i, f := range p.fields {
		fields[i] = fieldEncoder{f, typeEncoder(f.typ), plainKind(f.typ)}
	}
	return func(e *canon, v reflect.Value, depth int) error {
		e.tag('S')
		n := 0
		for i := range fields {
			f := &fields[i]
			var fv reflect.Value
			if len(f.index) == 1 {
				fv = v.Field(f.index[0])
			} else if rv, ok := f.resolve(v); ok {
				fv = rv
			} else {
				continue
			}
			e.buf = append(e.buf, f.head...)
			d := depth + len(f.index)
			if d > maxDepth {
				return errTooDeep()
			}
			switch f.plain {
			case reflect.String:
				e.tag('s')
				e.string(fv.String())
			case reflect.Int64:
				e.tag('i')
				e.int(fv.Int())
			case reflect.Uint64:
				e.tag('u')
				e.uint(fv.Uint())
			case reflect.Bool:
				e.boolean(fv.Bool())
			default:
				if err := f.enc(e, fv, d); err != nil {
					return err
				}
			}
			n++
		}
		if n == 0 && p.unexported {
			return errOpaque(t)
		}
		e.tag('E')
		return nil
	}
}

// newMapEncoder returns the encoder of map type t. Its entries are sorted
// by their encoding, so that the result does not depend on iteration
// order. Entries are compared whole, key then value. Since the encoding is
// prefix-free (see canon), two keys that encode differently differ at a
// byte within both, which decides the comparison before any value byte:
// entries sort by key, as they would by their keys alone. Only keys that
// encode alike (NaNs, pointers to equal values, structs that differ in
// fields left out) are ordered by value; and entries that compare equal are
// the same bytes, so however they are ordered the encoding is the same.
func newMapEncoder(t reflect.Type) encoderFunc {
	contents := newMapContents(t)
	return func(e *canon, v reflect.Value, depth int) error {
		if v.IsNil() {
			e.nilValue()
			return nil
		}
		return e.ref(v, depth, contents)
	}
}

var (
	stringType  = reflect.TypeFor[string]()
	intType     = reflect.TypeFor[int]()
	int64Type   = reflect.TypeFor[int64]()
	float64Type = reflect.TypeFor[float64]()
	boolType    = reflect.TypeFor[bool]()
	anyType     = reflect.TypeFor[any]()
)

// newMapContents returns the encoder of the entries of map type t: one that
// ranges over the map natively for the common maps from strings to
// strings, ints, int64s, float64s, bools or anys, else one that ranges over
// it by reflection.
func newMapContents(t reflect.Type) encoderFunc {
	general := newReflectMapContents(t)
	if t.Key() != stringType {
		return general
	}
	switch t.Elem() {
	case stringType:
		return nativeMapContents(t, putString, general)
	case intType:
		return nativeMapContents(t, putInt[int], general)
	case int64Type:
		return nativeMapContents(t, putInt[int64], general)
	case float64Type:
		return nativeMapContents(t, putFloat64, general)
	case boolType:
		return nativeMapContents(t, putBool, general)
	case anyType:
		return nativeMapContents(t, putAny, general)
	}
	return general
}

// newReflectMapContents returns the encoder of the entries of map type t
// that ranges over the map by reflection.
func newReflectMapContents(t reflect.Type) encoderFunc {
	kt, vt := t.Key(), t.Elem()
	key, elem := typeEncoder(kt), typeEncoder(vt)
	return func(e *canon, v reflect.Value, depth int) error {
		n := v.Len()
		e.header('m', n)
		start, base := len(e.buf), len(e.spans)
		// SetIterKey and SetIterValue reuse k and val instead of allocating
		// a copy of every entry.
		k, val := e.takeScratch(kt), e.takeScratch(vt)
		var it reflect.MapIter
		it.Reset(v)
		for it.Next() {
			from := len(e.buf)
			k.SetIterKey(&it)
			if err := e.encode(key, k, depth+1); err != nil {
				return err
			}
			val.SetIterValue(&it)
			if err := e.encode(elem, val, depth+1); err != nil {
				return err
			}
			e.spans = append(e.spans, span{from, len(e.buf)})
		}
		e.putScratch(k)
		e.putScratch(val)
		return e.sortEntries(start, base, n, t)
	}
}

// nativeMapContents returns the encoder of the entries of map type t,
// whose keys are strings and whose values, of type V, put encodes. It
// ranges over the map as a map[string]V, and hands the maps it cannot
// have as one, those reached through unexported fields, to general.
func nativeMapContents[V any](t reflect.Type, put func(*canon, V, int) error, general encoderFunc) encoderFunc {
	return func(e *canon, v reflect.Value, depth int) error {
		if !v.CanInterface() {
			return general(e, v, depth)
		}
		m := asMap[map[string]V](v)
		n := len(m)
		e.header('m', n)
		if n > 0 && depth+1 > maxDepth {
			return errTooDeep()
		}
		start, base := len(e.buf), len(e.spans)
		for k, x := range m {
			from := len(e.buf)
			e.tag('s')
			e.string(k)
			if err := put(e, x, depth+1); err != nil {
				return err
			}
			e.spans = append(e.spans, span{from, len(e.buf)})
		}
		return e.sortEntries(start, base, n, t)
	}
}

func putString(e *canon, s string, _ int) error {
	e.tag('s')
	e.string(s)
	return nil
}

func putInt[I int | int64](e *canon, i I, _ int) error {
	e.tag('i')
	e.int(int64(i))
	return nil
}

func putFloat64(e *canon, f float64, _ int) error {
	e.tag('f')
	e.float(f)
	return nil
}

func putBool(e *canon, b bool, _ int) error {
	e.boolean(b)
	return nil
}

// putAny encodes x as encodeInterface does an interface value.
func putAny(e *canon, x any, depth int) error {
	if x == nil {
		e.nilValue()
		return nil
	}
	v := reflect.ValueOf(x)
	e.tag('I')
	e.string(v.Type().String())
	return e.value(v, depth+1)
}

const (
	// maxFree is how many map keys and values canon.free keeps.
	maxFree = 16
	// maxFreeSize is the size of the largest key or value it keeps.
	maxFreeSize = 1 << 10
)

// takeScratch returns a settable zero value of type t: one kept in e.free
// by putScratch if there is one, else a new one.
func (e *canon) takeScratch(t reflect.Type) reflect.Value {
	for i := len(e.free) - 1; i >= 0; i-- {
		if v := e.free[i]; v.Type() == t {
			last := len(e.free) - 1
			e.free[i] = e.free[last]
			e.free[last] = reflect.Value{}
			e.free = e.free[:last]
			return v
		}
	}
	return reflect.New(t).Elem()
}

// putScratch keeps v, from takeScratch, in e.free for a later map, unless
// there are enough there or v is large. It zeroes v first, so that
// canonPool does not keep the caller's values alive.
func (e *canon) putScratch(v reflect.Value) {
	if len(e.free) < maxFree && v.Type().Size() <= maxFreeSize {
		v.SetZero()
		e.free = append(e.free, v)
	}
}

// span is where a map entry's encoding lies in canon.buf.
type span struct{ from, to int }

// sortEntries puts in order the encodings of the n entries of a map of type
// t, which start at e.buf[start], and whose spans are e.spans[base:]; then
// it pops their spans.
func (e *canon) sortEntries(start, base, n int, t reflect.Type) error {
	spans := e.spans[base:]
	if len(spans) != n {
		// Only a marshaler that changes the map, or a data race, can do it.
		return fmt.Errorf("%w: %s changed while being fingerprinted", ErrFingerprint, t)
	}
	if e.sortSpans(spans) {
		e.scratch = e.scratch[:0]
		for _, s := range spans {
			e.scratch = append(e.scratch, e.buf[s.from:s.to]...)
		}
		copy(e.buf[start:], e.scratch)
	}
	e.spans = e.spans[:base]
	return nil
}

// maxInsertionSort is the number of map entries up to which sortSpans
// sorts by insertion, faster than slices.SortFunc on a few entries.
const maxInsertionSort = 12

// sortSpans sorts spans by the bytes of e.buf they cover, and reports
// whether that changed their order.
func (e *canon) sortSpans(spans []span) bool {
	buf := e.buf
	cmp := func(a, b span) int { return bytes.Compare(buf[a.from:a.to], buf[b.from:b.to]) }
	if len(spans) > maxInsertionSort {
		slices.SortFunc(spans, cmp)
		return !slices.IsSortedFunc(spans, func(a, b span) int { return a.from - b.from })
	}
	moved := false
	for i := 1; i < len(spans); i++ {
		for j := i; j > 0 && cmp(spans[j-1], spans[j]) > 0; j-- {
			spans[j-1], spans[j] = spans[j], spans[j-1]
			moved = true
		}
	}
	return moved
}
