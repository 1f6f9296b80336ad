package connectadapter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/keyctx"
)

// Headers the interceptors read and write.
const (
	// HeaderKey is the request header that carries the idempotency key,
	// unless WithHeader says otherwise. With the gRPC and gRPC-Web
	// protocols it is the idempotency-key metadata that grpcadapter reads
	// and its client interceptor sends.
	HeaderKey = "Idempotency-Key"
	// HeaderStatus says whether the handler ran (StatusNew) or the outcome
	// was replayed (StatusHit). It is a response header on a response, and
	// a response trailer on an error, as grpcadapter sends it; clients find
	// it in connect.Error.Meta.
	HeaderStatus = "Idempotency-Status"
	// HeaderStored is "false", next to HeaderStatus, on the outcome of a
	// handler that ran but was not stored, so a retry with its key runs the
	// handler again: an error that is not recorded, or an outcome the
	// store failed to keep (idem.ErrNotStored).
	HeaderStored = "Idempotency-Stored"
)

// Values of HeaderStatus.
const (
	// StatusNew marks an outcome of the handler, run for this call.
	StatusNew = "new"
	// StatusHit marks a stored outcome, replayed.
	StatusHit = "hit"
)

// call is the request of the server's idem.Operation.
type call struct {
	procedure string
	req       proto.Message
}

// fingerprint identifies a call by its procedure and the deterministic wire
// encoding of its request.
func fingerprint(c call) ([]byte, error) {
	b := make([]byte, 0, len(c.procedure)+1+proto.Size(c.req))
	b = append(b, c.procedure...)
	b = append(b, 0) // no procedure name holds a NUL
	return proto.MarshalOptions{Deterministic: true}.MarshalAppend(b, c.req)
}

// errUnstored is what the Operation's function returns, marked with its
// disposition (idem.Dispose), for a handler error that is not to be
// recorded: idem releases or holds the key. The handler's error itself is
// kept aside: idem would store one as text, without its code and details.
var errUnstored = errors.New("connectadapter: error not recorded")

// interceptor is the server interceptor.
type interceptor struct {
	cfg        *config
	op         *idem.Operation[call, *response]
	err        error // invalid options
	warnScope  sync.Once
	scopeCheck bool // warn about credentials without a scope
}

// NewInterceptor returns a server interceptor that makes unary procedures
// idempotent, keeping their outcomes in store. Give it to a handler with
// connect.WithInterceptors; interceptors listed after it run once per key
// with the handler, those before it run for every call. Options that
// cannot be honoured make every protected call fail with
// connect.CodeInternal, and are reported to the hook set by WithErrorHook:
// call CheckOptions when the service starts to find them.
//
// Streaming procedures pass through untouched, and so does a call the
// interceptor sees on a client (use NewClientInterceptor there).
func NewInterceptor(store idem.Store, opts ...Option) connect.Interceptor {
	return newInterceptor(store, opts)
}

// CheckOptions returns the error, wrapping idem.ErrInvalidOption, with
// which NewInterceptor(store, opts...) would fail every protected call, or
// nil if the options can be honoured.
func CheckOptions(store idem.Store, opts ...Option) error {
	return newInterceptor(store, opts).err
}

func newInterceptor(store idem.Store, opts []Option) *interceptor {
	cfg := newConfig(opts)
	core := make([]idem.Option, 0, len(cfg.core)+3)
	// The interceptor's fingerprint comes before the user's options: an
	// idem.WithFingerprint among them, which cannot be for the
	// interceptor's own request type, is then refused (ErrInvalidOption)
	// instead of silently overridden.
	core = append(core, idem.WithNamespace(DefaultNamespace), idem.WithFingerprint(fingerprint))
	core = append(core, cfg.core...)
	core = append(core, idem.WithDisposition(nil)) // the function marks what it does not record
	op := idem.New[call, *response](store, core...)
	errs := append(cfg.errs, op.Err())
	return &interceptor{cfg: cfg, op: op, err: errors.Join(errs...), scopeCheck: !cfg.scopeSet}
}

