package httpadapter

import (
	"fmt"
	"net/http"

	"github.com/idemkit/idem"
)

// DefaultMaxBodyBytes is the largest request body a protected request may
// carry unless WithMaxBodyBytes says otherwise.
const DefaultMaxBodyBytes = 1 << 20

// DefaultNamespace is the idem namespace of the middleware's records unless
// WithOptions passes another one with idem.WithNamespace. It keeps them apart
// from the records of other Operations sharing the store.
const DefaultNamespace = "http"

// An Option configures the middleware built by Middleware. Options are
// applied in order; a later option overrides an earlier one. An option that
// cannot be honoured makes every protected request fail with a 500 problem
// (see ProblemInternal), and is reported to the hook set by WithErrorHook.
type Option func(*config)

type config struct {
	core        []idem.Option
	methods     []string
	keyOptional bool
	scope       func(*http.Request) string
	fpHeaders   []string
	excluded    map[string]bool
	maxBody     int64
	stores      func(status int) bool
	hook        func(*http.Request, error)
	errs        []error
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
		maxBody: DefaultMaxBodyBytes,
		stores:  defaultStores,
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

// defaultStores is the default storage predicate: every status below 500
// except 429 Too Many Requests.
func defaultStores(status int) bool {
	return status < 500 && status != http.StatusTooManyRequests
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
// idem.WithNamespace and idem.WithCodec. idem.WithFingerprint and
// idem.WithFinalErrors are overridden: the middleware fingerprints requests
// itself, and decides what is stored by status (see WithStoreStatus).
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

// WithKeyRequired sets whether a protected request without an
// Idempotency-Key header is refused with 400 (true, the default) or passed
// to the handler untouched (false). A header that is present but empty or
// malformed is refused with 400 either way.
func WithKeyRequired(required bool) Option {
	return func(c *config) { c.keyOptional = !required }
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
func WithScope(f func(*http.Request) string) Option {
	return func(c *config) { c.scope = f }
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

// WithStoreStatus sets which responses are stored and replayed, by status
// code. A response that is not stored is sent to its client, and the key is
// released at once, so a retry runs the handler again. The default stores
// every status below 500 except 429 Too Many Requests; nil restores it.
func WithStoreStatus(stores func(status int) bool) Option {
	return func(c *config) {
		if stores == nil {
			stores = defaultStores
		}
		c.stores = stores
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
