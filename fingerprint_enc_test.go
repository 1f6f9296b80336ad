package idem_test

import (
	"fmt"
	"math"
	"math/big"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/race"
)

type encName string

type encMeta map[string]string

type encCounts map[string]int

type encAnyMap map[string]any

// encCode has a value-receiver text marshaler.
type encCode string

func (c encCode) MarshalText() ([]byte, error) { return []byte("code:" + string(c)), nil }

type encByte uint8

type encBytes []byte

type encLeaf struct {
	N int
	S string
}

type encBase struct {
	ID   encName
	Meta encMeta
}

type encWrap struct {
	Meta   encMeta
	Counts encCounts
	Plain  map[string]string
	Any    encAnyMap
	Int64s map[string]int64
	Bools  map[string]bool
	Floats map[string]float64
	Codes  map[encCode]int
	ByCode map[string]encCode
	Names  map[encName]string
	Leaves map[string]encLeaf
	Big    map[string]int
	Ptrs   map[string]*encLeaf
	Arr    [3]encByte
	Bytes  encBytes
	Raw    []byte
	U      uint16
	C      complex64
	F32    float32
	I8     int8
	B      bool
	When   time.Time
	WhenP  *time.Time
	Addr   netip.Addr
	Amt    *big.Int
	Iface  any
	Nested []map[string]any
	encBase
	skip int
}

func encSample() encWrap {
	many := map[string]int{}
	for i := range 40 {
		many[fmt.Sprint("key-", i*7919%1000)] = i - 20
	}
	when := time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("Z", 7200))
	return encWrap{
		Meta:    encMeta{"order": "o-1", "cart": "c-7", "": "empty", strings.Repeat("k", 200): "long"},
		Counts:  encCounts{"a": 1, "b": -2, "c": 1 << 40},
		Plain:   map[string]string{"x": "1", "y": "2"},
		Any:     encAnyMap{"n": nil, "i": 1, "s": "s", "m": map[string]any{"deep": []any{1.5, encMeta{"q": "r"}}}, "t": when},
		Int64s:  map[string]int64{"min": math.MinInt64, "max": math.MaxInt64},
		Bools:   map[string]bool{"t": true, "f": false},
		Floats:  map[string]float64{"nan": math.NaN(), "neg0": math.Copysign(0, -1), "inf": math.Inf(1)},
		Codes:   map[encCode]int{"b": 2, "a": 1},
		ByCode:  map[string]encCode{"x": "X", "y": "Y"},
		Names:   map[encName]string{"p": "P", "q": "Q"},
		Leaves:  map[string]encLeaf{"l1": {1, "one"}, "l2": {2, "two"}},
		Big:     many,
		Ptrs:    map[string]*encLeaf{"p": {3, "three"}, "nil": nil},
		Arr:     [3]encByte{1, 2, 255},
		Bytes:   encBytes("bytes"),
		Raw:     []byte{},
		U:       65535,
		C:       complex(1.5, -2),
		F32:     0.1,
		I8:      -128,
		B:       true,
		When:    when,
		WhenP:   &when,
		Addr:    netip.MustParseAddr("2001:db8::1"),
		Amt:     new(big.Int).Lsh(big.NewInt(1), 100),
		Iface:   encLeaf{9, "nine"},
		Nested:  []map[string]any{nil, {}, {"k": []string{"v"}}},
		encBase: encBase{ID: "base", Meta: encMeta{"m": "n"}},
		skip:    5,
	}
}

// encCases are values that reach every encoder: named map types with and
// without an addressable value (behind a pointer, in a slice, as a map
// value), maps that take the reflection path, and more than a dozen map
// entries.
func encCases() []struct {
	name string
	v    any
} {
	w := encSample()
	cyc := encAnyMap{"n": 1}
	cyc["self"] = []any{cyc}
	return []struct {
		name string
		v    any
	}{
		{"wrap", w},
		{"*wrap", &w},
		{"[]wrap", []encWrap{w, {}}},
		{"map wrap", map[string]encWrap{"w": w, "zero": {}}},
		{"meta", encMeta{"a": "b"}},
		{"*meta", &encMeta{"a": "b"}},
		{"nil meta", encMeta(nil)},
		{"any map", map[string]any{"w": w, "l": []any{encCounts{"z": 26}, nil}}},
		{"counts in any", []any{encCounts{"z": 26}, encAnyMap{}, encAnyMap(nil)}},
		{"nil *wrap", (*encWrap)(nil)},
		{"nil", nil},
		{"panic in map", map[string]any{"p": panicky{}}},
		{"opaque in map", map[string]any{"o": opaque{1}}},
		{"chan in map", encAnyMap{"c": make(chan int)}},
		{"cycle", cyc},
	}
}

// encDeep nests v in n []any.
func encDeep(n int, v any) any {
	for range n {
		v = []any{v}
	}
	return v
}

// encDeepCases are maps just within and just past maxDepth.
func encDeepCases() []struct {
	name string
	v    any
} {
	var cs []struct {
		name string
		v    any
	}
	for _, n := range []int{4999, 5000} {
		for name, m := range map[string]any{
			"map[string]string": map[string]string{"a": "b"},
			"encMeta":           encMeta{"a": "b"},
			"map[string]any":    map[string]any{"a": "b"},
			"map[int]int":       map[int]int{1: 2},
			"empty":             map[string]string{},
			"struct":            encLeaf{1, "x"},
		} {
			cs = append(cs, struct {
				name string
				v    any
			}{fmt.Sprint(name, " at ", n), encDeep(n, m)})
		}
	}
	return cs
}

