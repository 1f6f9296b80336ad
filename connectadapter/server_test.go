package connectadapter_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/connectadapter"
)

func testReplay(t *testing.T, newStore newStoreFunc, p protocol) {
	e := start(t, newStore(t), p, setup{})
	key := connectadapter.NewKey()
	first := mustCall(t, e.create, key, "book")
	second := mustCall(t, e.create, key, "book")
	if got := e.runs.Load(); got != 1 {
		t.Fatalf("handler ran %d times, want 1", got)
	}
	for i, resp := range []*connect.Response[wrapperspb.StringValue]{first, second} {
		if got, want := resp.Msg.GetValue(), "run 1: book"; got != want {
			t.Errorf("response %d = %q, want %q", i, got, want)
		}
		if got := resp.Header().Get("X-Order"); got != "order-book" {
			t.Errorf("response %d: X-Order = %q, want order-book", i, got)
		}
		if got := resp.Trailer().Get("X-Total"); got != "42" {
			t.Errorf("response %d: trailer X-Total = %q, want 42", i, got)
		}
		if got := resp.Header().Get(connectadapter.HeaderStored); got != "" {
			t.Errorf("response %d: %s = %q, want none", i, connectadapter.HeaderStored, got)
		}
	}
	if got := first.Header().Get(connectadapter.HeaderStatus); got != connectadapter.StatusNew {
		t.Errorf("first %s = %q, want new", connectadapter.HeaderStatus, got)
	}
	if got := second.Header().Get(connectadapter.HeaderStatus); got != connectadapter.StatusHit {
		t.Errorf("second %s = %q, want hit", connectadapter.HeaderStatus, got)
	}
}

func testKeyReused(t *testing.T, newStore newStoreFunc, p protocol) {
	e := start(t, newStore(t), p, setup{})
	key := connectadapter.NewKey()
	mustCall(t, e.create, key, "book")
	_, err := call(t, e.create, key, "pen")
	wantRefusal(t, err, connect.CodeFailedPrecondition, connectadapter.ReasonKeyReused, false)
	if got := e.runs.Load(); got != 1 {
		t.Fatalf("handler ran %d times, want 1", got)
	}
}

func testOtherProcedure(t *testing.T, newStore newStoreFunc, p protocol) {
	e := start(t, newStore(t), p, setup{})
	key := connectadapter.NewKey()
	mustCall(t, e.create, key, "book")
	_, err := call(t, e.other, key, "book") // same request, another procedure
	wantRefusal(t, err, connect.CodeFailedPrecondition, connectadapter.ReasonKeyReused, false)
	if got := e.runs.Load(); got != 1 {
		t.Fatalf("handler ran %d times, want 1", got)
	}
}

// blocking returns a handler that signals entered and waits for release.
func blocking(entered chan<- struct{}, release <-chan struct{}) handlerFunc {
	return func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
		entered <- struct{}{}
		<-release
		return echo(ctx, req)
	}
}

func testInFlight(t *testing.T, newStore newStoreFunc, p protocol) {
	entered, release := make(chan struct{}, 1), make(chan struct{})
	e := start(t, newStore(t), p, setup{create: blocking(entered, release)})
	key := connectadapter.NewKey()
	done := make(chan error, 1)
	go func() {
		_, err := call(t, e.create, key, "book")
		done <- err
	}()
	<-entered
	_, err := call(t, e.create, key, "book")
	wantRefusal(t, err, connect.CodeAborted, connectadapter.ReasonInFlight, true)
	_, err = call(t, e.create, key, "pen")
	wantRefusal(t, err, connect.CodeFailedPrecondition, connectadapter.ReasonKeyReused, false)
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	resp := mustCall(t, e.create, key, "book")
	if got := resp.Header().Get(connectadapter.HeaderStatus); got != connectadapter.StatusHit {
		t.Errorf("%s = %q after the first call ended, want hit", connectadapter.HeaderStatus, got)
	}
	if got := e.runs.Load(); got != 1 {
		t.Fatalf("handler ran %d times, want 1", got)
	}
}

func testErrorsNotStored(t *testing.T, newStore newStoreFunc, p protocol) {
	var fail sync.Once
	e := start(t, newStore(t), p, setup{
		create: func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
			var err error
			fail.Do(func() { err = connect.NewError(connect.CodeUnavailable, errors.New("downstream down")) })
			if err != nil {
				return nil, err
			}
			return echo(ctx, req)
		},
	})
	key := connectadapter.NewKey()
	_, err := call(t, e.create, key, "book")
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeUnavailable || ce.Message() != "downstream down" {
		t.Fatalf("first call: %v, want the handler's Unavailable", err)
	}
	if got := ce.Meta().Get(connectadapter.HeaderStatus); got != connectadapter.StatusNew {
		t.Errorf("error %s = %q, want new", connectadapter.HeaderStatus, got)
	}
	if got := ce.Meta().Get(connectadapter.HeaderStored); got != "false" {
		t.Errorf("error %s = %q, want false", connectadapter.HeaderStored, got)
	}
	resp := mustCall(t, e.create, key, "book")
	if got, want := resp.Msg.GetValue(), "run 2: book"; got != want {
		t.Errorf("retry = %q, want %q", got, want)
	}
	if got := resp.Header().Get(connectadapter.HeaderStatus); got != connectadapter.StatusNew {
		t.Errorf("retry %s = %q, want new", connectadapter.HeaderStatus, got)
	}
}

