package httpadapter

import (
	"fmt"
	"net/http"
	"slices"

	"github.com/idemkit/idem"
)

// DefaultMaxBodyBytes is the largest request body a protected request may
// carry unless WithMaxBodyBytes says otherwise.
const DefaultMaxBodyBytes = 1 << 20

// DefaultNamespace is the idem namespace of the middleware's records unless
// WithOptions passes another one with idem.WithNamespace. It keeps them apart
// from the records of other Operations sharing the store.
const DefaultNamespace = "http"

// An Option configures the middleware built by New or Middleware. Options
// are applied in order; a later option overrides an earlier one. New
// reports an option that cannot be honoured; with Middleware, it makes every
// protected request fail with a 500 problem (see ProblemInternal), and is
// reported to the hook set by WithErrorHook.
type Option func(*config)

type config struct {
	core      []idem.Option
	methods   []string
	required  []string // nil: every protected method
	scope     func(*http.Request) string
	scopeSet  bool // WithScope was given, even with a nil f
	fpHeaders []string
	bodyFP    func(contentType string, body []byte) ([]byte, error) // nil: the body's bytes
	excluded  map[string]bool
	maxBody   int64
	dispose   func(status int) idem.Disposition
	abandoned idem.Disposition
	problems  func(http.ResponseWriter, *http.Request, Problem)
	hook      func(*http.Request, error)
	errs      []error
}

func newConfig(opts []Option) *config {
	c := &config{
		methods:   []string{http.MethodPost, http.MethodPatch},
		fpHeaders: []string{"Content-Type"},
		excluded: canonicalSet([]string{
			"Set-Cookie",
			// Hop-by-hop fields (RFC 9110, section 7.6.1).
			"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
			"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
		}),
		maxBody:   DefaultMaxBodyBytes,
		dispose:   DefaultDisposition,
		abandoned: idem.Release,
		problems:  WriteProblem,
	}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	return c
}

func (c *config) invalid(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("%w: httpadapter."+format, append([]any{idem.ErrInvalidOption}, args...)...))
}

// DefaultDisposition is the disposition of responses unless WithDisposition
// says otherwise: every status below 500 is recorded, except 429 Too Many
// Requests, and 429 and every 5xx is released, so a retry runs the handler
// again. Stripe records 500s too; AWS Powertools and Checkout.com record
// none of them.
func DefaultDisposition(status int) idem.Disposition {
	if status < 500 && status != http.StatusTooManyRequests {
		return idem.Record
	}
	return idem.Release
}

// policy reports whether requests with method are protected, and whether
// they must carry a key. A method on which the key is required is
// protected.
func (c *config) policy(method string) (protect, required bool) {
	if c.required == nil {
		protect = slices.Contains(c.methods, method)
		return protect, protect
	}
	required = slices.Contains(c.required, method)
	return required || slices.Contains(c.methods, method), required
}

func canonicalSet(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[http.CanonicalHeaderKey(n)] = true
	}
	return m
}

func canonicalList(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = http.CanonicalHeaderKey(n)
	}
	return out
}

// WithOptions passes options to the idem.Operation behind the middleware:
// idem.WithTTL (how long responses are replayed), idem.WithLockTTL,
// idem.WithWaitTimeout (how long a duplicate of an in-flight request waits
// for its response instead of receiving 409), idem.WithSignatureValidation,
// idem.WithNamespace and idem.WithCodec. The middleware fingerprints
// requests itself (see WithFingerprintHeaders): an idem.WithFingerprint
// here is refused with idem.ErrInvalidOption, rather than ignored.
// idem.WithDisposition is overridden: the middleware decides what is stored
// by status (see WithDisposition).
// Options given in several calls of WithOptions add up, in order.
//
// With idem.WithSignatureValidation(false), a request whose body, query or
// fingerprinted headers differ from those the key was first used with is
// replayed the stored response instead of refused. One with another method
// or path is still refused with 422 (ProblemKeyReused), so that the
// response of one endpoint never answers another.
func WithOptions(opts ...idem.Option) Option {
	return func(c *config) { c.core = append(c.core, opts...) }
}

