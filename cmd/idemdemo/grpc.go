package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/grpcadapter"
)

// newGRPCServer returns the demo gRPC API, its idempotency records kept in
// store. It serves grpc.testing.TestService, whose UnaryCall creates an
// order for the item named by the request's payload body, and answers with
// the new order's ID as its payload body (and in the x-order-id header).
// Calls must carry an idempotency-key; a retry with the same key receives
// the same order, with idempotency-status: hit. An empty item is refused
// with InvalidArgument, a final status that is stored and replayed too.
//
// Keys are scoped by the x-demo-account metadata, as the HTTP API's are by
// X-Demo-Account: a stand-in for the account an authentication interceptor
// would find; never trust client metadata for this in production.
func newGRPCServer(store idem.Store) (*grpc.Server, error) {
	idempotent, err := grpcadapter.NewUnaryServerInterceptor(store,
		grpcadapter.WithKeyRequired(testpb.TestService_UnaryCall_FullMethodName),
		grpcadapter.WithScope(func(ctx context.Context) string {
			return strings.Join(metadata.ValueFromIncomingContext(ctx, "x-demo-account"), ",")
		}),
		grpcadapter.WithDisposition(grpcadapter.RecordCodes(codes.InvalidArgument)),
		grpcadapter.WithErrorHook(func(_ context.Context, method string, err error) {
			log.Printf("idempotency: %s: %v", method, err)
		}),
	)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(idempotent))
	testpb.RegisterTestServiceServer(srv, grpcOrders{})
	return srv, nil
}

// grpcOrders is the demo TestService: UnaryCall creates an order.
type grpcOrders struct {
	testpb.UnimplementedTestServiceServer
}

// UnaryCall creates an order for the item named by the payload body.
func (grpcOrders) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	item := string(req.GetPayload().GetBody())
	if item == "" {
		return nil, status.Error(codes.InvalidArgument, "payload.body must name the item to order")
	}
	id := "ord_" + strings.ToLower(rand.Text()[:16])
	if err := grpc.SetHeader(ctx, metadata.Pairs("x-order-id", id)); err != nil {
		return nil, err
	}
	log.Printf("gRPC: created order %s for %q", id, item)
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: []byte(id)}}, nil
}

// runGRPCClientDemo calls the demo gRPC API at addr twice with one
// idempotency key, through the client interceptor, and prints what each
// call received: the second is a hit, with the first call's order.
func runGRPCClientDemo(ctx context.Context, w io.Writer, addr string) error {
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(grpcadapter.UnaryClientInterceptor()),
	)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := testpb.NewTestServiceClient(conn)

	key := grpcadapter.NewKey()
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("book")}}
	fmt.Fprintf(w, "gRPC: two calls of %s with idempotency key %q:\n", testpb.TestService_UnaryCall_FullMethodName, key)
	var orders [2]string
	for i := range orders {
		var header metadata.MD
		resp, err := client.UnaryCall(ctx, req, grpcadapter.CallKey(key), grpc.Header(&header))
		if err != nil {
			return fmt.Errorf("call %d: %w", i+1, err)
		}
		orders[i] = string(resp.GetPayload().GetBody())
		fmt.Fprintf(w, "  call %d: order %s, %s: %s\n", i+1, orders[i], grpcadapter.HeaderStatus,
			strings.Join(header.Get(grpcadapter.HeaderStatus), ","))
		if i == 1 {
			hit := len(header.Get(grpcadapter.HeaderStatus)) == 1 && header.Get(grpcadapter.HeaderStatus)[0] == grpcadapter.StatusHit
			fmt.Fprintf(w, "  the second call was a hit: %v; one order created: %v\n", hit, orders[0] == orders[1])
		}
	}
	return nil
}
