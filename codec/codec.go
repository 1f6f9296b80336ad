// Package codec encodes the results that idem stores and replays.
//
// A Codec turns a value into bytes and back. The zero values of MsgPack (the
// default) and JSON are ready to use. A record is tagged with the Name of the
// codec that wrote it, so reading it with another codec is reported as an
// error rather than decoded into garbage.
//
// Neither codec lets a value or stored bytes crash the process: Marshal
// refuses a value nested more than MaxDepth levels deep or holding a
// pointer cycle, and Unmarshal data nested more than MaxDepth levels deep,
// with an error wrapping ErrTooDeep, where the encoders would recurse
// until the stack overflows. The check walks only values whose type allows
// them to be deep or cyclic (a recursive type, or one holding interfaces);
// for others it costs a cache lookup.
package codec

import (
	"encoding/json"
	"fmt"
)

// A Codec encodes and decodes stored results. Implementations must be safe
// for concurrent use, and Unmarshal must return an error, never panic, on
// bytes it did not write.
type Codec interface {
	// Name identifies the encoding in stored records; at most 255 bytes.
	Name() string
	// Marshal encodes v.
	Marshal(v any) ([]byte, error)
	// Unmarshal decodes data into the value v points to.
	Unmarshal(data []byte, v any) error
}

// MsgPack encodes with MessagePack (github.com/vmihailenco/msgpack/v5):
// compact and fast. Struct fields are keyed by their msgpack tag, or by their
// Go name when untagged; unexported fields are not stored. A time.Time comes
// back in the local time zone, equal under time.Time.Equal.
type MsgPack struct{}

// Name returns "msgpack".
func (MsgPack) Name() string { return "msgpack" }

// Marshal encodes v with msgpack. It refuses values that Unmarshal would
// not accept back, since storing them would give a record that can never
// be replayed: those holding msgpack extension types other than time.Time
// (types registered with msgpack.RegisterExt), and those nested more than
// MaxDepth levels deep. It also refuses values on which msgpack/v5 would
// overflow the stack: those holding a pointer cycle, and those holding a
// struct type that embeds itself (type T struct{ *T }) or a pointer type
// that points to itself (type P *P). Those errors wrap ErrTooDeep.
//
// The walk that finds cycles follows what msgpack encodes: exported and
// embedded fields not tagged msgpack:"-" (a parent back-pointer tagged so
// is fine), pointers, interfaces, slices, arrays, map keys and values. It
// stops at values that encode themselves (msgpack.CustomEncoder,
// msgpack.Marshaler, encoding.BinaryMarshaler, encoding.TextMarshaler,
// time.Time, error): a cycle inside them is theirs to handle.
//
// A value with an AppendMsgpack method encodes itself: see AppendMarshal.
func (m MsgPack) Marshal(v any) ([]byte, error) { return m.AppendMarshal(nil, v) }

// AppendMarshal appends the encoding of v to dst, as Marshal encodes it and
// with the same checks, and returns the extended slice.
//
// A value with a method AppendMsgpack(dst []byte) ([]byte, error) is
// encoded by that method, without msgpack/v5's Encoder: it serves a type
// with a coder registered with msgpack.Register, which MsgPack then calls
// on the bytes directly, and must append exactly what msgpack/v5 would
// write for the value. (Unmarshal does the same with a DecodeMsgpackBytes
// method.)
func (MsgPack) AppendMarshal(dst []byte, v any) (_ []byte, err error) {
	if _, err := msgpackDialect.check(v); err != nil {
		return nil, err
	}
	defer func() {
		// msgpack/v5 panics on some struct tags (",inline" on an embedded
		// pointer, "intern" on a field that is no string).
		if r := recover(); r != nil {
			err = fmt.Errorf("codec: msgpack: encoding panicked: %v", r)
		}
	}()
	n := len(dst)
	if a, ok := v.(msgpackAppender); ok {
		dst, err = a.AppendMsgpack(dst) // see selfcoding.go
	} else {
		dst, err = appendMarshal(dst, v)
	}
	if err != nil {
		return nil, err
	}
	if err := checkMsgpack(dst[n:]); err != nil {
		return nil, fmt.Errorf("%w (the encoding would not decode)", err)
	}
	return dst, nil
}

// Unmarshal decodes msgpack data into v.
// Foreign or damaged bytes are checked first, so that they give an error
// without the large allocations msgpack/v5 makes for declared lengths, and
// without its unbounded recursion on data nested more than MaxDepth levels
// deep (that error wraps ErrTooDeep); a panic inside msgpack/v5 on such
// bytes (it has some, found by fuzzing) is returned as an error too.
//
// A pointer to a flat struct (exported fields of basic kinds, simply
// tagged) is decoded without msgpack/v5's reflection, to the value
// msgpack/v5 would decode; other values, and data that path is not sure
// of, are decoded by msgpack/v5 (see fastdecode.go). A decoder registered
// for such a struct with msgpack.Register is used only if it decodes a
// probe the first time the type is seen differently from reflection: give
// a type with a custom decoding a DecodeMsgpack or UnmarshalMsgpack method
// instead, which the fast path always leaves to msgpack/v5.
//
// A pointer to a *T, or a *T, where *T has a method
// DecodeMsgpackBytes(data []byte) (checked bool, err error) is decoded by
// that method, without msgpack/v5's Decoder: the method must decode as
// msgpack/v5 does (see AppendMarshal), and bound its allocations and
// recursion on any bytes. The check runs after it unless it reports that
// it read nothing the check could refuse; the error is the same, but on
// bytes the check refuses, the value v points to may have changed.
func (MsgPack) Unmarshal(data []byte, v any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", errMsgpack, r)
		}
	}()
	if d, p, ok := bytesDecoderOf(v); ok { // see selfcoding.go
		return decodeBytes(data, d, p)
	}
	// Flat structs, as msgpack/v5 would decode them: first with known keys
	// only, which needs no check (see fastUnmarshal), then after the check.
	if fastUnmarshal(data, v, false) {
		return nil
	}
	if err := checkMsgpack(data); err != nil {
		return err
	}
	if fastUnmarshal(data, v, true) {
		return nil
	}
	return unmarshal(data, v)
}

// JSON encodes with encoding/json: readable in the store, and the choice
// when results must be inspected by other tools. Struct fields follow their
// json tags.
type JSON struct{}

// Name returns "json".
func (JSON) Name() string { return "json" }

// Marshal encodes v with encoding/json. It refuses, with an error wrapping
// ErrTooDeep, values nested more than MaxDepth levels deep (encoding/json
// would overflow the stack on them, and refuse to decode them) and values
// holding a pointer cycle. The walk follows what encoding/json encodes:
// exported and embedded fields not tagged json:"-", pointers, interfaces,
// slices, arrays and maps; it stops at json.Marshaler and
// encoding.TextMarshaler values. When v holds a json.Marshaler, whose
// output the walk does not see, the encoding's depth is checked too.
func (JSON) Marshal(v any) ([]byte, error) {
	opaque, err := jsonDialect.check(v)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if opaque && jsonTooDeep(b) {
		return nil, fmt.Errorf("%w (the encoding would not decode)", errJSONTooDeep(nil))
	}
	return b, nil
}

// Unmarshal decodes JSON data into v. Data nested more than MaxDepth
// levels deep, which encoding/json refuses, gives an error wrapping
// ErrTooDeep (and the *json.SyntaxError).
func (JSON) Unmarshal(data []byte, v any) error {
	err := json.Unmarshal(data, v)
	if err != nil && jsonTooDeep(data) {
		return errJSONTooDeep(err)
	}
	return err
}
