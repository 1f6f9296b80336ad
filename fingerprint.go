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
	"strings"
	"sync"
	"time"
	"unsafe"
)

// Fingerprint returns the default fingerprint of v: the hex SHA-256 of a
// canonical encoding of its value. Equal values give equal fingerprints in
// every process and run, whatever the order of map iteration.
//
// The encoding walks v by reflection. It covers booleans, numbers, strings,
// slices, arrays, maps (entries sorted by their encoding: by key, then by
// value for keys that encode alike, such as NaNs), pointers (followed),
// interfaces (tagged with the dynamic type) and structs. A struct is
// encoded as its exported fields by name: sorted in the byte order of their
// Go names, not in declaration order, so reordering the fields of a struct
// keeps its fingerprints, as changing a field from int32 to int64 does. The
// exported fields of embedded structs are included, and sorted with the
// others, even when the embedded type is unexported; fields of equal name
// (promoted from different embedded structs) keep their declaration order.
// A field tagged `idem:"-"` is left out. A time.Time counts as its instant,
// whatever its location. Other types that implement
// encoding.BinaryMarshaler or encoding.TextMarshaler, on the value or the
// pointer (big.Int, netip.Addr, UUIDs), are encoded with it. Integers of any
// size encode by value. A nil slice or map differs from an empty one, and
// -0.0 from 0.0. The field order of each struct type is worked out once and
// cached for the life of the process.
//
// Unexported fields are not part of the fingerprint. A struct that has
// unexported fields but no exported one and no marshaler (an opaque type)
// gives ErrFingerprint rather than a fingerprint that ignores its contents,
// as do funcs, channels, unsafe pointers, pointer cycles, values nested
// more than 10,000 levels deep, and marshaler types reached through an
// unexported field. Use WithFingerprint for such requests.
func Fingerprint(v any) (string, error) {
	e := canonPool.Get().(*canon)
	err := e.value(reflect.ValueOf(v), 0)
	var fp string
	if err == nil {
		fp = hashHex(e.buf)
	}
	e.release()
	return fp, err
}

func hashHex(b []byte) string {
	sum := sha256.Sum256(b)
	var h [2 * sha256.Size]byte
	hex.Encode(h[:], sum[:])
	return string(h[:])
}

const (
	// maxDepth bounds nesting, as encoding/json does: each pointer,
	// interface, struct (and embedded struct), slice or array element, and
	// map key or value is one level, so a linked list costs two levels a
	// node.
	maxDepth = 10000
	// cycleCheckDepth is the depth past which the walk keeps the pointers,
	// maps and slices on its current path (canon.seen), as encoding/json's
	// ptrSeen does, and reports a cycle when it meets one of them again.
	// A cycle goes on for ever, so it is caught once its second round is
	// past this depth; values nested less deeply, nearly all requests, cost
	// nothing.
	cycleCheckDepth = 100
	// maxPooledBuf is the largest buffer kept for reuse after a call, so
	// that one huge request does not pin its encoding in memory.
	maxPooledBuf = 64 << 10
)

var (
	timeType           = reflect.TypeFor[time.Time]()
	binaryMarshalerTyp = reflect.TypeFor[encoding.BinaryMarshaler]()
	textMarshalerTyp   = reflect.TypeFor[encoding.TextMarshaler]()
)

// canon appends a self-delimiting encoding of a value to buf: every item
// starts with a tag byte, and variable-length items with their length.
//
// The encoding is prefix-free: no encoding of a value is a proper prefix of
// the encoding of another. It can be read back left to right without
// knowing the type, since the tag says what follows: nothing ('0', 'T',
// 'F'); a fixed number of bytes ('f', 'c'); varints, which end with the
// first byte whose high bit is clear ('i', 'u', 't'); a length and that many
// bytes ('s', 'B', 'M', 'X'); a count and that many items, two an entry for
// a map ('l', 'm'); one item ('p'); a type name and an item ('I'); or, for a
// struct ('S'), fields, each 'n', a name and an item, ended by 'E', which
// cannot start a field. So, by induction on the nesting, a reader knows
// where an encoding ends from its bytes alone; if one encoding were a prefix
// of another, the reader would stop at the same point in both, so they are
// the same.
type canon struct {
	buf     []byte
	spans   []span  // entries of the maps being encoded, a stack shared by nested maps
	scratch []byte  // map entries being put in order
	leaves  []leaf  // fields of recursively embedded structs being collected, a stack
	seen    pathSet // past cycleCheckDepth, the pointers, maps and slices on the path
}

