package codec

import (
	"encoding"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/vmihailenco/msgpack/v5"
)

var (
	anyType       = reflect.TypeFor[any]()
	errorType     = reflect.TypeFor[error]()
	timeType      = reflect.TypeFor[time.Time]()
	textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()
	jsonMarshaler = reflect.TypeFor[json.Marshaler]()
)

// msgpackDialect is how msgpack/v5 (v5.4.1, encode_value.go _getEncoder)
// encodes: a type registered with it comes first (of those, time.Time, the
// timestamp extension, is the one MsgPack accepts), then CustomEncoder,
// Marshaler, encoding.BinaryMarshaler and encoding.TextMarshaler on the
// type, then the same on its pointer type (msgpack refuses an unaddressable
// value of such a type rather than encode it field by field), then the
// error interface (encoded as its message), then the kinds. A []byte or
// [N]byte is a byte string.
var msgpackDialect = &dialect{
	tag:    "msgpack",
	fields: msgpackFields,
	marshalers: []reflect.Type{
		reflect.TypeFor[msgpack.CustomEncoder](),
		reflect.TypeFor[msgpack.Marshaler](),
		reflect.TypeFor[encoding.BinaryMarshaler](),
		textMarshaler,
	},
	leaves: []reflect.Type{timeType, errorType},
	bytes: func(_ *dialect, t reflect.Type) bool {
		return t.Elem().Kind() == reflect.Uint8
	},
	pointerLoopFatal: true,
}

// msgpackDecoders are the interfaces that make msgpack/v5 decode a type
// itself; an embedded struct implementing one is not inlined.
var msgpackDecoders = []reflect.Type{
	reflect.TypeFor[msgpack.CustomDecoder](),
	reflect.TypeFor[msgpack.Unmarshaler](),
	reflect.TypeFor[encoding.BinaryUnmarshaler](),
	reflect.TypeFor[encoding.TextUnmarshaler](),
}

// jsonDialect is how encoding/json encodes: json.Marshaler, then
// encoding.TextMarshaler (a string), on the type or, for an addressable
// value, on its pointer type; an unaddressable value of a type whose
// pointer type has them is encoded field by field. A []byte is a base64
// string, an [N]byte an array.
var jsonDialect = &dialect{
	tag:                   "json",
	fields:                jsonFields,
	marshalers:            []reflect.Type{jsonMarshaler, textMarshaler},
	nesting:               jsonMarshaler,
	leaves:                []reflect.Type{timeType},
	unaddressableByFields: true,
	bytes: func(d *dialect, t reflect.Type) bool {
		return t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8 &&
			!implementsAny(reflect.PointerTo(t.Elem()), d.marshalers)
	},
}

// msgpackFields lists the fields msgpack/v5 encodes for struct type t, as
// its getFields (types.go) does: a field tagged "-" or unexported is
// skipped, except an embedded one; an embedded struct, or pointer to one,
// is inlined (its fields encoded in t's map) when tagged "inline", or when
// untagged "noinline", encoded and decoded field by field and none of its
// field names is taken already. msgpack/v5 analyses an embedded struct
// before deciding, so a struct that embeds itself, directly or not, makes
// it recurse until the stack overflows: that is reported as an error.
func msgpackFields(d *dialect, t reflect.Type) ([]flatField, error) {
	return msgpackFieldsOf(d, t, nil)
}

