package codec_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/idemkit/idem/codec"
	"github.com/vmihailenco/msgpack/v5"
)

// BenchmarkMarshal compares the codecs with the libraries they call, on a
// plain struct result (a type that can be neither deep nor cyclic, so the
// guard is one cache lookup) and on a map[string]any one (which the guard
// walks). "guard" and "guard-json" are the walks alone;
// "msgpack.Marshal+check" is MsgPack's Marshal without the guard.
//
//	go test -run '^$' -bench BenchmarkMarshal -benchmem ./codec/
func BenchmarkMarshal(b *testing.B) {
	plain := sample()
	dynamic := map[string]any{
		"id": "o-1", "count": 3, "ok": true, "tags": []any{"a", "b", "c"},
		"items": []any{map[string]any{"name": "x", "score": 1.5}, map[string]any{"name": "y"}},
	}
	for _, v := range []struct {
		name string
		v    any
	}{{"plain", plain}, {"map", dynamic}} {
		for _, m := range []struct {
			name string
			fn   func(any) ([]byte, error)
		}{
			{"msgpack.Marshal", msgpack.Marshal},
			{"msgpack.Marshal+check", func(v any) ([]byte, error) {
				out, err := msgpack.Marshal(v)
				return out, errors.Join(err, codec.CheckMsgpack(out))
			}},
			{"MsgPack.Marshal", codec.MsgPack{}.Marshal},
			{"guard", func(v any) ([]byte, error) { return nil, codec.Guard(v) }},
			{"json.Marshal", json.Marshal},
			{"guard-json", func(v any) ([]byte, error) { return nil, codec.GuardJSON(v) }},
			{"JSON.Marshal", codec.JSON{}.Marshal},
		} {
			b.Run(v.name+"/"+m.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := m.fn(v.v); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestGuardAllocs: the guard allocates nothing for a plain struct, and
// checking shallow msgpack data allocates nothing either.
func TestGuardAllocs(t *testing.T) {
	var v any = sample()
	if n := testing.AllocsPerRun(100, func() { _ = codec.Guard(v) }); n != 0 {
		t.Errorf("guard of a plain struct: %v allocations, want 0", n)
	}
	data, err := codec.MsgPack{}.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = codec.CheckMsgpack(data) }); n != 0 {
		t.Errorf("checkMsgpack of a plain struct: %v allocations, want 0", n)
	}
	deep := nestedData(codec.MsgPack{}, 32)
	if n := testing.AllocsPerRun(100, func() { _ = codec.CheckMsgpack(deep) }); n != 0 {
		t.Errorf("checkMsgpack of 32 levels: %v allocations, want 0", n)
	}
}
