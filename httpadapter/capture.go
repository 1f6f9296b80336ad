package httpadapter

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// response is what the middleware stores and replays. Header holds the
// headers the handler set or changed relative to those present before it
// ran; a name with no values is one the handler deleted. Method and Path
// (escaped) are those of the request that stored it: a response is replayed
// only to its endpoint, even with signature validation off. With the
// MessagePack codec, it is encoded and decoded by the functions of
// msgpack.go and msgpackbytes.go.
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
	// body is the response body so far, in a buffer borrowed from the
	// request's scratch until finish.
	body []byte
	done bool // finish was called: the handler returned
}

// errLateWrite is what Write returns once the handler has returned.
var errLateWrite = errors.New("httpadapter: write after the handler returned")

// reset readies w for a handler answering on rw, buffering the body in buf.
func (w *recorder) reset(rw http.ResponseWriter, buf []byte) {
	base := rw.Header()
	var header http.Header
	if len(base) > 0 {
		header = base.Clone()
	} else {
		header = make(http.Header)
	}
	*w = recorder{rw: rw, base: base, header: header, body: buf[:0]}
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
	if err := w.writable(); err != nil {
		return 0, err
	}
	w.body = append(w.body, p...)
	return len(p), nil
}

// WriteString implements io.StringWriter.
func (w *recorder) WriteString(s string) (int, error) {
	if err := w.writable(); err != nil {
		return 0, err
	}
	w.body = append(w.body, s...)
	return len(s), nil
}

// writable writes the implicit 200 header if needed, and reports whether
// the body may be written.
func (w *recorder) writable() error {
	if w.done {
		return errLateWrite
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) {
		return http.ErrBodyNotAllowed
	}
	return nil
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

// finish ends the handler's response: it fills resp with what the handler
// produced, its body copied out of the borrowed buffer, and returns that
// buffer, which w no longer uses: later writes fail.
func (w *recorder) finish(resp *response) []byte {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	var body []byte
	if len(w.body) > 0 {
		body = make([]byte, len(w.body))
		copy(body, w.body)
	}
	*resp = response{Status: w.status, Header: w.set, Body: body}
	buf := w.body
	w.body, w.done = nil, true
	return buf
}

func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// headerChanges returns the entries of h that differ from base, and an empty
// entry for each name of base that h lacks, in a map from headerPool. The
// values are copied, into one array shared by the entries.
func headerChanges(base, h http.Header) http.Header {
	changed, values := 0, 0
	for k, v := range h {
		if !slices.Equal(base[k], v) {
			changed++
			values += len(v)
		}
	}
	for k := range base {
		if _, ok := h[k]; !ok {
			changed++
		}
	}
	if changed == 0 {
		return nil
	}
	d := newHeader(changed)
	all := make([]string, 0, values)
	for k, v := range h {
		if !slices.Equal(base[k], v) {
			if v == nil {
				d[k] = nil
				continue
			}
			all = append(all, v...)
			d[k] = all[len(all)-len(v) : len(all) : len(all)]
		}
	}
	for k := range base {
		if _, ok := h[k]; !ok {
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
	connection := excluded["Connection"]
	drop := false
	for k, vs := range resp.Header {
		k = http.CanonicalHeaderKey(k)
		drop = drop || excluded[k]
		if !connection || k != "Connection" {
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
	keep := func(k string) bool {
		k = http.CanonicalHeaderKey(k)
		return !excluded[k] && !named[k]
	}
	if !drop && named != nil {
		for k := range resp.Header {
			if !keep(k) {
				drop = true
				break
			}
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

// headerPool holds header maps that the middleware made for responses and
// no longer needs: those of the responses it wrote, whose entries it copied
// into the ResponseWriter's header (see response.write). The value slices,
// which that header now holds, are not reused.
var headerPool sync.Pool

// maxPooledHeader bounds the entries of a map kept in headerPool, since a
// map keeps the room it grew to.
const maxPooledHeader = 32

// newHeader returns an empty header map for n entries, from headerPool if
// it has one.
func newHeader(n int) http.Header {
	if n <= maxPooledHeader {
		if h, ok := headerPool.Get().(http.Header); ok {
			return h
		}
	}
	return make(http.Header, n)
}

// recycleHeader puts the header map of resp, which the middleware made and
// which nothing else holds, back in headerPool once resp was written.
func (resp *response) recycleHeader() {
	if h := resp.Header; h != nil && len(h) <= maxPooledHeader {
		resp.Header = nil
		clear(h)
		headerPool.Put(h)
	}
}
