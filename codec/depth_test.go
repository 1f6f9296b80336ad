package codec_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/idemkit/idem/codec"
	"github.com/vmihailenco/msgpack/v5"
)

type node struct {
	Val  int
	Next *node
}

// list returns a linked list of n nodes: n levels.
func list(n int) *node {
	var head *node
	for i := n; i > 0; i-- {
		head = &node{Val: i, Next: head}
	}
	return head
}

// nestedSlices returns n slices, each holding the next: n levels.
func nestedSlices(n int) any {
	v := any([]any{})
	for range n - 1 {
		v = []any{v}
	}
	return v
}

type box struct{ V any }

type loopPtr *loopPtr

// mustRefuse checks that Marshal of v fails with ErrTooDeep under every
// codec (and mentions want, if set).
func mustRefuse(t *testing.T, v any, want string) {
	t.Helper()
	for _, c := range codecs() {
		b, err := c.Marshal(v)
		if !errors.Is(err, codec.ErrTooDeep) {
			t.Errorf("%s: Marshal = %d bytes, %v; want an error wrapping ErrTooDeep", c.Name(), len(b), err)
			continue
		}
		if !strings.HasPrefix(err.Error(), "codec: ") || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %q, want one starting with \"codec: \" and mentioning %q", c.Name(), err, want)
		}
	}
}

func TestMarshalRefusesCycles(t *testing.T) {
	ring := &node{Val: 1, Next: &node{Val: 2, Next: &node{Val: 3}}}
	ring.Next.Next.Next = ring
	self := &node{Val: 1}
	self.Next = self

	m := map[string]any{"a": 1}
	m["self"] = m
	deeper := map[string]any{"list": []any{1, map[string]any{"back": m}}}

	s := []any{nil, "x"}
	s[0] = s

	b := &box{}
	b.V = b
	b2 := &box{V: []any{&box{V: map[string]any{}}}}
	b2.V.([]any)[0].(*box).V.(map[string]any)["up"] = b2

	var p loopPtr
	p = &p

	for name, tc := range map[string]struct {
		v    any
		want string
	}{
		"pointer to itself":     {self, "cycle through *codec_test.node"},
		"ring of pointers":      {ring, "cycle through *codec_test.node"},
		"struct value in cycle": {*ring, "cycle through *codec_test.node"},
		"map holding itself":    {m, "cycle through map[string]interface {}"},
		"map cycle further in":  {deeper, "cycle through map[string]interface {}"},
		"slice holding itself":  {s, "cycle through []interface {}"},
		"interface field":       {b, "cycle through *codec_test.box"},
		"interfaces and maps":   {b2, "cycle through"},
		"pointer-only loop":     {p, "codec_test.loopPtr"},
	} {
		t.Run(name, func(t *testing.T) { mustRefuse(t, tc.v, tc.want) })
	}
}

func TestMarshalRefusesDeepValues(t *testing.T) {
	t.Parallel()
	for name, v := range map[string]any{
		"20,000-node list":       list(20000),
		"2,000,000-node list":    list(2_000_000),
		"20,000 nested slices":   nestedSlices(20000),
		"20,000 nested in boxes": boxes(20000),
	} {
		t.Run(name, func(t *testing.T) { mustRefuse(t, v, "more than 10000 levels") })
	}
}

// boxes returns n levels of maps in interfaces in structs.
func boxes(n int) any {
	v := any(nil)
	for range n / 2 {
		v = box{V: map[string]any{"v": v}}
	}
	return v
}

func TestDeepValueRoundTrips(t *testing.T) {
	t.Parallel()
	for _, c := range codecs() {
		t.Run(c.Name(), func(t *testing.T) {
			want := list(5000)
			b, err := c.Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			var got *node
			if err := c.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if !cmp.Equal(want, got) {
				t.Error("a 5,000-node list does not come back equal")
			}
		})
	}
	// The same list closed into a ring is refused: what let it through is
	// its depth and the absence of a cycle, not its length.
	head := list(5000)
	tail := head
	for tail.Next != nil {
		tail = tail.Next
	}
	tail.Next = head
	mustRefuse(t, head, "cycle through *codec_test.node")
}

