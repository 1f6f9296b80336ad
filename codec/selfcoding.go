package codec

import "reflect"

// Types that write and read their own MessagePack bytes.
//
// msgpack/v5 calls a coder registered with msgpack.Register through its
// Encoder and Decoder, which cost as much as the coder itself for a small
// value. A type whose pointer also has the methods below is handed the
// bytes directly by MsgPack: AppendMarshal appends with AppendMsgpack, and
// Unmarshal decodes with DecodeMsgpackBytes, into a *T or into a **T (as
// msgpack/v5 does, a nil in the data then makes the *T nil, and a nil *T is
// allocated before decoding). The methods must write and read exactly what
// msgpack/v5 writes and reads for the type. The checks around msgpack/v5
// give the same results around them, but the check of the data runs after
// the decoding, when the decoder cannot vouch for the data (see
// decodeBytes).

// msgpackAppender is implemented by a type that appends its own msgpack
// encoding to a slice.
type msgpackAppender interface {
	// AppendMsgpack appends to dst the value's encoding, as msgpack/v5's
	// Encoder writes it, and returns the extended slice.
	AppendMsgpack(dst []byte) ([]byte, error)
}

// msgpackBytesDecoder is implemented by a type that decodes itself from
// msgpack bytes.
type msgpackBytesDecoder interface {
	// DecodeMsgpackBytes decodes into the receiver the value that data
	// starts with, as msgpack/v5's Decoder decodes it when it reads data
	// from a bytes.Reader. Bytes after the value are ignored, as msgpack/v5
	// ignores them. The result must not alias data.
	//
	// data has not passed checkMsgpack: the method must bound its
	// allocations by len(data), and its recursion. It reports whether the
	// value it decoded holds only what checkMsgpack accepts (no extension
	// types, nothing nested deeper than MaxDepth), because it read all of
	// it as such; when it does not, or on an error, the check runs next.
	DecodeMsgpackBytes(data []byte) (checked bool, err error)
}

// bytesDecoderOf returns what decodes data into v with DecodeMsgpackBytes
// when v is a non-nil *T or **T whose *T implements msgpackBytesDecoder:
// for a *T, v itself; for a **T, the *T that v points to, as a settable
// reflect.Value, in p. It changes nothing.
func bytesDecoderOf(v any) (d msgpackBytesDecoder, p reflect.Value, ok bool) {
	if d, ok := v.(msgpackBytesDecoder); ok {
		rv := reflect.ValueOf(v)
		// Else msgpack/v5 refuses it, with its own error.
		return d, p, rv.Kind() == reflect.Pointer && !rv.IsNil()
	}
	t := reflect.TypeOf(v) // no reflect.Value for the other types
	if t == nil || t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Pointer {
		return nil, p, false
	}
	rv := reflect.ValueOf(v)
	if rv.IsNil() {
		return nil, p, false
	}
	p = rv.Elem()
	_, ok = p.Interface().(msgpackBytesDecoder)
	return nil, p, ok
}

// decodeBytes decodes data with d, or into the pointer p as msgpack/v5
// decodes into a pointer (ptrValueDecoder): a nil sets it to nil, any
// other value is decoded into what it points to, allocated first if it is
// nil. It returns the error that checkMsgpack and then the decoder would
// return, in that order, but checks data only after decoding it, when the
// decoder failed or did not vouch for it: on data that fails the check,
// the target may have changed.
func decodeBytes(data []byte, d msgpackBytesDecoder, p reflect.Value) error {
	if len(data) == 0 {
		return checkMsgpack(data)
	}
	if d == nil {
		if data[0] == 0xc0 { // nil, which the check accepts
			p.SetZero()
			return nil
		}
		if p.IsNil() {
			p.Set(reflect.New(p.Type().Elem()))
		}
		d = p.Interface().(msgpackBytesDecoder)
	}
	checked, err := d.DecodeMsgpackBytes(data)
	if err != nil || !checked {
		if cerr := checkMsgpack(data); cerr != nil {
			return cerr
		}
	}
	return err
}
