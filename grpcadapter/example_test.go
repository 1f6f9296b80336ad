package grpcadapter_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"strings"
	"sync/atomic"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/idemkit/idem/grpcadapter"
	"github.com/idemkit/idem/memstore"
)

// orderService creates an order on each run of UnaryCall.
type orderService struct {
	testpb.UnimplementedTestServiceServer
	orders atomic.Int32
}

func (s *orderService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	id := fmt.Sprintf("ord_%d", s.orders.Add(1))
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: []byte(id + ": " + string(req.GetPayload().GetBody()))}}, nil
}

// A client calls a method three times with one key: the order is created
// once, the second call gets the stored response, and the third, which
// sends the key with another request, is refused.
func Example() {
	idempotent, err := grpcadapter.NewUnaryServerInterceptor(memstore.New(),
		// The account an authentication interceptor found; metadata here.
		grpcadapter.WithScope(func(ctx context.Context) string {
			return strings.Join(metadata.ValueFromIncomingContext(ctx, "x-account"), ",")
		}),
	)
	if err != nil {
		log.Fatal(err) // an option that cannot be honoured
	}
	clientKeys, err := grpcadapter.NewUnaryClientInterceptor()
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(idempotent))
	testpb.RegisterTestServiceServer(srv, &orderService{})
	lis := bufconn.Listen(1 << 20)
	go srv.Serve(lis)
	defer srv.Stop()

	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(clientKeys),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := testpb.NewTestServiceClient(conn)

	key := grpcadapter.NewKey()
	for _, item := range []string{"book", "book", "pen"} {
		var header metadata.MD
		req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(item)}}
		ctx := metadata.AppendToOutgoingContext(context.Background(), "x-account", "acct_1")
		resp, err := client.UnaryCall(ctx, req, grpcadapter.CallKey(key), grpc.Header(&header))
		if err != nil {
			st := status.Convert(err)
			for _, d := range st.Details() {
				if info, ok := d.(*errdetails.ErrorInfo); ok {
					fmt.Println(st.Code(), info.Reason)
				}
			}
			continue
		}
		fmt.Println(header.Get(grpcadapter.HeaderStatus)[0], string(resp.GetPayload().GetBody()))
	}
	// Output:
	// new ord_1: book
	// hit ord_1: book
	// FailedPrecondition IDEMPOTENCY_KEY_REUSED
}