// TestDepthBoundary: MaxDepth levels are accepted, and what Marshal
// accepts Unmarshal decodes; one more is refused, on both sides.
func TestDepthBoundary(t *testing.T) {
	t.Parallel()
	for _, c := range codecs() {
		t.Run(c.Name(), func(t *testing.T) {
			for name, mk := range map[string]func(int) any{
				"list":   func(n int) any { return list(n) },
				"slices": nestedSlices,
			} {
				b, err := c.Marshal(mk(codec.MaxDepth))
				if err != nil {
					t.Fatalf("%s of %d levels: %v", name, codec.MaxDepth, err)
				}
				var back any
				if err := c.Unmarshal(b, &back); err != nil {
					t.Fatalf("%s of %d levels: Marshal accepts it, Unmarshal does not: %v", name, codec.MaxDepth, err)
				}
				if _, err := c.Marshal(mk(codec.MaxDepth + 1)); !errors.Is(err, codec.ErrTooDeep) {
					t.Errorf("%s of %d levels: Marshal error = %v, want ErrTooDeep", name, codec.MaxDepth+1, err)
				}
			}
			for levels, ok := range map[int]bool{1: true, codec.MaxDepth: true, codec.MaxDepth + 1: false} {
				data := nestedData(c, levels)
				var v any
				err := c.Unmarshal(data, &v)
				if ok && err != nil {
					t.Errorf("Unmarshal of %d levels: %v", levels, err)
				}
				if !ok && !errors.Is(err, codec.ErrTooDeep) {
					t.Errorf("Unmarshal of %d levels: error = %v, want ErrTooDeep", levels, err)
				}
			}
		})
	}
}

// nestedData returns an encoding of levels arrays, each holding the next,
// the last empty.
func nestedData(c codec.Codec, levels int) []byte {
	if c.Name() == "json" {
		return []byte(strings.Repeat("[", levels) + strings.Repeat("]", levels))
	}
	return append(bytes.Repeat([]byte{0x91}, levels-1), 0x90)
}

type recursive struct{ Next *recursive }

type recursiveMap struct {
	Name string
	Kids map[string]recursiveMap
}

// TestUnmarshalRefusesDeepData: two million levels of one-element arrays
// from a damaged store must give an error, not kill the process.
func TestUnmarshalRefusesDeepData(t *testing.T) {
	t.Parallel()
	arrays := append(bytes.Repeat([]byte{0x91}, 2_000_000), 0xc0)
	var maps []byte
	for range 1_000_000 {
		maps = append(maps, 0x82, 0xa4, 'N', 'a', 'm', 'e', 0xa0, 0xa4, 'K', 'i', 'd', 's', 0x81, 0xa1, 'k')
	}
	maps = append(maps, 0xc0)
	jsonArrays := []byte(strings.Repeat("[", 2_000_000) + strings.Repeat("]", 2_000_000))
	for name, tc := range map[string]struct {
		c    codec.Codec
		data []byte
		into any
	}{
		"msgpack into any":              {codec.MsgPack{}, arrays, new(any)},
		"msgpack into []any":            {codec.MsgPack{}, arrays, new([]any)},
		"msgpack into recursive struct": {codec.MsgPack{}, arrays, new(recursive)},
		"msgpack maps into struct":      {codec.MsgPack{}, maps, new(recursiveMap)},
		"msgpack maps into any":         {codec.MsgPack{}, maps, new(any)},
		"json into any":                 {codec.JSON{}, jsonArrays, new(any)},
	} {
		t.Run(name, func(t *testing.T) {
			err := tc.c.Unmarshal(tc.data, tc.into)
			if !errors.Is(err, codec.ErrTooDeep) {
				t.Fatalf("Unmarshal error = %v, want one wrapping ErrTooDeep", err)
			}
			if !strings.HasPrefix(err.Error(), "codec: ") {
				t.Errorf("error %q does not start with \"codec: \"", err)
			}
		})
	}
}

func TestDeepDataErrorWrapsMalformed(t *testing.T) {
	err := codec.CheckMsgpack(nestedData(codec.MsgPack{}, codec.MaxDepth+1))
	if !errors.Is(err, codec.ErrTooDeep) || !errors.Is(err, codec.ErrMsgpack) {
		t.Errorf("error = %v, want one wrapping ErrTooDeep and the malformed-data error", err)
	}
}

