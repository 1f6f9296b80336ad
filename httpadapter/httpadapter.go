// Package httpadapter makes net/http handlers idempotent: a request that
// carries an Idempotency-Key header runs the handler at most once per key,
// and its retries receive the stored response, byte for byte.
//
// It follows the IETF draft "The Idempotency-Key HTTP Header Field" and
// Stripe's API. The key may be sent as a quoted Structured Field String
// ("abc", as the draft says) or bare (abc, as Stripe's clients send it); both
// stand for the same key, which must be 1 to 255 printable ASCII
// characters. By default POST and PATCH requests are protected and must
// carry a key; other methods pass through untouched.
//
// A protected request is identified by a fingerprint of its method, path
// and query, body, and a few headers (see WithFingerprintHeaders). For each
// key (within a scope, see WithScope):
//
//   - The first request runs the handler. Its response (status, the headers
//     the handler set, and body) is stored if its status says so (see
//     WithStoreStatus), then sent to the client.
//   - A retry with the same fingerprint receives the stored response, with
//     Idempotent-Replayed: true, and the handler does not run.
//   - A request with another fingerprint (another method, path, body...)
//     receives 422, whether the first is done or still running.
//   - A retry while the first request is still running receives 409 with
//     Retry-After or, with idem.WithWaitTimeout, waits for the stored
//     response. The key stays held while the handler runs, however long it
//     takes: idem refreshes its lease.
//
// Responses from the handler or the store carry Idempotency-Key (the
// header as received), X-Idempotency-Signature (the request fingerprint, as
// hex) and X-Idempotency-Status (new when the handler ran, hit when the
// response was replayed). A response from the handler that was not stored
// also carries X-Idempotency-Stored: false, so a retry with its key runs the
// handler again. That happens when its status is not stored (5xx and 429 by
// default) and when the store failed, or the lease was lost, after the
// handler ran (idem.ErrNotStored); the latter is also reported to the hook
// set by WithErrorHook. Refusals, where the handler does not run, are RFC
// 9457 problem details with a type URI per case (see ProblemKeyMissing and
// the others); they echo a valid Idempotency-Key, and the signature once
// computed.
//
// # Buffering, streaming and hijacking
//
// The response of a protected request is buffered whole and reaches the
// client only after the handler returned and the response was stored, so
// that the first client receives exactly what later ones will. Hence a
// protected handler cannot stream or hijack: the ResponseWriter it gets
// implements neither http.Flusher nor http.Hijacker, and
// http.ResponseController's Flush, Hijack and EnableFullDuplex return
// http.ErrNotSupported; SetReadDeadline and SetWriteDeadline work.
// Informational (1xx) responses, 101 included, are dropped, and trailers are
// not kept. The request body is read whole before the handler runs (up to
// WithMaxBodyBytes) and handed to it from memory.
//
// Requests the middleware does not protect (other methods, or no key when
// the key is optional) reach the handler with the original ResponseWriter
// and request, so flushing, hijacking and the rest of
// http.ResponseController work there as without the middleware.
//
// # Handlers that return without writing
//
// A handler that returns without writing a response answers 200 OK with no
// body, as with net/http, and that response is stored and replayed like any
// other. So a handler that gives up when its request's context ends (the
// client left, or the key's lease was lost) must not merely return: a retry
// would be replayed an empty 200 for work never done. It should answer with
// a status that is not stored, such as 503 Service Unavailable. The
// middleware does not guess from the context: a handler that did its work
// and relied on the implicit 200 while its client went away would then run
// again on the retry, which is what the key is there to prevent.
//
// A handler that panics stores nothing: the key is released and the panic
// continues to net/http.
//
// # Outer handlers and the request body
//
// The middleware reads the request body to its end, whatever Content-Length
// says, so an outer handler may replace r.Body, to decompress it for
// instance. An outer handler should not read the body: the middleware
// would find it empty, and requests that differ only by their bodies would
// share a fingerprint, so that one is replayed the response of the other. A
// body over the limit of an outer http.MaxBytesReader is refused with 413,
// as one over WithMaxBodyBytes. A form that outer handlers parsed (with
// ParseForm, FormValue, ParseMultipartForm and the like) consumed the body,
// so it is fingerprinted in its stead: the values of r.PostForm, and the
// files of r.MultipartForm with their names, MIME headers, sizes and
// contents. It counts against WithMaxBodyBytes as the body would.
package httpadapter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"

	"github.com/idemkit/idem"
)

