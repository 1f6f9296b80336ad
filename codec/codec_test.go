package codec_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/idemkit/idem/codec"
	"github.com/vmihailenco/msgpack/v5"
)

type inner struct {
	Name  string
	Score float64
	Tags  []string
}

type outer struct {
	ID      string
	Count   int
	Big     int64
	Small   int8
	Unsign  uint32
	OK      bool
	When    time.Time
	Ptr     *inner
	NilPtr  *inner
	Items   []inner
	Empty   []int
	NilList []int
	Index   map[string]inner
	Counts  map[string]int
	Nested  map[string]map[string][]int
	Raw     []byte
	Zero    inner
}

func sample() outer {
	return outer{
		ID: "o-1", Count: 3, Big: 1 << 60, Small: -8, Unsign: 4000000000, OK: true,
		When:  time.Date(2026, 11, 29, 10, 11, 12, 13, time.UTC),
		Ptr:   &inner{Name: "p", Score: 1.5, Tags: []string{"a"}},
		Items: []inner{{Name: "x"}, {Name: "y", Tags: []string{}}},
		Empty: []int{}, Index: map[string]inner{"k": {Name: "v"}},
		Counts: map[string]int{"a": 1, "b": 0},
		Nested: map[string]map[string][]int{"m": {"n": {1, 2, 3}}},
		Raw:    []byte{0, 1, 2, 255},
	}
}

func codecs() []codec.Codec { return []codec.Codec{codec.MsgPack{}, codec.JSON{}} }

func TestRoundTrip(t *testing.T) {
	for _, c := range codecs() {
		t.Run(c.Name(), func(t *testing.T) {
			for name, v := range map[string]outer{"sample": sample(), "zero": {}} {
				b, err := c.Marshal(v)
				if err != nil {
					t.Fatal(err)
				}
				var got outer
				if err := c.Unmarshal(b, &got); err != nil {
					t.Fatal(err)
				}
				// JSON does not keep the difference between nil and empty
				// slices of structs' omitted fields; msgpack does.
				opts := cmp.Options{}
				if c.Name() == "json" {
					opts = append(opts, cmpEmptyAsNil)
				}
				if diff := cmp.Diff(v, got, opts); diff != "" {
					t.Errorf("%s: round trip differs (-want +got):\n%s", name, diff)
				}
			}
		})
	}
}

var cmpEmptyAsNil = cmp.FilterValues(func(a, b []int) bool { return len(a) == 0 && len(b) == 0 }, cmp.Ignore())

func TestRoundTripScalars(t *testing.T) {
	for _, c := range codecs() {
		for _, v := range []any{0, "", false, 1.25, "héllo"} {
			b, err := c.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			ptr := newOf(v)
			if err := c.Unmarshal(b, ptr.ptr); err != nil {
				t.Fatalf("%s %T: %v", c.Name(), v, err)
			}
			if got := ptr.get(); got != v {
				t.Errorf("%s: %#v came back as %#v", c.Name(), v, got)
			}
		}
	}
}

type holder struct {
	ptr any
	get func() any
}

func newOf(v any) holder {
	switch v.(type) {
	case int:
		p := new(int)
		return holder{p, func() any { return *p }}
	case string:
		p := new(string)
		return holder{p, func() any { return *p }}
	case bool:
		p := new(bool)
		return holder{p, func() any { return *p }}
	default:
		p := new(float64)
		return holder{p, func() any { return *p }}
	}
}

func TestCorruptInput(t *testing.T) {
	inputs := [][]byte{nil, {0xc1}, {0xdc, 0xff, 0xff}, {0x92, 0x01}, []byte("{\"ID\":"), {0xdf, 0xff, 0xff, 0xff, 0xff}}
	for _, c := range codecs() {
		for _, in := range inputs {
			var v outer
			if err := c.Unmarshal(in, &v); err == nil {
				t.Errorf("%s: Unmarshal(%x) = nil error, want one", c.Name(), in)
			}
		}
	}
}

// FuzzUnmarshal feeds arbitrary bytes to both codecs: they must return an
// error or a value, never panic. Run longer with
// go test -fuzz FuzzUnmarshal ./codec/
func FuzzUnmarshal(f *testing.F) {
	for _, c := range codecs() {
		b, _ := c.Marshal(sample())
		f.Add(b)
	}
	f.Add([]byte{0xdd, 0x7f, 0xff, 0xff, 0xff})
	// Nesting: past checkMsgpack's fixed stack, and past MaxDepth.
	f.Add(append(bytes.Repeat([]byte{0x91}, 40), 0xc0))
	f.Add(append(bytes.Repeat([]byte{0x81, 0xa1, 'k', 0x92, 0x90}, 40), 0xc0, 0xc0))
	f.Add(append(bytes.Repeat([]byte{0x91}, codec.MaxDepth), 0xc0))
	f.Add([]byte(strings.Repeat(`{"a":[`, 40) + strings.Repeat(`]}`, 40)))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, c := range codecs() {
			var v outer
			_ = c.Unmarshal(data, &v)
			var m map[string]any
			_ = c.Unmarshal(data, &m)
		}
	})
}

type extPoint struct{ X, Y int8 }

func (p *extPoint) MarshalMsgpack() ([]byte, error) { return []byte{byte(p.X), byte(p.Y)}, nil }
func (p *extPoint) UnmarshalMsgpack(b []byte) error {
	if len(b) != 2 {
		return errors.New("bad point")
	}
	p.X, p.Y = int8(b[0]), int8(b[1])
	return nil
}

// TestMarshalRefusesWhatUnmarshalRejects: a value holding a registered
// msgpack extension must fail to encode, not be stored and then fail every
// replay.
func TestMarshalRefusesWhatUnmarshalRejects(t *testing.T) {
	msgpack.RegisterExt(42, (*extPoint)(nil))
	_, err := codec.MsgPack{}.Marshal(struct{ P *extPoint }{&extPoint{1, 2}})
	if err == nil {
		t.Fatal("Marshal accepted an extension type that Unmarshal rejects")
	}
	if _, err := (codec.MsgPack{}).Marshal(struct{ At time.Time }{time.Now()}); err != nil {
		t.Fatalf("time.Time (the timestamp extension) must still encode: %v", err)
	}
}
