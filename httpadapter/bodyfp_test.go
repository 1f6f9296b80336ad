package httpadapter_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/idemkit/idem/httpadapter"
	"github.com/idemkit/idem/memstore"
)

// TestBodyFingerprintCanonicalJSON: with CanonicalJSON, two encodings of one
// JSON value are one request; another value is a 422; a body that is not
// JSON is a 400 and the handler does not run.
func TestBodyFingerprintCanonicalJSON(t *testing.T) {
	t.Parallel()
	e := start(t, memstore.New(), createHandler, httpadapter.WithBodyFingerprint(httpadapter.CanonicalJSON))
	key := newKey()
	first := e.send(call{key: key, body: `{"qty":1,"item":"book"}`})
	wantNew(t, first, http.StatusCreated)
	if !strings.Contains(first.body, `{\"qty\":1,\"item\":\"book\"}`) {
		t.Errorf("handler did not read the body as sent: %s", first.body)
	}
	second := e.send(call{key: key, body: "{ \"item\": \"book\",\n \"qty\": 1 }"})
	wantHit(t, second, first) // the stored response, with the first body in it
	if a, b := first.header.Get(httpadapter.HeaderSignature), second.header.Get(httpadapter.HeaderSignature); a == "" || a != b {
		t.Errorf("signatures %q and %q, want equal", a, b)
	}
	wantProblem(t, e.send(call{key: key, body: `{"item":"book","qty":2}`}), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)
	wantProblem(t, e.send(call{key: key, body: `{"item":"book","qty":1.0}`}), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)
	e.wantRuns(1)

	for _, body := range []string{`{"item":`, `not json`, `{"a":1} {"a":1}`} {
		r := e.send(call{key: newKey(), body: body})
		wantProblem(t, r, http.StatusBadRequest, httpadapter.ProblemBodyInvalid)
		if !strings.Contains(r.body, "not JSON") {
			t.Errorf("%s: detail does not say why: %s", body, r.body)
		}
	}
	e.wantRuns(1)

	// No body: the function is not called, and the request runs.
	key = newKey()
	empty := e.send(call{key: key})
	wantNew(t, empty, http.StatusCreated)
	wantHit(t, e.send(call{key: key}), empty)
	e.wantRuns(2)
}

// TestBodyFingerprintFields: with JSONFields, only the named fields are
// fingerprinted.
func TestBodyFingerprintFields(t *testing.T) {
	t.Parallel()
	e := start(t, memstore.New(), createHandler, httpadapter.WithBodyFingerprint(httpadapter.JSONFields("item")))
	key := newKey()
	first := e.send(call{key: key, body: `{"item":"book","qty":1,"trace":"a"}`})
	wantNew(t, first, http.StatusCreated)
	wantHit(t, e.send(call{key: key, body: `{"trace":"b","item":"book"}`}), first)
	wantProblem(t, e.send(call{key: key, body: `{"item":"pen","qty":1,"trace":"a"}`}), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)
	wantProblem(t, e.send(call{key: key, body: `{"qty":1}`}), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)
	wantProblem(t, e.send(call{key: key, body: `{"item":null}`}), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)
	wantProblem(t, e.send(call{key: newKey(), body: `["item"]`}), http.StatusBadRequest, httpadapter.ProblemBodyInvalid)
	e.wantRuns(1)
}

// TestBodyFingerprintDefault: without the option, the body is fingerprinted
// byte for byte, and reordered keys are another request.
func TestBodyFingerprintDefault(t *testing.T) {
	t.Parallel()
	for name, opts := range map[string][]httpadapter.Option{
		"default": nil,
		"nil":     {httpadapter.WithBodyFingerprint(httpadapter.CanonicalJSON), httpadapter.WithBodyFingerprint(nil)},
	} {
		e := start(t, memstore.New(), createHandler, opts...)
		key := newKey()
		first := e.send(call{key: key, body: `{"qty":1,"item":"book"}`})
		wantNew(t, first, http.StatusCreated)
		wantHit(t, e.send(call{key: key, body: `{"qty":1,"item":"book"}`}), first)
		wantProblem(t, e.send(call{key: key, body: `{"item":"book","qty":1}`}), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)
		wantNew(t, e.send(call{key: newKey(), body: `not json`}), http.StatusCreated)
		if t.Failed() {
			t.Fatalf("case %s failed", name)
		}
		e.wantRuns(2)
	}
}

