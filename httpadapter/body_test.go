package httpadapter_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/httpadapter"
)

// chunked returns a reader of s whose length the client cannot know, so
// that it sends s chunked, without Content-Length.
func chunked(s string) io.Reader { return io.MultiReader(strings.NewReader(s)) }

// sendRequest sends req, with key as its Idempotency-Key, and fails the
// test if no response arrives.
func (e *env) sendRequest(req *http.Request, key string) reply {
	e.t.Helper()
	req.Header.Set(httpadapter.HeaderKey, key)
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// newRequest returns a POST of body to path on e, with Content-Type ct.
func (e *env) newRequest(path, ct string, body io.Reader) *http.Request {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.url+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", ct)
	return req
}

// echoHandler answers 201 with the body it read, so that the test sees what
// the handler got.
func echoHandler(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.WriteHeader(http.StatusCreated)
	w.Write(b)
}

// testBodyReplaced checks that the body is read to its end when an outer
// handler replaced it without updating Content-Length (here, decompressing
// it), and that the declared length is only a hint.
func testBodyReplaced(t *testing.T, newStore newStoreFunc) {
	gunzip := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Content-Encoding") == "gzip" {
				zr, err := gzip.NewReader(r.Body)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
				r.Body = zr // ContentLength left as the compressed size
			}
			if r.Header.Get("X-Declare-Huge") != "" {
				r.ContentLength = 1 << 40 // an allocation of this size would fail
			}
			next.ServeHTTP(w, r)
		})
	}
	e := startWrapped(t, newStore(t), gunzip, echoHandler)
	gz := func(s string) string {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		io.WriteString(zw, s)
		zw.Close()
		return buf.String()
	}
	pad := strings.Repeat("a", 2000) // compresses well, so the body grows
	body1, body2 := `{"pad":"`+pad+`","memo":"one"}`, `{"pad":"`+pad+`","memo":"TWO"}`
	zipped := http.Header{"Content-Encoding": {"gzip"}}
	key := newKey()
	first := e.send(call{key: key, body: gz(body1), header: zipped})
	wantNew(t, first, http.StatusCreated)
	if first.body != body1 {
		t.Errorf("handler got %d bytes of a %d-byte body", len(first.body), len(body1))
	}
	wantHit(t, e.send(call{key: key, body: gz(body1), header: zipped}), first)
	wantProblem(t, e.send(call{key: key, body: gz(body2), header: zipped}), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)

	// A declared length over the limit is not trusted either.
	r := e.send(call{key: newKey(), body: body1, header: http.Header{"X-Declare-Huge": {"1"}}})
	wantNew(t, r, http.StatusCreated)
	if r.body != body1 {
		t.Errorf("with a huge declared length, handler got %d bytes of %d", len(r.body), len(body1))
	}
	e.wantRuns(2)
}

// testOuterMaxBytes checks that a body over an outer http.MaxBytesReader's
// limit is refused with 413, as one over the middleware's.
func testOuterMaxBytes(t *testing.T, newStore newStoreFunc) {
	limit := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, 10)
			next.ServeHTTP(w, r)
		})
	}
	e := startWrapped(t, newStore(t), limit, echoHandler)
	for _, body := range []io.Reader{strings.NewReader("0123456789x"), chunked("0123456789x")} {
		key := newKey()
		r := e.sendRequest(e.newRequest("/orders", "application/json", body), key)
		wantProblem(t, r, http.StatusRequestEntityTooLarge, httpadapter.ProblemBodyTooLarge)
		if !strings.Contains(r.body, "exceed 10 bytes") {
			t.Errorf("413 body %s does not give the outer limit", r.body)
		}
		if got := r.header.Get(httpadapter.HeaderKey); got != key {
			t.Errorf("413 echoed key %q, want %q", got, key)
		}
	}
	e.wantRuns(0)
	wantNew(t, e.send(call{key: newKey(), body: "0123456789"}), http.StatusCreated)
}

// formParser is outer middleware that reads a form field, as a CSRF check
// does, which parses the body.
func formParser(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.FormValue("csrf_token")
		next.ServeHTTP(w, r)
	})
}

// formHandler answers 201 with the form it sees and the contents of its
// uploaded files.
func formHandler(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseMultipartForm(1 << 20); err != nil && !errors.Is(err, http.ErrNotMultipart) {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, "form %s", r.PostForm.Encode())
	if r.MultipartForm != nil {
		for name, fhs := range r.MultipartForm.File {
			for _, fh := range fhs {
				f, err := fh.Open()
				if err != nil {
					fmt.Fprintf(w, "; %s: %v", name, err)
					continue
				}
				b, _ := io.ReadAll(f)
				f.Close()
				fmt.Fprintf(w, "; %s %s %q", name, fh.Filename, b)
			}
		}
	}
}