type tree struct {
	Name   string
	Parent *tree `msgpack:"-" json:"-"`
	Kids   []*tree
}

type untaggedTree struct {
	Name   string
	Parent *untaggedTree
	Kids   []*untaggedTree
}

// TestParentBackPointer: a back-pointer tagged "-" is not encoded, so it
// is no cycle; the same without the tag is.
func TestParentBackPointer(t *testing.T) {
	root := &tree{Name: "root"}
	uroot := &untaggedTree{Name: "root"}
	for i, n, un := 0, root, uroot; i < 60; i++ { // past cycleAfter
		kid := &tree{Name: "kid", Parent: n}
		n.Kids = append(n.Kids, kid, &tree{Name: "leaf", Parent: n})
		ukid := &untaggedTree{Name: "kid", Parent: un}
		un.Kids = append(un.Kids, ukid)
		n, un = kid, ukid
	}
	for _, c := range codecs() {
		b, err := c.Marshal(root)
		if err != nil {
			t.Fatalf("%s: %v", c.Name(), err)
		}
		var got *tree
		if err := c.Unmarshal(b, &got); err != nil {
			t.Fatalf("%s: %v", c.Name(), err)
		}
		// (cmp.Diff takes exponential time on a tree this deep.)
		if b2, err := c.Marshal(got); err != nil || !bytes.Equal(b, b2) || got.Kids[0].Kids[1].Name != "leaf" {
			t.Errorf("%s: round trip differs: %v", c.Name(), err)
		}
	}
	mustRefuse(t, uroot, "cycle through *codec_test.untaggedTree")
}

type dagNode struct {
	ID     int
	Next   *dagNode
	Shared *node
	Meta   map[string]any
	Also   []any
}

// TestDAG: the same pointer, map or slice reached again on another path
// is no cycle.
func TestDAG(t *testing.T) {
	shared := list(3)
	meta := map[string]any{"k": "v", "list": []any{1, "two"}}
	also := []any{"x", meta}
	var head *dagNode
	for i := range 300 {
		head = &dagNode{ID: i, Next: head, Shared: shared, Meta: meta, Also: also}
	}
	top := map[string]any{"a": head, "b": head, "c": []any{head, head}}
	for _, c := range codecs() {
		for name, v := range map[string]any{"list": head, "map": top} {
			if _, err := c.Marshal(v); err != nil {
				t.Errorf("%s %s: %v", c.Name(), name, err)
			}
		}
	}
	tail := head
	for tail.Next != nil {
		tail = tail.Next
	}
	tail.Next = head
	mustRefuse(t, head, "cycle through *codec_test.dagNode")
	tail.Next = nil
	meta["loop"] = []any{top}
	mustRefuse(t, top, "cycle through")
}

// ringNode holds a cycle; the types below encode it themselves.
type ringNode struct {
	V    int
	Next *ringNode
}

func newRing() *ringNode {
	r := &ringNode{V: 1, Next: &ringNode{V: 2, Next: &ringNode{V: 3}}}
	r.Next.Next.Next = r
	return r
}

func ringValues(r *ringNode) []int {
	var vs []int
	for n := r; n != nil; n = n.Next {
		vs = append(vs, n.V)
		if n.Next == r {
			break
		}
	}
	return vs
}

type marshalRing struct{ Head *ringNode }

func (r marshalRing) MarshalMsgpack() ([]byte, error) { return msgpack.Marshal(ringValues(r.Head)) }
func (r marshalRing) MarshalJSON() ([]byte, error)    { return json.Marshal(ringValues(r.Head)) }

type encoderRing struct{ Head *ringNode }

func (r encoderRing) EncodeMsgpack(e *msgpack.Encoder) error { return e.Encode(ringValues(r.Head)) }
func (r encoderRing) MarshalText() ([]byte, error) {
	return fmt.Appendf(nil, "%v", ringValues(r.Head)), nil
}

// ptrRing encodes itself only through a pointer receiver.
type ptrRing struct{ Head *ringNode }