// WrapStreamingClient implements connect.Interceptor: streams pass through.
func (i *interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor: streams pass
// through.
func (i *interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// WrapUnary implements connect.Interceptor.
func (i *interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		spec := req.Spec()
		if spec.IsClient {
			return next(ctx, req)
		}
		protect, required := i.cfg.policy(spec)
		if !protect {
			return next(ctx, req)
		}
		procedure := spec.Procedure
		if i.err != nil {
			i.report(ctx, procedure, i.err)
			return nil, errInternal()
		}
		keys := req.Header().Values(i.cfg.header)
		switch {
		case len(keys) == 0 && required:
			return nil, refusal(connect.CodeInvalidArgument, ReasonKeyMissing,
				fmt.Sprintf("idempotency key missing: %s requires the %s header", procedure, i.cfg.header), noRetry)
		case len(keys) == 0:
			return next(ctx, req)
		case len(keys) > 1:
			return nil, refusal(connect.CodeInvalidArgument, ReasonKeyInvalid,
				fmt.Sprintf("idempotency key invalid: the %s header must appear once", i.cfg.header), noRetry)
		}
		msg, ok := req.Any().(proto.Message)
		if !ok {
			i.report(ctx, procedure, fmt.Errorf("connectadapter: request is %T, not a proto.Message", req.Any()))
			return nil, errInternal()
		}
		key := &Key{Raw: keys[0], Stored: keys[0]}
		if i.cfg.scope != nil {
			// Once composed, the key could be valid for idem when the
			// client's is not: it may be hashed.
			if err := idem.ValidateKey(key.Raw); err != nil {
				return nil, refusal(connect.CodeInvalidArgument, ReasonKeyInvalid, err.Error(), noRetry)
			}
			key.Scope = i.cfg.scope(ctx, req)
			key.Stored = idem.ScopedKey(key.Scope, key.Raw)
		}
		if i.scopeCheck && req.Header().Get("Authorization") != "" {
			i.warnScope.Do(func() {
				slog.Warn("connectadapter: a protected call carries an Authorization header but no scope is configured: " +
					"callers who send the same idempotency key and request share one stored response. " +
					"Set connectadapter.WithScope to the authenticated account, or WithScope(nil) to share keys on purpose.")
			})
		}
		return i.do(ctx, req, key, msg, next)
	}
}

// do runs the handler under key, or replays its stored outcome.
func (i *interceptor) do(ctx context.Context, req connect.AnyRequest, key *Key, msg proto.Message, next connect.UnaryFunc) (connect.AnyResponse, error) {
	procedure := req.Spec().Procedure
	var (
		out    connect.AnyResponse // the handler's response, when it ran in this call
		herr   error               // its error
		dpanic any                 // what the disposition function panicked with
	)
	resp, info, err := i.op.DoInfo(ctx, key.Stored, call{procedure, msg}, func(ctx context.Context, c call) (*response, error) {
		out, herr = next(keyctx.With(ctx, key), req)
		return i.storable(ctx, c.procedure, out, herr, &dpanic)
	})
	if dpanic != nil {
		panic(dpanic) // the key is held
	}
	switch info.Outcome {
	case idem.OutcomeExecuted, idem.OutcomeFinalError, idem.OutcomeFnError, idem.OutcomeHeld, idem.OutcomeNotStored:
		if err != nil && !errors.Is(err, errUnstored) {
			// The outcome could not be stored (idem.ErrNotStored) or
			// encoded; the handler ran all the same.
			i.report(ctx, procedure, err)
		}
		marks := http.Header{HeaderStatus: {StatusNew}}
		if info.Outcome != idem.OutcomeExecuted && info.Outcome != idem.OutcomeFinalError {
			marks[HeaderStored] = []string{"false"}
		}
		if herr != nil {
			return nil, markError(ctx, herr, marks)
		}
		if out == nil {
			// Only a handler that breaks connect's contract gets here.
			i.report(ctx, procedure, errors.New("connectadapter: handler returned a nil response and a nil error"))
			return nil, errInternal()
		}
		setAll(out.Header(), marks)
		return out, nil
	case idem.OutcomeReplayed:
	default:
		return nil, i.refuse(ctx, procedure, info.Outcome, err)
	}
	if resp == nil {
		i.report(ctx, procedure, fmt.Errorf("%w: empty stored response", idem.ErrCorruptRecord))
		return nil, errInternal()
	}
	if resp.Procedure != procedure {
		// Another procedure's outcome, found with signature validation off.
		return nil, refusal(connect.CodeFailedPrecondition, ReasonKeyReused,
			"idempotency key reused: it was first used for another procedure", noRetry)
	}
	replay, rerr := resp.outcome(req.Spec())
	if errors.Is(rerr, idem.ErrCorruptRecord) {
		i.report(ctx, procedure, rerr)
		return nil, errInternal()
	}
	marks := http.Header{HeaderStatus: {StatusHit}}
	if rerr != nil {
		return nil, markError(ctx, rerr, marks) // a stored final error
	}
	setAll(replay.Header(), marks)
	return replay, nil
}

// storable returns what to store for the handler's outcome, or an error if
// nothing is to be stored.
func (i *interceptor) storable(ctx context.Context, procedure string, out connect.AnyResponse, herr error, dpanic *any) (*response, error) {
	header, trailer := callInfoHeaders(ctx)
	if herr != nil && ctx.Err() != nil {
		// The handler's error came after its context ended (the client
		// went away, the lease was lost): the interruption, not an
		// outcome to replay, whatever WithDisposition says, as in idem.
		return nil, idem.Dispose(errUnstored, idem.Release)
	}
	if herr != nil {
		ce := asError(herr)
		d, p := decide(i.cfg.dispose, ce)
		if p != nil {
			*dpanic = p
		}
		if d != idem.Record {
			return nil, idem.Dispose(errUnstored, d)
		}
		b, err := encodeError(ce)
		if err != nil {
			return nil, err
		}
		return &response{Procedure: procedure, Error: b, Meta: join(nil, ce.Meta()), Header: header, Trailer: trailer}, nil
	}
	if out == nil {
		return nil, errors.New("connectadapter: handler returned a nil response and a nil error")
	}
	m, ok := out.Any().(proto.Message)
	if !ok {
		return nil, fmt.Errorf("connectadapter: response is %T, not a proto.Message", out.Any())
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("connectadapter: encoding response: %w", err)
	}
	return &response{
		Procedure: procedure,
		Type:      string(m.ProtoReflect().Descriptor().FullName()),
		Body:      b,
		Header:    join(header, out.Header()),
		Trailer:   join(trailer, out.Trailer()),
	}, nil
}

// refuse returns the error of a call that idem answered with outcome and
// err, without running the handler.
func (i *interceptor) refuse(ctx context.Context, procedure string, outcome idem.Outcome, err error) error {
	switch outcome {
	case idem.OutcomeKeyReused:
		return refusal(connect.CodeFailedPrecondition, ReasonKeyReused,
			"idempotency key reused: it was first used with another request", noRetry)
	case idem.OutcomeInFlight:
		return refusal(i.cfg.inFlight, ReasonInFlight,
			"idempotency key in use: a call with this key is in flight; retry later", i.cfg.retryDelay)
	case idem.OutcomeStoreError:
		i.report(ctx, procedure, err)
		return refusal(connect.CodeUnavailable, ReasonStoreUnavailable,
			"idempotency store unavailable", i.cfg.retryDelay)
	case idem.OutcomeCanceled:
		// The call ended while idem waited for the store or for an
		// in-flight call.
		return asError(ctx.Err())
	case idem.OutcomeInvalidKey:
		return refusal(connect.CodeInvalidArgument, ReasonKeyInvalid, err.Error(), noRetry)
	default: // a corrupt record, or what cannot happen
		i.report(ctx, procedure, err)
		return errInternal()
	}
}

// asError returns err as a connect.Error, as connect sends it: the
// connect.Error it wraps, else a new one with code Canceled or
// DeadlineExceeded for a context error, and Unknown for others.
func asError(err error) *connect.Error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	code := connect.CodeUnknown
	switch {
	case errors.Is(err, context.Canceled):
		code = connect.CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		code = connect.CodeDeadlineExceeded
	}
	return connect.NewError(code, err)
}

