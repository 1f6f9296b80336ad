package grpcadapter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/keyctx"
)

// Metadata keys and values the interceptors read and write.
const (
	// MetadataKey is the request metadata key that carries the idempotency
	// key, unless WithMetadataKey says otherwise.
	MetadataKey = "idempotency-key"
	// HeaderStatus says whether the handler ran (StatusNew) or the outcome
	// was replayed (StatusHit). It is sent in the header metadata with a
	// response, and in the trailer metadata with an error, so that the
	// error stays a trailers-only response, which gRPC's retry policy can
	// retry: a call whose response header arrived is never retried.
	HeaderStatus = "idempotency-status"
	// HeaderStored is "false", next to HeaderStatus, on the outcome of a
	// handler that ran but was not stored, so a retry with its key runs the
	// handler again: an error that is not final, or an outcome the store
	// failed to keep (idem.ErrNotStored).
	HeaderStored = "idempotency-stored"
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
	method string
	req    proto.Message
}

// fingerprint identifies a call by its method and the deterministic wire
// encoding of its request.
func fingerprint(c call) ([]byte, error) {
	b := make([]byte, 0, len(c.method)+1+proto.Size(c.req))
	b = append(b, c.method...)
	b = append(b, 0) // no method name holds a NUL
	return proto.MarshalOptions{Deterministic: true}.MarshalAppend(b, c.req)
}

// errUnstored is what the Operation's function returns, marked with its
// disposition (idem.Dispose), for a handler error that is not to be
// recorded: idem releases or holds the key. The handler's error itself is
// kept aside: idem would store one as text, without its status.
var errUnstored = errors.New("grpcadapter: error not recorded")

type server struct {
	cfg        *config
	op         *idem.Operation[call, *response]
	err        error // invalid options
	warnScope  sync.Once
	scopeCheck bool // warn about credentials without a scope
}

// NewUnaryServerInterceptor returns an interceptor that makes unary methods
// idempotent, keeping their outcomes in store, or an error wrapping
// idem.ErrInvalidOption when an option cannot be honoured; call it when the
// service starts. Chain the interceptor with grpc.ChainUnaryInterceptor;
// interceptors chained after it run once per key with the handler, those
// before it run for every call.
func NewUnaryServerInterceptor(store idem.Store, opts ...Option) (grpc.UnaryServerInterceptor, error) {
	s := newServer(store, opts)
	if s.err != nil {
		return nil, s.err
	}
	return s.intercept, nil
}

// UnaryServerInterceptor is NewUnaryServerInterceptor for callers that
// cannot handle an error where they build the server: options that cannot
// be honoured make every protected call fail with Internal, and are
// reported to the hook set by WithErrorHook. Prefer
// NewUnaryServerInterceptor, which reports them at start.
func UnaryServerInterceptor(store idem.Store, opts ...Option) grpc.UnaryServerInterceptor {
	return newServer(store, opts).intercept
}

func newServer(store idem.Store, opts []Option) *server {
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
	return &server{cfg: cfg, op: op, err: errors.Join(errs...), scopeCheck: !cfg.scopeSet}
}

func (s *server) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	method := info.FullMethod
	protect, required := s.cfg.policy(method)
	if !protect {
		return handler(ctx, req)
	}
	if s.err != nil {
		s.report(ctx, method, s.err)
		return nil, errInternal()
	}
	keys := metadata.ValueFromIncomingContext(ctx, s.cfg.header)
	switch {
	case len(keys) == 0 && required:
		return nil, refusal(codes.InvalidArgument, ReasonKeyMissing,
			fmt.Sprintf("idempotency key missing: %s requires %s metadata", method, s.cfg.header), noRetry)
	case len(keys) == 0:
		return handler(ctx, req)
	case len(keys) > 1:
		return nil, refusal(codes.InvalidArgument, ReasonKeyInvalid,
			fmt.Sprintf("idempotency key invalid: %s metadata must appear once", s.cfg.header), noRetry)
	}
	msg, ok := req.(proto.Message)
	if !ok {
		s.report(ctx, method, fmt.Errorf("grpcadapter: request is %T, not a proto.Message", req))
		return nil, errInternal()
	}
	key := &Key{Raw: keys[0], Stored: keys[0]}
	if s.cfg.scope != nil {
		// Once composed, the key could be valid for idem when the client's
		// is not: it may be hashed.
		if err := idem.ValidateKey(key.Raw); err != nil {
			return nil, refusal(codes.InvalidArgument, ReasonKeyInvalid, err.Error(), noRetry)
		}
		key.Scope = s.cfg.scope(ctx)
		key.Stored = idem.ScopedKey(key.Scope, key.Raw)
	}
	if s.scopeCheck && len(metadata.ValueFromIncomingContext(ctx, "authorization")) > 0 {
		s.warnScope.Do(func() {
			slog.Warn("grpcadapter: a protected call carries authorization metadata but no scope is configured: " +
				"callers who send the same idempotency key and request share one stored response. " +
				"Set grpcadapter.WithScope to the authenticated account, or WithScope(nil) to share keys on purpose.")
		})
	}
	return s.do(ctx, method, key, msg, handler)
}