func (r *ptrRing) MarshalMsgpack() ([]byte, error) { return msgpack.Marshal(ringValues(r.Head)) }
func (r *ptrRing) MarshalJSON() ([]byte, error)    { return json.Marshal(ringValues(r.Head)) }

type plainRing struct{ Head *ringNode }

type ringHolder struct {
	Name string
	Ring ptrRing
}

// TestSelfEncodingStopsTheWalk: a type with its own marshaler decides its
// encoding, so a cycle inside it is not the codec's concern; the same data
// without the marshaler is refused.
func TestSelfEncodingStopsTheWalk(t *testing.T) {
	r := newRing()
	for name, v := range map[string]any{
		"Marshaler":                    marshalRing{r},
		"Marshaler in a map":           map[string]any{"r": marshalRing{r}, "p": &marshalRing{r}},
		"CustomEncoder/TextMarshaler":  []encoderRing{{r}},
		"pointer receiver, by pointer": &ringHolder{Name: "h", Ring: ptrRing{r}},
	} {
		for _, c := range codecs() {
			if _, err := c.Marshal(v); err != nil {
				t.Errorf("%s %s: %v", c.Name(), name, err)
			}
		}
	}
	mustRefuse(t, plainRing{r}, "cycle through *codec_test.ringNode")
	// By value, the pointer-receiver marshaler is out of reach:
	// encoding/json encodes the fields (and would meet the cycle), msgpack
	// refuses the value.
	if _, err := (codec.JSON{}).Marshal(ringHolder{Ring: ptrRing{r}}); !errors.Is(err, codec.ErrTooDeep) {
		t.Errorf("json: holder by value: error = %v, want ErrTooDeep", err)
	}
	if _, err := (codec.MsgPack{}).Marshal(ringHolder{Ring: ptrRing{r}}); err == nil || errors.Is(err, codec.ErrTooDeep) {
		t.Errorf("msgpack: holder by value: error = %v, want msgpack's own", err)
	}
}

type selfEmbedding struct {
	*selfEmbedding
	X int
}

type embedA struct {
	*embedB
	A int
}

type embedB struct {
	*embedA
	B int
}

// TestEmbeddingLoop: msgpack/v5 recurses forever analysing a struct that
// embeds itself; encoding/json does not.
func TestEmbeddingLoop(t *testing.T) {
	for name, v := range map[string]any{
		"direct":   selfEmbedding{selfEmbedding: &selfEmbedding{X: 2}, X: 1},
		"indirect": &embedA{A: 1},
		"inside":   map[string]any{"x": []any{embedB{B: 2}}},
	} {
		if _, err := (codec.MsgPack{}).Marshal(v); !errors.Is(err, codec.ErrTooDeep) || !strings.Contains(err.Error(), "embeds itself") {
			t.Errorf("msgpack %s: error = %v, want ErrTooDeep (embeds itself)", name, err)
		}
		if _, err := (codec.JSON{}).Marshal(v); err != nil {
			t.Errorf("json %s: %v", name, err)
		}
	}
	if _, err := (codec.MsgPack{}).Marshal(loopPtr(nil)); !errors.Is(err, codec.ErrTooDeep) {
		t.Errorf("msgpack: nil loopPtr: error = %v, want ErrTooDeep", err)
	}
	if b, err := (codec.JSON{}).Marshal(loopPtr(nil)); err != nil || string(b) != "null" {
		t.Errorf("json: nil loopPtr = %s, %v", b, err)
	}
}

type rawHolder struct{ Raw json.RawMessage }

// TestJSONMarshalerOutputDepth: a json.Marshaler's output is not walked, so
// the depth of the whole encoding is checked when one is met.
func TestJSONMarshalerOutputDepth(t *testing.T) {
	raw := json.RawMessage(strings.Repeat("[", codec.MaxDepth-1) + strings.Repeat("]", codec.MaxDepth-1))
	if _, err := (codec.JSON{}).Marshal(rawHolder{Raw: raw}); err != nil {
		t.Fatalf("%d levels: %v", codec.MaxDepth, err)
	}
	for _, v := range []any{[]rawHolder{{Raw: raw}}, []any{rawHolder{Raw: raw}}} {
		if _, err := (codec.JSON{}).Marshal(v); !errors.Is(err, codec.ErrTooDeep) {
			t.Errorf("%d levels in %T: error = %v, want ErrTooDeep", codec.MaxDepth+1, v, err)
		}
	}
}

