package codec_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/idemkit/idem/codec"
	"github.com/vmihailenco/msgpack/v5"
)

// Types that take the fast decode path.

type fdCharge struct {
	ID       string
	Amount   int64
	Currency string
	Status   string
}

type fdKinds struct {
	B   bool
	I   int
	I8  int8
	I16 int16
	I32 int32
	I64 int64
	U   uint
	U8  uint8
	U16 uint16
	U32 uint32
	U64 uint64
	F32 float32
	F64 float64
	S   string
}

type (
	fdStatus string
	fdLevel  int8
)

type fdTagged struct {
	ID     string         `msgpack:"id"`
	Amount int64          `msgpack:"amount,omitempty"`
	Note   string         `msgpack:",omitempty"`
	Hidden string         `msgpack:"-"`
	Cache  map[string]int `msgpack:"-"`
	Status fdStatus       `msgpack:"status"`
	Level  fdLevel
	Dur    time.Duration
	A      int    `msgpack:"B"` // the names swapped
	B      int    `msgpack:"A"`
	Lower  string `msgpack:"lower"`
}

// fdWide has enough fields for the plan to look names up in a map, and
// for more values than fastUnmarshal stages on the stack.
type fdWide struct {
	F0, F1, F2, F3                    string
	F4, F5, F6                        int32
	F7, F8                            float64
	F9                                bool
	F10                               uint16 `msgpack:"f10"`
	F11, F12, F13, F14, F15, F16, F17 int8
}

type fdEmpty struct{}

// Types that do not: each decodes through msgpack/v5.

type fdAsArray struct {
	//lint:ignore U1000 msgpack/v5 reads its tag
	_msgpack struct{} `msgpack:",as_array"`
	ID       string
	N        int
}

type fdEmbedded struct {
	fdCharge
	Extra string
}

type fdCustom struct{ V string }

func (c *fdCustom) DecodeMsgpack(d *msgpack.Decoder) error {
	s, err := d.DecodeString()
	c.V = "custom:" + s
	return err
}

type fdWithCustom struct {
	ID string
	C  fdCustom
}

type fdWithTime struct {
	ID   string
	When time.Time
}

type fdText string

func (t *fdText) UnmarshalText(b []byte) error { *t = fdText("text:" + string(b)); return nil }

type fdWithText struct {
	ID string
	T  fdText
}

type fdAlias struct {
	ID string `msgpack:"id,alias:ident"`
}

type fdUnexported struct {
	ID   string
	note string
}

type fdPointer struct {
	ID *string
	N  int
}

// fdCase is one type the fuzz test decodes into, starting each time from a
// copy of prefill (fields absent from the data must keep their values).
type fdCase struct {
	name  string
	fast  bool // whether the type takes the fast path
	fresh func() any
}

func newFDCase[T any](fast bool, prefill T) fdCase {
	return fdCase{
		name: fmt.Sprintf("%T", prefill), fast: fast,
		fresh: func() any { v := prefill; return &v },
	}
}

func fdCases() []fdCase {
	return []fdCase{
		newFDCase(true, fdCharge{ID: "old", Amount: -7, Currency: "usd", Status: "prior"}),
		newFDCase(true, fdKinds{B: true, I: 1, I8: 2, I16: 3, I32: 4, I64: 5, U: 6, U8: 7, U16: 8, U32: 9, U64: 10, F32: 1.5, F64: 2.5, S: "prior"}),
		newFDCase(true, fdTagged{ID: "prior", Hidden: "hidden", Cache: map[string]int{"k": 1}, Level: 3, A: 1, B: 2, Lower: "l"}),
		newFDCase(true, fdWide{F0: "prior", F5: 5, F9: true}),
		newFDCase(true, fdEmpty{}),
		newFDCase(false, fdAsArray{ID: "prior", N: 1}),
		newFDCase(false, fdEmbedded{fdCharge: fdCharge{ID: "prior"}, Extra: "x"}),
		newFDCase(false, fdWithText{ID: "prior"}),
	}
}

