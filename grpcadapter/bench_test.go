package grpcadapter_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"

	"github.com/idemkit/idem/grpcadapter"
	"github.com/idemkit/idem/memstore"
)

// benchService answers UnaryCall with the request's payload and an order
// ID, as a small create method would.
type benchService struct {
	testpb.UnimplementedTestServiceServer
}

func (benchService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: req.GetPayload(), ServerId: "ord_1"}, nil
}

// benchClient serves benchService over bufconn, behind the given server
// interceptors, and returns a client connected with the given dial options.
func benchClient(b *testing.B, server []grpc.UnaryServerInterceptor, dial ...grpc.DialOption) testpb.TestServiceClient {
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(server...))
	testpb.RegisterTestServiceServer(srv, benchService{})
	lis := bufconn.Listen(1 << 20)
	go srv.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///bufnet", append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, dial...)...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		conn.Close()
		srv.Stop()
	})
	return testpb.NewTestServiceClient(conn)
}

// BenchmarkUnary measures whole unary calls over bufconn, on memstore:
// without the interceptor (Bare), with it and no key (PassThrough), with a
// stored response replayed (Hit), with a new key each call
// (FirstExecution), and with the client interceptor making a key each call
// for a bare server (ClientKey). Calls other than PassThrough and ClientKey
// carry an idempotency-key, Bare's included. The x-bare metric is ns/op
// over that of the latest Bare in the same run.
func BenchmarkUnary(b *testing.B) {
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(`{"item":"book","qty":1}`)}}
	fixed := metadata.AppendToOutgoingContext(context.Background(), grpcadapter.MetadataKey, "8e03978e-40d5-43e8-bc93-6894a57f9324")
	var bareNs float64
	run := func(b *testing.B, client testpb.TestServiceClient, ctx func(i int) context.Context) {
		call := func(i int) {
			if _, err := client.UnaryCall(ctx(i), req); err != nil {
				b.Fatal(err)
			}
		}
		call(0) // warm up the connection; for Hit, store the response
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			call(i)
		}
		ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		if strings.HasSuffix(b.Name(), "/Bare") {
			bareNs = ns // the latest Bare run
		} else {
			b.ReportMetric(ns/bareNs, "x-bare")
		}
	}
	fixedCtx := func(int) context.Context { return fixed }
	protected := func() []grpc.UnaryServerInterceptor {
		return []grpc.UnaryServerInterceptor{grpcadapter.UnaryServerInterceptor(memstore.New())}
	}

	b.Run("Bare", func(b *testing.B) { run(b, benchClient(b, nil), fixedCtx) })
	if bareNs == 0 {
		b.Skip("Bare did not run")
	}
	b.Run("PassThrough", func(b *testing.B) {
		run(b, benchClient(b, protected()), func(int) context.Context { return context.Background() })
	})
	b.Run("Hit", func(b *testing.B) { run(b, benchClient(b, protected()), fixedCtx) })
	b.Run("FirstExecution", func(b *testing.B) {
		buf := []byte("k")
		run(b, benchClient(b, protected()), func(i int) context.Context {
			key := string(strconv.AppendInt(buf[:1], int64(i), 10))
			return metadata.AppendToOutgoingContext(context.Background(), grpcadapter.MetadataKey, key)
		})
	})
	b.Run("ClientKey", func(b *testing.B) {
		client := benchClient(b, nil, grpc.WithUnaryInterceptor(grpcadapter.UnaryClientInterceptor()))
		run(b, client, func(int) context.Context { return context.Background() })
	})
}
