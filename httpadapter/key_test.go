package httpadapter_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/idemkit/idem/httpadapter"
)

func keyHeader(values ...string) http.Header { return http.Header{httpadapter.HeaderKey: values} }

func testKeyMissing(t *testing.T, newStore newStoreFunc) {
	var hook hookLog
	e := start(t, newStore(t), createHandler, hook.option())
	for _, method := range []string{http.MethodPost, http.MethodPatch} {
		wantProblem(t, e.send(call{method: method, body: "{}"}), http.StatusBadRequest, httpadapter.ProblemKeyMissing)
	}
	e.wantRuns(0)
	hook.want(t)
}

func testKeyOptional(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), createHandler, httpadapter.WithKeyRequired())
	for range 2 {
		r := e.send(call{body: "{}"})
		if r.status != http.StatusCreated || r.header.Get(httpadapter.HeaderStatus) != "" {
			t.Errorf("without a key: %d, %s=%q; want the handler's 201, untouched", r.status,
				httpadapter.HeaderStatus, r.header.Get(httpadapter.HeaderStatus))
		}
	}
	e.wantRuns(2)
	// A key given is still honoured, and still checked.
	key := newKey()
	first := e.send(call{key: key, body: "{}"})
	wantNew(t, first, http.StatusCreated)
	wantHit(t, e.send(call{key: key, body: "{}"}), first)
	wantProblem(t, e.send(call{header: keyHeader(""), body: "{}"}), http.StatusBadRequest, httpadapter.ProblemKeyInvalid)
	e.wantRuns(3)

	// The key required on PATCH only: POST passes without one.
	e = start(t, newStore(t), createHandler, httpadapter.WithKeyRequired(http.MethodPatch))
	wantProblem(t, e.send(call{method: http.MethodPatch, body: "{}"}), http.StatusBadRequest, httpadapter.ProblemKeyMissing)
	if r := e.send(call{body: "{}"}); r.status != http.StatusCreated {
		t.Errorf("POST without a key, key required on PATCH only: %d, want the handler's 201", r.status)
	}
	// A method listed is protected even when WithMethods leaves it out.
	e = start(t, newStore(t), createHandler, httpadapter.WithMethods(http.MethodPost), httpadapter.WithKeyRequired(http.MethodPut))
	wantProblem(t, e.send(call{method: http.MethodPut, body: "{}"}), http.StatusBadRequest, httpadapter.ProblemKeyMissing)
	if r := e.send(call{body: "{}"}); r.status != http.StatusCreated {
		t.Errorf("POST without a key: %d, want the handler's 201", r.status)
	}
	e.wantRuns(1)
}

func testKeyInvalid(t *testing.T, newStore newStoreFunc) {
	var hook hookLog
	e := start(t, newStore(t), createHandler, hook.option())
	for name, values := range map[string][]string{
		"empty":                {""},
		"empty quoted":         {`""`},
		"256 bytes":            {strings.Repeat("k", 256)},
		"256 bytes quoted":     {`"` + strings.Repeat("k", 256) + `"`},
		"tab":                  {"a\tb"},
		"tab quoted":           {"\"a\tb\""},
		"non-ASCII":            {"clé"},
		"non-ASCII quoted":     {`"clé"`},
		"unterminated":         {`"abc`},
		"lone quote":           {`"`},
		"escaped end quote":    {`"abc\"`},
		"bad escape":           {`"a\x"`},
		"stray quote":          {`"ab"c"`},
		"parameters":           {`"abc";p=1`},
		"two header lines":     {"abc", "abc"},
		"two different values": {"abc", "def"},
	} {
		r := e.send(call{header: keyHeader(values...), body: "{}"})
		if r.status != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", name, r.status)
			continue
		}
		wantProblem(t, r, http.StatusBadRequest, httpadapter.ProblemKeyInvalid)
	}
	e.wantRuns(0)
	hook.want(t)
}