// do runs the handler under key, or replays its stored outcome.
func (s *server) do(ctx context.Context, method string, key *Key, req proto.Message, handler grpc.UnaryHandler) (any, error) {
	var (
		out    any      // the handler's response, when it ran in this call
		herr   error    // its error
		capt   *capture // the metadata it set
		dpanic any      // what the disposition function panicked with
	)
	resp, info, err := s.op.DoInfo(ctx, key.Stored, call{method, req}, func(ctx context.Context, c call) (*response, error) {
		ctx, capt = withCapture(ctx)
		out, herr = handler(keyctx.With(ctx, key), c.req)
		if herr != nil && ctx.Err() != nil {
			// The handler's error came after its context ended (the
			// client went away, the lease was lost): the interruption,
			// not an outcome to replay, whatever WithDisposition says,
			// as in idem.
			return nil, idem.Dispose(errUnstored, idem.Release)
		}
		return s.storable(c.method, out, herr, capt, &dpanic)
	})
	if dpanic != nil {
		panic(dpanic) // the key is held
	}
	switch info.Outcome {
	case idem.OutcomeExecuted, idem.OutcomeFinalError, idem.OutcomeFnError, idem.OutcomeHeld, idem.OutcomeNotStored:
		if err != nil && !errors.Is(err, errUnstored) {
			// The outcome could not be stored (idem.ErrNotStored) or
			// encoded; the handler ran all the same.
			s.report(ctx, method, err)
		}
		marks := metadata.MD{HeaderStatus: {StatusNew}}
		if info.Outcome != idem.OutcomeExecuted && info.Outcome != idem.OutcomeFinalError {
			marks[HeaderStored] = []string{"false"}
		}
		setMarks(ctx, marks, nil, nil, herr != nil)
		return out, herr
	case idem.OutcomeReplayed:
	default:
		return nil, s.refuse(ctx, method, info.Outcome, err)
	}
	if resp == nil {
		s.report(ctx, method, fmt.Errorf("%w: empty stored response", idem.ErrCorruptRecord))
		return nil, errInternal()
	}
	if resp.Method != method {
		// Another method's outcome, found with signature validation off.
		return nil, refusal(codes.FailedPrecondition, ReasonKeyReused,
			"idempotency key reused: it was first used for another method", noRetry)
	}
	m, oerr := resp.outcome()
	if errors.Is(oerr, idem.ErrCorruptRecord) {
		s.report(ctx, method, oerr)
		return nil, errInternal()
	}
	setMarks(ctx, metadata.MD{HeaderStatus: {StatusHit}}, resp.Header, resp.Trailer, oerr != nil)
	if oerr != nil {
		return nil, oerr // a stored final status
	}
	return m, nil
}

// setMarks sets the header and trailer metadata of a call's outcome, with
// marks added to the header for a response and to the trailer for an error.
// An error thus stays a trailers-only response unless the handler set a
// header: gRPC's retry policy never retries a call once its response header
// arrived (the call is committed, gRFC A6).
func setMarks(ctx context.Context, marks, header, trailer metadata.MD, isErr bool) {
	if isErr {
		trailer = join(marks, trailer)
	} else {
		header = join(marks, header)
	}
	// An error means the call is over; nobody is left to tell.
	_ = grpc.SetHeader(ctx, header)
	_ = grpc.SetTrailer(ctx, trailer)
}

// storable returns what to store for the handler's outcome, or an error if
// nothing is to be stored.
func (s *server) storable(method string, out any, herr error, capt *capture, dpanic *any) (*response, error) {
	if herr != nil {
		st, ok := status.FromError(herr)
		if !ok {
			st = status.FromContextError(herr) // as grpc does
		}
		d, p := decide(s.cfg.dispose, st)
		if p != nil {
			*dpanic = p
		}
		if d != idem.Record {
			return nil, idem.Dispose(errUnstored, d)
		}
		b, err := proto.Marshal(st.Proto())
		if err != nil {
			return nil, fmt.Errorf("grpcadapter: encoding status: %w", err)
		}
		resp := &response{Method: method, Status: b}
		resp.Header, resp.Trailer = capt.recorded()
		return resp, nil
	}
	m, ok := out.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("grpcadapter: response is %T, not a proto.Message", out)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("grpcadapter: encoding response: %w", err)
	}
	resp := &response{Method: method, Type: string(m.ProtoReflect().Descriptor().FullName()), Body: b}
	resp.Header, resp.Trailer = capt.recorded()
	return resp, nil
}

// refuse returns the status of a call that idem answered with outcome and
// err, without running the handler.
func (s *server) refuse(ctx context.Context, method string, outcome idem.Outcome, err error) error {
	switch outcome {
	case idem.OutcomeKeyReused:
		return refusal(codes.FailedPrecondition, ReasonKeyReused,
			"idempotency key reused: it was first used with another request", noRetry)
	case idem.OutcomeInFlight:
		return refusal(s.cfg.inFlight, ReasonInFlight,
			"idempotency key in use: a call with this key is in flight; retry later", s.cfg.retryDelay)
	case idem.OutcomeStoreError:
		s.report(ctx, method, err)
		return refusal(codes.Unavailable, ReasonStoreUnavailable,
			"idempotency store unavailable", s.cfg.retryDelay)
	case idem.OutcomeCanceled:
		// The call ended while idem waited for the store or for an
		// in-flight call.
		return status.FromContextError(ctx.Err()).Err()
	case idem.OutcomeInvalidKey:
		return refusal(codes.InvalidArgument, ReasonKeyInvalid, err.Error(), noRetry)
	default: // a corrupt record, or what cannot happen
		s.report(ctx, method, err)
		return errInternal()
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

func (s *server) report(ctx context.Context, method string, err error) {
	if s.cfg.hook != nil {
		s.cfg.hook(ctx, method, err)
	}
}