// encGoldens are the fingerprints of encCases and encDeepCases, or their
// errors, as the encoder that walked every value by reflection, before
// encoders were cached per type, gave them.
var encGoldens = map[string]string{
	"*meta":                     "3d9ed03e484b0c5978c5dc95022dafcf52588173ff529de63f224b648eb8c564",
	"*wrap":                     "e73773f9ce2dd3fcfe02a23b7801ecc04a8d81b74508e658784d7b1da5c18ab2",
	"[]wrap":                    "b17fcbd389d377340e0e7b451932a45554c2cafd48706e43a8067b65f923bf0f",
	"any map":                   "ed96be9941e6691a50a66fd1720ec514f7640976517d37f5ec41b2b1cb0bf9d7",
	"chan in map":               "error: idem: cannot fingerprint request: unsupported type chan int",
	"counts in any":             "3e0ea4d610622ead90896a00865658d61c1a89d2a3539cd00b917ac36247675b",
	"cycle":                     "error: idem: cannot fingerprint request: pointer cycle through []interface {}",
	"empty at 4999":             "8f450302fb2f0eb99cb05ff1a9d6b724583835bb70a27905f8cbd418450700f5",
	"empty at 5000":             "af14d9d452cb1762719f8c5e964204154d7b47b1c6b8e469995b3acbdab59649",
	"encMeta at 4999":           "12af35549abebbd4ecec941bd97d634d7597ca0cca883254fb02cd7c368522af",
	"encMeta at 5000":           "error: idem: cannot fingerprint request: nested deeper than 10000 levels",
	"map wrap":                  "a7accf065474275a4fe269d531e4e4a36756f14b0805909b19501e45af79ce02",
	"map[int]int at 4999":       "0628b791aae6cd266c17033b883f9b84a307004a372eac93e6fe05f9802e9030",
	"map[int]int at 5000":       "error: idem: cannot fingerprint request: nested deeper than 10000 levels",
	"map[string]any at 4999":    "b104b89962bf40b7eb882babe55e8e3eda7decdae1dbc48bed3983d4aef2b61f",
	"map[string]any at 5000":    "error: idem: cannot fingerprint request: nested deeper than 10000 levels",
	"map[string]string at 4999": "5a71b1410f28bd2441812f9b61b36550e4560e1296f09c9c5c6f7e48ba7ed605",
	"map[string]string at 5000": "error: idem: cannot fingerprint request: nested deeper than 10000 levels",
	"meta":                      "6d5a1ba7701a7fc503a77aa70c7724b5e52c73644e04f2b8931f85889032409f",
	"nil *wrap":                 "5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9",
	"nil meta":                  "5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9",
	"nil":                       "5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9",
	"opaque in map":             "error: idem: cannot fingerprint request: idem_test.opaque has no exported fields and no marshaler (an opaque type)",
	"panic in map":              "error: idem: cannot fingerprint request: idem_test.panicky: marshaler panicked: runtime error: invalid memory address or nil pointer dereference",
	"struct at 4999":            "5080d1f69fee5329eb3544420d44fb235d149f7e575d943647b4e87e09ee0352",
	"struct at 5000":            "error: idem: cannot fingerprint request: nested deeper than 10000 levels",
	"wrap":                      "1dd009a56311c718577cb257097e67b0c015268bcb63fe49d914e493294868de",
}

func encCheck(c struct {
	name string
	v    any
}) error {
	got, err := idem.Fingerprint(c.v)
	if err != nil {
		got = "error: " + err.Error()
	}
	if want := encGoldens[c.name]; got != want {
		return fmt.Errorf("Fingerprint(%s) = %s, want %s", c.name, got, want)
	}
	return nil
}

// TestFingerprintEncodersGolden fingerprints values of types met for the
// first time from several goroutines at once, so that their encoders are
// built concurrently, and checks that they come out as they did before
// encoders were cached.
func TestFingerprintEncodersGolden(t *testing.T) {
	cases := encCases()
	const workers = 8
	var (
		start sync.WaitGroup
		done  sync.WaitGroup
		mu    sync.Mutex
		errs  []error
	)
	start.Add(1)
	for w := range workers {
		done.Go(func() {
			start.Wait()
			for i := range 3 * len(cases) {
				if err := encCheck(cases[(w+i)%len(cases)]); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
			}
		})
	}
	start.Done()
	done.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	for _, c := range encDeepCases() {
		if err := encCheck(c); err != nil {
			t.Error(err)
		}
	}
}

var encBenchReq any = benchReq{Customer: "cus_9s6XKzkNRiz8i3", Amount: 1999, Currency: "eur", Metadata: map[string]string{"order": "o-1", "cart": "c-7"}}

// TestFingerprintAllocs checks that Fingerprint allocates nothing but the
// string it returns, for a typical request already in an interface (the
// conversion of a struct to any allocates in the caller).
func TestFingerprintAllocs(t *testing.T) {
	if race.Enabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	for name, v := range map[string]any{
		"benchReq": encBenchReq,
		"maps":     map[string]any{"m": encMeta{"a": "b"}, "c": encCounts{"n": 1}, "i": map[string]int64{"x": 2}},
	} {
		mustFP(t, v) // build the encoders
		if n := testing.AllocsPerRun(100, func() { _, _ = idem.Fingerprint(v) }); n > 1 {
			t.Errorf("%s: Fingerprint made %v allocations, want 1", name, n)
		}
	}
}

// BenchmarkFingerprintAny is BenchmarkFingerprint without the conversion of
// the request to any.
func BenchmarkFingerprintAny(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := idem.Fingerprint(encBenchReq); err != nil {
			b.Fatal(err)
		}
	}
}
