package codec

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"unsafe"
)

// MaxDepth is the deepest nesting the codecs accept, in levels: a level is
// one map or array in the encoding, that is one struct, map, slice or array
// of the value (pointers and interfaces are not levels; []byte and strings
// are not either). It is the bound encoding/json applies when decoding.
//
// Marshal refuses a value nested deeper, or holding a pointer cycle, and
// Unmarshal refuses stored bytes nested deeper, with an error wrapping
// ErrTooDeep, instead of letting the encoder or decoder recurse until the
// process dies of a stack overflow. Both sides count the same way, so a
// value Marshal accepts is one Unmarshal accepts back. (Marshal also
// refuses a value whose path through levels, pointers and interfaces is
// longer than 4×MaxDepth steps, which only a pathological chain of
// pointers or interfaces reaches.)
const MaxDepth = 10000

// ErrTooDeep is wrapped by the errors of Marshal for a value nested more
// than MaxDepth levels deep or holding a pointer cycle, and of Unmarshal for
// data nested more than MaxDepth levels deep. Test for it with errors.Is.
var ErrTooDeep = errors.New("codec: value nested too deep or cyclic")

const (
	// maxPath bounds the steps (levels, pointers and interfaces) on one
	// path of a walk. Only a pathologically long chain of pointers or
	// interfaces between levels reaches it; the encoders recurse once per
	// step, so without it such a chain could still exhaust the stack.
	maxPath = 4 * MaxDepth
	// cycleAfter is the path length from which the walk keeps the pointers,
	// maps and slices on its path to detect cycles, so that shallow values
	// cost no map (as encoding/json does with its ptrSeen).
	cycleAfter = 100
)

// tooDeepError is an error with its own message that wraps ErrTooDeep and
// a cause.
type tooDeepError struct {
	msg   string
	cause error
}

func (e *tooDeepError) Error() string { return e.msg }

func (e *tooDeepError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrTooDeep}
	}
	return []error{ErrTooDeep, e.cause}
}

// A dialect describes how one encoder turns a Go value into nested maps and
// arrays: which struct fields it encodes, which types encode themselves.
// One walker (walker, analyzer) serves every dialect.
type dialect struct {
	// tag is the struct tag key naming and omitting fields.
	tag string
	// fields lists the struct fields of t that the encoder encodes, with
	// embedded structs flattened the way the encoder flattens them; an
	// error when the encoder cannot encode t at all.
	fields func(d *dialect, t reflect.Type) ([]flatField, error)
	// marshalers are the interfaces whose implementations encode themselves:
	// a walk stops at them, as their methods decide the encoding.
	marshalers []reflect.Type
	// nesting is the one of marshalers whose output may hold maps and
	// arrays that the walk does not see (so the output's depth must be
	// checked); nil when the output is always checked.
	nesting reflect.Type
	// leaves are further types, and pointers to them, that encode as a
	// scalar without looking inside (time.Time, msgpack's error).
	leaves []reflect.Type
	// unaddressableByFields: a value of a type whose pointer type, but not
	// the type itself, implements a marshaler is encoded field by field
	// when it is not addressable (encoding/json), rather than refused
	// (msgpack, which never recurses into it).
	unaddressableByFields bool
	// bytes reports whether the slice or array type t encodes as a byte
	// string (a scalar) rather than as an array.
	bytes func(d *dialect, t reflect.Type) bool
	// pointerLoopFatal: the encoder's own analysis of a pointer type that
	// points to itself (type P *P) never ends (msgpack/v5).
	pointerLoopFatal bool

	cache sync.Map // reflect.Type → *typeInfo
}

// A flatField is a struct field the encoder encodes: its index path from
// the struct (through embedded structs and pointers to them) and the type
// to walk it as.
type flatField struct {
	name  string
	index []int
	typ   reflect.Type
}

type selfMode uint8

const (
	selfNo     selfMode = iota
	selfAlways          // the encoding is the type's own
	selfIfAddr          // own encoding when addressable, else field by field
)

type kind uint8

const (
	kLeaf kind = iota
	kPtr
	kIface
	kSlice
	kArray
	kMap
	kStruct
)

