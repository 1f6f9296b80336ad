package httpadapter

import (
	"bytes"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// response is what the middleware stores and replays. Header holds the
// headers the handler set or changed relative to those present before it
// ran; a name with no values is one the handler deleted. Method and Path
// (escaped) are those of the request that stored it: a response is replayed
// only to its endpoint, even with signature validation off.
type response struct {
	Status int
	Header http.Header
	Body   []byte
	Method string
	Path   string
}

// recorder is the ResponseWriter a protected handler writes to. It buffers
// the response, so the client receives it only once the handler returned and
// the outcome is stored. The handler sees, and may change, the headers that
// outer handlers set; what it changed is fixed when it writes the header, as
// with net/http.
//
// recorder implements the deadline methods of http.ResponseController by
// forwarding them, but not Flush, Hijack or Unwrap: a buffered response
// cannot be flushed, and a hijacked connection cannot be replayed. They
// report http.ErrNotSupported.
type recorder struct {
	rw     http.ResponseWriter
	base   http.Header // rw.Header() as outer handlers left it
	header http.Header // the handler's copy of base
	status int
	set    http.Header // the handler's changes, fixed by WriteHeader
	body   bytes.Buffer
}

func newRecorder(rw http.ResponseWriter) *recorder {
	base := rw.Header()
	header := base.Clone()
	if header == nil {
		header = make(http.Header)
	}
	return &recorder{rw: rw, base: base, header: header}
}

// Header implements http.ResponseWriter.
func (w *recorder) Header() http.Header { return w.header }

// WriteHeader implements http.ResponseWriter. Informational (1xx) responses
// are dropped; an invalid code panics, as it does with net/http.
func (w *recorder) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if w.status != 0 || code < 200 {
		return
	}
	w.status = code
	w.set = headerChanges(w.base, w.header)
}

// Write implements http.ResponseWriter.
func (w *recorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	return w.body.Write(p)
}

// WriteString implements io.StringWriter.
func (w *recorder) WriteString(s string) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	return w.body.WriteString(s)
}

// SetReadDeadline forwards to the underlying ResponseWriter, for
// http.ResponseController.
func (w *recorder) SetReadDeadline(t time.Time) error {
	return http.NewResponseController(w.rw).SetReadDeadline(t)
}

// SetWriteDeadline forwards to the underlying ResponseWriter, for
// http.ResponseController.
func (w *recorder) SetWriteDeadline(t time.Time) error {
	return http.NewResponseController(w.rw).SetWriteDeadline(t)
}

// result returns the response the handler produced.
func (w *recorder) result() *response {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return &response{Status: w.status, Header: w.set, Body: w.body.Bytes()}
}

func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// headerChanges returns the entries of h that differ from base, and an empty
// entry for each name of base that h lacks. The values are copied.
func headerChanges(base, h http.Header) http.Header {
	var d http.Header
	for k, v := range h {
		if !slices.Equal(base[k], v) {
			if d == nil {
				d = make(http.Header)
			}
			d[k] = slices.Clone(v)
		}
	}
	for k := range base {
		if _, ok := h[k]; !ok {
			if d == nil {
				d = make(http.Header)
			}
			d[k] = []string{}
		}
	}
	return d
}

// storable returns resp without the headers that must not be stored: those
// in excluded and, while Connection is excluded, those that resp's
// Connection header names. Names are compared in canonical form, since a
// handler may set a header map entry under any spelling.
func storable(resp *response, excluded map[string]bool) *response {
	var named map[string]bool
	if excluded["Connection"] {
		for k, vs := range resp.Header {
			if http.CanonicalHeaderKey(k) != "Connection" {
				continue
			}
			for _, v := range vs {
				for n := range strings.SplitSeq(v, ",") {
					if n = strings.TrimSpace(n); n != "" {
						if named == nil {
							named = make(map[string]bool)
						}
						named[http.CanonicalHeaderKey(n)] = true
					}
				}
			}
		}
	}
	keep := func(k string) bool {
		k = http.CanonicalHeaderKey(k)
		return !excluded[k] && !named[k]
	}
	drop := false
	for k := range resp.Header {
		if !keep(k) {
			drop = true
			break
		}
	}
	if !drop {
		return resp
	}
	h := make(http.Header, len(resp.Header))
	for k, v := range resp.Header {
		if keep(k) {
			h[k] = v
		}
	}
	return &response{Status: resp.Status, Header: h, Body: resp.Body, Method: resp.Method, Path: resp.Path}
}
