package grpcadapter_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/grpcadapter"
	"github.com/idemkit/idem/memstore"
)

// newStoreFunc returns the store a test runs on. It may return one store
// for every test, for the whole process (see TestRedis): every key a test
// stores under must be fresh, from NewKey or keyOfLen.
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

// testServer runs every test of the interceptors, in parallel, on the
// stores newStore returns.
func testServer(t *testing.T, newStore newStoreFunc) {
	tests := []struct {
		name string
		fn   func(*testing.T, newStoreFunc)
	}{
		{"Replay", testReplay},
		{"SendHeader", testSendHeader},
		{"NoKey", testNoKey},
		{"WithMethods", testWithMethods},
		{"KeyRequired", testKeyRequired},
		{"KeyInvalid", testKeyInvalid},
		{"KeyReused", testKeyReused},
		{"Scope", testScope},
		{"ScopeKeys", testScopeKeys},
		{"SignatureValidationOff", testSignatureValidationOff},
		{"MetadataKey", testMetadataKey},
		{"Namespace", testNamespace},
		{"CodecJSON", testCodecJSON},
		{"ErrorsNotStored", testErrorsNotStored},
		{"FinalCodes", testFinalCodes},
		{"FinalStatus", testFinalStatus},
		{"StoreUnavailable", testStoreUnavailable},
		{"NotStored", testNotStored},
		{"CorruptRecord", testCorruptRecord},
		{"OtherTypes", testOtherTypes},
		{"UnregisteredType", testUnregisteredType},
		{"InvalidOptions", testInvalidOptions},
		{"InFlight", testInFlight},
		{"InFlightCode", testInFlightCode},
		{"Concurrent", testConcurrent},
		{"WaitDeadline", testWaitDeadline},
		{"ClientKey", testClientKey},
		{"ClientCallerKey", testClientCallerKey},
		{"ClientCallKey", testClientCallKey},
		{"ClientCallKeyInvalid", testClientCallKeyInvalid},
		{"ClientMethods", testClientMethods},
		{"ClientInvalidOptions", testClientInvalidOptions},
		{"ClientRetryPolicy", testClientRetryPolicy},
		{"ClientRetryLostResponse", testClientRetryLostResponse},
		{"ClientRetryInterceptor", testClientRetryInterceptor},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore)
		})
	}
}

// handlerFunc is the implementation of TestService.UnaryCall under test.
type handlerFunc func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error)

// echo answers with the request's payload. (service adds the number of the
// run in Username, so that a replay is told from a new run.)
func echo(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

// service is a TestService whose UnaryCall runs a handlerFunc and counts
// its runs and the keys it saw; its EmptyCall counts runs too.
type service struct {
	testpb.UnimplementedTestServiceServer
	unary handlerFunc
	mdKey string

	runs      atomic.Int32 // of UnaryCall
	emptyRuns atomic.Int32

	mu   sync.Mutex
	keys []string // seen by UnaryCall, "" for none
}

func (s *service) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	n := s.runs.Add(1)
	s.mu.Lock()
	s.keys = append(s.keys, first(metadata.ValueFromIncomingContext(ctx, s.mdKey)))
	s.mu.Unlock()
	resp, err := s.unary(ctx, req)
	if resp != nil {
		resp.Username = fmt.Sprint("run ", n)
	}
	return resp, err
}

func (s *service) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	s.emptyRuns.Add(1)
	return &testpb.Empty{}, nil
}

// seenKeys returns the keys UnaryCall saw, in order.
func (s *service) seenKeys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.keys)
}

