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
//     WithDisposition), then sent to the client.
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
// also carries X-Idempotency-Stored: false: a retry with its key runs the
// handler again, at once or, when the response was held, once the lease
// expires. That happens when its status is not recorded (5xx and 429 by
// default, see WithDisposition), when the handler gave up without writing
// (see below), and when the store failed, or the lease was lost, after the
// handler ran (idem.ErrNotStored); the latter is also reported to the hook
// set by WithErrorHook. Refusals, where the handler does not run, are RFC
// 9457 problem details with a type URI per case (see ProblemKeyMissing and
// the others; WithProblemWriter renders them in another shape); they echo a
// valid Idempotency-Key, and the signature once computed.
//
// Build the middleware with New, which reports invalid options when the
// service starts, and scope keys to the authenticated caller with
// WithScope.
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
// body, as with net/http. When it returns so after its request's context
// ended (the client left, a deadline passed, or the key's lease was lost),
// it most likely gave up before doing its work: storing that empty 200 would
// replay it for the TTL, for work never done. So by default that response
// is sent as not stored and the key is released, and a retry runs the
// handler again (WithAbandoned changes it). A handler that returns without
// writing while its context is live is stored as any 200 is. A handler that
// gives up should still answer with a status that is not stored, such as
// 503 Service Unavailable, to tell its client.
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
	"log/slog"
	"net/http"
	"sync"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/keyctx"
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

// errUnstored is what the Operation's function returns, marked with its
// disposition (idem.Dispose) and with the response, for a response that is
// not to be recorded: idem releases or holds the key, and Do returns the
// response.
var errUnstored = errors.New("httpadapter: response not recorded")

type middleware struct {
	cfg        *config
	op         *idem.Operation[*request, *response]
	err        error // invalid options
	warnScope  sync.Once
	scopeCheck bool // warn about credentials without a scope
}

// New returns middleware that makes handlers idempotent, keeping their
// responses in store, or an error wrapping idem.ErrInvalidOption when an
// option cannot be honoured; call it when the service starts. The
// middleware may wrap any number of handlers, which then share the keys of
// one scope; the fingerprint keeps requests to different paths apart.
func New(store idem.Store, opts ...Option) (func(http.Handler) http.Handler, error) {
	m := newMiddleware(store, opts)
	if m.err != nil {
		return nil, m.err
	}
	return m.wrap, nil
}

// Middleware is New for callers that cannot handle an error where they
// build their routes: an option that cannot be honoured makes every
// protected request fail with a 500 problem, and is reported to the hook
// set by WithErrorHook. Prefer New, which reports it at start.
func Middleware(store idem.Store, opts ...Option) func(http.Handler) http.Handler {
	return newMiddleware(store, opts).wrap
}

func newMiddleware(store idem.Store, opts []Option) *middleware {
	cfg := newConfig(opts)
	coreOpts := make([]idem.Option, 0, len(cfg.core)+3)
	// The middleware's fingerprint comes before the user's options: an
	// idem.WithFingerprint among them, which cannot be for the
	// middleware's own request type, is then refused (ErrInvalidOption)
	// instead of silently overridden.
	coreOpts = append(coreOpts, idem.WithNamespace(DefaultNamespace), idem.WithFingerprint(fingerprinter(cfg.fpHeaders)))
	coreOpts = append(coreOpts, cfg.core...)
	coreOpts = append(coreOpts, idem.WithDisposition(nil)) // the function marks what it does not record
	op := idem.New[*request, *response](store, coreOpts...)
	errs := append(cfg.errs, op.Err())
	return &middleware{cfg: cfg, op: op, err: errors.Join(errs...), scopeCheck: !cfg.scopeSet}
}

func (m *middleware) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.serve(w, r, next)
	})
}

