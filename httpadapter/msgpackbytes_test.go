package httpadapter

import (
	"bytes"
	"math"
	"math/rand/v2"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/idemkit/idem/codec"
	"github.com/idemkit/idem/internal/race"
)

// randomResponse returns a response with fields of random shapes, lengths
// around the boundaries of the msgpack encodings included.
func randomResponse(rng *rand.Rand) *response {
	lengths := []int{0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536}
	str := func() string {
		n := rng.IntN(40)
		if rng.IntN(8) == 0 {
			n = lengths[rng.IntN(len(lengths))]
		}
		return strings.Repeat(string(rune('a'+rng.IntN(26))), n)
	}
	statuses := []int64{0, 1, 127, 128, 255, 256, 65535, 65536, math.MaxUint32, math.MaxUint32 + 1, math.MaxInt64,
		-1, -32, -33, -128, -129, -32768, -32769, math.MinInt32, math.MinInt32 - 1, math.MinInt64}
	resp := &response{Status: int(statuses[rng.IntN(len(statuses))]), Method: str(), Path: str()}
	if rng.IntN(4) > 0 {
		resp.Status = 100 + rng.IntN(900)
	}
	switch rng.IntN(4) {
	case 0: // nil
	case 1:
		resp.Body = []byte{}
	default:
		resp.Body = []byte(str())
	}
	if rng.IntN(5) > 0 {
		n := rng.IntN(5)
		if rng.IntN(10) == 0 {
			n = 16 + rng.IntN(20)
		}
		resp.Header = make(http.Header, n)
		for range n {
			var vs []string
			switch m := rng.IntN(5) - 1; {
			case m < 0: // nil
			case rng.IntN(10) == 0:
				vs = make([]string, 16+m)
			default:
				vs = make([]string, m)
			}
			for i := range vs {
				vs[i] = str()
			}
			resp.Header[str()+strconv.Itoa(rng.IntN(1000))] = vs
		}
	}
	return resp
}