// Names of the headers the middleware reads and writes.
const (
	// HeaderKey is the request header carrying the idempotency key. It is
	// echoed on responses.
	HeaderKey = "Idempotency-Key"
	// HeaderSignature carries the hex fingerprint of the request
	// (idem.Info.Fingerprint).
	HeaderSignature = "X-Idempotency-Signature"
	// HeaderStatus is StatusNew or StatusHit.
	HeaderStatus = "X-Idempotency-Status"
	// HeaderReplayed is "true" on replayed responses, as Stripe sends it.
	HeaderReplayed = "Idempotent-Replayed"
	// HeaderStored is "false" on a response from the handler that was not
	// stored, so a retry runs the handler again.
	HeaderStored = "X-Idempotency-Stored"
)

// Values of HeaderStatus.
const (
	// StatusNew marks a response from the handler, run for this request.
	StatusNew = "new"
	// StatusHit marks a stored response, replayed.
	StatusHit = "hit"
)

// errUnstored is what the Operation's function returns for a response whose
// status is not stored, so that idem releases the key.
var errUnstored = errors.New("httpadapter: status not stored")

type middleware struct {
	cfg *config
	op  *idem.Operation[*request, *response]
	err error // invalid options
}

// Middleware returns middleware that makes handlers idempotent, keeping
// their responses in store. The middleware may wrap any number of handlers,
// which then share the keys of one scope; the fingerprint keeps requests to
// different paths apart. Options that cannot be honoured make every
// protected request fail with a 500 problem (see Option).
func Middleware(store idem.Store, opts ...Option) func(http.Handler) http.Handler {
	cfg := newConfig(opts)
	coreOpts := make([]idem.Option, 0, len(cfg.core)+3)
	coreOpts = append(coreOpts, idem.WithNamespace(DefaultNamespace))
	coreOpts = append(coreOpts, cfg.core...)
	coreOpts = append(coreOpts,
		idem.WithFingerprint(fingerprinter(cfg.fpHeaders)),
		idem.WithFinalErrors(nil),
	)
	op := idem.New[*request, *response](store, coreOpts...)
	errs := cfg.errs
	// idem reports invalid options on every call, before it looks at the
	// key. Asking with an empty key finds them now, without reaching the
	// store, so that they are reported even when requests are refused early.
	if _, err := op.Do(context.Background(), "", nil, nil); errors.Is(err, idem.ErrInvalidOption) {
		errs = append(errs, err)
	}
	m := &middleware{cfg: cfg, op: op, err: errors.Join(errs...)}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			m.serve(w, r, next)
		})
	}
}

func (m *middleware) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	if !slices.Contains(m.cfg.methods, r.Method) {
		next.ServeHTTP(w, r)
		return
	}
	if m.err != nil {
		m.fail(w, r, m.err)
		return
	}
	raw, present := r.Header[HeaderKey]
	if !present {
		if m.cfg.keyOptional {
			next.ServeHTTP(w, r)
			return
		}
		writeProblem(w, ProblemKeyMissing, "This request requires an Idempotency-Key header.")
		return
	}
	if len(raw) != 1 {
		writeProblem(w, ProblemKeyInvalid, "The Idempotency-Key header must appear once.")
		return
	}
	key, ok := parseKey(raw[0])
	if !ok {
		writeProblem(w, ProblemKeyInvalid, "The Idempotency-Key must be 1 to 255 printable ASCII characters, bare or as a quoted string.")
		return
	}
	req := &request{r: r}
	var err error
	req.body, err = readBody(r, m.cfg.maxBody)
	if err == nil {
		req.form, err = formDigest(r, m.cfg.maxBody)
		if err != nil && !errors.Is(err, errTooLarge) {
			// The body was read; a parsed file that cannot be reread is the
			// server's failure, not the client's.
			marks{key: raw[0]}.set(w.Header())
			m.fail(w, r, err)
			return
		}
	}
	if err != nil {
		marks{key: raw[0]}.set(w.Header())
		if !errors.Is(err, errTooLarge) {
			writeProblem(w, ProblemBodyUnreadable, "")
			return
		}
		limit := m.cfg.maxBody
		var mbe *http.MaxBytesError // an outer http.MaxBytesReader's limit
		if errors.As(err, &mbe) {
			limit = min(limit, mbe.Limit)
		}
		writeProblem(w, ProblemBodyTooLarge, fmt.Sprintf("The request body must not exceed %d bytes.", limit))
		return
	}
	var scope string
	if m.cfg.scope != nil {
		scope = m.cfg.scope(r)
	}

	m.do(w, r, next, raw[0], idem.ScopedKey(scope, key), req)
}

