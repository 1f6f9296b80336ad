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
// NewUnaryServerInterceptor and NewUnaryClientInterceptor report an option
// that cannot be honoured, and a server-only option given to the client;
// with UnaryServerInterceptor and UnaryClientInterceptor, it makes the
// interceptor fail every call it protects with codes.Internal, and is
// reported to the hook set by WithErrorHook.
type Option func(*config)

type config struct {
	core       []idem.Option
	header     string
	protect    func(fullMethod string) bool     // nil: every method
	require    func(fullMethod string) bool     // nil: none
	scope      func(ctx context.Context) string // nil: keys are not scoped
	scopeSet   bool                             // WithScope was given, even with a nil f
	dispose    func(*status.Status) idem.Disposition
	inFlight   codes.Code
	retryDelay time.Duration
	hook       func(ctx context.Context, fullMethod string, err error)
	errs       []error
	serverOnly []string // the server-only options given, by name
}

func newConfig(opts []Option) *config {
	c := &config{
		header:     MetadataKey,
		dispose:    DefaultDisposition,
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

// server marks the server-only option name as given, so that the client
// interceptor refuses it.
func (c *config) server(name string) { c.serverOnly = append(c.serverOnly, name) }

// DefaultDisposition is the disposition of handler errors unless
// WithDisposition says otherwise: every error is released, so a retry runs
// the handler again.
func DefaultDisposition(*status.Status) idem.Disposition { return idem.Release }

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
// The interceptor fingerprints requests itself: an idem.WithFingerprint
// here is refused with idem.ErrInvalidOption, rather than ignored.
// idem.WithDisposition is overridden: the interceptor decides what is
// stored by status (see WithDisposition). Options given in several calls of
// WithOptions add up, in order. Server only.
func WithOptions(opts ...idem.Option) Option {
	return func(c *config) { c.server("WithOptions"); c.core = append(c.core, opts...) }
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
// goes through untouched, as AIP-155 makes the request ID optional; that is
// the default. It has the shape of httpadapter.WithKeyRequired, which takes
// HTTP methods. It replaces WithKeyRequiredFilter. Server only.
func WithKeyRequired(fullMethods ...string) Option {
	return func(c *config) {
		c.server("WithKeyRequired")
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
	return func(c *config) { c.server("WithKeyRequiredFilter"); c.require = require }
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
//
// Without WithScope, two tenants who send the same key and request share
// one record, and the second is replayed the first one's response. So the
// interceptor logs a warning (once, through log/slog's default logger) when
// a protected call carries authorization metadata and WithScope was never
// given. To share keys between all callers on purpose, say so with
// WithScope(nil), which silences it. Credentials are not part of the
// fingerprint: a token refreshed between two attempts would turn an honest
// retry into a refusal.
func WithScope(f func(ctx context.Context) string) Option {
	return func(c *config) { c.server("WithScope"); c.scope, c.scopeSet = f, true }
}

// WithDisposition sets what becomes of the handler's errors, by their
// status (a plain error has code Unknown; a context error, Canceled or
// DeadlineExceeded): idem.Record stores the status and replays it whole,
// message and details included, to every retry for the TTL, for outcomes a
// retry would only repeat (InvalidArgument, NotFound, a declined payment);
// idem.Release stores nothing, so a retry runs the handler again; idem.Hold
// stores nothing and refuses the key (see WithInFlightCode) until the lease
// expires, a lease TTL at most, for outcomes whose side effects are
// unknown, such as a DeadlineExceeded from a downstream call. Responses are
// always recorded. The default is DefaultDisposition, which releases every
// error; nil restores it. decide may be called concurrently; if it panics,
// nothing is stored, the key is held (the handler ran), and the panic
// continues. Server only.
func WithDisposition(decide func(st *status.Status) idem.Disposition) Option {
	return func(c *config) {
		c.server("WithDisposition")
		if decide == nil {
			decide = DefaultDisposition
		}
		c.dispose = decide
	}
}

// RecordCodes returns a disposition function for WithDisposition that
// records the errors whose code is one of recorded, and releases the others.
func RecordCodes(recorded ...codes.Code) func(*status.Status) idem.Disposition {
	recorded = slices.Clone(recorded)
	return func(st *status.Status) idem.Disposition {
		if slices.Contains(recorded, st.Code()) {
			return idem.Record
		}
		return idem.Release
	}
}

// WithInFlightCode sets the status code of a call refused because another
// call with its key is in flight: codes.Aborted by default, as the IETF
// draft answers 409 Conflict. codes.Unavailable lets retry policies that
// retry only Unavailable, as AIP-194 advises, retry it; that is safe, since
// the key deduplicates the retry. codes.OK is refused. Server only.
func WithInFlightCode(code codes.Code) Option {
	return func(c *config) {
		c.server("WithInFlightCode")
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
		c.server("WithRetryDelay")
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
// options only, with UnaryClientInterceptor) and server.
func WithErrorHook(hook func(ctx context.Context, fullMethod string, err error)) Option {
	return func(c *config) { c.hook = hook }
}