// WithMethods sets the request methods the middleware protects; requests with
// other methods reach the handler untouched. The default is POST and PATCH.
// Method names are case-sensitive.
func WithMethods(methods ...string) Option {
	return func(c *config) {
		for _, m := range methods {
			if m == "" {
				c.invalid("WithMethods: empty method")
				return
			}
		}
		c.methods = append([]string(nil), methods...)
	}
}

// WithKeyRequired sets the request methods on which the Idempotency-Key
// header is required: a request without one is refused with 400
// (ProblemKeyMissing). These methods are protected whatever WithMethods
// says. On the other protected methods, a request without the header
// passes to the handler untouched. By default the key is required on every
// protected method; WithKeyRequired() with no methods makes it optional
// everywhere. A header that is present but empty or malformed is refused
// with 400 either way. It has the shape of grpcadapter.WithKeyRequired,
// which takes full gRPC method names. Method names are case-sensitive.
func WithKeyRequired(methods ...string) Option {
	return func(c *config) {
		for _, m := range methods {
			if m == "" {
				c.invalid("WithKeyRequired: empty method")
				return
			}
		}
		c.required = append([]string{}, methods...)
	}
}

// WithScope makes keys private to a scope, such as the authenticated
// account, or r.Host when hosts are tenants: f returns the scope of a
// request, and the same key sent in two scopes names two unrelated records,
// so tenants who pick the same key never see each other's responses. f runs
// after the middleware's outer handlers, so it can read what an
// authentication middleware put in the request's context. Requests for
// which f returns "" share one scope, as do all requests when f is nil (the
// default).
//
// The stored key is the decimal length of the scope, ':', the scope, ':' and
// the key; when that is longer than idem.MaxKeyLen or the scope is not
// printable ASCII, it is replaced by "sha256:" and the hex SHA-256 of it.
//
// Without WithScope, two tenants who send the same key and body share one
// record, and the second is replayed the first one's response. So the
// middleware logs a warning (once, through log/slog's default logger) when
// a protected request carries an Authorization or Cookie header and
// WithScope was never given. To share keys between all callers on purpose,
// say so with WithScope(nil), which silences it. Credentials are not part
// of the fingerprint by default: a token refreshed between two attempts
// would turn an honest retry into a 422.
func WithScope(f func(*http.Request) string) Option {
	return func(c *config) { c.scope, c.scopeSet = f, true }
}

// WithFingerprintHeaders sets the request headers that are part of the
// fingerprint, along with the method, the path and query, and the body. A
// request with the same key but other values for these headers is refused
// with 422 (key reused). The default is Content-Type alone; all headers are
// never included, since clients and proxies add volatile ones.
func WithFingerprintHeaders(names ...string) Option {
	return func(c *config) {
		for _, n := range names {
			if n == "" {
				c.invalid("WithFingerprintHeaders: empty header name")
				return
			}
		}
		c.fpHeaders = canonicalList(names)
	}
}

// WithBodyFingerprint sets the function whose result stands for the
// request body in the fingerprint, instead of the body's bytes, so that
// bodies the API deems equal are one request: CanonicalJSON, say, or
// JSONFields. f gets the request's Content-Type (its first value) and body;
// the SHA-256 of its result takes the place of the body's. f must not
// modify or retain body. The handler still reads, and replays still come
// from, the body as sent; only the fingerprint changes.
//
// An error from f makes the request a 400 problem (ProblemBodyInvalid),
// whose detail carries the error's text, and the handler does not run: f's
// errors should be fit for the client to read. f is not called for an empty
// body, nor when outer handlers parsed a form, which then stands in for the
// body (see Middleware). It may be called concurrently; if it panics, the
// panic reaches net/http. The default (nil) fingerprints the body's bytes.
func WithBodyFingerprint(f func(contentType string, body []byte) ([]byte, error)) Option {
	return func(c *config) { c.bodyFP = f }
}

