package grpcadapter_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/grpcadapter"
)

// withClient is a dial option installing the client interceptor.
func withClient(opts ...grpcadapter.Option) grpc.DialOption {
	return grpc.WithUnaryInterceptor(grpcadapter.UnaryClientInterceptor(opts...))
}

// testClientKey checks that the client interceptor gives each call a fresh
// key.
func testClientKey(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), setup{dial: []grpc.DialOption{withClient()}})
	ctx := testCtx(t)
	for range 2 {
		wantOK(t, e.call(ctx, "", order("book")), grpcadapter.StatusNew)
	}
	keys := e.seenKeys()
	if len(keys) != 2 || len(keys[0]) != 26 || len(keys[1]) != 26 || keys[0] == keys[1] {
		t.Errorf("handler saw keys %q, want two distinct fresh keys", keys)
	}
}

// testClientCallerKey checks that the client interceptor keeps the key the
// caller put in the outgoing metadata, and adds none.
func testClientCallerKey(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), setup{dial: []grpc.DialOption{withClient()}})
	ctx, key := testCtx(t), grpcadapter.NewKey()
	wantOK(t, e.call(ctx, key, order("book")), grpcadapter.StatusNew)
	wantOK(t, e.call(ctx, key, order("book")), grpcadapter.StatusHit)
	if keys := e.seenKeys(); len(keys) != 1 || keys[0] != key {
		t.Errorf("handler saw keys %q, want [%s]", keys, key)
	}
}

// testClientCallKey checks that CallKey sends its key, in place of the one
// in the outgoing metadata, and to methods the interceptor does not
// protect.
func testClientCallKey(t *testing.T, newStore newStoreFunc) {
	for name, opts := range map[string][]grpcadapter.Option{
		"protected":   nil,
		"unprotected": {grpcadapter.WithMethods(testpb.TestService_EmptyCall_FullMethodName)},
	} {
		t.Run(name, func(t *testing.T) {
			e := start(t, newStore(t), setup{dial: []grpc.DialOption{withClient(opts...)}})
			ctx, key := testCtx(t), grpcadapter.NewKey()
			wantOK(t, e.call(ctx, grpcadapter.NewKey(), order("book"), grpcadapter.CallKey(key)), grpcadapter.StatusNew)
			wantOK(t, e.call(ctx, "", order("book"), grpcadapter.CallKey(key)), grpcadapter.StatusHit)
			if keys := e.seenKeys(); len(keys) != 1 || keys[0] != key {
				t.Errorf("handler saw keys %q, want [%s]", keys, key)
			}
		})
	}
}

// testClientCallKeyInvalid checks that the client interceptor refuses an
// invalid CallKey as the server would, without sending the call.
func testClientCallKeyInvalid(t *testing.T, newStore newStoreFunc) {
	var attempts atomic.Int32
	count := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		attempts.Add(1)
		return handler(ctx, req)
	}
	e := start(t, newStore(t), setup{outer: []grpc.UnaryServerInterceptor{count}, dial: []grpc.DialOption{withClient()}})
	ctx := testCtx(t)
	for name, key := range map[string]string{
		"empty":     "",
		"too long":  keyOfLen(idem.MaxKeyLen + 1),
		"control":   grpcadapter.NewKey() + "\n",
		"not ASCII": "clé-" + grpcadapter.NewKey(),
	} {
		t.Run(name, func(t *testing.T) {
			r := e.call(ctx, "", order("book"), grpcadapter.CallKey(key))
			wantRefusal(t, r.err, codes.InvalidArgument, grpcadapter.ReasonKeyInvalid)
		})
	}
	if n := attempts.Load(); n != 0 {
		t.Errorf("server saw %d calls, want 0", n)
	}
	wantOK(t, e.call(ctx, "", order("book"), grpcadapter.CallKey(keyOfLen(idem.MaxKeyLen))), grpcadapter.StatusNew)
}

// testClientMethods checks that the client interceptor gives no key to calls
// of methods WithMethods leaves out.
func testClientMethods(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), setup{dial: []grpc.DialOption{withClient(grpcadapter.WithMethods(testpb.TestService_EmptyCall_FullMethodName))}})
	r := e.call(testCtx(t), "", order("book"))
	if r.err != nil || r.header.Get(grpcadapter.HeaderStatus) != nil {
		t.Fatalf("call: %v, header %v; want a success without a key", r.err, r.header)
	}
	if keys := e.seenKeys(); len(keys) != 1 || keys[0] != "" {
		t.Errorf("handler saw keys %q, want none", keys)
	}
}

// testClientInvalidOptions checks that a client interceptor with an invalid
// option fails calls without sending them, and reports it.
func testClientInvalidOptions(t *testing.T, newStore newStoreFunc) {
	var hook hookErrs
	e := start(t, newStore(t), setup{dial: []grpc.DialOption{withClient(grpcadapter.WithMetadataKey("key-bin"), hook.option())}})
	r := e.call(testCtx(t), "", order("book"))
	if status.Code(r.err) != codes.Internal {
		t.Errorf("error %v, want Internal", r.err)
	}
	if errs := hook.get(); len(errs) != 1 || !errors.Is(errs[0], idem.ErrInvalidOption) {
		t.Errorf("hook got %v, want ErrInvalidOption", errs)
	}
	if n := e.runs.Load(); n != 0 {
		t.Errorf("handler ran %d times, want 0", n)
	}
}