// TestFieldsNotEncodedAreNotWalked: unexported and "-" fields hold
// cycles msgpack and encoding/json never see.
func TestFieldsNotEncodedAreNotWalked(t *testing.T) {
	type hidden struct {
		Name  string
		next  *node
		Skip  *node `msgpack:"-" json:"-"`
		Inner struct{ Back any }
	}
	self := &node{}
	self.Next = self
	v := hidden{Name: "x", next: self, Skip: self}
	v.Inner.Back = "fine"
	for _, c := range codecs() {
		if _, err := c.Marshal(v); err != nil {
			t.Errorf("%s: %v", c.Name(), err)
		}
	}
	v.Inner.Back = self // encoded: refused
	mustRefuse(t, v, "cycle through *codec_test.node")
}

// deepEncoder writes n nested arrays itself, out of the walk's sight.
type deepEncoder struct{ n int }

func (d deepEncoder) EncodeMsgpack(e *msgpack.Encoder) error {
	for range d.n {
		if err := e.EncodeArrayLen(1); err != nil {
			return err
		}
	}
	return e.EncodeNil()
}

// TestMarshalChecksSelfEncodedDepth: what a self-encoding type writes is
// not walked, but Marshal still refuses an encoding Unmarshal would.
func TestMarshalChecksSelfEncodedDepth(t *testing.T) {
	if _, err := (codec.MsgPack{}).Marshal([]any{deepEncoder{codec.MaxDepth - 1}}); err != nil {
		t.Fatalf("%d levels: %v", codec.MaxDepth, err)
	}
	if _, err := (codec.MsgPack{}).Marshal([]any{deepEncoder{codec.MaxDepth}}); !errors.Is(err, codec.ErrTooDeep) {
		t.Fatalf("%d levels: error = %v, want ErrTooDeep", codec.MaxDepth+1, err)
	}
}

type concA struct {
	Name string
	Kids []*concB
}

type concB struct {
	Up   *concA
	Data map[string]any
}

// TestConcurrentMarshal: the per-type analysis is shared by concurrent
// calls (run with -race).
func TestConcurrentMarshal(t *testing.T) {
	a := &concA{Name: "a"}
	a.Kids = []*concB{{Data: map[string]any{"x": 1}}, {Up: a}}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			c := codecs()[i%2]
			if _, err := c.Marshal(a); !errors.Is(err, codec.ErrTooDeep) {
				t.Errorf("%s: error = %v, want ErrTooDeep", c.Name(), err)
			}
			if _, err := c.Marshal(a.Kids[0]); err != nil {
				t.Errorf("%s: %v", c.Name(), err)
			}
		})
	}
	wg.Wait()
}

// TestMarshalRefusesLongPointerChains: pointers and interfaces are not
// levels, but the encoders recurse on them too.
func TestMarshalRefusesLongPointerChains(t *testing.T) {
	var v any = "end"
	for range 25_000 {
		p := v
		v = &p // *any holding the previous *any: two steps each
	}
	mustRefuse(t, v, "pointers, interfaces and levels")
	v = "end"
	for range 1000 {
		p := v
		v = &p
	}
	for _, c := range codecs() {
		if _, err := c.Marshal(v); err != nil {
			t.Errorf("%s: a chain of 1,000 pointers: %v", c.Name(), err)
		}
	}
}

// TestMarshalPanicIsError checks that a panic inside msgpack/v5 while
// encoding (an "intern" tag on a field that is not a string) is returned as
// an error, not raised in the caller.
func TestMarshalPanicIsError(t *testing.T) {
	type bad struct {
		N int `msgpack:",intern"`
	}
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("Marshal panicked: %v", r)
		}
	}()
	if _, err := (codec.MsgPack{}).Marshal(bad{N: 1}); err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("Marshal = %v, want the panic as an error", err)
	}
}