// fdRaw is a value written into test encodings as it is.
type fdRaw []byte

// fdMap encodes a fixmap of alternating keys and values: an fdRaw is
// written as it is, anything else as msgpack.Marshal encodes it.
func fdMap(kv ...any) []byte {
	b := []byte{0x80 | byte(len(kv)/2)}
	for _, x := range kv {
		if r, ok := x.(fdRaw); ok {
			b = append(b, r...)
			continue
		}
		e, err := msgpack.Marshal(x)
		if err != nil {
			panic(err)
		}
		b = append(b, e...)
	}
	return b
}

func fdNum(code byte, size int, n uint64) fdRaw {
	b := binary.BigEndian.AppendUint64(nil, n)
	return append(fdRaw{code}, b[8-size:]...)
}

func fdStr(code byte, size int, s string) fdRaw {
	return append(fdNum(code, size, uint64(len(s))), s...)
}

var fdNil = fdRaw{0xc0}

// fdSeeds are encodings to start from: msgpack/v5's own, and hand-made
// ones with every encoding each kind may meet.
func fdSeeds() [][]byte {
	enc := func(v any) []byte {
		b, err := msgpack.Marshal(v)
		if err != nil {
			panic(err)
		}
		return b
	}
	long := strings.Repeat("x", 300)
	seeds := [][]byte{
		enc(fdCharge{ID: "ch_1", Amount: 1999, Currency: "eur", Status: "succeeded"}),
		enc(fdCharge{}),
		enc(fdKinds{B: true, I: math.MinInt64, I8: math.MinInt8, I16: math.MinInt16, I32: math.MinInt32, I64: math.MinInt64,
			U: math.MaxUint64, U8: math.MaxUint8, U16: math.MaxUint16, U32: math.MaxUint32, U64: math.MaxUint64,
			F32: float32(math.Inf(-1)), F64: math.NaN(), S: long}),
		enc(fdKinds{I: math.MaxInt64, I8: math.MaxInt8, I16: math.MaxInt16, I32: math.MaxInt32, I64: math.MaxInt64,
			F32: math.SmallestNonzeroFloat32, F64: math.Copysign(0, -1), S: strings.Repeat("y", 40)}),
		enc(fdTagged{ID: "t", Amount: 5, Note: "n", Hidden: "h", Status: "s", Level: -2, Dur: time.Second, A: 1, B: 2, Lower: "lo"}),
		enc(fdTagged{ID: "t"}), // omitempty fields left out
		enc(fdWide{F0: "a", F3: "d", F6: -6, F8: 8.5, F9: true, F10: 10, F11: -1, F17: 17}),
		enc(fdAsArray{ID: "arr", N: 3}),
		enc(fdEmbedded{fdCharge: fdCharge{ID: "emb", Amount: 1}, Extra: "e"}),
		enc(fdWithText{ID: "w", T: "t"}),
		// Reordered keys, unknown keys of every shape, keys of other cases.
		fdMap("Status", "s", "Currency", "c", "Amount", 2, "ID", "i"),
		fdMap("ID", "i", "extra", map[string]any{"a": []any{1, "b", nil}}, "Amount", 3,
			"when", time.Unix(1700000000, 5), "later", time.Unix(1<<35, 1), "blob", []byte{1, 2}, "f", 1.5, "id", "lower"),
		fdMap("id", "x", "ID", "y", "status", "s", "Status", "S", "lower", "l", "Lower", "L", "A", 1, "B", 2),
		// Repeated keys, bin, nil and empty keys, keys of other types.
		fdMap("ID", "first", "ID", "second", "Amount", 1, "Amount", fdNil),
		fdMap(fdStr(0xc4, 1, "ID"), "bin key", fdNil, "nil key", "", "empty key", "Currency", fdStr(0xc4, 1, "bin value")),
		fdMap(1, "int key", "ID", "x"),
		fdMap(fdStr(0xd9, 1, "ID"), fdStr(0xda, 2, "str16"), fdStr(0xdb, 4, "Status"), fdStr(0xdb, 4, "str32")),
		// Integers: every encoding, overflow, sign, floats, nil, others.
		fdMap("I8", fdNum(0xcd, 2, 300), "U8", fdNum(0xd0, 1, 0xff), "U", fdRaw{0xfb}, "I64", fdNum(0xcf, 8, math.MaxUint64),
			"I16", fdNum(0xce, 4, 1<<31), "U16", fdNum(0xd1, 2, 0x8000), "I32", fdNum(0xd3, 8, 1<<40), "U32", fdNum(0xd2, 4, 1<<31)),
		fdMap("I", fdNum(0xcc, 1, 200), "I8", fdNil, "U64", fdNum(0xd3, 8, 1<<63), "B", fdNil, "S", fdNil, "F32", fdNil, "F64", fdNil),
		fdMap("I", 1.5),
		fdMap("U8", "1"),
		fdMap("B", 1),
		fdMap("B", false, "S", fdStr(0xc5, 2, "bin16")),
		fdMap("S", 5),
		// Floats: float32, float64, integers into both, NaNs.
		fdMap("F32", fdNum(0xca, 4, uint64(math.Float32bits(1.25))), "F64", fdNum(0xca, 4, 0x7f800001)),
		fdMap("F32", fdNum(0xca, 4, 0x7f800001), "F64", fdNum(0xcb, 8, 0x7ff0000000000001)),
		fdMap("F32", fdNum(0xcb, 8, math.Float64bits(1.5))),
		fdMap("F32", fdNum(0xcf, 8, math.MaxUint64), "F64", fdNum(0xcf, 8, 1<<63+1)),
		fdMap("F32", fdNum(0xd3, 8, 1<<60+1), "F64", fdRaw{0xe0}),
		// Not a map.
		{0xc0}, {0x90}, {0x94, 0xa1, 'a', 0x01, 0xa1, 'b', 0xa1, 'c'}, {0x92, 0xa1, 'a', 0x01},
		{0xd6, 0xff, 0, 0, 0, 1}, {0xa2, 'I', 'D'}, {0x01},
		// Map16 and map32, trailing bytes.
		append([]byte{0xde, 0, 1}, fdMap("ID", "m16")[1:]...),
		append([]byte{0xdf, 0, 0, 0, 1}, fdMap("ID", "m32")[1:]...),
		append(fdMap("ID", "trailing"), 0xc1, 0xff),
	}
	// Cut short and damaged copies.
	for _, s := range seeds[:12] {
		seeds = append(seeds, s[:len(s)/2], s[:len(s)-1])
		d := bytes.Clone(s)
		d[len(d)/3] ^= 0x40
		seeds = append(seeds, d)
	}
	return seeds
}