func testRecordCodes(t *testing.T, newStore newStoreFunc, p protocol) {
	e := start(t, newStore(t), p, setup{
		opts: []connectadapter.Option{connectadapter.WithDisposition(connectadapter.RecordCodes(connect.CodeNotFound))},
		create: func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
			if req.Msg.GetValue() != "missing" {
				return echo(ctx, req)
			}
			ce := connect.NewError(connect.CodeNotFound, errors.New("no such item"))
			d, err := connect.NewErrorDetail(&errdetails.ResourceInfo{ResourceName: "missing"})
			if err != nil {
				return nil, err
			}
			ce.AddDetail(d)
			ce.Meta().Set("X-Why", "gone")
			return nil, ce
		},
	})
	key := connectadapter.NewKey()
	for i, want := range []string{connectadapter.StatusNew, connectadapter.StatusHit} {
		_, err := call(t, e.create, key, "missing")
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeNotFound || ce.Message() != "no such item" {
			t.Fatalf("call %d: %v, want the handler's NotFound", i, err)
		}
		if got := ce.Meta().Get(connectadapter.HeaderStatus); got != want {
			t.Errorf("call %d: %s = %q, want %q", i, connectadapter.HeaderStatus, got, want)
		}
		if got := ce.Meta().Get(connectadapter.HeaderStored); got != "" {
			t.Errorf("call %d: %s = %q, want none", i, connectadapter.HeaderStored, got)
		}
		if got := ce.Meta().Get("X-Why"); got != "gone" {
			t.Errorf("call %d: X-Why = %q, want gone", i, got)
		}
		if len(ce.Details()) != 1 {
			t.Fatalf("call %d: %d details, want 1", i, len(ce.Details()))
		}
		v, err := ce.Details()[0].Value()
		if ri, ok := v.(*errdetails.ResourceInfo); err != nil || !ok || ri.GetResourceName() != "missing" {
			t.Errorf("call %d: detail = %v, %v; want the ResourceInfo", i, v, err)
		}
	}
	if got := e.runs.Load(); got != 1 {
		t.Fatalf("handler ran %d times, want 1", got)
	}
}

func testConcurrent(t *testing.T, newStore newStoreFunc, p protocol) {
	const n = 32
	e := start(t, newStore(t), p, setup{
		opts: []connectadapter.Option{connectadapter.WithOptions(idem.WithWaitTimeout(5 * time.Second))},
		create: func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
			time.Sleep(50 * time.Millisecond) // let the others arrive
			return echo(ctx, req)
		},
	})
	key := connectadapter.NewKey()
	var wg sync.WaitGroup
	values := make([]string, n)
	statuses := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			resp, err := call(t, e.create, key, "book")
			if err != nil {
				errs[i] = err
				return
			}
			values[i], statuses[i] = resp.Msg.GetValue(), resp.Header().Get(connectadapter.HeaderStatus)
		})
	}
	wg.Wait()
	if got := e.runs.Load(); got != 1 {
		t.Fatalf("handler ran %d times, want 1", got)
	}
	news := 0
	for i := range n {
		if errs[i] != nil {
			t.Errorf("call %d: %v", i, errs[i])
			continue
		}
		if values[i] != "run 1: book" {
			t.Errorf("call %d = %q, want run 1: book", i, values[i])
		}
		if statuses[i] == connectadapter.StatusNew {
			news++
		}
	}
	if news != 1 {
		t.Errorf("%d calls were answered %s, want 1", news, connectadapter.StatusNew)
	}
}

func testNoKey(t *testing.T, newStore newStoreFunc, p protocol) {
	e := start(t, newStore(t), p, setup{})
	for range 2 {
		resp := mustCall(t, e.create, "", "book")
		if got := resp.Header().Get(connectadapter.HeaderStatus); got != "" {
			t.Errorf("%s = %q without a key, want none", connectadapter.HeaderStatus, got)
		}
	}
	if got := e.runs.Load(); got != 2 {
		t.Fatalf("handler ran %d times, want 2", got)
	}
}

