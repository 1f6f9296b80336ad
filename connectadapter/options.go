package connectadapter

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/idemkit/idem"
)

// DefaultNamespace is the idem namespace of the server interceptor's
// records unless WithOptions passes another one with idem.WithNamespace. It
// keeps them apart from the records of other Operations sharing the store,
// such as those of grpcadapter and httpadapter.
const DefaultNamespace = "connect"

// DefaultRetryDelay is the delay the RetryInfo detail suggests when a call
// finds its key in flight or the store unavailable, unless WithRetryDelay
// says otherwise.
const DefaultRetryDelay = time.Second

// An Option configures the interceptors built by NewInterceptor and
// NewClientInterceptor. Options are applied in order; a later option
// overrides an earlier one. Each option says which side it applies to; the
// other side ignores it.
//
// An option that cannot be honoured, or a server-only option given to the
// client interceptor, makes the interceptor fail every call it protects
// with connect.CodeInternal, and is reported to the hook set by
// WithErrorHook. CheckOptions and CheckClientOptions report such options
// when the service starts.
type Option func(*config)

type config struct {
	core       []idem.Option
	header     string                                                   // canonical form
	protect    func(procedure string) bool                              // nil: every procedure with side effects
	require    func(procedure string) bool                              // nil: none
	scope      func(ctx context.Context, req connect.AnyRequest) string // nil: keys are not scoped
	scopeSet   bool                                                     // WithScope was given, even with a nil f
	dispose    func(*connect.Error) idem.Disposition
	inFlight   connect.Code
	retryDelay time.Duration
	hook       func(ctx context.Context, procedure string, err error)
	errs       []error
	serverOnly []string // the server-only options given, by name
}

