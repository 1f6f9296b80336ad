package idem_test

import (
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

type fpInner struct {
	Tags  map[string][]string
	Score float64
}

type fpReq struct {
	ID       string
	Amount   int64
	Counts   map[string]int
	ByID     map[int]string
	Nested   map[string]fpInner
	Any      map[string]any
	Items    []fpInner
	Ptr      *fpInner
	At       time.Time
	Addr     netip.Addr
	TraceID  string `idem:"-"`
	internal int
}

func fpSample() fpReq {
	m := map[string]int{}
	byID := map[int]string{}
	for i := range 50 {
		m[fmt.Sprint("k", i)] = i
		byID[i] = fmt.Sprint("v", i)
	}
	return fpReq{
		ID: "o-1", Amount: 1999, Counts: m, ByID: byID,
		Nested: map[string]fpInner{"a": {Tags: map[string][]string{"x": {"1", "2"}, "y": nil}, Score: 0.5}, "b": {}},
		Any:    map[string]any{"n": 1, "s": "str", "m": map[string]int{"p": 1, "q": 2, "r": 3}},
		Items:  []fpInner{{Score: 1}, {Score: 2}},
		Ptr:    &fpInner{Score: 3},
		At:     time.Date(2026, 11, 29, 12, 0, 0, 5, time.UTC),
		Addr:   netip.MustParseAddr("192.0.2.1"),
	}
}

func mustFP(t *testing.T, v any) string {
	t.Helper()
	fp, err := idem.Fingerprint(v)
	if err != nil {
		t.Fatalf("Fingerprint(%T): %v", v, err)
	}
	return fp
}

// TestFingerprintGolden pins the encoding: the same value must give the same
// fingerprint in every process and release, or stored keys would all turn
// into ErrKeyReused after an upgrade.
func TestFingerprintGolden(t *testing.T) {
	// Expected values computed independently: sha256 of the documented
	// encoding, e.g. python3 -c "import hashlib; print(hashlib.sha256(b's\x03req').hexdigest())".
	cases := []struct {
		v    any
		want string
	}{
		{"req", "51fee1289766a9aeaae252fe24421737e21463aa2d565442358a7916df34fd75"},
		{struct {
			A int
			B string
		}{-1, "x"}, "b4dd4c2baf672e48d8de71747a138d6fcc4244fdd477dfe5c00ffa6889bea68c"},
		{map[string]int{"b": 2, "a": 1}, "bf4852158eb4f24058bf249d909211ce8101d9ccfa768fa8b9e04e9487bea70c"},
	}
	for _, c := range cases {
		if got := mustFP(t, c.v); got != c.want {
			t.Errorf("Fingerprint(%#v) = %s, want %s", c.v, got, c.want)
		}
	}
}

func TestFingerprintMapOrder(t *testing.T) {
	want := mustFP(t, fpSample())
	for i := range 200 {
		if got := mustFP(t, fpSample()); got != want {
			t.Fatalf("encode %d: fingerprint changed with map iteration order", i)
		}
	}
}

func TestFingerprintDistinguishes(t *testing.T) {
	base := mustFP(t, fpSample())
	changes := map[string]func(*fpReq){
		"amount":       func(r *fpReq) { r.Amount++ },
		"map value":    func(r *fpReq) { r.Counts["k3"] = 4 },
		"map key":      func(r *fpReq) { delete(r.Counts, "k3"); r.Counts["k3x"] = 3 },
		"nested slice": func(r *fpReq) { r.Nested["a"].Tags["x"][1] = "3" },
		"nil vs empty": func(r *fpReq) { r.Nested["a"].Tags["y"] = []string{} },
		"any type":     func(r *fpReq) { r.Any["n"] = int64(1) },
		"pointer":      func(r *fpReq) { r.Ptr = nil },
		"slice order":  func(r *fpReq) { r.Items[0], r.Items[1] = r.Items[1], r.Items[0] },
		"instant":      func(r *fpReq) { r.At = r.At.Add(time.Nanosecond) },
		"addr":         func(r *fpReq) { r.Addr = netip.MustParseAddr("192.0.2.2") },
		"string split": func(r *fpReq) { r.ID = "o-1" + "\x00" },
	}
	for name, change := range changes {
		r := fpSample()
		change(&r)
		if mustFP(t, r) == base {
			t.Errorf("%s: changed request has the same fingerprint", name)
		}
	}
}

func TestFingerprintIgnores(t *testing.T) {
	base := mustFP(t, fpSample())
	same := map[string]func(*fpReq){
		"idem:\"-\" field": func(r *fpReq) { r.TraceID = "trace-123" },
		"unexported":       func(r *fpReq) { r.internal = 7 },
		"time zone":        func(r *fpReq) { r.At = r.At.In(time.FixedZone("X", 3600)) },
		"monotonic clock":  func(r *fpReq) { r.At = r.At.Round(0) },
	}
	for name, change := range same {
		r := fpSample()
		change(&r)
		if mustFP(t, r) != base {
			t.Errorf("%s: fingerprint changed, want it ignored", name)
		}
	}
	if mustFP(t, int32(7)) != mustFP(t, int64(7)) {
		t.Error("int32(7) and int64(7) differ; integer width should not matter")
	}
	if mustFP(t, "ab") == mustFP(t, []string{"a", "b"}) {
		t.Error(`"ab" and ["a" "b"] collide`)
	}
}

func TestFingerprintUnsupported(t *testing.T) {
	type cyc struct{ Next *cyc }
	loop := &cyc{}
	loop.Next = loop
	for name, v := range map[string]any{
		"func":  struct{ F func() }{F: func() {}},
		"chan":  make(chan int),
		"cycle": loop,
	} {
		_, err := idem.Fingerprint(v)
		if !errors.Is(err, idem.ErrFingerprint) {
			t.Errorf("%s: err = %v, want ErrFingerprint", name, err)
		}
	}
	if _, err := idem.Fingerprint(struct{ F func() }{}); !errors.Is(err, idem.ErrFingerprint) || !strings.Contains(err.Error(), "func") {
		t.Errorf("nil func field: %v, want ErrFingerprint naming the type", err)
	}
}

type account struct{ Account string }

type embedded struct {
	account
	Amount int
}

type opaque struct{ secret int }

func TestFingerprintMarshalersAndEmbedding(t *testing.T) {
	if mustFP(t, big.NewInt(100)) == mustFP(t, big.NewInt(1000000)) {
		t.Error("*big.Int 100 and 1000000 collide (pointer-receiver marshaler ignored)")
	}
	type amount struct{ Value big.Int }
	var a, b amount
	a.Value.SetInt64(100)
	b.Value.SetInt64(1000000)
	if mustFP(t, a) == mustFP(t, b) {
		t.Error("big.Int fields 100 and 1000000 collide")
	}
	if mustFP(t, embedded{account{"alice"}, 5}) == mustFP(t, embedded{account{"bob"}, 5}) {
		t.Error("fields promoted from an unexported embedded struct are ignored")
	}
	if _, err := idem.Fingerprint(opaque{1}); !errors.Is(err, idem.ErrFingerprint) {
		t.Errorf("opaque struct: %v, want ErrFingerprint rather than a constant fingerprint", err)
	}
	if _, err := idem.Fingerprint(struct{}{}); err != nil {
		t.Errorf("empty struct: %v", err)
	}
}

type node struct {
	*node
	X int
}

func TestFingerprintEmbeddedMarshalers(t *testing.T) {
	type charge struct {
		time.Time
		Amount  int64
		Account string
	}
	at := time.Unix(1700000000, 0)
	if mustFP(t, charge{at, 100, "a"}) == mustFP(t, charge{at, 1000000, "a"}) {
		t.Error("an embedded time.Time hides the other fields")
	}
	type money struct {
		*big.Int
		Currency string
	}
	if mustFP(t, money{big.NewInt(1), "USD"}) == mustFP(t, money{big.NewInt(1), "EUR"}) {
		t.Error("an embedded *big.Int hides the other fields")
	}
	type nilEmbedded struct {
		*time.Time
		Amount int
	}
	if _, err := idem.Fingerprint(nilEmbedded{Amount: 1}); err != nil {
		t.Errorf("nil embedded *time.Time: %v", err)
	}
	loop := &node{X: 1}
	loop.node = loop
	if _, err := idem.Fingerprint(loop); !errors.Is(err, idem.ErrFingerprint) {
		t.Errorf("cycle through an embedded pointer: %v, want ErrFingerprint", err)
	}
}

type panicky struct{ v *int }

func (p panicky) MarshalText() ([]byte, error) { return []byte(fmt.Sprint(*p.v)), nil }

func TestFingerprintMarshalerPanics(t *testing.T) {
	if _, err := idem.Fingerprint(panicky{}); !errors.Is(err, idem.ErrFingerprint) {
		t.Errorf("panicking marshaler: %v, want ErrFingerprint", err)
	}
}

// TestFingerprintGoldenMarshalers pins the encoding of marshaler types:
// 'X', length, MarshalText (a pointer-receiver method on big.Int), behind
// 'p' for the pointer. Computed independently:
// python3 -c "import hashlib; print(hashlib.sha256(b'p' + b'X\x03100').hexdigest())"
func TestFingerprintGoldenMarshalers(t *testing.T) {
	const want = "0c4533b56227717d54d60a3c76322a4ec1b63d921a5757b427569155fad25f84"
	if got := mustFP(t, big.NewInt(100)); got != want {
		t.Errorf("Fingerprint(big.NewInt(100)) = %s, want %s", got, want)
	}
}