// typeInfo is what a dialect knows about a type, computed once.
type typeInfo struct {
	t      reflect.Type
	kind   kind
	self   selfMode
	nests  bool // its own encoding may nest beyond what a walk sees
	level  bool // encodes as a map or array: one level
	elem   *typeInfo
	key    *typeInfo
	fields []fieldInfo
	broken error // the encoder cannot encode the type (its analysis would not end)

	// Summary over all values of the type, reached as a walk reaches them.
	walk   bool // values may be cyclic or arbitrarily deep, or hold interfaces or a broken type
	depth  int  // if !walk: the most levels a value of the type can take
	opaque bool // if !walk: a value may hold a nesting self-encoding

	busy bool // being analysed
}

type fieldInfo struct {
	index []int
	info  *typeInfo
}

// check walks v the way the dialect's encoder would encode it and returns
// an error wrapping ErrTooDeep if it is nested more than MaxDepth levels
// deep or holds a pointer cycle. opaque reports that v holds a nesting
// self-encoding, whose output the caller must check.
//
// A value of a type that can be neither deep nor cyclic is not walked: it
// costs one cache lookup.
func (d *dialect) check(v any) (opaque bool, err error) {
	if v == nil {
		return false, nil
	}
	ti := d.info(reflect.TypeOf(v))
	if !ti.walk && ti.depth <= MaxDepth {
		return ti.opaque, nil
	}
	w := walker{d: d}
	err = w.walk(reflect.ValueOf(v), ti, 0, 0)
	return w.opaque, err
}

// info returns the analysis of t.
func (d *dialect) info(t reflect.Type) *typeInfo {
	if ti, ok := d.cache.Load(t); ok {
		return ti.(*typeInfo)
	}
	a := analyzer{d: d, nodes: make(map[reflect.Type]*typeInfo)}
	ti := a.visit(t)
	for t, n := range a.nodes {
		d.cache.LoadOrStore(t, n)
	}
	return ti
}

// selfMode reports whether t encodes itself, and whether that encoding may
// nest beyond what a walk sees.
func (d *dialect) selfMode(t reflect.Type) (selfMode, bool) {
	if slices.Contains(d.leaves, t) || t.Kind() == reflect.Pointer && slices.Contains(d.leaves, t.Elem()) {
		return selfAlways, false
	}
	nests := d.nesting != nil && (t.Implements(d.nesting) ||
		t.Kind() != reflect.Pointer && reflect.PointerTo(t).Implements(d.nesting))
	if implementsAny(t, d.marshalers) {
		return selfAlways, nests
	}
	if t.Kind() != reflect.Pointer && implementsAny(reflect.PointerTo(t), d.marshalers) {
		if d.unaddressableByFields {
			return selfIfAddr, nests
		}
		return selfAlways, nests
	}
	return selfNo, false
}

func implementsAny(t reflect.Type, ifaces []reflect.Type) bool {
	for _, i := range ifaces {
		if t.Implements(i) {
			return true
		}
	}
	return false
}

// analyzer computes the typeInfo of a type and of every type its values
// can reach, by a depth-first walk of the type graph. A type reached again
// while still being analysed is recursive: every type on the way can reach
// a cycle, so values of them are walked. Results are final when the
// analysis ends.
type analyzer struct {
	d     *dialect
	nodes map[reflect.Type]*typeInfo
}

func (a *analyzer) visit(t reflect.Type) *typeInfo {
	if ti, ok := a.d.cache.Load(t); ok {
		return ti.(*typeInfo)
	}
	if ti, ok := a.nodes[t]; ok {
		return ti
	}
	ti := &typeInfo{t: t, busy: true}
	a.nodes[t] = ti
	a.fill(ti)
	ti.busy = false
	return ti
}

// child analyses t, reached from parent, and folds it into parent's
// summary.
func (a *analyzer) child(parent *typeInfo, t reflect.Type) *typeInfo {
	c := a.visit(t)
	if c.busy {
		parent.walk = true // a cycle in the type graph
		return c
	}
	parent.walk = parent.walk || c.walk
	parent.opaque = parent.opaque || c.opaque
	parent.depth = max(parent.depth, c.depth)
	return c
}

