package httpadapter

import (
	"bytes"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/idemkit/idem/codec"
)

// reflected is response's twin, which msgpack encodes and decodes by
// reflection, as it did response before encodeResponse and decodeResponse.
type reflected response

func toReflected(resp *response) *reflected { return (*reflected)(resp) }

// codecResponses are responses covering each shape of each field.
func codecResponses() map[string]*response {
	long := strings.Repeat("x", 300)
	huge := strings.Repeat("y", 70_000)
	return map[string]*response{
		"Zero":           {},
		"Created":        {Status: 201, Header: http.Header{"Content-Type": {"application/json"}, "Location": {"/orders/1"}}, Body: []byte(`{"id":1}`), Method: "POST", Path: "/orders"},
		"NilHeader":      {Status: 204, Method: "PATCH", Path: "/a%2Fb"},
		"EmptyHeader":    {Status: 200, Header: http.Header{}},
		"DeletedHeader":  {Status: 200, Header: http.Header{"X-Removed": {}, "Vary": {"Origin", "Accept-Encoding"}}},
		"NilValues":      {Status: 200, Header: http.Header{"X-Nil": nil}},
		"EmptyStrings":   {Status: 200, Header: http.Header{"": {""}}, Body: []byte{}, Method: "", Path: ""},
		"EmptyBody":      {Status: 200, Body: []byte{}},
		"Long":           {Status: 999, Header: http.Header{long: {long, "", long}}, Body: []byte(long), Method: long, Path: long},
		"Huge":           {Status: 65536, Header: http.Header{"X-Huge": {huge}}, Body: []byte(huge), Method: "POST", Path: "/" + huge},
		"NegativeStatus": {Status: -70000},
		"ManyHeaders": func() *response {
			h := http.Header{}
			for i := range 40 {
				h[strings.Repeat("h", i+1)] = []string{strings.Repeat("v", i)}
			}
			return &response{Status: 200, Header: h}
		}(),
	}
}

// TestMsgpackCompatible checks that encodeResponse writes what msgpack
// writes by reflection, and that each side reads what the other writes,
// nil and empty slices and maps told apart.
func TestMsgpackCompatible(t *testing.T) {
	for name, resp := range codecResponses() {
		t.Run(name, func(t *testing.T) {
			custom, err := codec.MsgPack{}.Marshal(resp)
			if err != nil {
				t.Fatal(err)
			}
			refl, err := msgpack.Marshal(toReflected(resp))
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Header) <= 1 && !bytes.Equal(custom, refl) {
				t.Errorf("encodeResponse wrote\n%x\nreflection writes\n%x", custom, refl)
			}
			if len(custom) != len(refl) {
				t.Errorf("encodeResponse wrote %d bytes, reflection %d", len(custom), len(refl))
			}
			byValue, err := msgpack.Marshal(*resp) // not addressable
			if err != nil || !bytes.Equal(byValue, custom) {
				t.Errorf("a response value encodes as\n%x, %v\nwant\n%x", byValue, err, custom)
			}
			var value response
			if err := msgpack.Unmarshal(custom, &value); err != nil || !reflect.DeepEqual(&value, resp) {
				t.Errorf("decoded into a response value: %.300v, %v", value, err)
			}
			for _, b := range [][]byte{custom, refl} {
				var got *response
				if err := (codec.MsgPack{}).Unmarshal(b, &got); err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, resp) {
					t.Errorf("decodeResponse read\n%#v\nwant\n%#v", got, resp)
				}
				again, err := codec.MsgPack{}.Marshal(got)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(again, custom) {
					t.Errorf("read and written again:\n%x\nwritten first:\n%x", again, custom)
				}
				var back *reflected
				if err := msgpack.Unmarshal(b, &back); err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(back, toReflected(resp)) {
					t.Errorf("reflection read\n%#v\nwant\n%#v", back, resp)
				}
			}
		})
	}
}

