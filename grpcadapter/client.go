package grpcadapter

import (
	"context"
	"crypto/rand"
	"errors"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// NewKey returns a fresh random idempotency key: 26 characters of base32,
// 128 bits of randomness. The client interceptor makes its keys with it.
func NewKey() string { return rand.Text() }

// keyOption is the grpc.CallOption made by CallKey. The client interceptor
// finds it among the call options and takes it out. A call made without the
// interceptor keeps it, and its per-call credentials fail the call before
// it is sent, rather than let it go without the key.
type keyOption struct {
	grpc.PerRPCCredsCallOption
	key string
}

// missingInterceptor are the credentials of a CallKey option that reaches
// the transport: the client interceptor was not installed.
type missingInterceptor struct{}

func (missingInterceptor) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return nil, status.Error(codes.FailedPrecondition,
		"grpcadapter.CallKey takes effect only through grpcadapter.UnaryClientInterceptor, which this connection lacks: the call was not sent")
}

func (missingInterceptor) RequireTransportSecurity() bool { return false }

// CallKey returns a call option that sends key as the call's idempotency
// key, to any method and in place of any key the outgoing metadata holds.
// Pass the same key to the calls that must run once, such as the attempts
// of a retry loop around the call. It takes effect only through
// UnaryClientInterceptor, which fails the call without sending it, with
// InvalidArgument and reason ReasonKeyInvalid, if key is not 1 to
// idem.MaxKeyLen printable ASCII characters, as the server and metadata
// require. On a connection without that interceptor the call fails with
// Internal, unsent (grpc-go turns the FailedPrecondition that says why into
// Internal, keeping the message), instead of going out without its key. A
// grpc.PerRPCCredentials call option given after CallKey replaces the
// credentials that do this, and defeats the check.
func CallKey(key string) grpc.CallOption {
	return keyOption{PerRPCCredsCallOption: grpc.PerRPCCredsCallOption{Creds: missingInterceptor{}}, key: key}
}

// UnaryClientInterceptor returns an interceptor that gives every call of a
// protected method an idempotency key (see WithMethods; by default every
// unary method is protected): the key passed with CallKey, else the one the
// outgoing metadata holds, else a fresh one from NewKey. The key goes in the
// outgoing metadata before the call is made, so that every attempt of the
// call sends it: the retries of gRPC's retry policy, and those of retrying
// interceptors chained after this one. Interceptors chained before it, and
// the caller's own loops, make new calls, which get new keys unless given
// one with CallKey.
//
// Hedging (the hedging policy of gRFC A6, where a gRPC client or a proxy
// implements it; grpc-go does not) sends several attempts of a call at
// once, all with the call's key. An attempt that reaches the server while
// another one runs the handler finds the key in flight, and is refused with
// Aborted (the code set by WithInFlightCode). Unless the hedging policy
// lists that code among its nonFatalStatusCodes, the refusal ends the call,
// cancelling the attempt that runs the handler. List ABORTED there, or give
// the server a code that is listed (WithInFlightCode), or a wait timeout
// (idem.WithWaitTimeout, through WithOptions) so that later attempts wait
// for the first one's response and receive it as a hit.
//
// It takes the options WithMetadataKey, WithMethods, WithMethodFilter and
// WithErrorHook. Options that cannot be honoured, and server-only options,
// make every call fail with Internal, without being sent; prefer
// NewUnaryClientInterceptor, which reports them at start.
func UnaryClientInterceptor(opts ...Option) grpc.UnaryClientInterceptor {
	cfg, cerr := newClientConfig(opts)
	return clientInterceptor(cfg, cerr)
}

// NewUnaryClientInterceptor is UnaryClientInterceptor, but returns an error
// wrapping idem.ErrInvalidOption, and no interceptor, when an option cannot
// be honoured or is a server-only option (WithOptions, WithScope,
// WithKeyRequired, WithDisposition...), which the client would ignore.
func NewUnaryClientInterceptor(opts ...Option) (grpc.UnaryClientInterceptor, error) {
	cfg, err := newClientConfig(opts)
	if err != nil {
		return nil, err
	}
	return clientInterceptor(cfg, nil), nil
}

func newClientConfig(opts []Option) (*config, error) {
	cfg := newConfig(opts)
	if len(cfg.serverOnly) > 0 {
		cfg.invalid("UnaryClientInterceptor: %s configure the server interceptor only", strings.Join(cfg.serverOnly, ", "))
	}
	return cfg, errors.Join(cfg.errs...)
}

func clientInterceptor(cfg *config, cerr error) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, callOpts ...grpc.CallOption) error {
		key, callOpts := splitKey(callOpts)
		if key == nil {
			if protect, _ := cfg.policy(method); !protect {
				return invoker(ctx, method, req, reply, cc, callOpts...)
			}
		}
		if cerr != nil {
			if cfg.hook != nil {
				cfg.hook(ctx, method, cerr)
			}
			return status.Error(codes.Internal, cerr.Error())
		}
		if key != nil {
			if err := checkCallKey(key.key); err != nil {
				return refusal(codes.InvalidArgument, ReasonKeyInvalid, "grpcadapter.CallKey: "+err.Error(), noRetry)
			}
		}
		switch present := len(metadata.ValueFromOutgoingContext(ctx, cfg.header)) > 0; {
		case key != nil && present:
			md, _ := metadata.FromOutgoingContext(ctx)
			md.Set(cfg.header, key.key)
			ctx = metadata.NewOutgoingContext(ctx, md)
		case key != nil:
			ctx = metadata.AppendToOutgoingContext(ctx, cfg.header, key.key)
		case !present:
			ctx = metadata.AppendToOutgoingContext(ctx, cfg.header, NewKey())
		}
		return invoker(ctx, method, req, reply, cc, callOpts...)
	}
}

// splitKey returns the last CallKey option among opts, and opts without
// the CallKey options.
func splitKey(opts []grpc.CallOption) (*keyOption, []grpc.CallOption) {
	var key *keyOption
	for _, o := range opts {
		if k, ok := o.(keyOption); ok {
			key = &k
		}
	}
	if key == nil {
		return nil, opts
	}
	return key, slices.DeleteFunc(slices.Clone(opts), func(o grpc.CallOption) bool {
		_, ok := o.(keyOption)
		return ok
	})
}
