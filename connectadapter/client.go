package connectadapter

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"

	"connectrpc.com/connect"
)

// NewKey returns a fresh random idempotency key: 26 characters of base32,
// 128 bits of randomness. The client interceptor makes its keys with it.
func NewKey() string { return rand.Text() }

// clientInterceptor is the client interceptor.
type clientInterceptor struct {
	cfg *config
	err error // invalid options
}

// NewClientInterceptor returns a client interceptor that gives every call
// of a protected procedure an idempotency key (see WithMethods; by default
// every unary procedure except those declared free of side effects with
// connect.WithIdempotency): the key the caller set in the request's header
// (connect.Request.Header, or connect.CallInfo.RequestHeader), kept as it
// is, else a fresh one from NewKey. To run several calls once, such as the
// attempts of the caller's own retry loop, set the same key on each of
// them. Interceptors listed before it see the call without the key;
// retrying interceptors listed after it resend the key it set.
//
// It takes the options WithHeader, WithMethods, WithMethodFilter and
// WithErrorHook. Options that cannot be honoured, and server-only options,
// make every protected call fail with connect.CodeInternal, without being
// sent; CheckClientOptions reports them at start. Streaming calls, and
// calls the interceptor sees in a handler, pass through untouched.
func NewClientInterceptor(opts ...Option) connect.Interceptor {
	cfg, err := newClientConfig(opts)
	return &clientInterceptor{cfg: cfg, err: err}
}

// CheckClientOptions returns the error, wrapping idem.ErrInvalidOption,
// with which NewClientInterceptor(opts...) would fail every protected call,
// or nil if the options can be honoured.
func CheckClientOptions(opts ...Option) error {
	_, err := newClientConfig(opts)
	return err
}

func newClientConfig(opts []Option) (*config, error) {
	cfg := newConfig(opts)
	if len(cfg.serverOnly) > 0 {
		cfg.invalid("NewClientInterceptor: %s configure the server interceptor only", strings.Join(cfg.serverOnly, ", "))
	}
	return cfg, errors.Join(cfg.errs...)
}

// WrapUnary implements connect.Interceptor.
func (c *clientInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		spec := req.Spec()
		if !spec.IsClient {
			return next(ctx, req)
		}
		if protect, _ := c.cfg.policy(spec); !protect {
			return next(ctx, req)
		}
		if c.err != nil {
			if c.cfg.hook != nil {
				c.cfg.hook(ctx, spec.Procedure, c.err)
			}
			return nil, connect.NewError(connect.CodeInternal, c.err)
		}
		if len(req.Header().Values(c.cfg.header)) == 0 {
			req.Header().Set(c.cfg.header, NewKey())
		}
		return next(ctx, req)
	}
}

// WrapStreamingClient implements connect.Interceptor: streams pass through.
func (c *clientInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor: streams pass
// through.
func (c *clientInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