// markError adds marks to the response trailers of the call of ctx, which
// connect sends with an error, and returns err. The handler's error is left
// as it is: it may be shared by calls. Outside a connect handler, the marks
// go in the metadata of a new error that wraps err.
func markError(ctx context.Context, err error, marks http.Header) error {
	if info, ok := connect.CallInfoForHandlerContext(ctx); ok {
		setAll(info.ResponseTrailer(), marks)
		return err
	}
	ce := asError(err)
	wrapped := connect.NewError(ce.Code(), err)
	for _, d := range ce.Details() {
		wrapped.AddDetail(d)
	}
	setAll(wrapped.Meta(), join(join(nil, ce.Meta()), marks))
	return wrapped
}

// callInfoHeaders returns copies of the response header and trailer that
// the handler set through connect.CallInfoForHandlerContext.
func callInfoHeaders(ctx context.Context) (header, trailer http.Header) {
	info, ok := connect.CallInfoForHandlerContext(ctx)
	if !ok {
		return nil, nil
	}
	return join(nil, info.ResponseHeader()), join(nil, info.ResponseTrailer())
}

// setAll sets the values of add in h, replacing those of the same names.
func setAll(h, add http.Header) {
	for k, vs := range add {
		h[http.CanonicalHeaderKey(k)] = append([]string(nil), vs...)
	}
}

// join returns h with the values of add appended, copied, under their
// canonical names. It allocates only when add is not empty, so that an
// empty header is stored as nil and comes back equal from the codec.
func join(h, add http.Header) http.Header {
	for k, vs := range add {
		if len(vs) == 0 {
			continue
		}
		if h == nil {
			h = make(http.Header, len(add))
		}
		k = http.CanonicalHeaderKey(k)
		h[k] = append(h[k], vs...)
	}
	return h
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

func (i *interceptor) report(ctx context.Context, procedure string, err error) {
	if i.cfg.hook != nil {
		i.cfg.hook(ctx, procedure, err)
	}
}