// WithExcludedHeaders sets the response headers that are never stored, so
// never replayed; the response that ran the handler still carries them. The
// default is Set-Cookie and the hop-by-hop fields Connection, Keep-Alive,
// Proxy-Connection, Proxy-Authenticate, Proxy-Authorization, TE, Trailer,
// Transfer-Encoding and Upgrade. The list replaces the default. While
// Connection is excluded, so are the fields that the handler's Connection
// header names.
func WithExcludedHeaders(names ...string) Option {
	return func(c *config) { c.excluded = canonicalSet(names) }
}

// WithMaxBodyBytes sets the largest request body accepted on a protected
// request, which the middleware reads whole to fingerprint it. A larger body
// is refused with 413 before the handler runs, as is a form that outer
// handlers parsed whose encoded values and files add up to more. The
// default is DefaultMaxBodyBytes; n must be positive.
func WithMaxBodyBytes(n int64) Option {
	return func(c *config) {
		if n <= 0 {
			c.invalid("WithMaxBodyBytes(%d): must be positive", n)
			return
		}
		c.maxBody = n
	}
}

// WithDisposition sets what becomes of the handler's response, by status
// code: idem.Record stores it and replays it to every retry for the TTL;
// idem.Release sends it and releases the key at once, so a retry runs the
// handler again; idem.Hold sends it and keeps the key refused with 409
// until the lease expires (a lease TTL at most, see idem.WithLockTTL), for
// outcomes whose side effects are unknown, such as a 504 from a gateway the
// handler called. Responses that are not recorded carry
// X-Idempotency-Stored: false. The default is DefaultDisposition; nil
// restores it. decide may be called concurrently; if it panics, nothing is
// stored, the key is held (the handler ran), and the panic reaches
// net/http.
func WithDisposition(decide func(status int) idem.Disposition) Option {
	return func(c *config) {
		if decide == nil {
			decide = DefaultDisposition
		}
		c.dispose = decide
	}
}

// WithAbandoned sets what becomes of the response of a handler that returned
// without writing anything (net/http would answer 200 OK with no body) after
// its request's context had ended: the client went away, a deadline
// passed, or the key's lease was lost. Such a handler most likely gave up
// before doing its work, so by default (idem.Release) the empty 200 is sent
// as not stored (X-Idempotency-Stored: false) and the key is released, and
// a retry runs the handler again. idem.Record stores it as any other 200,
// for handlers that do their work and rely on the implicit 200 whatever
// the context says. A handler that writes a response, or returns while its
// context is live, is not affected.
func WithAbandoned(d idem.Disposition) Option {
	return func(c *config) { c.abandoned = d }
}

// WithProblemWriter sets how refusals are written, for APIs whose errors
// have a shape of their own (Stripe's {"error": {...}}, say): write is
// given the problem (its type URI, title, status and detail) and must write
// the whole response, with p.Status as its status. The idempotency headers
// (Idempotency-Key, the signature once known) and, on 409 and 503,
// Retry-After are set on w before write is called. The default is
// WriteProblem: RFC 9457 application/problem+json.
func WithProblemWriter(write func(w http.ResponseWriter, r *http.Request, p Problem)) Option {
	return func(c *config) {
		if write == nil {
			write = WriteProblem
		}
		c.problems = write
	}
}

// WithErrorHook sets a function told about the failures a client cannot act
// on: invalid options, store failures (answered with 503), responses the
// handler produced but that could not be stored (idem.ErrNotStored: the
// response is sent all the same), and unexpected errors (answered with 500).
// It is not told about client errors such as a missing key. It may be called
// concurrently. The default does nothing.
func WithErrorHook(hook func(r *http.Request, err error)) Option {
	return func(c *config) { c.hook = hook }
}
