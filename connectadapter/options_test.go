package connectadapter_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/connectadapter"
	"github.com/idemkit/idem/memstore"
)

func TestStoreUnavailable(t *testing.T) {
	t.Parallel()
	var hooked atomic.Int32
	e := start(t, errorStore{}, protocols[0], setup{opts: []connectadapter.Option{
		connectadapter.WithErrorHook(func(_ context.Context, procedure string, err error) {
			if procedure == createProc && errors.Is(err, errStoreDown) {
				hooked.Add(1)
			}
		}),
	}})
	_, err := call(t, e.create, connectadapter.NewKey(), "book")
	wantRefusal(t, err, connect.CodeUnavailable, connectadapter.ReasonStoreUnavailable, true)
	if e.runs.Load() != 0 {
		t.Fatal("handler ran with the store down")
	}
	if hooked.Load() != 1 {
		t.Errorf("hook told %d times, want 1", hooked.Load())
	}
}

func TestInFlightCode(t *testing.T) {
	t.Parallel()
	entered, release := make(chan struct{}, 1), make(chan struct{})
	e := start(t, memstore.New(), protocols[1], setup{
		create: blocking(entered, release),
		opts:   []connectadapter.Option{connectadapter.WithInFlightCode(connect.CodeUnavailable)},
	})
	key := connectadapter.NewKey()
	done := make(chan error, 1)
	go func() {
		_, err := call(t, e.create, key, "book")
		done <- err
	}()
	<-entered
	_, err := call(t, e.create, key, "book")
	wantRefusal(t, err, connect.CodeUnavailable, connectadapter.ReasonInFlight, true)
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestInvalidOptions(t *testing.T) {
	t.Parallel()
	for name, opts := range map[string][]connectadapter.Option{
		"header":         {connectadapter.WithHeader("grpc-timeout")},
		"binary header":  {connectadapter.WithHeader("key-bin")},
		"methods":        {connectadapter.WithMethods("Create")},
		"in-flight code": {connectadapter.WithInFlightCode(0)},
		"retry delay":    {connectadapter.WithRetryDelay(-1)},
		"idem option":    {connectadapter.WithOptions(idem.WithTTL(-1))},
	} {
		if err := connectadapter.CheckOptions(memstore.New(), opts...); !errors.Is(err, idem.ErrInvalidOption) {
			t.Errorf("%s: CheckOptions = %v, want ErrInvalidOption", name, err)
		}
	}
	if err := connectadapter.CheckOptions(memstore.New(), connectadapter.WithHeader("X-Request-Id")); err != nil {
		t.Errorf("CheckOptions(valid) = %v", err)
	}
	// Invalid options fail protected calls with Internal, unrun.
	e := start(t, memstore.New(), protocols[0], setup{opts: []connectadapter.Option{connectadapter.WithRetryDelay(-1)}})
	_, err := call(t, e.create, connectadapter.NewKey(), "book")
	wantRefusal(t, err, connect.CodeInternal, connectadapter.ReasonInternal, false)
	if e.runs.Load() != 0 {
		t.Fatal("handler ran with invalid options")
	}
}

func TestHeaderOption(t *testing.T) {
	t.Parallel()
	const header = "X-Request-Id"
	e := start(t, memstore.New(), protocols[2], setup{
		opts:   []connectadapter.Option{connectadapter.WithHeader(header)},
		client: []connect.ClientOption{connect.WithInterceptors(connectadapter.NewClientInterceptor(connectadapter.WithHeader(header)))},
	})
	mustCall(t, e.create, "", "book")
	resp := mustCall(t, e.create, "", "book")
	if got := resp.Header().Get(connectadapter.HeaderStatus); got != connectadapter.StatusNew {
		t.Errorf("%s = %q, want new (a fresh key per call)", connectadapter.HeaderStatus, got)
	}
	if e.runs.Load() != 2 {
		t.Errorf("handler ran %d times, want 2", e.runs.Load())
	}
}

func TestClientInvalidOptions(t *testing.T) {
	t.Parallel()
	opts := []connectadapter.Option{connectadapter.WithOptions(idem.WithTTL(1))}
	if err := connectadapter.CheckClientOptions(opts...); !errors.Is(err, idem.ErrInvalidOption) {
		t.Fatalf("CheckClientOptions(server-only) = %v, want ErrInvalidOption", err)
	}
	e := start(t, memstore.New(), protocols[0], setup{client: []connect.ClientOption{
		connect.WithInterceptors(connectadapter.NewClientInterceptor(opts...)),
	}})
	_, err := call(t, e.create, "", "book")
	if connect.CodeOf(err) != connect.CodeInternal {
		t.Fatalf("call = %v, want Internal", err)
	}
	if e.runs.Load() != 0 {
		t.Fatal("the call was sent")
	}
}
