package grpcadapter_test

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/grpcadapter"
	"github.com/idemkit/idem/memstore"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// TestDispositionPanicHoldsKey checks that a disposition function that
// panics after the handler ran holds the key, as the core does when its own
// disposition panics: the handler's effect stands, so the retry a client
// makes after its call failed must not run it again.
func TestDispositionPanicHoldsKey(t *testing.T) {
	recoverer := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				err = status.Error(codes.Internal, "panic")
			}
		}()
		return h(ctx, req)
	}
	e := start(t, memstore.New(), setup{
		outer: []grpc.UnaryServerInterceptor{recoverer},
		unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			return nil, status.Error(codes.DeadlineExceeded, "gateway timeout") // effect unknown
		},
		opts: []grpcadapter.Option{grpcadapter.WithScope(nil), grpcadapter.WithDisposition(func(*status.Status) idem.Disposition { panic("bug") })},
	})
	for range 2 {
		_ = e.call(testCtx(t), "k-1", order("book"))
	}
	if n := e.runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times under one key after the disposition panicked", n)
	}
}
