package grpcadapter

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/idemkit/idem"
)

// DefaultNamespace is the idem namespace of the server interceptor's
// records unless WithOptions passes another one with idem.WithNamespace. It
// keeps them apart from the records of other Operations sharing the store,
// such as those of httpadapter.
const DefaultNamespace = "grpc"

// DefaultRetryDelay is the delay the RetryInfo detail suggests when a call
// finds its key in flight or the store unavailable, unless WithRetryDelay
// says otherwise.
const DefaultRetryDelay = time.Second

// An Option configures the interceptors built by UnaryServerInterceptor and
// UnaryClientInterceptor. Options are applied in order; a later option
// overrides an earlier one. Each option says which side it applies to; the
// other side ignores it.
//
// An option that cannot be honoured makes the interceptor fail every call
// it protects with codes.Internal, and is reported to the hook set by
// WithErrorHook.
type Option func(*config)

type config struct {
	core       []idem.Option
	header     string
	protect    func(fullMethod string) bool     // nil: every method
	require    func(fullMethod string) bool     // nil: none
	scope      func(ctx context.Context) string // nil: keys are not scoped
	final      func(*status.Status) bool        // nil: none
	inFlight   codes.Code
	retryDelay time.Duration
	hook       func(ctx context.Context, fullMethod string, err error)
	errs       []error
}

func newConfig(opts []Option) *config {
	c := &config{
		header:     MetadataKey,
		inFlight:   codes.Aborted,
		retryDelay: DefaultRetryDelay,
	}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	return c
}

func (c *config) invalid(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("%w: grpcadapter."+format, append([]any{idem.ErrInvalidOption}, args...)...))
}

// policy reports whether calls to fullMethod are protected, and whether they
// must carry a key. A method whose key is required is protected.
func (c *config) policy(fullMethod string) (protect, required bool) {
	required = c.require != nil && c.require(fullMethod)
	protect = required || c.protect == nil || c.protect(fullMethod)
	return protect, required
}

// WithOptions passes options to the idem.Operation behind the server
// interceptor: idem.WithTTL (how long responses are replayed),
// idem.WithLockTTL, idem.WithWaitTimeout (how long a duplicate of an
// in-flight call waits for its response instead of failing at once),
// idem.WithSignatureValidation, idem.WithNamespace and idem.WithCodec.
// idem.WithFingerprint and idem.WithFinalErrors are overridden: the
// interceptor fingerprints requests itself, and decides what is stored by
// status (see WithFinalCodes). Options given in several calls of
// WithOptions add up, in order. Server only.
func WithOptions(opts ...idem.Option) Option {
	return func(c *config) { c.core = append(c.core, opts...) }
}

// WithMetadataKey sets the metadata key that carries the idempotency key,
// MetadataKey by default. It is case-insensitive, and may not be a reserved
// (grpc-) or binary (-bin) key. Client and server.
func WithMetadataKey(key string) Option {
	return func(c *config) {
		k := strings.ToLower(key)
		if !validMetadataKey(k) {
			c.invalid("WithMetadataKey(%q): want a non-binary, non-reserved metadata key of [0-9a-z-_.]", key)
			return
		}
		c.header = k
	}
}

