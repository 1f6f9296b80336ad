package idem

import (
	"bytes"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
)

// checkReplay returns nil when b, the value the codec brought back, is the
// same value as a, what fn returned, by the rules of the package
// documentation ("The same value"); else an error naming where they differ.
// encode is the codec's Marshal.
func checkReplay(a, b reflect.Value, encode func(any) ([]byte, error)) error {
	c := sameChecker{encode: encode}
	if d := c.same(a, b, 0); d != nil {
		return d
	}
	return nil
}

// maxCheckDepth bounds the comparison, in steps that count pointers and
// interfaces as well as containers: the codecs refuse values deeper than
// codec.MaxDepth containers (and 40,000 steps) before it is reached.
const maxCheckDepth = 40_000

// diff is where, and how, a replayed value differs. The path is built as
// the comparison unwinds, innermost segment first, so that a comparison
// that finds no difference builds none.
type diff struct {
	path []string
	msg  string
}

func mismatch(format string, args ...any) *diff { return &diff{msg: fmt.Sprintf(format, args...)} }

// at adds the segment seg (".Field", "[3]") in front of d's path.
func (d *diff) at(seg string) *diff {
	d.path = append(d.path, seg)
	return d
}

func (d *diff) Error() string {
	var b strings.Builder
	b.WriteString("result")
	for i := len(d.path) - 1; i >= 0; i-- {
		b.WriteString(d.path[i])
	}
	return b.String() + ": " + d.msg
}

type sameChecker struct {
	encode func(any) ([]byte, error)
}

func (c *sameChecker) same(a, b reflect.Value, depth int) *diff {
	if depth > maxCheckDepth {
		return mismatch("nested deeper than %d levels", maxCheckDepth)
	}
	if a.IsValid() != b.IsValid() {
		return mismatch("%s comes back as %s", describe(a), describe(b))
	}
	if !a.IsValid() {
		return nil
	}
	if a.Type() != b.Type() {
		return mismatch("%s comes back as %s", a.Type(), b.Type())
	}
	t := a.Type()
	if t == timeType && !a.CanInterface() {
		// Reached through an unexported field, which no codec stores.
		if !a.IsZero() || !b.IsZero() {
			return mismatch("an unexported time.Time is not stored")
		}
		return nil
	}
	if t == timeType {
		ta, tb := a.Interface().(time.Time), b.Interface().(time.Time)
		_, oa := ta.Zone()
		_, ob := tb.Zone()
		if !ta.Equal(tb) || oa != ob {
			return mismatch("time %s comes back as %s (the codec keeps the instant; return times in UTC or time.Local, or use a codec that keeps the offset, such as codec.JSON)",
				ta.Format(time.RFC3339Nano), tb.Format(time.RFC3339Nano))
		}
		return nil
	}
	if selfEncoding(t) && a.CanInterface() && b.CanInterface() {
		ea, errA := c.encode(a.Interface())
		eb, errB := c.encode(b.Interface())
		if errA != nil || errB != nil || !bytes.Equal(ea, eb) {
			return mismatch("%s encodes differently once replayed", t)
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Bool:
		if a.Bool() != b.Bool() {
			return differ(a, b)
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if a.Int() != b.Int() {
			return differ(a, b)
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		if a.Uint() != b.Uint() {
			return differ(a, b)
		}
	case reflect.Float32, reflect.Float64:
		if math.Float64bits(a.Float()) != math.Float64bits(b.Float()) {
			return differ(a, b)
		}
	case reflect.Complex64, reflect.Complex128:
		ca, cb := a.Complex(), b.Complex()
		if math.Float64bits(real(ca)) != math.Float64bits(real(cb)) || math.Float64bits(imag(ca)) != math.Float64bits(imag(cb)) {
			return differ(a, b)
		}
	case reflect.String:
		if a.String() != b.String() {
			return differ(a, b)
		}
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				return mismatch("nil-ness of %s changes", t)
			}
			return nil
		}
		if a.UnsafePointer() == b.UnsafePointer() {
			return nil
		}
		return c.same(a.Elem(), b.Elem(), depth+1)
	case reflect.Interface:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				return mismatch("%s comes back as %s", describe(a.Elem()), describe(b.Elem()))
			}
			return nil
		}
		return c.same(a.Elem(), b.Elem(), depth+1)
	case reflect.Slice:
		if a.IsNil() != b.IsNil() {
			return mismatch("a nil %s and an empty one are told apart", t)
		}
		if a.Len() != b.Len() {
			return mismatch("length %d comes back as %d", a.Len(), b.Len())
		}
		if t.Elem().Kind() == reflect.Uint8 {
			if !bytes.Equal(a.Bytes(), b.Bytes()) {
				return mismatch("bytes differ")
			}
			return nil
		}
		fallthrough
	case reflect.Array:
		for i := range a.Len() {
			if d := c.same(a.Index(i), b.Index(i), depth+1); d != nil {
				return d.at("[" + strconv.Itoa(i) + "]")
			}
		}
	case reflect.Map:
		if a.IsNil() != b.IsNil() {
			return mismatch("a nil %s and an empty one are told apart", t)
		}
		if a.Len() != b.Len() {
			return mismatch("%d entries come back as %d", a.Len(), b.Len())
		}
		if sameNativeMaps(a, b) {
			return nil
		}
		it := a.MapRange()
		for it.Next() {
			bv := b.MapIndex(it.Key())
			if !bv.IsValid() {
				return mismatch("key %v does not come back", describe(it.Key()))
			}
			if d := c.same(it.Value(), bv, depth+1); d != nil {
				return d.at("[" + describe(it.Key()) + "]")
			}
		}
	case reflect.Struct:
		for i := range t.NumField() {
			if d := c.same(a.Field(i), b.Field(i), depth+1); d != nil {
				return d.at("." + t.Field(i).Name)
			}
		}
	default: // func, chan, unsafe pointer: only nil survives a codec
		if !a.IsNil() || !b.IsNil() {
			return mismatch("a %s cannot be stored", t)
		}
	}
	return nil
}