func (m *middleware) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	protect, required := m.cfg.policy(r.Method)
	if !protect {
		next.ServeHTTP(w, r)
		return
	}
	if m.err != nil {
		m.fail(w, r, m.err)
		return
	}
	raw, present := r.Header[HeaderKey]
	if !present {
		if !required {
			next.ServeHTTP(w, r)
			return
		}
		m.problem(w, r, ProblemKeyMissing, "This request requires an Idempotency-Key header.")
		return
	}
	if len(raw) != 1 {
		m.problem(w, r, ProblemKeyInvalid, "The Idempotency-Key header must appear once.")
		return
	}
	key, ok := parseKey(raw[0])
	if !ok {
		m.problem(w, r, ProblemKeyInvalid, "The Idempotency-Key must be 1 to 255 printable ASCII characters, bare or as a quoted string.")
		return
	}
	x := &exchange{marks: marks{key: raw[0]}}
	x.req = request{r: r, scr: getScratch()}
	if !m.read(w, x) || !m.digestBody(w, x) { // digestBody: see bodyfp.go
		return
	}
	var scope string
	if m.cfg.scope != nil {
		scope = m.cfg.scope(r)
	}
	if m.scopeCheck && (r.Header["Authorization"] != nil || r.Header["Cookie"] != nil) {
		m.warnScope.Do(func() {
			slog.Warn("httpadapter: a protected request carries credentials (Authorization or Cookie) but no scope is configured: " +
				"callers who send the same Idempotency-Key and body share one stored response. " +
				"Set httpadapter.WithScope to the authenticated account, or WithScope(nil) to share keys on purpose.")
		})
	}

	x.key = Key{Raw: key, Scope: scope, Stored: idem.ScopedKey(scope, key)}
	m.do(w, r, next, x.key.Stored, x)
}

// read reads the request body, and the digest of a form that outer handlers
// parsed, into x.req. When it cannot, it answers the request and returns
// false.
func (m *middleware) read(w http.ResponseWriter, x *exchange) bool {
	req := &x.req
	body, err := readBody(req.r, m.cfg.maxBody, req.scr.body)
	if err == nil {
		req.body = body
		if body != nil {
			req.scr.body = body // keep what the buffer grew to
		}
		req.form, err = formDigest(req.r, m.cfg.maxBody)
		if err == nil {
			return true
		}
		if !errors.Is(err, errTooLarge) {
			// The body was read; a parsed file that cannot be reread is the
			// server's failure, not the client's.
			req.release()
			x.marks.set(w.Header())
			m.fail(w, req.r, err)
			return false
		}
	}
	req.release()
	x.marks.set(w.Header())
	if !errors.Is(err, errTooLarge) {
		m.problem(w, req.r, ProblemBodyUnreadable, "")
		return false
	}
	limit := m.cfg.maxBody
	var mbe *http.MaxBytesError // an outer http.MaxBytesReader's limit
	if errors.As(err, &mbe) {
		limit = min(limit, mbe.Limit)
	}
	m.problem(w, req.r, ProblemBodyTooLarge, fmt.Sprintf("The request body must not exceed %d bytes.", limit))
	return false
}

// exchange is the state of one protected request, allocated once for it
// and never reused, so that what the response headers keep of it stays
// valid.
type exchange struct {
	req   request
	marks marks
	key   Key // for KeyFromContext
}

// handlerRun is the state of the handler's run, apart from exchange so
// that a replay does not allocate it; never reused either, so that a
// handler that keeps its ResponseWriter or request body past its return
// reaches no other request's.
type handlerRun struct {
	body requestBody
	rec  recorder
	ran  response // what the handler produced
}

// requestBody is the request body the handler reads, from the copy read
// before it ran. Like io.NopCloser's, it has Read, WriteTo and Close.
type requestBody struct{ r bytes.Reader }

func (b *requestBody) Read(p []byte) (int, error)         { return b.r.Read(p) }
func (b *requestBody) WriteTo(w io.Writer) (int64, error) { return b.r.WriteTo(w) }
func (b *requestBody) Close() error                       { return nil }