func newConfig(opts []Option) *config {
	c := &config{
		header:     HeaderKey,
		dispose:    DefaultDisposition,
		inFlight:   connect.CodeAborted,
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

func (c *config) invalid(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("%w: connectadapter."+format, append([]any{idem.ErrInvalidOption}, args...)...))
}

// policy reports whether calls to procedure are protected, and whether they
// must carry a key. A procedure whose key is required is protected. Without
// WithMethods or WithMethodFilter, procedures declared free of side effects
// (connect.IdempotencyNoSideEffects) are not protected.
func (c *config) policy(spec connect.Spec) (protect, required bool) {
	required = c.require != nil && c.require(spec.Procedure)
	switch {
	case required:
		protect = true
	case c.protect != nil:
		protect = c.protect(spec.Procedure)
	default:
		protect = spec.IdempotencyLevel != connect.IdempotencyNoSideEffects
	}
	return protect, required
}

// DefaultDisposition is the disposition of handler errors unless
// WithDisposition says otherwise: every error is released, so a retry runs
// the handler again.
func DefaultDisposition(*connect.Error) idem.Disposition { return idem.Release }

// WithOptions passes options to the idem.Operation behind the server
// interceptor: idem.WithTTL (how long responses are replayed),
// idem.WithLockTTL, idem.WithWaitTimeout (how long a duplicate of an
// in-flight call waits for its response instead of failing at once),
// idem.WithSignatureValidation, idem.WithNamespace and idem.WithCodec.
// The interceptor fingerprints requests itself: an idem.WithFingerprint
// here is refused with idem.ErrInvalidOption, rather than ignored.
// idem.WithDisposition is overridden: the interceptor decides what is
// stored by error (see WithDisposition). Options given in several calls of
// WithOptions add up, in order. Server only.
func WithOptions(opts ...idem.Option) Option {
	return func(c *config) { c.server("WithOptions"); c.core = append(c.core, opts...) }
}

// WithHeader sets the request header that carries the idempotency key,
// HeaderKey by default. It is case-insensitive, and may not be a reserved
// header of the Connect or gRPC protocols (Connect-, Grpc-), nor a binary
// (-Bin) one. It is the counterpart of grpcadapter.WithMetadataKey: with the
// gRPC protocol, the header is the call's metadata. Client and server.
func WithHeader(name string) Option {
	return func(c *config) {
		k := strings.ToLower(name)
		if !validHeader(k) {
			c.invalid("WithHeader(%q): want a non-binary, non-reserved header name of [0-9A-Za-z-_.]", name)
			return
		}
		c.header = http.CanonicalHeaderKey(k)
	}
}

func validHeader(k string) bool {
	if k == "" || strings.HasPrefix(k, "grpc-") || strings.HasPrefix(k, "connect-") || strings.HasSuffix(k, "-bin") {
		return false
	}
	for _, r := range k {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// WithMethods sets the procedures the interceptor protects, by name
// ("/package.Service/Method", connect.Spec.Procedure); calls to other
// procedures go through untouched. A procedure listed here is protected
// even if it is declared free of side effects. By default every unary
// procedure is protected except those declared with
// connect.WithIdempotency(connect.IdempotencyNoSideEffects). It replaces
// WithMethodFilter. Client and server: the client interceptor attaches keys
// to calls of these procedures only.
func WithMethods(procedures ...string) Option {
	return func(c *config) {
		if set, ok := procedureSet("WithMethods", procedures, c); ok {
			c.protect = set
		}
	}
}

// WithMethodFilter sets the procedures the interceptor protects: those for
// which protect returns true, given the procedure name, whatever their
// idempotency level. nil restores the default (see WithMethods), which it
// replaces. Client and server.
func WithMethodFilter(protect func(procedure string) bool) Option {
	return func(c *config) { c.protect = protect }
}

// WithKeyRequired makes the key required on calls to the given procedures
// (by name): the server refuses a call without one with
// connect.CodeInvalidArgument and reason ReasonKeyMissing. These procedures
// are protected whatever WithMethods says. On the other protected
// procedures, a call without a key goes through untouched; that is the
// default. It replaces WithKeyRequiredFilter. Server only.
func WithKeyRequired(procedures ...string) Option {
	return func(c *config) {
		c.server("WithKeyRequired")
		if set, ok := procedureSet("WithKeyRequired", procedures, c); ok {
			c.require = set
		}
	}
}

// WithKeyRequiredFilter makes the key required on calls to the procedures
// for which require returns true, given the procedure name; nil requires it
// nowhere, the default. See WithKeyRequired, which it replaces. Server only.
func WithKeyRequiredFilter(require func(procedure string) bool) Option {
	return func(c *config) { c.server("WithKeyRequiredFilter"); c.require = require }
}

func procedureSet(name string, procedures []string, c *config) (func(string) bool, bool) {
	for _, p := range procedures {
		if !validProcedure(p) {
			c.invalid("%s(%q): want a procedure name, /package.Service/Method", name, p)
			return nil, false
		}
	}
	procedures = slices.Clone(procedures)
	return func(p string) bool { return slices.Contains(procedures, p) }, true
}

func validProcedure(p string) bool {
	svc, method, ok := strings.Cut(strings.TrimPrefix(p, "/"), "/")
	return ok && strings.HasPrefix(p, "/") && svc != "" && method != "" && !strings.Contains(method, "/")
}

// WithScope makes keys private to a scope, such as the authenticated
// account or tenant: f returns the scope of a call, given its context and
// request (whose Header and Peer it may read), and the same key sent in two
// scopes names two unrelated records. f runs, for calls that carry a key,
// after the interceptors wrapped outside this one, so it can read what an
// authentication interceptor put in the context. Calls for which f returns
// "" share one scope. Server only.
//
// With a scope, the key given to idem is idem.ScopedKey(scope, key), as in
// grpcadapter and httpadapter. Without WithScope (or with a nil f), the
// default, the key is given to idem as it is, and calls share it whoever
// makes them; the interceptor then logs a warning (once, through log/slog's
// default logger) when a protected call carries an Authorization header.
// WithScope(nil) says that sharing keys is meant, and silences it.
// Credentials are not part of the fingerprint.
func WithScope(f func(ctx context.Context, req connect.AnyRequest) string) Option {
	return func(c *config) { c.server("WithScope"); c.scope, c.scopeSet = f, true }
}

// WithDisposition sets what becomes of the handler's errors, by their
// connect.Error (a plain error has connect.CodeUnknown; a context error,
// CodeCanceled or CodeDeadlineExceeded): idem.Record stores the error and
// replays it whole (code, message, details and metadata) to every retry for
// the TTL; idem.Release stores nothing, so a retry runs the handler again;
// idem.Hold stores nothing and refuses the key (see WithInFlightCode) until
// the lease expires. Responses are always recorded. The default is
// DefaultDisposition, which releases every error; nil restores it. decide
// may be called concurrently; if it panics, nothing is stored, the key is
// held (the handler ran), and the panic continues. Server only.
func WithDisposition(decide func(err *connect.Error) idem.Disposition) Option {
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
func RecordCodes(recorded ...connect.Code) func(*connect.Error) idem.Disposition {
	recorded = slices.Clone(recorded)
	return func(err *connect.Error) idem.Disposition {
		if slices.Contains(recorded, err.Code()) {
			return idem.Record
		}
		return idem.Release
	}
}

// WithInFlightCode sets the code of a call refused because another call
// with its key is in flight: connect.CodeAborted by default.
// connect.CodeUnavailable lets retry policies that retry only Unavailable
// retry it; that is safe, since the key deduplicates the retry. Codes
// outside connect's range are refused. Server only.
func WithInFlightCode(code connect.Code) Option {
	return func(c *config) {
		c.server("WithInFlightCode")
		if code < connect.CodeCanceled || code > connect.CodeUnauthenticated {
			c.invalid("WithInFlightCode(%d): not a connect error code", code)
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
// on: invalid options, store failures (answered with CodeUnavailable),
// outcomes the handler produced but that could not be stored
// (idem.ErrNotStored: the response is returned all the same), and
// unexpected errors (answered with CodeInternal). It is not told about
// client errors such as a missing key. It may be called concurrently. The
// default does nothing. Client (invalid options only) and server.
func WithErrorHook(hook func(ctx context.Context, procedure string, err error)) Option {
	return func(c *config) { c.hook = hook }
}