// TestMsgpackDecodeForms checks that decodeResponse reads the forms that
// msgpack's reflection reads: fields in any order, unknown fields, nil for
// a string, binary for a string, a string for the body.
func TestMsgpackDecodeForms(t *testing.T) {
	b, err := msgpack.Marshal(map[string]any{
		"Path":    []byte("/orders"),
		"Unknown": map[string]any{"a": []any{1, "b"}},
		"Body":    "text",
		"Method":  nil,
		"Header":  map[string]any{"A": []string{"1", "2"}, "B": nil},
		"Status":  uint64(201),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := &response{Status: 201, Header: http.Header{"A": {"1", "2"}, "B": nil}, Body: []byte("text"), Path: "/orders"}
	var got *response
	if err := msgpack.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %#v, want %#v", got, want)
	}
	// Unknown fields of every kind are skipped.
	var in bytes.Buffer
	e := msgpack.NewEncoder(&in)
	unknown := []any{nil, true, false, 1, -1, -33, 200, -200, 70000, -70000, 1 << 40, -1 << 40, uint64(1 << 63),
		float32(1.5), 2.5, "", strings.Repeat("s", 40), strings.Repeat("s", 300), strings.Repeat("s", 70000),
		[]byte{}, []byte("b"), bytes.Repeat([]byte("b"), 300), bytes.Repeat([]byte("b"), 70000),
		[]any{}, []any{1, []any{2}}, make([]any, 20), make([]any, 70000), map[string]any{"a": map[string]any{"b": nil}},
		map[string]int{"1": 1, "2": 2, "3": 3, "4": 4, "5": 5, "6": 6, "7": 7, "8": 8, "9": 9, "10": 10, "11": 11, "12": 12, "13": 13, "14": 14, "15": 15, "16": 16},
		time.Unix(1, 0), time.Unix(1<<40, 5)}
	exts := [][]byte{
		{0xd4, 1, 0}, {0xd5, 1, 0, 0}, {0xd6, 1, 0, 0, 0, 0}, {0xd7, 1, 0, 0, 0, 0, 0, 0, 0, 0},
		append([]byte{0xd8, 1}, make([]byte, 16)...), {0xc7, 3, 1, 0, 0, 0},
		append([]byte{0xc8, 1, 0, 1}, make([]byte, 256)...), {0xc9, 0, 0, 0, 2, 1, 0, 0},
	}
	if err := e.EncodeMapLen(2 + len(unknown) + len(exts)); err != nil {
		t.Fatal(err)
	}
	for i, v := range unknown {
		if err := e.EncodeMulti("U"+strconv.Itoa(i), v); err != nil {
			t.Fatal(err)
		}
	}
	for i, x := range exts {
		if err := e.EncodeString("X" + strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
		in.Write(x)
	}
	if err := e.EncodeMulti(fieldStatus, 201, fieldMethod, "POST"); err != nil {
		t.Fatal(err)
	}
	got = nil
	if err := msgpack.Unmarshal(in.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if want := (&response{Status: 201, Method: "POST"}); !reflect.DeepEqual(got, want) {
		t.Errorf("got %#v, want %#v", got, want)
	}

	// The array form, as msgpack writes structs with UseArrayEncodedStructs.
	for name, resp := range codecResponses() {
		var buf bytes.Buffer
		e := msgpack.NewEncoder(&buf)
		e.UseArrayEncodedStructs(true)
		if err := e.Encode(toReflected(resp)); err != nil {
			t.Fatal(err)
		}
		got = nil
		if err := msgpack.Unmarshal(buf.Bytes(), &got); err != nil {
			t.Fatalf("%s as an array: %v", name, err)
		}
		if !reflect.DeepEqual(got, resp) {
			t.Errorf("%s as an array: got %.300v", name, got)
		}
	}
	b, err = msgpack.Marshal([]any{201, map[string][]string{"A": {"1"}}, nil, "POST", "/", "extra", []any{1}})
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	if err := msgpack.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if want := (&response{Status: 201, Header: http.Header{"A": {"1"}}, Method: "POST", Path: "/"}); !reflect.DeepEqual(got, want) {
		t.Errorf("got %#v, want %#v", got, want)
	}

	var nilResp *response
	if err := msgpack.Unmarshal([]byte{0xc0}, &nilResp); err != nil || nilResp != nil {
		t.Errorf("nil decodes as %#v, %v", nilResp, err)
	}
}

// TestMsgpackDecodeStream checks that decodeResponse leaves a decoder
// where the response ends, reading from a bytes.Reader or not.
func TestMsgpackDecodeStream(t *testing.T) {
	var stream []byte
	var want []*response
	for _, resp := range codecResponses() {
		b, err := codec.MsgPack{}.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		stream = append(stream, b...)
		want = append(want, resp)
	}
	for name, r := range map[string]io.Reader{
		"bytes.Reader": bytes.NewReader(stream),
		"OneByte":      iotest.OneByteReader(bytes.NewReader(stream)),
	} {
		d := msgpack.NewDecoder(r)
		for i, w := range want {
			var got *response
			if err := d.Decode(&got); err != nil {
				t.Fatalf("%s: response %d: %v", name, i, err)
			}
			if !reflect.DeepEqual(got, w) {
				t.Errorf("%s: response %d is\n%#v\nwant\n%#v", name, i, got, w)
			}
		}
		if _, err := d.PeekCode(); err != io.EOF {
			t.Errorf("%s: after the responses: %v, want io.EOF", name, err)
		}
	}
}

// TestMsgpackDecodeDamaged checks that bytes cut short, or of another
// shape, give an error.
func TestMsgpackDecodeDamaged(t *testing.T) {
	resp := codecResponses()["Created"]
	b, err := msgpack.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	for i := range len(b) {
		var got *response
		if err := msgpack.Unmarshal(b[:i], &got); err == nil {
			t.Errorf("%d bytes of %d: no error", i, len(b))
		}
		if err := msgpack.NewDecoder(iotest.OneByteReader(bytes.NewReader(b[:i]))).Decode(&got); err == nil {
			t.Errorf("%d bytes of %d, not from a bytes.Reader: no error", i, len(b))
		}
	}
	for name, v := range map[string]any{
		"String":       "not a response",
		"HeaderString": map[string]any{"Header": "x"},
		"ValuesString": map[string]any{"Header": map[string]any{"A": "x"}},
		"StatusString": map[string]any{"Status": "x"},
		"BodyMap":      map[string]any{"Body": map[string]any{}},
		"StatusFloat":  map[string]any{"Status": 1.5},
		"NameArray":    map[string]any{"Header": map[string]any{"A": []any{[]any{}}}},
		"Deep":         map[string]any{"X": deep(200)},
	} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var got *response
		if err := msgpack.Unmarshal(b, &got); err == nil {
			t.Errorf("%s: decoded as %#v", name, got)
		}
	}
	for _, b := range [][]byte{{0xc1}, {0x81, 0xa1, 'X', 0xc1}} { // a code never used
		var got *response
		if err := msgpack.Unmarshal(b, &got); err == nil {
			t.Errorf("%x: decoded as %#v", b, got)
		}
	}
	// A length longer than the data must not be allocated up front.
	huge := []byte{0x81, 0xa4, 'B', 'o', 'd', 'y', 0xc6, 0x7f, 0xff, 0xff, 0xff}
	var got *response
	if allocs := testing.AllocsPerRun(10, func() { _ = msgpack.Unmarshal(huge, &got) }); allocs > 20 {
		t.Errorf("%v allocations", allocs)
	}
	if err := msgpack.Unmarshal(huge, &got); err == nil {
		t.Error("a body longer than the data decoded")
	}
}

// deep returns arrays nested n deep.
func deep(n int) any {
	var v any = []any{}
	for range n {
		v = []any{v}
	}
	return v
}