func msgpackFieldsOf(d *dialect, t reflect.Type, path []reflect.Type) ([]flatField, error) {
	if slices.Contains(path, t) {
		return nil, fmt.Errorf("%w: msgpack cannot encode %s: it embeds itself (through %s)", ErrTooDeep, path[0], t)
	}
	path = append(path, t)
	var list []flatField
	names := make(map[string]bool)
	add := func(f flatField) {
		names[f.name] = true
		list = append(list, f)
	}
	for i := range t.NumField() {
		sf := t.Field(i)
		name, opts := parseMsgpackTag(sf.Tag.Get(d.tag))
		if name == "-" || !sf.IsExported() && !sf.Anonymous {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		f := flatField{name: name, index: []int{i}, typ: sf.Type}
		if _, ok := opts["intern"]; ok && sf.Type.Kind() == reflect.Interface {
			f.typ = anyType // encoded by its dynamic value, even an error
		}
		if _, ok := opts["noinline"]; sf.Anonymous && !ok {
			inlined := false
			if _, ok := opts["inline"]; ok {
				if sf.Type.Kind() == reflect.Struct {
					sub, err := msgpackFieldsOf(d, sf.Type, path)
					if err != nil {
						return nil, err
					}
					for _, s := range sub {
						if !names[s.name] {
							s.index = append([]int{i}, s.index...)
							add(s)
						}
					}
					inlined = true
				}
			} else if et := derefAll(sf.Type); et.Kind() == reflect.Struct && plainMsgpackStruct(d, et) {
				sub, err := msgpackFieldsOf(d, et, path)
				if err != nil {
					return nil, err
				}
				if !slices.ContainsFunc(sub, func(s flatField) bool { return names[s.name] }) {
					for _, s := range sub {
						s.index = append([]int{i}, s.index...)
						add(s)
					}
					inlined = true
				}
			}
			if inlined {
				names[name] = true
				continue
			}
		}
		add(f)
		if alias, ok := opts["alias"]; ok {
			names[alias] = true
		}
	}
	return list, nil
}

// plainMsgpackStruct reports whether msgpack/v5 encodes and decodes struct
// type t field by field.
func plainMsgpackStruct(d *dialect, t reflect.Type) bool {
	self, _ := d.selfMode(t)
	return self == selfNo && !implementsAny(t, msgpackDecoders) && !implementsAny(reflect.PointerTo(t), msgpackDecoders)
}

func derefAll(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// parseMsgpackTag splits a msgpack tag into its name and options, as
// github.com/vmihailenco/tagparser does for the simple forms msgpack uses
// ("name,omitempty", "-", ",inline", "alias:other").
func parseMsgpackTag(tag string) (string, map[string]string) {
	var name string
	var opts map[string]string
	for i, part := range strings.Split(tag, ",") {
		part = strings.TrimSpace(part)
		k, v, hasValue := strings.Cut(part, ":")
		if i == 0 && !hasValue {
			name = part
			continue
		}
		if opts == nil {
			opts = make(map[string]string)
		}
		if hasValue {
			opts[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), "'")
		} else {
			opts[part] = ""
		}
	}
	return name, opts
}

// jsonFields lists the fields encoding/json encodes for struct type t, as
// its typeFields does: exported fields, and embedded ones of struct type
// even unexported, not tagged "-"; an embedded struct, or pointer to one,
// without a name in its tag is flattened, each embedded type once. Unlike
// encoding/json it keeps every field of a name, not only the dominant one:
// the walk may look at a field that is not encoded, never miss one that is.
func jsonFields(d *dialect, t reflect.Type) ([]flatField, error) {
	type embedded struct {
		typ   reflect.Type
		index []int
	}
	var fields []flatField
	next := []embedded{{typ: t}}
	visited := make(map[reflect.Type]bool)
	for len(next) > 0 {
		current := next
		next = nil
		for _, e := range current {
			if visited[e.typ] {
				continue
			}
			visited[e.typ] = true
			for i := range e.typ.NumField() {
				sf := e.typ.Field(i)
				if sf.Anonymous {
					et := sf.Type
					if et.Kind() == reflect.Pointer {
						et = et.Elem()
					}
					if !sf.IsExported() && et.Kind() != reflect.Struct {
						continue
					}
				} else if !sf.IsExported() {
					continue
				}
				tag := sf.Tag.Get(d.tag)
				if tag == "-" {
					continue
				}
				name, _, _ := strings.Cut(tag, ",")
				if !validJSONName(name) {
					name = ""
				}
				index := append(slices.Clone(e.index), i)
				ft := sf.Type
				if ft.Name() == "" && ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if name != "" || !sf.Anonymous || ft.Kind() != reflect.Struct {
					if name == "" {
						name = sf.Name
					}
					fields = append(fields, flatField{name: name, index: index, typ: sf.Type})
					continue
				}
				next = append(next, embedded{typ: ft, index: index})
			}
		}
	}
	return fields, nil
}

// validJSONName is encoding/json's isValidTag.
func validJSONName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case strings.ContainsRune("!#$%&()*+-./:;<=>?@[]^_{|}~ ", c):
		case !unicode.IsLetter(c) && !unicode.IsDigit(c):
			return false
		}
	}
	return true
}