func validMetadataKey(k string) bool {
	if k == "" || strings.HasPrefix(k, "grpc-") || strings.HasSuffix(k, "-bin") {
		return false
	}
	for _, r := range k {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// WithMethods sets the methods the interceptor protects, by full name
// ("/package.Service/Method"); calls to other methods go through untouched.
// By default every unary method is protected. It replaces WithMethodFilter.
// Client and server: the client interceptor attaches keys to calls of these
// methods only.
func WithMethods(fullMethods ...string) Option {
	return func(c *config) {
		set, ok := methodSet("WithMethods", fullMethods, c)
		if ok {
			c.protect = set
		}
	}
}

// WithMethodFilter sets the methods the interceptor protects: those for
// which protect returns true, given the full method name. nil protects every
// method, the default. It replaces WithMethods. Client and server.
func WithMethodFilter(protect func(fullMethod string) bool) Option {
	return func(c *config) { c.protect = protect }
}

// WithKeyRequired makes the key required on calls to the given methods (by
// full name): the server refuses a call without one with InvalidArgument
// and reason ReasonKeyMissing. These methods are protected whatever
// WithMethods says. On the other protected methods, a call without a key
// goes through untouched, as AIP-155 makes the request ID optional. It
// replaces WithKeyRequiredFilter. Server only.
func WithKeyRequired(fullMethods ...string) Option {
	return func(c *config) {
		set, ok := methodSet("WithKeyRequired", fullMethods, c)
		if ok {
			c.require = set
		}
	}
}

// WithKeyRequiredFilter makes the key required on calls to the methods for
// which require returns true, given the full method name; nil requires it
// nowhere, the default. See WithKeyRequired, which it replaces. Server only.
func WithKeyRequiredFilter(require func(fullMethod string) bool) Option {
	return func(c *config) { c.require = require }
}

func methodSet(name string, methods []string, c *config) (func(string) bool, bool) {
	for _, m := range methods {
		if !validMethod(m) {
			c.invalid("%s(%q): want a full method name, /package.Service/Method", name, m)
			return nil, false
		}
	}
	methods = slices.Clone(methods)
	return func(m string) bool { return slices.Contains(methods, m) }, true
}

func validMethod(m string) bool {
	svc, method, ok := strings.Cut(strings.TrimPrefix(m, "/"), "/")
	return ok && strings.HasPrefix(m, "/") && svc != "" && method != "" && !strings.Contains(method, "/")
}

// WithScope makes keys private to a scope, such as the authenticated
// account or tenant: f returns the scope of a call, given its context, and
// the same key sent in two scopes names two unrelated records, so tenants
// who pick the same key never see each other's responses. f runs, for calls
// that carry a key, after the interceptors chained before this one, so it
// can read what an authentication interceptor put in the context (or use
// peer.FromContext or metadata.FromIncomingContext). Calls for which f
// returns "" share one scope. Server only.
//
// With a scope, the key given to idem is the decimal length of the scope,
// ':', the scope, ':' and the key, as in httpadapter; when that is longer
// than idem.MaxKeyLen or the scope is not printable ASCII, it is replaced by
// "sha256:" and the hex SHA-256 of it. Without WithScope (or with a nil f),
// the default, the key is given to idem as it is, and calls share it
// whoever makes them. Adding, removing or changing the scope changes the
// keys of the records: a retry across the change runs the handler again.
func WithScope(f func(ctx context.Context) string) Option {
	return func(c *config) { c.scope = f }
}

// WithFinalCodes stores, and replays to later calls with the same key, the
// errors of the handler whose status code is one of final, such as
// InvalidArgument or NotFound: outcomes that a retry would only repeat. The
// status is replayed whole, message and details included. Other errors are
// never stored, and a retry runs the handler again; that is the default. It
// replaces WithFinalStatus. Server only.
func WithFinalCodes(final ...codes.Code) Option {
	final = slices.Clone(final)
	return WithFinalStatus(func(st *status.Status) bool { return slices.Contains(final, st.Code()) })
}

// WithFinalStatus stores, and replays, the errors of the handler for which
// isFinal returns true, given their status (a plain error has code Unknown;
// a context error, Canceled or DeadlineExceeded). nil stores none, the
// default. See WithFinalCodes, which it replaces. Server only.
func WithFinalStatus(isFinal func(*status.Status) bool) Option {
	return func(c *config) { c.final = isFinal }
}

// WithInFlightCode sets the status code of a call refused because another
// call with its key is in flight: codes.Aborted by default, as the IETF
// draft answers 409 Conflict. codes.Unavailable lets retry policies that
// retry only Unavailable, as AIP-194 advises, retry it; that is safe, since
// the key deduplicates the retry. codes.OK is refused. Server only.
func WithInFlightCode(code codes.Code) Option {
	return func(c *config) {
		if code == codes.OK {
			c.invalid("WithInFlightCode(OK)")
			return
		}
		c.inFlight = code
	}
}

// WithRetryDelay sets the delay suggested by the RetryInfo detail of calls
// refused because their key is in flight or the store is unavailable. The
// default is DefaultRetryDelay; d must not be negative. Server only.
func WithRetryDelay(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.invalid("WithRetryDelay(%v): must not be negative", d)
			return
		}
		c.retryDelay = d
	}
}

// WithErrorHook sets a function told about the failures a client cannot act
// on: invalid options, store failures (answered with Unavailable), outcomes
// the handler produced but that could not be stored (idem.ErrNotStored: the
// response is returned all the same), and unexpected errors (answered with
// Internal). It is not told about client errors such as a missing key. It
// may be called concurrently. The default does nothing. Client (invalid
// options only) and server.
func WithErrorHook(hook func(ctx context.Context, fullMethod string, err error)) Option {
	return func(c *config) { c.hook = hook }
}
