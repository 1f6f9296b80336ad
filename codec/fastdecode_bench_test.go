package codec_test

import (
	"testing"

	"github.com/idemkit/idem/codec"
	"github.com/idemkit/idem/internal/race"
	"github.com/vmihailenco/msgpack/v5"
)

// TestFastDecodeCopies checks that decoded strings do not share memory
// with the data.
func TestFastDecodeCopies(t *testing.T) {
	want := fdCharge{ID: "ch_1", Amount: 1, Currency: "eur", Status: "ok"}
	b, err := codec.MsgPack{}.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var got fdCharge
	if err := (codec.MsgPack{}).Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	clear(b)
	if got != want {
		t.Errorf("after the data was cleared: %+v, want %+v", got, want)
	}
}

// TestFastDecodeAllocs checks that the fast path allocates nothing but
// the strings it decodes.
func TestFastDecodeAllocs(t *testing.T) {
	if race.Enabled {
		t.Skip("the race detector makes allocations of its own")
	}
	b, err := codec.MsgPack{}.Marshal(fdCharge{ID: "ch_1", Amount: 1999, Currency: "eur", Status: "succeeded"})
	if err != nil {
		t.Fatal(err)
	}
	var v fdCharge
	if n := testing.AllocsPerRun(100, func() { _ = codec.MsgPack{}.Unmarshal(b, &v) }); n != 3 {
		t.Errorf("Unmarshal of fdCharge: %v allocations, want 3 (its strings)", n)
	}
}

// fdChargeSlow is fdCharge off the fast path (a blank field is unexported),
// decoded as MsgPack.Unmarshal decoded every type before the fast path.
type fdChargeSlow struct {
	ID       string
	Amount   int64
	Currency string
	Status   string
	_        struct{}
}

// BenchmarkUnmarshalFast compares MsgPack.Unmarshal on the fast path with
// msgpack.Unmarshal and with MsgPack.Unmarshal through msgpack/v5.
//
//	go test -run '^$' -bench BenchmarkUnmarshalFast -benchmem ./codec
func BenchmarkUnmarshalFast(b *testing.B) {
	data, err := codec.MsgPack{}.Marshal(fdCharge{ID: "ch_3MmlLrLkdIwHu7ix0snN0B15", Amount: 1999, Currency: "eur", Status: "succeeded"})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("msgpack.Unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		var v fdCharge
		for b.Loop() {
			if err := msgpack.Unmarshal(data, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("MsgPack.Unmarshal/msgpack", func(b *testing.B) {
		b.ReportAllocs()
		var v fdChargeSlow
		for b.Loop() {
			if err := (codec.MsgPack{}).Unmarshal(data, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("MsgPack.Unmarshal/fast", func(b *testing.B) {
		b.ReportAllocs()
		var v fdCharge
		for b.Loop() {
			if err := (codec.MsgPack{}).Unmarshal(data, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("checkMsgpack", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := codec.CheckMsgpack(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
