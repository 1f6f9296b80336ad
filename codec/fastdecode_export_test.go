package codec

import "reflect"

// Internals of the fast decode path, for the tests of package codec_test.

// FastQualifies reports whether Unmarshal into v (a pointer) may take the
// fast path.
func FastQualifies(v any) bool {
	t := reflect.TypeOf(v)
	return t != nil && t.Kind() == reflect.Pointer && planFor(t) != nil
}

// FastUnmarshal runs the fast path alone, skipping unknown keys, on data
// that passed CheckMsgpack, and reports whether it decoded.
func FastUnmarshal(data []byte, v any) bool { return fastUnmarshal(data, v, true) }

// FastUnmarshalKnown runs the fast path alone with known keys only, on any
// data, and reports whether it decoded.
func FastUnmarshalKnown(data []byte, v any) bool { return fastUnmarshal(data, v, false) }