// referenceEncoding writes resp with msgpack/v5's Encoder, call by call,
// as encodeResponse wrote it before it wrote AppendMsgpack's bytes: the
// independent encoding that AppendMsgpack must match byte for byte.
func referenceEncoding(t *testing.T, resp *response) []byte {
	t.Helper()
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	if resp == nil {
		if err := e.EncodeNil(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	w := msgpackWriter{e: e}
	w.mapLen(5)
	w.str(fieldStatus)
	w.int(resp.Status)
	w.str(fieldHeader)
	if resp.Header == nil {
		w.nil()
	} else {
		w.header(resp.Header)
	}
	w.str(fieldBody)
	w.bytes(resp.Body)
	w.str(fieldMethod)
	w.str(resp.Method)
	w.str(fieldPath)
	w.str(resp.Path)
	if w.err != nil {
		t.Fatal(w.err)
	}
	return buf.Bytes()
}

// msgpackWriter writes with a msgpack.Encoder, keeping the first error.
type msgpackWriter struct {
	e   *msgpack.Encoder
	err error
}

// header writes h, its names sorted.
func (w *msgpackWriter) header(h http.Header) {
	var small [16]headerField // on the stack for most responses
	fields := sortedHeader(h, small[:0])
	w.mapLen(len(fields))
	for _, f := range fields {
		w.str(f.name)
		w.strings(f.values)
	}
}

func (w *msgpackWriter) strings(vs []string) {
	if vs == nil {
		w.nil()
		return
	}
	w.arrayLen(len(vs))
	for _, v := range vs {
		w.str(v)
	}
}

func (w *msgpackWriter) mapLen(n int) {
	if w.err == nil {
		w.err = w.e.EncodeMapLen(n)
	}
}

func (w *msgpackWriter) arrayLen(n int) {
	if w.err == nil {
		w.err = w.e.EncodeArrayLen(n)
	}
}

func (w *msgpackWriter) str(s string) {
	if w.err == nil {
		w.err = w.e.EncodeString(s)
	}
}

func (w *msgpackWriter) int(n int) {
	if w.err == nil {
		w.err = w.e.EncodeInt(int64(n))
	}
}

func (w *msgpackWriter) bytes(b []byte) {
	if w.err == nil {
		w.err = w.e.EncodeBytes(b) // nil for nil
	}
}

func (w *msgpackWriter) nil() {
	if w.err == nil {
		w.err = w.e.EncodeNil()
	}
}

// TestAppendMsgpack checks that AppendMsgpack, which codec.MsgPack calls
// and encodeResponse writes, appends what msgpack/v5's Encoder writes for
// the response call by call (referenceEncoding), and grows its argument
// once, to the size needed.
func TestAppendMsgpack(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	resps := []*response{nil}
	for _, resp := range codecResponses() {
		resps = append(resps, resp)
	}
	for range 2000 {
		resps = append(resps, randomResponse(rng))
	}
	for i, resp := range resps {
		want := referenceEncoding(t, resp)
		if viaMsgpack, err := msgpack.Marshal(resp); err != nil || !bytes.Equal(viaMsgpack, want) {
			t.Fatalf("response %d: msgpack.Marshal = %x, %v; want %x", i, viaMsgpack, err, want)
		}
		got, err := resp.AppendMsgpack([]byte("head"))
		if err != nil || string(got[:4]) != "head" || !bytes.Equal(got[4:], want) {
			t.Fatalf("response %d: AppendMsgpack = %x, %v; want head then %x", i, got, err, want)
		}
		if cap(got) != len(got) && resp != nil {
			t.Errorf("response %d: AppendMsgpack grew its argument to %d bytes for %d", i, cap(got), len(got))
		}
		roomy := make([]byte, 2, len(want)+2)
		if again, _ := resp.AppendMsgpack(roomy); &again[0] != &roomy[0] || !bytes.Equal(again[2:], want) {
			t.Errorf("response %d: AppendMsgpack did not append in place", i)
		}
		if coded, err := (codec.MsgPack{}).Marshal(resp); err != nil || !bytes.Equal(coded, want) {
			t.Errorf("response %d: codec.MsgPack wrote %x, %v; want %x", i, coded, err, want)
		}
	}
}

// decodeBoth decodes data with codec.MsgPack, which calls
// DecodeMsgpackBytes, and with msgpack/v5, which calls decodeResponse,
// and fails unless they agree. codec.MsgPack may refuse, with its own
// error, bytes that its check refuses and msgpack/v5 decodes (extension
// types, say).
func decodeBoth(t *testing.T, data []byte) {
	t.Helper()
	var got, want *response
	gotErr := codec.MsgPack{}.Unmarshal(data, &got)
	wantErr := msgpack.Unmarshal(data, &want)
	switch {
	case gotErr != nil && wantErr != nil:
	case gotErr != nil && strings.HasPrefix(gotErr.Error(), "codec: msgpack: "):
	case gotErr != nil || wantErr != nil:
		t.Fatalf("%x: codec.MsgPack: %v; msgpack/v5: %v", data, gotErr, wantErr)
	case !reflect.DeepEqual(got, want):
		t.Fatalf("%x: codec.MsgPack decoded\n%#v\nmsgpack/v5\n%#v", data, got, want)
	}
	// What DecodeMsgpackBytes vouches for, codec's check must accept: it
	// alone runs before msgpack/v5 decodes a RawMessage.
	var r response
	if checked, err := r.DecodeMsgpackBytes(data); checked {
		var raw msgpack.RawMessage
		if err2 := (codec.MsgPack{}).Unmarshal(data, &raw); err != nil || err2 != nil {
			t.Fatalf("%x: DecodeMsgpackBytes vouched for data (%v) that codec.MsgPack refuses: %v", data, err, err2)
		}
	}
	// Into a *response too.
	var gotV, wantV response
	gotErr = codec.MsgPack{}.Unmarshal(data, &gotV)
	wantErr = msgpack.Unmarshal(data, &wantV)
	if gotErr == nil && (wantErr != nil || !reflect.DeepEqual(gotV, wantV)) {
		t.Fatalf("%x: into a response, codec.MsgPack decoded %#v; msgpack/v5 %#v, %v", data, gotV, wantV, wantErr)
	}
}

// TestDecodeMsgpackBytes checks that codec.MsgPack decodes a response as
// msgpack/v5 does, on what AppendMsgpack writes, on the other forms
// msgpack/v5 writes, and on those cut short, extended or damaged.
func TestDecodeMsgpackBytes(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var inputs [][]byte
	for _, resp := range codecResponses() {
		b, err := msgpack.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, b)
		var buf bytes.Buffer
		e := msgpack.NewEncoder(&buf)
		e.UseArrayEncodedStructs(true)
		if err := e.Encode(toReflected(resp)); err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, buf.Bytes())
	}
	for range 300 {
		b, err := msgpack.Marshal(randomResponse(rng))
		if err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, b)
	}
	for _, v := range []any{
		nil, "text", 1, map[string]any{}, []any{}, map[string]any{"Status": 1.5},
		map[string]any{"Path": []byte("/p"), "Body": "b", "Method": nil, "X": []any{1, map[string]any{"y": true}}},
		map[string]any{"Header": map[string]any{"A": "x"}}, map[string]any{"Header": map[string]any{"A": []any{1}}},
		map[string]any{"X": deep(150)}, []any{201, nil, nil, "POST", "/", "extra"},
	} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, b)
	}
	// Extension types, in an unknown field, which codec's check refuses
	// but for the timestamp, and msgpack/v5 skips.
	for _, ext := range [][]byte{{0xd4, 0x05, 0x00}, {0xd6, 0xff, 0, 0, 0, 1}, {0xc7, 0x01, 0x05, 0x00}} {
		b := append([]byte{0x82, 0xa1, 'X'}, ext...)
		inputs = append(inputs, append(b, 0xa6, 'S', 't', 'a', 't', 'u', 's', 0xcc, 201))
	}
	for _, b := range inputs {
		decodeBoth(t, b)
		decodeBoth(t, append(append([]byte(nil), b...), 0xc1, 0x00)) // trailing bytes
		for i := range min(len(b), 64) {
			decodeBoth(t, b[:i])
		}
		for range 20 {
			d := append([]byte(nil), b...)
			d[rng.IntN(len(d))] = byte(rng.IntN(256))
			decodeBoth(t, d)
		}
	}
}