// fdEqual compares decoded values, taking floats as equal when their bits
// are (a NaN is not equal to itself).
var fdEqual = cmp.Options{
	cmp.Comparer(func(x, y float64) bool { return math.Float64bits(x) == math.Float64bits(y) }),
	cmp.Comparer(func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) }),
	cmp.AllowUnexported(fdAsArray{}, fdEmbedded{}, fdUnexported{}),
}

// msgpackUnmarshal is msgpack.Unmarshal with a panic as an error.
func msgpackUnmarshal(data []byte, v any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return msgpack.Unmarshal(data, v)
}

// FuzzFastDecode checks that MsgPack.Unmarshal, fast path or not, decodes
// any bytes into each test type as msgpack.Unmarshal does: the same value
// and an error in the same cases. Bytes that checkMsgpack refuses must
// give an error.
//
//	go test -run '^$' -fuzz FuzzFastDecode -fuzztime 60s ./codec
func FuzzFastDecode(f *testing.F) {
	for _, s := range fdSeeds() {
		f.Add(s)
	}
	cases := fdCases()
	f.Fuzz(func(t *testing.T, data []byte) {
		// The bytes as they are, and as a program for fdBuild.
		for _, data := range [][]byte{data, fdBuild(data)} {
			checkErr := codec.CheckMsgpack(data)
			for _, c := range cases {
				got, want := c.fresh(), c.fresh()
				errGot := codec.MsgPack{}.Unmarshal(data, got)
				if checkErr != nil {
					if errGot == nil {
						t.Errorf("%s: checkMsgpack refuses % x (%v), Unmarshal accepts it", c.name, data, checkErr)
					}
					continue
				}
				errWant := msgpackUnmarshal(data, want)
				if (errGot == nil) != (errWant == nil) {
					t.Errorf("%s: % x: Unmarshal gives error %v, msgpack.Unmarshal %v", c.name, data, errGot, errWant)
				}
				if d := cmp.Diff(want, got, fdEqual); d != "" {
					t.Errorf("%s: % x: Unmarshal differs from msgpack.Unmarshal (-msgpack +Unmarshal):\n%s", c.name, data, d)
				}
			}
		}
	})
}