// canonPool reuses encoders, and their buffers, across calls.
var canonPool = sync.Pool{New: func() any { return &canon{buf: make([]byte, 0, 256)} }}

// release returns e to canonPool, unless its buffer has grown too large.
func (e *canon) release() {
	if cap(e.buf) > maxPooledBuf || cap(e.scratch) > maxPooledBuf {
		return
	}
	e.buf = e.buf[:0]
	e.spans = e.spans[:0]
	e.scratch = e.scratch[:0]
	e.leaves = nil // they hold the caller's values
	e.seen = nil
	canonPool.Put(e)
}

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

func errTooDeep() error {
	return fmt.Errorf("%w: nested deeper than %d levels", ErrFingerprint, maxDepth)
}

func (e *canon) value(v reflect.Value, depth int) error {
	if depth > maxDepth {
		return errTooDeep()
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
		return e.ref(v, depth)
	case reflect.Array:
		return e.list(v, depth)
	case reflect.Map:
		if v.IsNil() {
			e.nilValue()
			return nil
		}
		return e.ref(v, depth)
	case reflect.Pointer:
		if v.IsNil() {
			e.nilValue()
			return nil
		}
		e.tag('p')
		return e.ref(v, depth)
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

// ref encodes what v, a non-nil pointer, map or slice, refers to. Past
// cycleCheckDepth, it keeps v in e.seen while it does.
func (e *canon) ref(v reflect.Value, depth int) error {
	if depth <= cycleCheckDepth {
		return e.refContents(v, depth)
	}
	k, err := e.seen.enter(v)
	if err != nil {
		return err
	}
	err = e.refContents(v, depth)
	delete(e.seen, k)
	return err
}

func (e *canon) refContents(v reflect.Value, depth int) error {
	switch v.Kind() {
	case reflect.Pointer:
		return e.value(v.Elem(), depth+1)
	case reflect.Map:
		return e.mapValue(v, depth)
	default:
		return e.list(v, depth)
	}
}

// pathSet holds the pointers, maps and slices on the path from the root to
// the value being encoded. A pointer is known by its type as well as its
// address, since a struct and its first field share an address; a slice by
// its length as well, as in encoding/json.
type pathSet map[pathKey]struct{}

type pathKey struct {
	t   reflect.Type
	ptr unsafe.Pointer
	len int
}

// enter adds v to the path, or reports a cycle if v is on it already.
func (s *pathSet) enter(v reflect.Value) (pathKey, error) {
	k := pathKey{t: v.Type(), ptr: v.UnsafePointer()}
	if v.Kind() == reflect.Slice {
		k.len = v.Len()
	}
	if _, ok := (*s)[k]; ok {
		return k, fmt.Errorf("%w: pointer cycle through %s", ErrFingerprint, k.t)
	}
	if *s == nil {
		*s = make(pathSet)
	}
	(*s)[k] = struct{}{}
	return k, nil
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
	p := planFor(v.Type())
	e.tag('S')
	var n int
	var err error
	if p.recursive {
		n, err = e.collectedFields(v, p, depth)
	} else {
		n, err = e.plannedFields(v, p, depth)
	}
	if err != nil {
		return err
	}
	if n == 0 && p.unexported {
		return fmt.Errorf("%w: %s has no exported fields and no marshaler (an opaque type)", ErrFingerprint, v.Type())
	}
	e.tag('E')
	return nil
}

// plannedFields encodes the fields of struct v in the order of its plan,
// and returns how many it encoded.
func (e *canon) plannedFields(v reflect.Value, p *structPlan, depth int) (int, error) {
	n := 0
	for i := range p.fields {
		f := &p.fields[i]
		fv, ok := f.resolve(v)
		if !ok {
			continue
		}
		e.buf = append(e.buf, f.head...)
		if err := e.value(fv, depth+len(f.index)); err != nil {
			return 0, err
		}
		n++
	}
	return n, nil
}

// collectedFields encodes the fields of struct v, whose type embeds itself
// through a pointer, so that its fields are known only at run time: it
// collects them in declaration order, depth first, and sorts them by name
// as a plan would have. It returns how many it encoded.
func (e *canon) collectedFields(v reflect.Value, p *structPlan, depth int) (int, error) {
	base := len(e.leaves)
	if err := e.collect(v, p, depth); err != nil {
		return 0, err
	}
	leaves := e.leaves[base:]
	slices.SortStableFunc(leaves, func(a, b leaf) int { return strings.Compare(a.f.name, b.f.name) })
	// Nested structs push their leaves after these and pop them before
	// returning, so leaves stays valid even if e.leaves grows.
	for _, l := range leaves {
		e.buf = append(e.buf, l.f.head...)
		if err := e.value(l.v, l.depth); err != nil {
			return 0, err
		}
	}
	n := len(leaves)
	e.leaves = e.leaves[:base]
	return n, nil
}

// leaf is a field collected by collectedFields, with its depth.
type leaf struct {
	f     *planField
	v     reflect.Value
	depth int
}

// collect appends to e.leaves the fields of struct v in declaration order,
// expanding its recursively embedded pointers.
func (e *canon) collect(v reflect.Value, p *structPlan, depth int) error {
	for i := range p.decl {
		f := &p.decl[i]
		fv, ok := f.resolve(v)
		if !ok {
			continue
		}
		d := depth + len(f.index)
		if !f.embedded {
			e.leaves = append(e.leaves, leaf{f, fv, d})
			continue
		}
		if fv.IsNil() {
			continue
		}
		if d > maxDepth {
			return errTooDeep()
		}
		if d <= cycleCheckDepth {
			if err := e.collect(fv.Elem(), planFor(fv.Type().Elem()), d); err != nil {
				return err
			}
			continue
		}
		k, err := e.seen.enter(fv)
		if err != nil {
			return err
		}
		if err := e.collect(fv.Elem(), planFor(fv.Type().Elem()), d); err != nil {
			return err
		}
		// Any cycle through fv that the fields collected here lead round
		// passes through a pointer, map or slice of theirs, which is on the
		// path when they are encoded; so fv can leave it now.
		delete(e.seen, k)
	}
	return nil
}

// structPlan is how the fields of a struct type are encoded, worked out
// once per type by buildPlan.
type structPlan struct {
	// fields are the exported fields and those promoted from unexported
	// embedded structs, sorted by name, equal names in declaration order
	// (depth first).
	fields []planField
	// decl are the same fields in declaration order, depth first. For a
	// recursive plan, they include the embedded pointers to expand.
	decl []planField
	// recursive plans embed, through a pointer, a struct type that embeds
	// this one (type node struct{ *node; X int }): their fields are
	// collected and sorted by collectedFields on every call.
	recursive bool
	// unexported records that the type has unexported fields, so that
	// encoding none of its fields means it is opaque.
	unexported bool
}

// planField is a field of a struct plan.
type planField struct {
	name string
	// index leads to the field from the struct, as for
	// reflect.Value.FieldByIndex: all but the last step are unexported
	// embedded fields, structs or pointers to structs.
	index []int
	// head is the field's tag and name: 'n', the length, the name.
	head []byte
	// embedded is set for an embedded pointer in a recursive plan, whose
	// fields collect expands at run time.
	embedded bool
}

// resolve returns the field f of struct v, or false if it is promoted
// through a nil embedded pointer.
func (f *planField) resolve(v reflect.Value) (reflect.Value, bool) {
	last := len(f.index) - 1
	for _, i := range f.index[:last] {
		v = v.Field(i)
		if v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return reflect.Value{}, false
			}
			v = v.Elem()
		}
	}
	return v.Field(f.index[last]), true
}

