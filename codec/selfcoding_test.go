package codec_test

import (
	"bytes"
	"errors"
	"reflect"
	"sync/atomic"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/idemkit/idem/codec"
)

// selfCoded has a coder registered with msgpack, encoding it as the array
// [N, S], and methods that do the same on bytes, counting their calls.
type selfCoded struct {
	N int
	S string
}

var selfCalls atomic.Int64

func init() { msgpack.Register(selfCoded{}, encodeSelfCoded, decodeSelfCoded) }

func encodeSelfCoded(e *msgpack.Encoder, v reflect.Value) error {
	s := v.Interface().(selfCoded)
	if err := e.EncodeArrayLen(2); err != nil {
		return err
	}
	if err := e.EncodeInt(int64(s.N)); err != nil {
		return err
	}
	return e.EncodeString(s.S)
}

func decodeSelfCoded(d *msgpack.Decoder, v reflect.Value) error {
	s := v.Addr().Interface().(*selfCoded)
	n, err := d.DecodeArrayLen()
	switch {
	case err != nil:
		return err
	case n == -1:
		*s = selfCoded{}
		return nil
	case n != 2:
		return errors.New("selfCoded: want 2 elements")
	}
	if s.N, err = d.DecodeInt(); err != nil {
		return err
	}
	s.S, err = d.DecodeString()
	return err
}

func (s *selfCoded) AppendMsgpack(dst []byte) ([]byte, error) {
	selfCalls.Add(1)
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	var err error
	if s == nil {
		err = e.EncodeNil()
	} else {
		err = encodeSelfCoded(e, reflect.ValueOf(*s))
	}
	return append(dst, buf.Bytes()...), err
}

// DecodeMsgpackBytes vouches for the data when it holds no more than the
// value it decoded, whose array and integer msgpack/v5 checked, and
// whose string it read whole: then the check cannot fail.
func (s *selfCoded) DecodeMsgpackBytes(data []byte) (bool, error) {
	selfCalls.Add(1)
	r := bytes.NewReader(data)
	err := decodeSelfCoded(msgpack.NewDecoder(r), reflect.ValueOf(s).Elem())
	return err == nil && r.Len() == 0, err
}

// TestSelfCoding checks that MsgPack hands a type with AppendMsgpack and
// DecodeMsgpackBytes methods its bytes, and around them does what it does
// around msgpack/v5: a nil pointer, a pointer to a nil or to a set
// pointer, nil in the data, trailing bytes, data that fails the check.
func TestSelfCoding(t *testing.T) {
	var c codec.MsgPack
	calls := func(t *testing.T, want int64, f func()) {
		t.Helper()
		before := selfCalls.Load()
		f()
		if got := selfCalls.Load() - before; got != want {
			t.Errorf("%d calls of the methods, want %d", got, want)
		}
	}
	v := &selfCoded{N: 7, S: "seven"}
	want, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	calls(t, 1, func() {
		if got, err := c.AppendMarshal([]byte("head"), v); err != nil || string(got) != "head"+string(want) {
			t.Errorf("AppendMarshal = %x, %v; want head then %x", got, err, want)
		}
	})
	calls(t, 1, func() {
		if got, err := c.Marshal((*selfCoded)(nil)); err != nil || !bytes.Equal(got, []byte{0xc0}) {
			t.Errorf("Marshal(nil) = %x, %v", got, err)
		}
	})
	calls(t, 0, func() { // not a pointer: msgpack/v5
		if got, err := c.Marshal(*v); err != nil || !bytes.Equal(got, want) {
			t.Errorf("Marshal(value) = %x, %v; want %x", got, err, want)
		}
	})

	// Each decoding into a fresh target, by MsgPack and by msgpack/v5.
	type target struct {
		name  string
		fresh func() any
		calls int64
	}
	set := &selfCoded{N: 1, S: "old"}
	targets := []target{
		{"Value", func() any { return &selfCoded{N: 1, S: "old"} }, 1},
		{"NilPointer", func() any { return new(*selfCoded) }, 1},
		{"SetPointer", func() any { p := *set; q := &p; return &q }, 1},
		{"Nil", func() any { return (*selfCoded)(nil) }, 0},
		{"PointerToNil", func() any { return (**selfCoded)(nil) }, 0},
		{"ThreeLevels", func() any { q := new(*selfCoded); return &q }, 0},
	}
	inputs := map[string][]byte{
		"Encoded":  want,
		"Nil":      {0xc0},
		"Trailing": append(append([]byte(nil), want...), 0xc1),
		"Wrong":    {0x91, 0x01},
		"Empty":    {},
		"Cut":      want[:len(want)-1],
		"Ext":      {0xd4, 0x05, 0x00}, // msgpack/v5 reads it; the check refuses it
	}
	for _, tg := range targets {
		for in, data := range inputs {
			t.Run(tg.name+"/"+in, func(t *testing.T) {
				checked := codec.CheckMsgpack(data) == nil
				got, ref := tg.fresh(), tg.fresh()
				wantCalls := tg.calls
				if len(data) == 0 || data[0] == 0xc0 && tg.name != "Value" {
					wantCalls = 0
				}
				var gotErr error
				calls(t, wantCalls, func() { gotErr = c.Unmarshal(data, got) })
				refErr := msgpack.Unmarshal(data, ref)
				switch {
				case !checked:
					if !errors.Is(gotErr, codec.ErrMsgpack) {
						t.Errorf("error %v on data the check refuses, want the check's", gotErr)
					}
				case (gotErr == nil) != (refErr == nil):
					t.Errorf("Unmarshal: %v; msgpack/v5: %v", gotErr, refErr)
				case gotErr == nil && !reflect.DeepEqual(got, ref):
					t.Errorf("Unmarshal decoded %#v; msgpack/v5 %#v", got, ref)
				}
			})
		}
	}
}
