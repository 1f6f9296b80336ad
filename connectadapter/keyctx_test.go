package connectadapter_test

import (
	"context"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/connectadapter"
	"github.com/idemkit/idem/memstore"
)

func TestKeyFromContext(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []connectadapter.Option
		key  string // "" for none
		ok   bool
		want connectadapter.Key
	}{
		{"unscoped", nil, "k-1", true, connectadapter.Key{Raw: "k-1", Stored: "k-1"}},
		{"scoped", []connectadapter.Option{connectadapter.WithScope(func(context.Context, connect.AnyRequest) string { return "acct-7" })},
			"k-1", true, connectadapter.Key{Raw: "k-1", Scope: "acct-7", Stored: idem.ScopedKey("acct-7", "k-1")}},
		{"no key", nil, "", false, connectadapter.Key{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var got connectadapter.Key
			var ok, ran bool
			e := start(t, memstore.New(), protocols[0], setup{opts: tc.opts,
				create: func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
					mu.Lock()
					defer mu.Unlock()
					ran = true
					got, ok = connectadapter.KeyFromContext(ctx)
					return connect.NewResponse(wrapperspb.String(req.Msg.GetValue())), nil
				}})
			mustCall(t, e.create, tc.key, "order")
			mu.Lock()
			defer mu.Unlock()
			if !ran {
				t.Fatal("handler did not run")
			}
			if ok != tc.ok || got != tc.want {
				t.Errorf("KeyFromContext = %+v, %v; want %+v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}