func (a *analyzer) fill(ti *typeInfo) {
	t := ti.t
	ti.self, ti.nests = a.d.selfMode(t)
	if ti.self == selfAlways {
		ti.opaque = ti.nests
		return // kLeaf: the walk stops here
	}
	switch t.Kind() {
	case reflect.Pointer:
		ti.kind = kPtr
		if a.d.pointerLoopFatal && pointerLoop(t) {
			ti.broken = fmt.Errorf("%w: msgpack cannot encode %s: it points to itself", ErrTooDeep, t)
			ti.walk = true
			break
		}
		ti.elem = a.child(ti, t.Elem())
	case reflect.Interface:
		ti.kind = kIface
		ti.walk = true
	case reflect.Slice, reflect.Array:
		ti.level = true
		if a.d.bytes(a.d, t) {
			ti.level = false
			break
		}
		ti.kind = kArray
		if t.Kind() == reflect.Slice {
			ti.kind = kSlice
		}
		ti.elem = a.child(ti, t.Elem())
	case reflect.Map:
		ti.kind = kMap
		ti.level = true
		ti.key = a.child(ti, t.Key())
		ti.elem = a.child(ti, t.Elem())
	case reflect.Struct:
		ti.kind = kStruct
		ti.level = true
		fs, err := a.d.fields(a.d, t)
		if err != nil {
			ti.broken = err
			ti.walk = true
			break
		}
		ti.fields = make([]fieldInfo, len(fs))
		for i, f := range fs {
			ti.fields[i] = fieldInfo{index: f.index, info: a.child(ti, f.typ)}
		}
	}
	if ti.level {
		ti.depth++
	}
	if ti.self == selfIfAddr {
		ti.opaque = ti.opaque || ti.nests
	}
}

// pointerLoop reports whether following pointer type t's elements leads
// round in a loop without leaving pointer types.
func pointerLoop(t reflect.Type) bool {
	seen := []reflect.Type{t}
	for e := t.Elem(); e.Kind() == reflect.Pointer; e = e.Elem() {
		if slices.Contains(seen, e) {
			return true
		}
		seen = append(seen, e)
	}
	return false
}

// walker walks one value.
type walker struct {
	d      *dialect
	opaque bool
	seen   map[seenKey]struct{} // pointers, maps and slices on the path
}

// seenKey identifies a pointer, map or slice on the path. The type tells a
// pointer to a struct from one to its first field; a *typeInfo stands for
// it as it hashes faster than a reflect.Type. (Two analyses racing may give
// one type two typeInfos, but a cycle takes the same ones round each lap.)
type seenKey struct {
	p  unsafe.Pointer
	n  int // a slice's length: a shorter slice of the same array differs
	ti *typeInfo
}

// walk walks v, of the type ti describes, found under level levels and
// steps steps.
func (w *walker) walk(v reflect.Value, ti *typeInfo, level, steps int) error {
	if ti.broken != nil {
		return ti.broken
	}
	switch ti.self {
	case selfAlways:
		w.opaque = w.opaque || ti.nests
		return nil
	case selfIfAddr:
		if v.CanAddr() {
			w.opaque = w.opaque || ti.nests
			return nil
		}
	}
	if w.skip(ti, level) {
		return nil
	}
	if steps++; steps > maxPath {
		return fmt.Errorf("%w: more than %d pointers, interfaces and levels deep (at %s)", ErrTooDeep, maxPath, ti.t)
	}
	switch ti.kind {
	case kPtr, kIface, kSlice, kMap:
		if v.IsNil() {
			return nil // encoded as nil
		}
	}
	if ti.level {
		if level++; level > MaxDepth {
			return fmt.Errorf("%w: more than %d levels (at %s)", ErrTooDeep, MaxDepth, ti.t)
		}
	}
	var key seenKey
	if steps > cycleAfter {
		switch ti.kind {
		case kPtr, kMap:
			key = seenKey{v.UnsafePointer(), 0, ti}
		case kSlice:
			key = seenKey{v.UnsafePointer(), v.Len(), ti}
		}
		if key.ti != nil {
			if _, ok := w.seen[key]; ok {
				return fmt.Errorf("%w: a pointer cycle through %s", ErrTooDeep, ti.t)
			}
			if w.seen == nil {
				w.seen = make(map[seenKey]struct{})
			}
			w.seen[key] = struct{}{}
		}
	}
	err := w.children(v, ti, level, steps)
	if key.ti != nil {
		delete(w.seen, key)
	}
	return err
}