// do runs the handler under key, or replays its stored response, and
// answers the client.
func (m *middleware) do(w http.ResponseWriter, r *http.Request, next http.Handler, key string, x *exchange) {
	var ran *response // what the handler produced, when it ran in this call
	var dpanic any    // what the disposition function panicked with
	// Taken before the handler runs, which could change r.URL in place.
	method, path := r.Method, r.URL.EscapedPath()
	x.req.path = path
	resp, info, err := m.op.DoInfo(r.Context(), key, &x.req,
		func(ctx context.Context, req *request) (*response, error) {
			hr := new(handlerRun)
			rec := &hr.rec
			rec.reset(w, req.scr.out)
			hr.body.r.Reset(req.body)
			r2 := req.r.WithContext(keyctx.With(ctx, &x.key))
			r2.Body = &hr.body
			next.ServeHTTP(rec, r2)
			hr.body.r.Reset(nil) // the handler returned: no more reading
			implicit := rec.status == 0
			req.scr.out = rec.finish(&hr.ran)
			ran = &hr.ran
			d, p := decide(m.cfg.dispose, ran.Status)
			switch {
			case p != nil:
				dpanic = p
				return nil, idem.Dispose(errUnstored, idem.Hold)
			case implicit && ctx.Err() != nil && m.cfg.abandoned != idem.Record:
				return nil, idem.Dispose(errUnstored, m.cfg.abandoned)
			case d != idem.Record:
				return nil, idem.Dispose(errUnstored, d)
			}
			s := storable(ran, m.cfg.excluded)
			s.Method, s.Path = method, path
			return s, nil
		})
	// Nothing points into the scratch buffers any more: idem hashed the
	// fingerprint, the handler returned, and its body was copied out. (If
	// the handler panicked, they are left to the garbage collector.)
	x.req.release()
	if dpanic != nil {
		panic(dpanic) // the key is held
	}

	mk := &x.marks
	mk.signature = info.Fingerprint
	switch info.Outcome {
	case idem.OutcomeExecuted, idem.OutcomeFnError, idem.OutcomeHeld, idem.OutcomeNotStored:
		if info.Outcome == idem.OutcomeNotStored {
			m.report(r, err) // the handler ran all the same
		}
		mk.status, mk.unstored = StatusNew, info.Outcome != idem.OutcomeExecuted
		ran.write(w, mk)
		ran.recycleHeader()
	case idem.OutcomeReplayed:
		if resp == nil || resp.Status < 200 || resp.Status > 999 {
			m.fail(w, r, fmt.Errorf("%w: invalid stored response", idem.ErrCorruptRecord))
			return
		}
		if resp.Method != method || resp.Path != path {
			// Another endpoint's response, found with signature validation
			// off: never replay it.
			mk.set(w.Header())
			m.problem(w, r, ProblemKeyReused, "This Idempotency-Key was used with another method or path.")
			return
		}
		mk.status, mk.replayed = StatusHit, true
		resp.write(w, mk)
		resp.recycleHeader() // decoded for this call alone
	case idem.OutcomeKeyReused:
		mk.set(w.Header())
		m.problem(w, r, ProblemKeyReused, "This Idempotency-Key was used with a different request (method, path, query, body or headers).")
	case idem.OutcomeInFlight:
		mk.set(w.Header())
		m.problem(w, r, ProblemInFlight, "A request with this Idempotency-Key is still being processed. Retry later.")
	case idem.OutcomeStoreError:
		mk.set(w.Header())
		m.report(r, err)
		m.problem(w, r, ProblemStoreUnavailable, "")
	case idem.OutcomeCanceled:
		// The client left, or a deadline passed, while idem waited for the
		// store or for an in-flight request: no failure to report.
		mk.set(w.Header())
		m.problem(w, r, ProblemStoreUnavailable, "The request ended before the idempotency check completed.")
	default: // a corrupt record, or what cannot happen (the middleware checks keys)
		mk.set(w.Header())
		m.fail(w, r, err)
	}
}

// decide calls f(v). A panic of f becomes the Hold disposition, with the
// value it panicked with, which the caller raises again once idem has held
// the key: the handler ran, so its effect stands, and an immediate retry
// must not run it again.
func decide[T any](f func(T) idem.Disposition, v T) (d idem.Disposition, p any) {
	defer func() {
		if p = recover(); p != nil {
			d = idem.Hold
		}
	}()
	return f(v), nil
}

// fail answers with a 500 problem, and reports err.
func (m *middleware) fail(w http.ResponseWriter, r *http.Request, err error) {
	m.report(r, err)
	m.problem(w, r, ProblemInternal, "")
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
	// values holds the header values set, so that setting them allocates
	// nothing more: the marks of a request are set on one response only.
	values [4]string
}

// set sets the headers on h. It is called once per response: the values
// set point into mk.
func (mk *marks) set(h http.Header) {
	v := mk.values[:0]
	add := func(name, value string) {
		v = append(v, value)
		h[name] = v[len(v)-1 : len(v) : len(v)]
	}
	add(HeaderKey, mk.key)
	if mk.signature != "" {
		add(HeaderSignature, mk.signature)
	}
	if mk.status != "" {
		add(HeaderStatus, mk.status)
	}
	if mk.replayed {
		add(HeaderReplayed, "true")
	}
	if mk.unstored {
		add(HeaderStored, "false")
	}
}

// write sends resp on w: its headers over those already on w, then the
// idempotency headers, its status and its body. Setting each header whole
// makes the output independent of map order; net/http sorts header names on
// the wire.
func (resp *response) write(w http.ResponseWriter, mk *marks) {
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
