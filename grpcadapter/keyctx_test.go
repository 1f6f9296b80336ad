package grpcadapter_test

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/grpcadapter"
	"github.com/idemkit/idem/memstore"
)

func TestKeyFromContext(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []grpcadapter.Option
		key  string // "" for none
		ok   bool
		want grpcadapter.Key
	}{
		{"unscoped", nil, "k-1", true, grpcadapter.Key{Raw: "k-1", Stored: "k-1"}},
		{"scoped", []grpcadapter.Option{grpcadapter.WithScope(func(context.Context) string { return "acct-7" })},
			"k-1", true, grpcadapter.Key{Raw: "k-1", Scope: "acct-7", Stored: idem.ScopedKey("acct-7", "k-1")}},
		{"no key", nil, "", false, grpcadapter.Key{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			icpt := grpcadapter.UnaryServerInterceptor(memstore.New(), tc.opts...)
			var got grpcadapter.Key
			var ok, ran bool
			handler := func(ctx context.Context, req any) (any, error) {
				ran = true
				got, ok = grpcadapter.KeyFromContext(ctx)
				return &grpc_testing.SimpleResponse{}, nil
			}
			md := metadata.MD{}
			if tc.key != "" {
				md.Set(grpcadapter.MetadataKey, tc.key)
			}
			ctx := metadata.NewIncomingContext(t.Context(), md)
			info := &grpc.UnaryServerInfo{FullMethod: "/grpc.testing.TestService/UnaryCall"}
			if _, err := icpt(ctx, &grpc_testing.SimpleRequest{}, info, handler); err != nil {
				t.Fatal(err)
			}
			if !ran {
				t.Fatal("handler did not run")
			}
			if ok != tc.ok || got != tc.want {
				t.Errorf("KeyFromContext = %+v, %v; want %+v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}
