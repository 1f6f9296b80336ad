package codec

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

type leafS struct{ A, B string }

type withLeaf struct {
	L leafS
	N int
}

type autoInline struct {
	leafS
	C int
}

type ptrInline struct {
	*leafS
	C int
}

type noInline struct {
	leafS `msgpack:",noinline"`
	C     int
}

type shadowed struct {
	A     string
	leafS // A is taken: msgpack does not inline leafS
}

type explicitInline struct {
	A     string
	leafS `msgpack:",inline"` // inlined but for the shadowed A
}

type asArray struct {
	_msgpack struct{} `msgpack:",as_array"` //lint:ignore U1000 read by msgpack's tag
	L        leafS
}

type named struct {
	leafS `json:"inner"` // encoding/json nests it under "inner"
	C     int
}

type structKeys struct {
	M map[leafS]withLeaf `json:"-"`
	B [4]byte
	S []byte
}

// TestStaticDepthMatchesEncoding: the levels the analysis counts for a
// value with every field set are the levels of the encoding, as the
// decoders count them.
func TestStaticDepthMatchesEncoding(t *testing.T) {
	l := leafS{"a", "b"}
	for _, v := range []any{
		l, withLeaf{L: l}, autoInline{leafS: l}, ptrInline{leafS: &l}, noInline{leafS: l},
		shadowed{leafS: l}, explicitInline{leafS: l}, asArray{L: l}, named{leafS: l},
		structKeys{M: map[leafS]withLeaf{l: {}}, S: []byte{1}},
		[]map[string][2][]int{{"k": {{1}, {2}}}},
	} {
		for _, d := range []*dialect{msgpackDialect, jsonDialect} {
			ti := d.info(reflect.TypeOf(v))
			if ti.walk {
				t.Fatalf("%T: walked", v)
			}
			var got int
			if d == msgpackDialect {
				b, err := msgpack.Marshal(v)
				if err != nil {
					t.Fatal(err)
				}
				got = msgpackLevels(t, b)
			} else {
				b, err := json.Marshal(v)
				if err != nil {
					t.Fatal(err)
				}
				got = jsonLevels(b)
			}
			if ti.depth != got {
				t.Errorf("%s %T: analysis counts %d levels, the encoding has %d", d.tag, v, ti.depth, got)
			}
		}
	}
}

// msgpackLevels returns the nesting of maps and arrays in b.
func msgpackLevels(t *testing.T, b []byte) int {
	n, err := decoderLevels(msgpack.NewDecoder(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func decoderLevels(d *msgpack.Decoder) (int, error) {
	c, err := d.PeekCode()
	if err != nil {
		return 0, err
	}
	var n int
	switch {
	case msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
		n, err = d.DecodeMapLen()
		n *= 2
	case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
		n, err = d.DecodeArrayLen()
	default:
		return 0, d.Skip()
	}
	most := 0
	for range n {
		if err != nil {
			return 0, err
		}
		var l int
		l, err = decoderLevels(d)
		most = max(most, l)
	}
	return most + 1, err
}

func jsonLevels(b []byte) int {
	depth, most := 0, 0
	inString := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case inString && c == '\\':
			i++
		case c == '"':
			inString = !inString
		case inString:
		case c == '[' || c == '{':
			depth++
			most = max(most, depth)
		case c == ']' || c == '}':
			depth--
		}
	}
	return most
}