// testKeyForms checks that the quoted sf-string and the bare form of a key
// name the same key, and that the echo is the header as sent.
func testKeyForms(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), createHandler)
	id := newKey()
	for _, tc := range []struct{ first, retry string }{
		{`"` + id + `-1"`, id + `-1`},
		{id + `-2`, `"` + id + `-2"`},
		{`"` + id + ` \"quoted\" \\ -3"`, id + ` "quoted" \ -3`},
		{id + ` with "inner" quotes -4`, `"` + id + ` with \"inner\" quotes -4"`},
		{strings.Repeat("k", 255-len(id)) + id, `"` + strings.Repeat("k", 255-len(id)) + id + `"`},
	} {
		first := e.send(call{header: keyHeader(tc.first), body: "{}"})
		wantNew(t, first, http.StatusCreated)
		if got := first.header.Get(httpadapter.HeaderKey); got != tc.first {
			t.Errorf("echo = %q, want %q", got, tc.first)
		}
		again := e.send(call{header: keyHeader(tc.retry), body: "{}"})
		wantHit(t, again, first)
		if got := again.header.Get(httpadapter.HeaderKey); got != tc.retry {
			t.Errorf("echo = %q, want %q", got, tc.retry)
		}
	}
	e.wantRuns(5)
}

func testKeyReused(t *testing.T, newStore newStoreFunc) {
	var hook hookLog
	e := start(t, newStore(t), createHandler, hook.option())
	key := newKey()
	orig := call{key: key, path: "/orders?x=1", body: `{"a":1}`}
	first := e.send(orig)
	wantNew(t, first, http.StatusCreated)
	for name, c := range map[string]call{
		"body":         {key: key, path: "/orders?x=1", body: `{"a":2}`},
		"no body":      {key: key, path: "/orders?x=1"},
		"path":         {key: key, path: "/other?x=1", body: `{"a":1}`},
		"query":        {key: key, path: "/orders?x=2", body: `{"a":1}`},
		"no query":     {key: key, path: "/orders", body: `{"a":1}`},
		"method":       {method: http.MethodPatch, key: key, path: "/orders?x=1", body: `{"a":1}`},
		"content type": {key: key, path: "/orders?x=1", body: `{"a":1}`, header: http.Header{"Content-Type": {"text/plain"}}},
	} {
		r := e.send(c)
		wantProblem(t, r, http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)
		if got := r.header.Get(httpadapter.HeaderKey); got != key {
			t.Errorf("%s: echoed key %q, want %q", name, got, key)
		}
		if sig := r.header.Get(httpadapter.HeaderSignature); !hexSignature.MatchString(sig) || sig == first.header.Get(httpadapter.HeaderSignature) {
			t.Errorf("%s: signature %q, want this request's", name, sig)
		}
	}
	// Headers outside the allowlist are not fingerprinted.
	orig.header = http.Header{"User-Agent": {"other"}, "X-Request-Id": {"r2"}, "Accept": {"text/html"}}
	wantHit(t, e.send(orig), first)
	e.wantRuns(1)
	hook.want(t)
}

func testFingerprintHeaders(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), createHandler, httpadapter.WithFingerprintHeaders("x-api-version", "Accept"))
	key := newKey()
	orig := call{key: key, body: "{}", header: http.Header{"X-Api-Version": {"1"}, "Accept": {"a", "b"}}}
	first := e.send(orig)
	wantNew(t, first, http.StatusCreated)
	for name, h := range map[string]http.Header{
		"value":         {"X-Api-Version": {"2"}, "Accept": {"a", "b"}},
		"missing":       {"Accept": {"a", "b"}},
		"empty":         {"X-Api-Version": {""}, "Accept": {"a", "b"}},
		"value order":   {"X-Api-Version": {"1"}, "Accept": {"b", "a"}},
		"values joined": {"X-Api-Version": {"1"}, "Accept": {"a, b"}},
		"values moved":  {"X-Api-Version": {"1", "a"}, "Accept": {"b"}},
	} {
		r := e.send(call{key: key, body: "{}", header: h})
		if r.status != http.StatusUnprocessableEntity {
			t.Errorf("%s: status %d, want 422", name, r.status)
		}
	}
	// Content-Type is no longer fingerprinted.
	orig.header.Set("Content-Type", "text/plain")
	wantHit(t, e.send(orig), first)
	e.wantRuns(1)
}