// testOuterForm checks that a urlencoded form that an outer handler parsed
// is fingerprinted in place of the body it consumed.
func testOuterForm(t *testing.T, newStore newStoreFunc) {
	const ct = "application/x-www-form-urlencoded"
	e := startWrapped(t, newStore(t), formParser, formHandler, httpadapter.WithMaxBodyBytes(100))
	for name, body := range map[string]func(string) io.Reader{
		"length":  func(s string) io.Reader { return strings.NewReader(s) },
		"chunked": chunked,
	} {
		key := newKey()
		send := func(form string) reply { return e.sendRequest(e.newRequest("/pay", ct, body(form)), key) }
		first := send("amount=100&csrf_token=t")
		wantNew(t, first, http.StatusCreated)
		if want := "form amount=100&csrf_token=t"; first.body != want {
			t.Errorf("%s: handler answered %q, want %q", name, first.body, want)
		}
		wantHit(t, send("amount=100&csrf_token=t"), first)
		wantProblem(t, send("amount=999999&csrf_token=t"), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)
		wantProblem(t, send("amount=100&csrf_token=t&x="+strings.Repeat("x", 100)), http.StatusRequestEntityTooLarge, httpadapter.ProblemBodyTooLarge)
	}
	e.wantRuns(2)

	// A body that is no form is not consumed by parsing: it is read and
	// fingerprinted as usual.
	key := newKey()
	first := e.send(call{key: key, body: `{"a":1}`})
	wantNew(t, first, http.StatusCreated)
	wantHit(t, e.send(call{key: key, body: `{"a":1}`}), first)
	wantProblem(t, e.send(call{key: key, body: `{"a":2}`}), http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)
}

// testOuterMultipartForm checks that a multipart form that an outer handler
// parsed is fingerprinted in place of the body, its files' contents
// included.
func testOuterMultipartForm(t *testing.T, newStore newStoreFunc) {
	e := startWrapped(t, newStore(t), formParser, formHandler, httpadapter.WithMaxBodyBytes(1000))
	form := func(amount, filename, content string) (string, string) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		mw.SetBoundary("fixed-boundary") // the Content-Type is fingerprinted
		mw.WriteField("amount", amount)
		fw, err := mw.CreateFormFile("doc", filename)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(fw, content)
		mw.Close()
		return mw.FormDataContentType(), buf.String()
	}
	key := newKey()
	send := func(amount, filename, content string) reply {
		ct, body := form(amount, filename, content)
		return e.sendRequest(e.newRequest("/upload", ct, chunked(body)), key)
	}
	first := send("100", "a.txt", "contents")
	wantNew(t, first, http.StatusCreated)
	if want := `form amount=100; doc a.txt "contents"`; first.body != want {
		t.Errorf("handler answered %q, want %q", first.body, want)
	}
	wantHit(t, send("100", "a.txt", "contents"), first)
	for name, r := range map[string]reply{
		"value":        send("999", "a.txt", "contents"),
		"file name":    send("100", "b.txt", "contents"),
		"file content": send("100", "a.txt", "CONTENTS"), // same size
	} {
		if r.status != http.StatusUnprocessableEntity {
			t.Errorf("another %s: status %d, want 422", name, r.status)
		}
	}
	wantProblem(t, send("100", "a.txt", strings.Repeat("x", 1001)), http.StatusRequestEntityTooLarge, httpadapter.ProblemBodyTooLarge)
	e.wantRuns(1)
}

// testValidationOffEndpoint checks that, with signature validation off, a
// response is still never replayed to another method or path.
func testValidationOffEndpoint(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), createHandler, httpadapter.WithOptions(idem.WithSignatureValidation(false)))
	key := newKey()
	first := e.send(call{key: key, path: "/orders", body: `{"a":1}`})
	wantNew(t, first, http.StatusCreated)
	for name, c := range map[string]call{
		"path":   {key: key, path: "/refunds", body: `{"a":1}`},
		"method": {method: http.MethodPatch, key: key, path: "/orders", body: `{"a":1}`},
	} {
		r := e.send(c)
		wantProblem(t, r, http.StatusUnprocessableEntity, httpadapter.ProblemKeyReused)
		if got := r.header.Get(httpadapter.HeaderKey); got != key {
			t.Errorf("%s: echoed key %q, want %q", name, got, key)
		}
	}
	// Another body or query is replayed the response: validation is off.
	wantHit(t, e.send(call{key: key, path: "/orders?x=1", body: `{"a":2}`}), first)
	e.wantRuns(1)
}
