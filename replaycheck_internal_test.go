package idem

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// TestSameNativeMaps checks that maps from string to string or []string,
// compared without reflection, follow the rules of the reflective
// comparison: equal entries pass, and every difference is found, and
// reported as the slow path reports it.
func TestSameNativeMaps(t *testing.T) {
	type labels map[string]string
	check := func(a, b any) error {
		return checkReplay(reflect.ValueOf(a), reflect.ValueOf(b), func(any) ([]byte, error) { return nil, nil })
	}
	for name, tc := range map[string]struct {
		a, b any
		want string // "" for equal, else a part of the error
	}{
		"equal header":        {http.Header{"A": {"1", "2"}, "B": {}}, http.Header{"A": {"1", "2"}, "B": {}}, ""},
		"nil and empty value": {http.Header{"B": nil}, http.Header{"B": {}}, "nil []string and an empty one"},
		"value differs":       {http.Header{"A": {"1"}}, http.Header{"A": {"2"}}, `["A"][0]: "1" comes back as "2"`},
		"key differs":         {http.Header{"A": {"1"}}, http.Header{"Z": {"1"}}, `key "A" does not come back`},
		"longer value":        {http.Header{"A": {"1"}}, http.Header{"A": {"1", "2"}}, "length 1 comes back as 2"},
		"equal labels":        {labels{"x": "1"}, labels{"x": "1"}, ""},
		"labels differ":       {labels{"x": "1"}, labels{"x": "2"}, `["x"]: "1" comes back as "2"`},
		"plain map":           {map[string]string{"x": ""}, map[string]string{"y": ""}, `key "x" does not come back`},
	} {
		err := check(tc.a, tc.b)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want equal", name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
}

// TestSameNativeMapsAllocs checks that comparing maps of a struct reached
// through a pointer (addressable, as the replay check meets them), of a
// named type (http.Header) and not, copies nothing to the heap.
func TestSameNativeMapsAllocs(t *testing.T) {
	type result struct {
		H http.Header
		M map[string]string
	}
	a := &result{H: http.Header{"A": {"1", "2"}}, M: map[string]string{"k": "v"}}
	b := &result{H: http.Header{"A": {"1", "2"}}, M: map[string]string{"k": "v"}}
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	same := true
	n := testing.AllocsPerRun(100, func() {
		same = same && sameNativeMaps(va.Field(0), vb.Field(0)) && sameNativeMaps(va.Field(1), vb.Field(1))
	})
	if !same {
		t.Fatal("equal maps compared unequal")
	}
	if n != 0 {
		t.Errorf("%v allocations per comparison, want 0", n)
	}
	b.H["A"][1] = "3"
	if sameNativeMaps(va.Field(0), vb.Field(0)) {
		t.Error("headers that differ compared equal")
	}
}
