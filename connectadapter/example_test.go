package connectadapter_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemkit/idem/connectadapter"
	"github.com/idemkit/idem/memstore"
)

func ExampleNewInterceptor() {
	const procedure = "/shop.v1.Orders/Create"
	orders := 0
	create := func(_ context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
		orders++
		return connect.NewResponse(wrapperspb.String(fmt.Sprintf("order %d: %s", orders, req.Msg.GetValue()))), nil
	}
	mux := http.NewServeMux()
	mux.Handle(procedure, connect.NewUnaryHandler(procedure, create,
		connect.WithInterceptors(connectadapter.NewInterceptor(memstore.New()))))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()

	client := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](srv.Client(), srv.URL+procedure, connect.WithGRPC())
	key := connectadapter.NewKey() // one key for every attempt of this order
	for range 2 {
		req := connect.NewRequest(wrapperspb.String("book"))
		req.Header().Set(connectadapter.HeaderKey, key)
		resp, err := client.CallUnary(context.Background(), req)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(resp.Msg.GetValue(), resp.Header().Get(connectadapter.HeaderStatus))
	}
	fmt.Println("orders:", orders)
	// Output:
	// order 1: book new
	// order 1: book hit
	// orders: 1
}