// TestBodyFingerprintSameAsDefault: a body already in canonical form has
// the same fingerprint with CanonicalJSON as without it, so adopting the
// option keeps matching the records of such bodies.
func TestBodyFingerprintSameAsDefault(t *testing.T) {
	t.Parallel()
	store := memstore.New()
	plain := start(t, store, createHandler)
	canon := start(t, store, createHandler, httpadapter.WithBodyFingerprint(httpadapter.CanonicalJSON))
	key := newKey()
	first := plain.send(call{key: key, body: `{"item":"book","qty":1}`})
	wantNew(t, first, http.StatusCreated)
	wantHit(t, canon.send(call{key: key, body: `{"qty":1, "item":"book"}`}), first)
}

func TestCanonicalJSON(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{`{"b":1,"a":2}`, `{"a":2,"b":1}`},
		{" {\n\t\"z\" : { \"y\": [3, 1, 2], \"x\": {\"b\":null,\"a\":true} }, \"a\": false }\n", `{"a":false,"z":{"x":{"a":true,"b":null},"y":[3,1,2]}}`},
		{`[{"b":1,"a":1},{"a":1}]`, `[{"a":1,"b":1},{"a":1}]`}, // array order kept
		{`1.0`, `1.0`}, // numbers as written: 1.0 is not 1
		{`1e0`, `1e0`},
		{`12345678901234567890123`, `12345678901234567890123`}, // not rounded
		{`"\u0041<&>"`, `"A<&>"`},                              // escapes decoded, HTML not escaped
		{`{"a":1,"a":2}`, `{"a":2}`},                           // the last duplicate counts
		{`"é"`, `"é"`},
		{`{"\u00e9":1}`, `{"é":1}`},
	} {
		got, err := httpadapter.CanonicalJSON("application/json", []byte(tc.in))
		if err != nil || string(got) != tc.want {
			t.Errorf("CanonicalJSON(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	one, _ := httpadapter.CanonicalJSON("", []byte(`{"n":1}`))
	oneDotZero, _ := httpadapter.CanonicalJSON("", []byte(`{"n":1.0}`))
	if string(one) == string(oneDotZero) {
		t.Errorf("1 and 1.0 canonicalize alike: %s", one)
	}
	for _, in := range []string{``, ` `, `{`, `{"a":1,}`, `{"a":1} x`, `[1][2]`, `nul`, `{'a':1}`} {
		if got, err := httpadapter.CanonicalJSON("application/json", []byte(in)); err == nil {
			t.Errorf("CanonicalJSON(%q) = %q, want an error", in, got)
		}
	}
}

func TestJSONFields(t *testing.T) {
	t.Parallel()
	f := httpadapter.JSONFields("item", "qty")
	for _, tc := range []struct{ in, want string }{
		{`{"qty":1,"item":"book","x":{"y":1}}`, `{"item":"book","qty":1}`},
		{`{"item":"book"}`, `{"item":"book"}`},
		{`{"item":"book","qty":null}`, `{"item":"book","qty":null}`}, // null is not absent
		{`{"Item":"book"}`, `{}`},                                    // names match exactly
		{`{"item":{"b":1,"a":[2,1]}}`, `{"item":{"a":[2,1],"b":1}}`},
	} {
		got, err := f("application/json", []byte(tc.in))
		if err != nil || string(got) != tc.want {
			t.Errorf("JSONFields(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{`[1]`, `"item"`, `null`, `{"item":"book","x":}`, ``} {
		if got, err := f("application/json", []byte(in)); err == nil {
			t.Errorf("JSONFields(%q) = %q, want an error", in, got)
		}
	}
}

func ExampleCanonicalJSON() {
	for _, body := range []string{
		`{"qty":1,"item":"book"}`,
		"{ \"item\": \"book\",\n  \"qty\": 1 }",
		`{"item":"book","qty":1.0}`,
		`{"item":"book",`,
	} {
		b, err := httpadapter.CanonicalJSON("application/json", []byte(body))
		fmt.Printf("%s %v\n", b, err)
	}
	// Output:
	// {"item":"book","qty":1} <nil>
	// {"item":"book","qty":1} <nil>
	// {"item":"book","qty":1.0} <nil>
	//  httpadapter: request body is not JSON: unexpected EOF
}