var (
	stringMapType      = reflect.TypeFor[map[string]string]()
	stringSliceMapType = reflect.TypeFor[map[string][]string]()
)

// sameNativeMaps reports whether a and b, maps of one type, are maps from
// string to string or to []string (named or not, as http.Header is) that
// hold equal entries by the rules of same: a nil slice and an empty one
// differ. It compares them without reflection, which would copy every key
// and value; false means they differ or are of another kind, and the
// caller compares them the slow way, which also says where they differ.
func sameNativeMaps(a, b reflect.Value) bool {
	if !a.CanInterface() || !b.CanInterface() {
		return false
	}
	switch t := a.Type(); {
	case t.ConvertibleTo(stringMapType): // map[string]string, or a named type of it
		ma, mb := asMap[map[string]string](a), asMap[map[string]string](b)
		for k, va := range ma {
			if vb, ok := mb[k]; !ok || va != vb {
				return false
			}
		}
		return true
	case t.ConvertibleTo(stringSliceMapType): // as http.Header
		ma, mb := asMap[map[string][]string](a), asMap[map[string][]string](b)
		for k, va := range ma {
			vb, ok := mb[k]
			if !ok || (va == nil) != (vb == nil) || len(va) != len(vb) {
				return false
			}
			for i := range va {
				if va[i] != vb[i] {
					return false
				}
			}
		}
		return true
	}
	return false
}

// asMap returns v, a map of a type convertible to M whose value may be
// taken (CanInterface), as an M. Convert would copy an addressable v to
// the heap first; a pointer to it converts without a copy.
func asMap[M any](v reflect.Value) M {
	if m, ok := reflect.TypeAssert[M](v); ok {
		return m
	}
	if v.CanAddr() {
		p, _ := reflect.TypeAssert[*M](v.Addr().Convert(reflect.TypeFor[*M]()))
		return *p
	}
	m, _ := reflect.TypeAssert[M](v.Convert(reflect.TypeFor[M]()))
	return m
}

func differ(a, b reflect.Value) *diff {
	return mismatch("%s comes back as %s", describe(a), describe(b))
}

// describe shows a value for an error message: its type, and the value
// itself when it is a short basic one.
func describe(v reflect.Value) string {
	if !v.IsValid() {
		return "nil"
	}
	switch v.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return fmt.Sprintf("%s(%v)", v.Type(), v)
	case reflect.String:
		if v.Len() <= 40 {
			return fmt.Sprintf("%q", v.String())
		}
	}
	return v.Type().String()
}

// selfEncoding reports whether t or *t has a method by which a codec lets
// a value encode itself. The answer is worked out once per type: the
// replay check asks it of every value it compares.
func selfEncoding(t reflect.Type) bool {
	if v, ok := selfEncoders.Load(t); ok {
		return v.(bool)
	}
	v := hasSelfEncoding(t)
	selfEncoders.Store(t, v)
	return v
}

// selfEncoders caches selfEncoding per reflect.Type. The set of types a
// program stores is fixed by its code, so it stays small.
var selfEncoders sync.Map // reflect.Type → bool

func hasSelfEncoding(t reflect.Type) bool {
	for _, m := range [...]string{"MarshalBinary", "MarshalText", "MarshalJSON", "MarshalMsgpack", "EncodeMsgpack"} {
		if _, ok := t.MethodByName(m); ok {
			return true
		}
		if _, ok := reflect.PointerTo(t).MethodByName(m); ok {
			return true
		}
	}
	return false
}

// checkResultType refuses, when an Operation is built, result types that no
// codec can bring back: those that reach a struct with unexported fields
// only and no way to encode itself (a Money{amount, currency}), which would
// be replayed as its zero value. Interfaces are not followed: what they
// hold is checked when a result is stored.
func checkResultType(t reflect.Type) error {
	return opaqueIn(t, map[reflect.Type]bool{})
}

func opaqueIn(t reflect.Type, seen map[reflect.Type]bool) error {
	if seen[t] || t == timeType || selfEncoding(t) {
		return nil
	}
	seen[t] = true
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array:
		return opaqueIn(t.Elem(), seen)
	case reflect.Map:
		if err := opaqueIn(t.Key(), seen); err != nil {
			return err
		}
		return opaqueIn(t.Elem(), seen)
	case reflect.Struct:
		exported := 0
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() && !f.Anonymous {
				continue
			}
			// Codecs inline the exported fields of embedded structs, also
			// of unexported types; count them as exported here, and leave
			// the rest to the check when a result is stored.
			exported++
			if err := opaqueIn(f.Type, seen); err != nil {
				return err
			}
		}
		if exported == 0 && t.NumField() > 0 {
			return fmt.Errorf("%s keeps its state in unexported fields and has no marshaler: it would be replayed as its zero value", t)
		}
	}
	return nil
}
