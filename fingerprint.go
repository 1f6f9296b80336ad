package idem

import (
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
// -0.0 from 0.0. How each type is encoded, the field order of a struct type
// included, is worked out once and cached for the life of the process.
//
// Unexported fields are not part of the fingerprint. A struct that has
// unexported fields but no exported one and no marshaler (an opaque type)
// gives ErrFingerprint rather than a fingerprint that ignores its contents,
// as do funcs, channels, unsafe pointers, pointer cycles, values nested
// more than 10,000 levels deep, and marshaler types reached through an
// unexported field. Use WithFingerprint for such requests.
func Fingerprint(v any) (string, error) {
	var buf [2 * sha256.Size]byte
	b, err := appendFingerprint(buf[:0], v)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// appendFingerprint appends the fingerprint of v, the 64 hex digits that
// Fingerprint returns, to dst. On error, it returns dst as it was.
func appendFingerprint(dst []byte, v any) ([]byte, error) {
	e := canonPool.Get().(*canon)
	err := e.value(reflect.ValueOf(v), 0)
	if err == nil {
		dst = appendHashHex(dst, e.buf)
	}
	e.release()
	return dst, err
}

// appendFingerprintValue appends the default fingerprint of v to dst, as
// appendFingerprint(dst, v.Interface()) does.
func appendFingerprintValue(dst []byte, v reflect.Value) ([]byte, error) {
	e := canonPool.Get().(*canon)
	err := e.value(v, 0)
	if err == nil {
		dst = appendHashHex(dst, e.buf)
	}
	e.release()
	return dst, err
}

// hashHex returns the hex SHA-256 of b.
func hashHex(b []byte) string {
	var h [2 * sha256.Size]byte
	return string(appendHashHex(h[:0], b))
}

// appendHashHex appends the hex SHA-256 of b to dst.
func appendHashHex(dst, b []byte) []byte {
	sum := sha256.Sum256(b)
	return hex.AppendEncode(dst, sum[:])
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
	spans   []span          // entries of the maps being encoded, a stack shared by nested maps
	scratch []byte          // map entries being put in order
	leaves  []leaf          // fields of recursively embedded structs being collected, a stack
	seen    pathSet         // past cycleCheckDepth, the pointers, maps and slices on the path
	free    []reflect.Value // zeroed map keys and values for SetIterKey and SetIterValue to reuse

	// lastType is the type value met last, and lastEnc its encoder: they
	// spare value a lookup in encoders while the type repeats, as the
	// root's does from call to call.
	lastType reflect.Type
	lastEnc  encoderFunc
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
func (e *canon) bytes(b []byte)  { e.length(len(b)); e.buf = append(e.buf, b...) }
func (e *canon) string(s string) { e.length(len(s)); e.buf = append(e.buf, s...) }
func (e *canon) nilValue()       { e.tag('0') }
func (e *canon) boolean(b bool) {
	if b {
		e.tag('T')
	} else {
		e.tag('F')
	}
}
func (e *canon) header(t byte, n int) { e.tag(t); e.uint(uint64(n)) }

// length appends n as a uvarint, as uint does, with a shortcut for the
// lengths below 128, which take one byte.
func (e *canon) length(n int) {
	if n < 0x80 {
		e.buf = append(e.buf, byte(n))
		return
	}
	e.uint(uint64(n))
}

func errTooDeep() error {
	return fmt.Errorf("%w: nested deeper than %d levels", ErrFingerprint, maxDepth)
}

// value encodes v, whose type is known only at run time: the root, the
// dynamic value of an interface, a field collected by collectedFields.
func (e *canon) value(v reflect.Value, depth int) error {
	if depth > maxDepth {
		return errTooDeep()
	}
	if !v.IsValid() {
		e.nilValue()
		return nil
	}
	if t := v.Type(); t != e.lastType {
		e.lastType, e.lastEnc = t, typeEncoder(t)
	}
	return e.lastEnc(e, v, depth)
}

// encode encodes v with enc, the encoder of its type, after checking the
// depth.
func (e *canon) encode(enc encoderFunc, v reflect.Value, depth int) error {
	if depth > maxDepth {
		return errTooDeep()
	}
	return enc(e, v, depth)
}

// ref encodes what v, a non-nil pointer, map or slice, refers to, with
// contents. Past cycleCheckDepth, it keeps v in e.seen while it does.
func (e *canon) ref(v reflect.Value, depth int, contents encoderFunc) error {
	if depth <= cycleCheckDepth {
		return contents(e, v, depth)
	}
	k, err := e.seen.enter(v)
	if err != nil {
		return err
	}
	err = contents(e, v, depth)
	delete(e.seen, k)
	return err
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

// errUnexported is the error for a time.Time or a marshaler type reached
// through an unexported field, whose value cannot be had.
func errUnexported(t reflect.Type) error {
	return fmt.Errorf("%w: %s reached through an unexported field", ErrFingerprint, t)
}

// encodeTime encodes a time.Time by its instant.
func encodeTime(e *canon, v reflect.Value, _ int) error {
	if !v.CanInterface() {
		return errUnexported(v.Type())
	}
	tm, _ := reflect.TypeAssert[time.Time](v)
	e.tag('t')
	e.int(tm.Unix())
	e.int(int64(tm.Nanosecond()))
	return nil
}

// encodeMarshaled encodes a value with its binary or text marshaler. A
// marshaler that panics gives ErrFingerprint.
func encodeMarshaled(e *canon, v reflect.Value, _ int) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s: marshaler panicked: %v", ErrFingerprint, v.Type(), r)
		}
	}()
	t := v.Type()
	if !v.CanInterface() {
		return errUnexported(t)
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

// errOpaque is the error for a struct of type t that has unexported fields
// and no field to encode.
func errOpaque(t reflect.Type) error {
	return fmt.Errorf("%w: %s has no exported fields and no marshaler (an opaque type)", ErrFingerprint, t)
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

// structPlan is how the fields of a struct type are laid out, worked out
// once per type by buildPlan. It is the encoder of the type (see
// newStructEncoder) that adds how each field is encoded.
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
	// typ is the type of the field.
	typ reflect.Type
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
// reflect.Type: a plan is worked out, and its fields sorted, once per type
// rather than on every call. The set of struct types a program
// fingerprints is fixed by its code, so the cache stays small.
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
				out = append(out, planField{typ: f.Type, index: index, embedded: true})
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
		out = append(out, planField{name: f.Name, typ: f.Type, index: index, head: append(head, f.Name...)})
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