// TestFastDecodeQualifies checks which types take the fast path.
func TestFastDecodeQualifies(t *testing.T) {
	for _, c := range fdCases() {
		if got := codec.FastQualifies(c.fresh()); got != c.fast {
			t.Errorf("%s: fast path %v, want %v", c.name, got, c.fast)
		}
	}
	for _, v := range []any{&fdWithCustom{}, &fdWithTime{}, &fdAlias{}, &fdUnexported{}, &fdPointer{}, &fdCustom{},
		&time.Time{}, new(string), new(map[string]any), new(*fdCharge), new(any)} {
		if codec.FastQualifies(v) {
			t.Errorf("%T takes the fast path", v)
		}
	}
}

// TestFastDecodeTaken checks that the fast path decodes, rather than
// leaves to msgpack/v5, the encodings it is meant to handle, and gives way
// on the others (FuzzFastDecode checks that the results agree).
func TestFastDecodeTaken(t *testing.T) {
	seeds := fdSeeds()
	for _, c := range []struct {
		name string
		data []byte
		v    any
		want bool
	}{
		{"charge", seeds[0], &fdCharge{}, true},
		{"zero charge", seeds[1], &fdCharge{}, true},
		{"min kinds", seeds[2], &fdKinds{}, true},
		{"max kinds", seeds[3], &fdKinds{}, true},
		{"tagged", seeds[4], &fdTagged{}, true},
		{"wide", seeds[6], &fdWide{}, true},
		{"reordered", seeds[10], &fdCharge{}, true},
		{"unknown keys", seeds[11], &fdCharge{}, true},
		{"key case", seeds[12], &fdTagged{}, true},
		{"repeated keys", seeds[13], &fdCharge{}, true},
		{"bin, nil and empty keys", seeds[14], &fdCharge{}, true},
		{"int key", seeds[15], &fdCharge{}, false},
		{"str8, 16, 32", seeds[16], &fdCharge{}, true},
		{"integer encodings", seeds[17], &fdKinds{}, true},
		{"nil values", seeds[18], &fdKinds{}, true},
		{"float into int", seeds[19], &fdKinds{}, false},
		{"string into int", seeds[20], &fdKinds{}, false},
		{"int into bool", seeds[21], &fdKinds{}, false},
		{"bin16 into string", seeds[22], &fdKinds{}, true},
		{"int into string", seeds[23], &fdKinds{}, false},
		{"float32 into both", seeds[24], &fdKinds{}, true},
		{"double into float64", seeds[25], &fdKinds{}, true},
		{"double into float32", seeds[26], &fdKinds{}, false},
		{"uint64 into floats", seeds[27], &fdKinds{}, true},
		{"ints into floats", seeds[28], &fdKinds{}, true},
		{"nil", seeds[29], &fdCharge{}, false},
		{"empty array", seeds[30], &fdCharge{}, false},
		{"array", seeds[31], &fdCharge{}, false},
		{"map16", seeds[36], &fdCharge{}, true},
		{"map32", seeds[37], &fdCharge{}, true},
		{"trailing bytes", seeds[38], &fdCharge{}, true},
	} {
		if got := codec.FastUnmarshal(c.data, c.v); got != c.want {
			t.Errorf("%s (% x): fast path %v, want %v", c.name, c.data, got, c.want)
		}
	}
}