// do runs the handler under key, or replays its stored response, and
// answers the client.
func (m *middleware) do(w http.ResponseWriter, r *http.Request, next http.Handler, rawKey, key string, req *request) {
	var ran *response // what the handler produced, when it ran in this call
	// Taken before the handler runs, which could change r.URL in place.
	method, path := r.Method, r.URL.EscapedPath()
	resp, info, err := m.op.DoInfo(r.Context(), key, req,
		func(ctx context.Context, req *request) (*response, error) {
			rec := newRecorder(w)
			r2 := req.r.WithContext(ctx)
			r2.Body = io.NopCloser(bytes.NewReader(req.body))
			next.ServeHTTP(rec, r2)
			ran = rec.result()
			if !m.cfg.stores(ran.Status) {
				return nil, errUnstored
			}
			s := storable(ran, m.cfg.excluded)
			s.Method, s.Path = method, path
			return s, nil
		})

	mk := marks{key: rawKey, signature: info.Fingerprint}
	switch {
	case ran != nil:
		if err != nil && !errors.Is(err, errUnstored) {
			m.report(r, err) // idem.ErrNotStored: the handler ran all the same
		}
		mk.status, mk.unstored = StatusNew, err != nil
		ran.write(w, mk)
	case err == nil:
		if resp == nil || resp.Status < 200 || resp.Status > 999 {
			m.fail(w, r, fmt.Errorf("%w: invalid stored response", idem.ErrCorruptRecord))
			return
		}
		if resp.Method != method || resp.Path != path {
			// Another endpoint's response, found with signature validation
			// off: never replay it.
			mk.set(w.Header())
			writeProblem(w, ProblemKeyReused, "This Idempotency-Key was used with another method or path.")
			return
		}
		mk.status, mk.replayed = StatusHit, true
		resp.write(w, mk)
	default:
		mk.set(w.Header())
		switch {
		case errors.Is(err, idem.ErrKeyReused):
			writeProblem(w, ProblemKeyReused, "This Idempotency-Key was used with a different request (method, path, query, body or headers).")
		case errors.Is(err, idem.ErrInFlight):
			writeProblem(w, ProblemInFlight, "A request with this Idempotency-Key is still being processed. Retry later.")
		case errors.Is(err, idem.ErrStore):
			m.report(r, err)
			writeProblem(w, ProblemStoreUnavailable, "")
		case r.Context().Err() != nil:
			// The client left, or a deadline passed, while idem waited for
			// the store or for an in-flight request: no failure to report.
			writeProblem(w, ProblemStoreUnavailable, "The request ended before the idempotency check completed.")
		default:
			m.fail(w, r, err)
		}
	}
}

// fail answers with a 500 problem, and reports err.
func (m *middleware) fail(w http.ResponseWriter, r *http.Request, err error) {
	m.report(r, err)
	writeProblem(w, ProblemInternal, "")
}

func (m *middleware) report(r *http.Request, err error) {
	if m.cfg.hook != nil {
		m.cfg.hook(r, err)
	}
}

// marks are the idempotency headers of a response.
type marks struct {
	key       string // the Idempotency-Key header as received
	signature string // the request fingerprint, if known
	status    string // StatusNew or StatusHit, or "" on problems
	replayed  bool
	unstored  bool // the handler ran, but its response was not stored
}

// set sets the headers on h.
func (mk marks) set(h http.Header) {
	h[HeaderKey] = []string{mk.key}
	if mk.signature != "" {
		h[HeaderSignature] = []string{mk.signature}
	}
	if mk.status != "" {
		h[HeaderStatus] = []string{mk.status}
	}
	if mk.replayed {
		h[HeaderReplayed] = []string{"true"}
	}
	if mk.unstored {
		h[HeaderStored] = []string{"false"}
	}
}

// write sends resp on w: its headers over those already on w, then the
// idempotency headers, its status and its body. Setting each header whole
// makes the output independent of map order; net/http sorts header names on
// the wire.
func (resp *response) write(w http.ResponseWriter, mk marks) {
	h := w.Header()
	for k, v := range resp.Header {
		if len(v) == 0 {
			delete(h, k)
		} else {
			h[k] = v
		}
	}
	mk.set(h)
	w.WriteHeader(resp.Status)
	if len(resp.Body) > 0 {
		// An error means the client is gone; nobody is left to tell.
		_, _ = w.Write(resp.Body)
	}
}
