package connectadapter_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/connectadapter"
	"github.com/idemkit/idem/memstore"
)

const (
	createProc = "/test.v1.Orders/Create"
	getProc    = "/test.v1.Orders/Get"
)

// newStoreFunc returns the store a test runs on. It may return one store
// for every test (see TestRedis): every key a test uses must be fresh, from
// NewKey.
type newStoreFunc func(t *testing.T) idem.Store

func TestMemstore(t *testing.T) {
	t.Parallel()
	testServer(t, func(*testing.T) idem.Store { return memstore.New() })
}

func TestMemstoreShared(t *testing.T) {
	t.Parallel()
	s := memstore.New()
	testServer(t, func(*testing.T) idem.Store { return s })
}

// testServer runs every server test, in parallel, on the stores newStore
// returns, with each of the three protocols.
func testServer(t *testing.T, newStore newStoreFunc) {
	tests := []struct {
		name string
		fn   func(*testing.T, newStoreFunc, protocol)
	}{
		{"Replay", testReplay},
		{"KeyReused", testKeyReused},
		{"OtherProcedure", testOtherProcedure},
		{"InFlight", testInFlight},
		{"ErrorsNotStored", testErrorsNotStored},
		{"RecordCodes", testRecordCodes},
		{"Concurrent", testConcurrent},
		{"NoKey", testNoKey},
		{"NoSideEffects", testNoSideEffects},
		{"KeyRequired", testKeyRequired},
		{"KeyInvalid", testKeyInvalid},
		{"Scope", testScope},
		{"Client", testClient},
	}
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					tc.fn(t, newStore, p)
				})
			}
		})
	}
}

// protocol is a client protocol under test.
type protocol struct {
	name string
	opts []connect.ClientOption
}

var protocols = []protocol{
	{"Connect", nil},
	{"GRPC", []connect.ClientOption{connect.WithGRPC()}},
	{"GRPCWeb", []connect.ClientOption{connect.WithGRPCWeb()}},
}

// handlerFunc is the implementation of Create under test.
type handlerFunc func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error)

// echo answers with the request's value, a header and a trailer.
func echo(_ context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
	resp := connect.NewResponse(wrapperspb.String(req.Msg.GetValue()))
	resp.Header().Set("X-Order", "order-"+req.Msg.GetValue())
	resp.Trailer().Set("X-Total", "42")
	return resp, nil
}

// setup describes a test server and its clients.
type setup struct {
	create handlerFunc // Create; echo when nil
	opts   []connectadapter.Option
	client []connect.ClientOption // beside the protocol's
}

// env is a running test server and clients of its procedures.
type env struct {
	runs    atomic.Int32 // of Create
	getRuns atomic.Int32

	mu   sync.Mutex
	keys []string // seen by Create, "" for none

	create *connect.Client[wrapperspb.StringValue, wrapperspb.StringValue]
	get    *connect.Client[wrapperspb.StringValue, wrapperspb.StringValue]
	// other is a client of Other, a procedure with Create's types.
	other *connect.Client[wrapperspb.StringValue, wrapperspb.StringValue]
}

// start serves Create, Get (declared free of side effects) and Other over
// HTTP/2 with TLS, protected by the server interceptor on store, and makes
// clients of them with protocol p.
func start(t *testing.T, store idem.Store, p protocol, s setup) *env {
	t.Helper()
	if s.create == nil {
		s.create = echo
	}
	e := &env{}
	icpt := connect.WithInterceptors(connectadapter.NewInterceptor(store, s.opts...))
	create := func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
		n := e.runs.Add(1)
		e.mu.Lock()
		e.keys = append(e.keys, req.Header().Get(connectadapter.HeaderKey))
		e.mu.Unlock()
		resp, err := s.create(ctx, req)
		if resp != nil {
			resp.Msg.Value = fmt.Sprintf("run %d: %s", n, resp.Msg.GetValue())
		}
		return resp, err
	}
	mux := http.NewServeMux()
	mux.Handle(createProc, connect.NewUnaryHandler(createProc, create, icpt))
	mux.Handle("/test.v1.Orders/Other", connect.NewUnaryHandler("/test.v1.Orders/Other", create, icpt))
	mux.Handle(getProc, connect.NewUnaryHandler(getProc,
		func(_ context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
			n := e.getRuns.Add(1)
			return connect.NewResponse(wrapperspb.String(fmt.Sprintf("get %d", n))), nil
		}, icpt, connect.WithIdempotency(connect.IdempotencyNoSideEffects)))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	opts := append(slices.Clone(p.opts), s.client...)
	e.create = connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](srv.Client(), srv.URL+createProc, opts...)
	e.other = connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](srv.Client(), srv.URL+"/test.v1.Orders/Other", opts...)
	e.get = connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](srv.Client(), srv.URL+getProc,
		append(opts, connect.WithIdempotency(connect.IdempotencyNoSideEffects))...)
	return e
}

func (e *env) seenKeys() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.keys)
}

// call calls c with value, and key in the key header unless key is "".
func call(t *testing.T, c *connect.Client[wrapperspb.StringValue, wrapperspb.StringValue], key, value string) (*connect.Response[wrapperspb.StringValue], error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := connect.NewRequest(wrapperspb.String(value))
	if key != "" {
		req.Header().Set(connectadapter.HeaderKey, key)
	}
	return c.CallUnary(ctx, req)
}

// mustCall is call, failing the test on an error.
func mustCall(t *testing.T, c *connect.Client[wrapperspb.StringValue, wrapperspb.StringValue], key, value string) *connect.Response[wrapperspb.StringValue] {
	t.Helper()
	resp, err := call(t, c, key, value)
	if err != nil {
		t.Fatalf("call(%q, %q): %v", key, value, err)
	}
	return resp
}

// wantRefusal checks that err is a refusal with code and reason, with a
// RetryInfo detail or not, and returns the connect error.
func wantRefusal(t *testing.T, err error, code connect.Code, reason string, retry bool) *connect.Error {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error = %v, want a connect error with code %v", err, code)
	}
	if ce.Code() != code {
		t.Fatalf("code = %v (%v), want %v", ce.Code(), ce.Message(), code)
	}
	var info *errdetails.ErrorInfo
	var hasRetry bool
	for _, d := range ce.Details() {
		v, err := d.Value()
		if err != nil {
			t.Fatalf("detail %s: %v", d.Type(), err)
		}
		switch v := v.(type) {
		case *errdetails.ErrorInfo:
			info = v
		case *errdetails.RetryInfo:
			hasRetry = v.GetRetryDelay().AsDuration() > 0
		}
	}
	if info == nil || info.GetReason() != reason || info.GetDomain() != connectadapter.Domain {
		t.Errorf("ErrorInfo = %v, want reason %s, domain %s", info, reason, connectadapter.Domain)
	}
	if hasRetry != retry {
		t.Errorf("RetryInfo with a delay: %v, want %v", hasRetry, retry)
	}
	return ce
}

// errorStore is a store that always fails.
type errorStore struct{}

var errStoreDown = errors.New("store down")

func (errorStore) Acquire(context.Context, string, string, time.Duration) (idem.Acquisition, error) {
	return idem.Acquisition{}, errStoreDown
}

func (errorStore) Wait(context.Context, string) error { return errStoreDown }