// TestFastDecodeDisqualified checks that types off the fast path decode
// as msgpack/v5 decodes them.
func TestFastDecodeDisqualified(t *testing.T) {
	s := "p"
	for _, v := range []any{
		fdAsArray{ID: "a", N: 1},
		fdEmbedded{fdCharge: fdCharge{ID: "e", Amount: 2}, Extra: "x"},
		fdWithCustom{ID: "c", C: fdCustom{V: "v"}},
		fdWithTime{ID: "t", When: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)},
		fdWithText{ID: "t", T: "v"},
		fdAlias{ID: "a"},
		fdUnexported{ID: "u", note: "n"},
		fdPointer{ID: &s, N: 3},
	} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		for _, data := range [][]byte{b, fdMap("ID", "by name", "id", "lower", "ident", "alias", "C", "c", "T", "t")} {
			got, want := reflect.New(reflect.TypeOf(v)).Interface(), reflect.New(reflect.TypeOf(v)).Interface()
			errGot := codec.MsgPack{}.Unmarshal(data, got)
			errWant := msgpackUnmarshal(data, want)
			if (errGot == nil) != (errWant == nil) {
				t.Errorf("%T: Unmarshal gives error %v, msgpack.Unmarshal %v", v, errGot, errWant)
			}
			if d := cmp.Diff(want, got, fdEqual); d != "" {
				t.Errorf("%T: Unmarshal differs from msgpack.Unmarshal (-msgpack +Unmarshal):\n%s", v, d)
			}
			if codec.FastQualifies(got) {
				t.Errorf("%T takes the fast path", v)
			}
		}
	}
}

// TestFastDecodeUncheckedKnownKeysOnly checks that the fast path tried
// before checkMsgpack gives up on a key that names no field: skipping its
// value needs the check, which refuses what msgpack/v5 must not decode (an
// extension type other than the timestamp, data nested too deeply).
func TestFastDecodeUncheckedKnownKeysOnly(t *testing.T) {
	deep := append([]byte{0x82, 0xa2, 'I', 'D', 0xa1, 'x', 0xa3, 'Z', 'z', 'z'}, bytes.Repeat([]byte{0x91}, codec.MaxDepth+1)...)
	deep = append(deep, 0xc0)
	for name, data := range map[string][]byte{
		"ext":  {0x82, 0xa2, 'I', 'D', 0xa1, 'x', 0xa3, 'Z', 'z', 'z', 0xd4, 0x05, 0x00},
		"deep": deep,
	} {
		if codec.CheckMsgpack(data) == nil {
			t.Fatalf("%s: test data passes checkMsgpack", name)
		}
		var v fdCharge
		if codec.FastUnmarshalKnown(data, &v) {
			t.Errorf("%s: the unchecked fast path decoded data with an unknown key", name)
		}
		if err := (codec.MsgPack{}).Unmarshal(data, &v); err == nil {
			t.Errorf("%s: Unmarshal accepted data that checkMsgpack refuses", name)
		}
	}
	var v fdCharge
	if !codec.FastUnmarshalKnown([]byte{0x81, 0xa2, 'I', 'D', 0xa1, 'x'}, &v) || v.ID != "x" {
		t.Errorf("known keys only: not decoded on the unchecked fast path (%+v)", v)
	}
}