func first(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

// setup describes a test server and its client.
type setup struct {
	unary handlerFunc          // UnaryCall; echo when nil
	opts  []grpcadapter.Option // of the server interceptor
	// outer are server interceptors that run before the idempotency
	// interceptor.
	outer []grpc.UnaryServerInterceptor
	// inner are server interceptors that run after it, with the handler.
	inner []grpc.UnaryServerInterceptor
	dial  []grpc.DialOption
	mdKey string // the metadata key UnaryCall records; MetadataKey when ""
}

// env is a running test server and a client connected to it over bufconn.
type env struct {
	*service
	client testpb.TestServiceClient
}

// start serves a TestService, protected by the server interceptor on store,
// and connects a client to it.
func start(t *testing.T, store idem.Store, s setup) *env {
	t.Helper()
	if s.unary == nil {
		s.unary = echo
	}
	if s.mdKey == "" {
		s.mdKey = grpcadapter.MetadataKey
	}
	svc := &service{unary: s.unary, mdKey: s.mdKey}
	interceptors := append(slices.Clone(s.outer), grpcadapter.UnaryServerInterceptor(store, s.opts...))
	interceptors = append(interceptors, s.inner...)
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(interceptors...))
	testpb.RegisterTestServiceServer(srv, svc)
	lis := bufconn.Listen(1 << 20)
	go srv.Serve(lis)
	dial := append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, s.dial...)
	conn, err := grpc.NewClient("passthrough:///bufnet", dial...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
	})
	return &env{service: svc, client: testpb.NewTestServiceClient(conn)}
}

// result is what a client received.
type result struct {
	resp    *testpb.SimpleResponse
	header  metadata.MD
	trailer metadata.MD
	err     error
}

// marks returns the metadata that carries the idempotency marks: the
// header of a response, the trailer of an error.
func (r result) marks() metadata.MD {
	if r.err != nil {
		return r.trailer
	}
	return r.header
}

// status returns the value of HeaderStatus.
func (r result) status() string { return first(r.marks().Get(grpcadapter.HeaderStatus)) }

// stored returns the value of HeaderStored.
func (r result) stored() string { return first(r.marks().Get(grpcadapter.HeaderStored)) }

// call calls UnaryCall with req under key ("" sends none).
func (e *env) call(ctx context.Context, key string, req *testpb.SimpleRequest, opts ...grpc.CallOption) result {
	if key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, grpcadapter.MetadataKey, key)
	}
	var r result
	opts = append(opts, grpc.Header(&r.header), grpc.Trailer(&r.trailer))
	r.resp, r.err = e.client.UnaryCall(ctx, req, opts...)
	return r
}

// keyOfLen returns a fresh key of n bytes (at least 26): padding, then a
// key from NewKey.
func keyOfLen(n int) string {
	id := grpcadapter.NewKey()
	return strings.Repeat("k", n-len(id)) + id
}

// order is a request for the tests.
func order(item string) *testpb.SimpleRequest {
	return &testpb.SimpleRequest{ResponseSize: 1, Payload: &testpb.Payload{Body: []byte(item)}}
}

// ctx returns a context that ends with the test, and by ten seconds.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantOK fails the test unless r is a success whose HeaderStatus is status.
func wantOK(t *testing.T, r result, status string) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("call failed: %v", r.err)
	}
	if got := r.status(); got != status {
		t.Errorf("%s = %q, want %q", grpcadapter.HeaderStatus, got, status)
	}
}

// wantRefusal fails the test unless err is a status with code and an
// ErrorInfo detail with reason, and returns the status.
func wantRefusal(t *testing.T, err error, code codes.Code, reason string) *status.Status {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		t.Fatalf("error %v, want code %v", err, code)
	}
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	want := &errdetails.ErrorInfo{Reason: reason, Domain: grpcadapter.Domain}
	if diff := cmp.Diff(want, info, protocmp.Transform()); diff != "" {
		t.Errorf("ErrorInfo of %v (-want +got):\n%s", err, diff)
	}
	return st
}

// retryDelay returns the delay of the RetryInfo detail of st, or -1.
func retryDelay(st *status.Status) time.Duration {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return -1
}

// hookErrs collects the errors reported to an error hook.
type hookErrs struct {
	mu   sync.Mutex
	errs []error
}

func (h *hookErrs) option() grpcadapter.Option {
	return grpcadapter.WithErrorHook(func(_ context.Context, _ string, err error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.errs = append(h.errs, err)
	})
}

func (h *hookErrs) get() []error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.errs)
}