// accountScope scopes keys by the X-Account header; a real service would
// use the authenticated principal.
func accountScope(r *http.Request) string { return r.Header.Get("X-Account") }

func testScope(t *testing.T, newStore newStoreFunc) {
	store := newStore(t)
	e := start(t, store, createHandler, httpadapter.WithScope(accountScope))
	key := newKey()
	send := func(account, body string) reply {
		return e.send(call{key: key, body: body, header: http.Header{"X-Account": {account}}})
	}
	a := send("acct_a", `{"who":"a"}`)
	b := send("acct_b", `{"who":"b"}`)
	none := send("", `{"who":"nobody"}`)
	odd := send("ünïcode", `{"who":"odd"}`)
	for _, r := range []reply{a, b, none, odd} {
		wantNew(t, r, http.StatusCreated)
	}
	wantHit(t, send("acct_a", `{"who":"a"}`), a)
	wantHit(t, send("acct_b", `{"who":"b"}`), b)
	wantHit(t, send("", `{"who":"nobody"}`), none)
	wantHit(t, send("ünïcode", `{"who":"odd"}`), odd)
	wantProblem(t, send("acct_a", `{"who":"b"}`), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)
	e.wantRuns(4)

	// Without a scope, the same key is one key, whoever sends it.
	e = start(t, store, createHandler)
	key = newKey()
	wantNew(t, send("acct_a", `{"who":"a"}`), http.StatusCreated)
	wantProblem(t, send("acct_b", `{"who":"b"}`), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)
}

// testScopeLongKey checks scopes whose composition with the key is longer
// than idem accepts.
func testScopeLongKey(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), createHandler, httpadapter.WithScope(accountScope))
	id := newKey()
	key := strings.Repeat("k", 255-len(id)) + id
	long := strings.Repeat("acct", 100)
	send := func(account, body string) reply {
		return e.send(call{key: key, body: body, header: http.Header{"X-Account": {account}}})
	}
	a := send(long+"a", `{"who":"a"}`)
	b := send(long+"b", `{"who":"b"}`)
	c := send("c", `{"who":"c"}`)
	for _, r := range []reply{a, b, c} {
		wantNew(t, r, http.StatusCreated)
	}
	wantHit(t, send(long+"a", `{"who":"a"}`), a)
	wantHit(t, send(long+"b", `{"who":"b"}`), b)
	wantHit(t, send("c", `{"who":"c"}`), c)
	e.wantRuns(3)
}

// testScopeSameRequest checks that the same key with the same request in two
// scopes names two records: each scope runs the handler, and is replayed its
// own response.
func testScopeSameRequest(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), createHandler, httpadapter.WithScope(accountScope))
	key := newKey()
	send := func(account string) reply {
		return e.send(call{key: key, body: `{"item":"book"}`, header: http.Header{"X-Account": {account}}})
	}
	a, b, none := send("acct_a"), send("acct_b"), send("")
	for _, r := range []reply{a, b, none} {
		wantNew(t, r, http.StatusCreated)
	}
	if a.body == b.body || a.body == none.body || b.body == none.body {
		t.Errorf("scopes share a response: %q, %q, %q", a.body, b.body, none.body)
	}
	wantHit(t, send("acct_b"), b)
	wantHit(t, send("acct_a"), a)
	wantHit(t, send(""), none)
	e.wantRuns(3)
}