func testNoSideEffects(t *testing.T, newStore newStoreFunc, p protocol) {
	e := start(t, newStore(t), p, setup{})
	key := connectadapter.NewKey()
	for range 2 {
		resp := mustCall(t, e.get, key, "book")
		if got := resp.Header().Get(connectadapter.HeaderStatus); got != "" {
			t.Errorf("%s = %q on a procedure without side effects, want none", connectadapter.HeaderStatus, got)
		}
	}
	if got := e.getRuns.Load(); got != 2 {
		t.Fatalf("Get ran %d times, want 2", got)
	}
	// Listed by WithMethods, it is protected.
	e = start(t, newStore(t), p, setup{opts: []connectadapter.Option{connectadapter.WithMethods(getProc)}})
	key = connectadapter.NewKey()
	mustCall(t, e.get, key, "book")
	resp := mustCall(t, e.get, key, "book")
	if got := resp.Header().Get(connectadapter.HeaderStatus); got != connectadapter.StatusHit {
		t.Errorf("%s = %q with WithMethods, want hit", connectadapter.HeaderStatus, got)
	}
	if got := e.getRuns.Load(); got != 1 {
		t.Fatalf("Get ran %d times with WithMethods, want 1", got)
	}
}

func testKeyRequired(t *testing.T, newStore newStoreFunc, p protocol) {
	e := start(t, newStore(t), p, setup{opts: []connectadapter.Option{connectadapter.WithKeyRequired(createProc)}})
	_, err := call(t, e.create, "", "book")
	wantRefusal(t, err, connect.CodeInvalidArgument, connectadapter.ReasonKeyMissing, false)
	if got := e.runs.Load(); got != 0 {
		t.Fatalf("handler ran %d times, want 0", got)
	}
}

func testKeyInvalid(t *testing.T, newStore newStoreFunc, p protocol) {
	for _, scoped := range []bool{false, true} {
		var opts []connectadapter.Option
		if scoped {
			opts = append(opts, connectadapter.WithScope(func(context.Context, connect.AnyRequest) string { return "tenant" }))
		}
		e := start(t, newStore(t), p, setup{opts: opts})
		long := make([]byte, idem.MaxKeyLen+1)
		for i := range long {
			long[i] = 'k'
		}
		_, err := call(t, e.create, string(long), "book")
		wantRefusal(t, err, connect.CodeInvalidArgument, connectadapter.ReasonKeyInvalid, false)
		if got := e.runs.Load(); got != 0 {
			t.Fatalf("handler ran %d times, want 0", got)
		}
	}
}

func testScope(t *testing.T, newStore newStoreFunc, p protocol) {
	e := start(t, newStore(t), p, setup{opts: []connectadapter.Option{
		connectadapter.WithScope(func(_ context.Context, req connect.AnyRequest) string { return req.Header().Get("X-Tenant") }),
	}})
	key := connectadapter.NewKey()
	for _, tenant := range []string{"a", "b"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		req := connect.NewRequest(wrapperspb.String("item-" + tenant))
		req.Header().Set(connectadapter.HeaderKey, key)
		req.Header().Set("X-Tenant", tenant)
		_, err := e.create.CallUnary(ctx, req)
		cancel()
		if err != nil {
			t.Fatalf("tenant %s: %v", tenant, err)
		}
	}
	if got := e.runs.Load(); got != 2 {
		t.Fatalf("handler ran %d times for two tenants, want 2", got)
	}
}

func testClient(t *testing.T, newStore newStoreFunc, p protocol) {
	e := start(t, newStore(t), p, setup{client: []connect.ClientOption{
		connect.WithInterceptors(connectadapter.NewClientInterceptor()),
	}})
	first := mustCall(t, e.create, "", "book")
	second := mustCall(t, e.create, "", "book")
	keys := e.seenKeys()
	if len(keys) != 2 || keys[0] == "" || keys[1] == "" || keys[0] == keys[1] {
		t.Fatalf("keys seen = %q, want two fresh keys", keys)
	}
	for _, resp := range []*connect.Response[wrapperspb.StringValue]{first, second} {
		if got := resp.Header().Get(connectadapter.HeaderStatus); got != connectadapter.StatusNew {
			t.Errorf("%s = %q, want new", connectadapter.HeaderStatus, got)
		}
	}
	// The caller's key is kept.
	key := connectadapter.NewKey()
	mustCall(t, e.create, key, "pen")
	resp := mustCall(t, e.create, key, "pen")
	if got := resp.Header().Get(connectadapter.HeaderStatus); got != connectadapter.StatusHit {
		t.Errorf("%s = %q with the caller's key, want hit", connectadapter.HeaderStatus, got)
	}
	if keys := e.seenKeys(); len(keys) != 3 || keys[2] != key {
		t.Errorf("keys seen = %q, want the caller's %q last", keys, key)
	}
	// Procedures without side effects get no key.
	mustCall(t, e.get, "", "x")
}