// FuzzDecodeMsgpackBytes checks that codec.MsgPack decodes a response as
// msgpack/v5 does, whatever the bytes.
//
//	go test -run '^$' -fuzz FuzzDecodeMsgpackBytes -fuzztime 60s ./httpadapter
func FuzzDecodeMsgpackBytes(f *testing.F) {
	for _, resp := range codecResponses() {
		if b, err := msgpack.Marshal(resp); err == nil && len(b) < 1000 {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) { decodeBoth(t, data) })
}

// TestResponseDecodeAllocs checks that a replayed response costs the
// allocations of its decoded parts only once its header map is recycled:
// the response, its text, its body and its header values.
func TestResponseDecodeAllocs(t *testing.T) {
	if race.Enabled {
		t.Skip("the race detector makes allocations of its own")
	}
	data, err := codec.MsgPack{}.Marshal(codecResponses()["Created"])
	if err != nil {
		t.Fatal(err)
	}
	box := new(*response)
	n := testing.AllocsPerRun(100, func() {
		*box = nil
		if err := (codec.MsgPack{}).Unmarshal(data, box); err != nil {
			t.Fatal(err)
		}
		(*box).recycleHeader()
	})
	if n > 4 {
		t.Errorf("%v allocations, want 4 at most", n)
	}
}

// BenchmarkResponseCodec measures the encoding and decoding of a response
// like BenchmarkMiddleware's, by codec.MsgPack (which calls AppendMsgpack
// and DecodeMsgpackBytes) and by msgpack/v5 around the coders registered
// with it.
func BenchmarkResponseCodec(b *testing.B) {
	resp := codecResponses()["Created"]
	data, err := codec.MsgPack{}.Marshal(resp)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("Marshal", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 256)
		for b.Loop() {
			if _, err := (codec.MsgPack{}).AppendMarshal(buf, resp); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("MarshalMsgpackV5", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := msgpack.Marshal(resp); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var got *response
			if err := (codec.MsgPack{}).Unmarshal(data, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("UnmarshalMsgpackV5", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var got *response
			if err := msgpack.Unmarshal(data, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
}