// children walks what v holds.
func (w *walker) children(v reflect.Value, ti *typeInfo, level, steps int) error {
	switch ti.kind {
	case kPtr:
		return w.walk(v.Elem(), ti.elem, level, steps)
	case kIface:
		return w.dynamic(v.Elem(), level, steps)
	case kSlice, kArray:
		if w.skip(ti.elem, level) {
			return nil
		}
		for i := range v.Len() {
			if err := w.walk(v.Index(i), ti.elem, level, steps); err != nil {
				return err
			}
		}
	case kMap:
		return w.entries(v, ti, level, steps)
	case kStruct:
		for i := range ti.fields {
			f := &ti.fields[i]
			fv, ok := fieldByIndex(v, f.index)
			if !ok {
				continue
			}
			if err := w.walk(fv, f.info, level, steps); err != nil {
				return err
			}
		}
	}
	return nil
}

// entries walks the keys and values of map v. (Apart from children, so
// that the iterator does not weigh on every frame of a deep walk.)
func (w *walker) entries(v reflect.Value, ti *typeInfo, level, steps int) error {
	keys, elems := !w.skip(ti.key, level), !w.skip(ti.elem, level)
	if !keys && !elems {
		return nil
	}
	if m, ok := mapStringAny(v, ti); ok && !keys {
		// The commonest map, ranged over without reflection.
		for _, x := range m {
			if x != nil {
				if err := w.dynamic(reflect.ValueOf(x), level, steps); err != nil {
					return err
				}
			}
		}
		return nil
	}
	// Map entries are not addressable. When that matters to the
	// dialect, or the map was reached through an unexported field
	// (its entries cannot be set into a slot), take copies;
	// otherwise reuse one slot per map for keys and one for
	// values, which costs no allocation per entry.
	byCopy := w.d.unaddressableByFields || !v.CanInterface()
	var k, e reflect.Value
	if keys && !byCopy {
		k = reflect.New(ti.t.Key()).Elem()
	}
	if elems && !byCopy {
		e = reflect.New(ti.t.Elem()).Elem()
	}
	var it reflect.MapIter
	it.Reset(v)
	for it.Next() {
		if keys {
			if byCopy {
				k = it.Key()
			} else {
				k.SetIterKey(&it)
			}
			if err := w.walk(k, ti.key, level, steps); err != nil {
				return err
			}
		}
		if elems {
			if byCopy {
				e = it.Value()
			} else {
				e.SetIterValue(&it)
			}
			if err := w.walk(e, ti.elem, level, steps); err != nil {
				return err
			}
		}
	}
	return nil
}

// dynamic walks e, the value in an interface.
func (w *walker) dynamic(e reflect.Value, level, steps int) error {
	if scalar(e.Kind()) && (w.d.nesting == nil || e.Type().NumMethod() == 0) {
		return nil // no cache lookup for the commonest dynamic values
	}
	return w.walk(e, w.d.info(e.Type()), level, steps)
}

func scalar(k reflect.Kind) bool {
	return k >= reflect.Bool && k <= reflect.Complex128 || k == reflect.String
}

var mapStringAnyType = reflect.TypeFor[map[string]any]()

// mapStringAny returns v as a map[string]any if it is one.
func mapStringAny(v reflect.Value, ti *typeInfo) (map[string]any, bool) {
	if ti.t != mapStringAnyType || !v.CanInterface() {
		return nil, false
	}
	return v.Interface().(map[string]any), true
}

// skip reports whether no value of the type ti describes, found under
// level levels, needs walking (a broken type always does), and if so
// notes whether such a value may hold a nesting self-encoding.
func (w *walker) skip(ti *typeInfo, level int) bool {
	if ti.walk || level+ti.depth > MaxDepth {
		return false
	}
	w.opaque = w.opaque || ti.opaque
	return true
}

// fieldByIndex returns the field of struct v at index, through embedded
// pointers; false if one of them is nil (the field is then not encoded).
func fieldByIndex(v reflect.Value, index []int) (reflect.Value, bool) {
	v = v.Field(index[0])
	for _, i := range index[1:] {
		if v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return v, false
			}
			v = v.Elem()
		}
		v = v.Field(i)
	}
	return v, true
}