// structPlans caches the plan of every struct type fingerprinted, keyed by
// reflect.Type, as encoding/json caches its encoders: a plan is worked out,
// and its fields sorted, once per type rather than on every call. The set
// of struct types a program fingerprints is fixed by its code, so the cache
// stays small.
var structPlans sync.Map // map[reflect.Type]*structPlan

func planFor(t reflect.Type) *structPlan {
	if p, ok := structPlans.Load(t); ok {
		return p.(*structPlan)
	}
	p, _ := structPlans.LoadOrStore(t, buildPlan(t))
	return p.(*structPlan)
}

func buildPlan(t reflect.Type) *structPlan {
	p := &structPlan{unexported: hasUnexported(t)}
	p.decl = flatten(nil, t, nil, []reflect.Type{t}, &p.recursive)
	if !p.recursive {
		p.fields = slices.Clone(p.decl)
		slices.SortStableFunc(p.fields, func(a, b planField) int { return strings.Compare(a.name, b.name) })
	}
	return p
}

// flatten appends to out the exported fields of struct type t, reached by
// prefix, and those promoted from its unexported embedded structs, in
// declaration order, depth first. stack holds the struct types being
// flattened: an embedded pointer to one of them is recursive, and is
// appended as is for collect to expand.
func flatten(out []planField, t reflect.Type, prefix []int, stack []reflect.Type, recursive *bool) []planField {
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Tag.Get("idem") == "-" {
			continue
		}
		index := append(slices.Clip(prefix), i)
		if f.Anonymous && !f.IsExported() {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			switch {
			case ft.Kind() != reflect.Struct:
			case slices.Contains(stack, ft): // only through a pointer
				out = append(out, planField{index: index, embedded: true})
				*recursive = true
			default:
				out = flatten(out, ft, index, append(slices.Clip(stack), ft), recursive)
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		head := binary.AppendUvarint([]byte{'n'}, uint64(len(f.Name)))
		out = append(out, planField{name: f.Name, index: index, head: append(head, f.Name...)})
	}
	return out
}

func hasUnexported(t reflect.Type) bool {
	for i := range t.NumField() {
		if !t.Field(i).IsExported() {
			return true
		}
	}
	return false
}

// span is where a map entry's encoding lies in canon.buf.
type span struct{ from, to int }

// mapValue encodes the entries of a map sorted by their encoding, so that
// the result does not depend on iteration order. Entries are compared
// whole, key then value. Since the encoding is prefix-free (see canon), two
// keys that encode differently differ at a byte within both, which decides
// the comparison before any value byte: entries sort by key, as they would
// by their keys alone. Only keys that encode alike (NaNs, pointers to equal
// values, structs that differ in fields left out) are ordered by value; and
// entries that compare equal are the same bytes, so however they are
// ordered the encoding is the same.
func (e *canon) mapValue(v reflect.Value, depth int) error {
	n := v.Len()
	e.header('m', n)
	start := len(e.buf)
	base := len(e.spans)
	// SetIterKey and SetIterValue reuse k and val instead of allocating a
	// copy of every entry.
	k := reflect.New(v.Type().Key()).Elem()
	val := reflect.New(v.Type().Elem()).Elem()
	var it reflect.MapIter
	it.Reset(v)
	for it.Next() {
		from := len(e.buf)
		k.SetIterKey(&it)
		if err := e.value(k, depth+1); err != nil {
			return err
		}
		val.SetIterValue(&it)
		if err := e.value(val, depth+1); err != nil {
			return err
		}
		e.spans = append(e.spans, span{from, len(e.buf)})
	}
	spans := e.spans[base:]
	if len(spans) != n {
		// Only a marshaler that changes the map, or a data race, can do it.
		return fmt.Errorf("%w: %s changed while being fingerprinted", ErrFingerprint, v.Type())
	}
	slices.SortFunc(spans, func(a, b span) int {
		return bytes.Compare(e.buf[a.from:a.to], e.buf[b.from:b.to])
	})
	if !slices.IsSortedFunc(spans, func(a, b span) int { return a.from - b.from }) {
		e.scratch = e.scratch[:0]
		for _, s := range spans {
			e.scratch = append(e.scratch, e.buf[s.from:s.to]...)
		}
		copy(e.buf[start:], e.scratch)
	}
	e.spans = e.spans[:base]
	return nil
}