// retryConfig is a service config that retries calls of TestService that
// fail with Unavailable, at once.
const retryConfig = `{"methodConfig": [{
	"name": [{"service": "grpc.testing.TestService"}],
	"retryPolicy": {
		"maxAttempts": 4,
		"initialBackoff": "0.001s",
		"maxBackoff": "0.001s",
		"backoffMultiplier": 1,
		"retryableStatusCodes": ["UNAVAILABLE"]
	}
}]}`

// failFirst returns a handler that fails its first n runs with
// Unavailable, then echoes.
func failFirst(n int32) handlerFunc {
	var runs atomic.Int32
	return func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		if runs.Add(1) <= n {
			return nil, status.Error(codes.Unavailable, "try again")
		}
		return echo(ctx, req)
	}
}

// wantOneKey fails the test unless the handler ran n times, under one key.
func wantOneKey(t *testing.T, e *env, n int) {
	t.Helper()
	keys := e.seenKeys()
	if len(keys) != n {
		t.Fatalf("handler ran %d times, want %d", len(keys), n)
	}
	for _, k := range keys {
		if k == "" || k != keys[0] {
			t.Fatalf("handler saw keys %q, want one", keys)
		}
	}
}

// testClientRetryPolicy checks that gRPC's retries of a call, under a
// retry policy, send the key the client interceptor gave it.
func testClientRetryPolicy(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), setup{
		unary: failFirst(2),
		dial:  []grpc.DialOption{withClient(), grpc.WithDefaultServiceConfig(retryConfig)},
	})
	wantOK(t, e.call(testCtx(t), "", order("book")), grpcadapter.StatusNew)
	wantOneKey(t, e, 3)
}

// lostStream is a grpc.ServerTransportStream whose metadata goes nowhere.
type lostStream string

func (s lostStream) Method() string             { return string(s) }
func (lostStream) SetHeader(metadata.MD) error  { return nil }
func (lostStream) SendHeader(metadata.MD) error { return nil }
func (lostStream) SetTrailer(metadata.MD) error { return nil }

// testClientRetryLostResponse checks that when a response is lost after the
// handler ran, gRPC's retry of the call is given the stored response: the
// handler runs once.
func testClientRetryLostResponse(t *testing.T, newStore newStoreFunc) {
	var attempts atomic.Int32
	lose := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if attempts.Add(1) > 1 {
			return handler(ctx, req)
		}
		// The first attempt's response, metadata included, never reaches
		// the client, as when a connection breaks.
		_, err := handler(grpc.NewContextWithServerTransportStream(ctx, lostStream(info.FullMethod)), req)
		if err != nil {
			return nil, err
		}
		return nil, status.Error(codes.Unavailable, "response lost")
	}
	e := start(t, newStore(t), setup{
		outer: []grpc.UnaryServerInterceptor{lose},
		dial:  []grpc.DialOption{withClient(), grpc.WithDefaultServiceConfig(retryConfig)},
	})
	r := e.call(testCtx(t), "", order("book"))
	wantOK(t, r, grpcadapter.StatusHit)
	if got := r.resp.GetUsername(); got != "run 1" {
		t.Errorf("Username = %q, want run 1", got)
	}
	if n := attempts.Load(); n != 2 {
		t.Errorf("server saw %d attempts, want 2", n)
	}
	wantOneKey(t, e, 1)
}

// testClientRetryInterceptor checks that a retrying interceptor chained
// after the client interceptor sends one key, and one chained before it
// makes new calls with new keys.
func testClientRetryInterceptor(t *testing.T, newStore newStoreFunc) {
	retry := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		for attempt := 1; ; attempt++ {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if status.Code(err) != codes.Unavailable || attempt == 3 {
				return err
			}
		}
	}
	t.Run("after", func(t *testing.T) {
		e := start(t, newStore(t), setup{
			unary: failFirst(2),
			dial:  []grpc.DialOption{grpc.WithChainUnaryInterceptor(grpcadapter.UnaryClientInterceptor(), retry)},
		})
		wantOK(t, e.call(testCtx(t), "", order("book")), grpcadapter.StatusNew)
		wantOneKey(t, e, 3)
	})
	t.Run("before", func(t *testing.T) {
		e := start(t, newStore(t), setup{
			unary: failFirst(2),
			dial:  []grpc.DialOption{grpc.WithChainUnaryInterceptor(retry, grpcadapter.UnaryClientInterceptor())},
		})
		wantOK(t, e.call(testCtx(t), "", order("book")), grpcadapter.StatusNew)
		keys := e.seenKeys()
		if len(keys) != 3 || keys[0] == keys[1] || keys[1] == keys[2] {
			t.Errorf("handler saw keys %q, want three distinct ones", keys)
		}
	})
}
