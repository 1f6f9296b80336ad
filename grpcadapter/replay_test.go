package grpcadapter_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/codec"
	"github.com/idemkit/idem/grpcadapter"
)

// testReplay checks that a retry receives the first response, as the same
// message type, with the metadata the handler set, and that the handler ran
// once.
func testReplay(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), setup{unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		if err := grpc.SetHeader(ctx, metadata.Pairs("x-order", "ord_1", "x-multi", "a", "x-multi", "b")); err != nil {
			return nil, err
		}
		if err := grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "t")); err != nil {
			return nil, err
		}
		return &testpb.SimpleResponse{Payload: req.Payload, ServerId: "srv", GrpclbRouteType: testpb.GrpclbRouteType_GRPCLB_ROUTE_TYPE_BACKEND}, nil
	}})
	ctx, key := testCtx(t), grpcadapter.NewKey()
	first := e.call(ctx, key, order("book"))
	wantOK(t, first, grpcadapter.StatusNew)
	second := e.call(ctx, key, order("book"))
	wantOK(t, second, grpcadapter.StatusHit)

	if diff := cmp.Diff(first.resp, second.resp, protocmp.Transform()); diff != "" {
		t.Errorf("replayed response differs (-first +second):\n%s", diff)
	}
	if got := second.resp.GetUsername(); got != "run 1" {
		t.Errorf("replayed Username = %q, want run 1", got)
	}
	for _, r := range []result{first, second} {
		if got := r.stored(); got != "" {
			t.Errorf("%s = %q on a stored response", grpcadapter.HeaderStored, got)
		}
		for _, k := range []string{"x-order", "x-multi"} {
			if diff := cmp.Diff(first.header.Get(k), r.header.Get(k)); diff != "" || len(r.header.Get(k)) == 0 {
				t.Errorf("header %s: %q, first call got %q", k, r.header.Get(k), first.header.Get(k))
			}
		}
		if got := r.trailer.Get("x-trailer"); len(got) != 1 || got[0] != "t" {
			t.Errorf("trailer x-trailer = %q, want [t]", got)
		}
	}
	if diff := cmp.Diff([]string{"a", "b"}, second.header.Get("x-multi")); diff != "" {
		t.Errorf("replayed x-multi (-want +got):\n%s", diff)
	}
	if n := e.runs.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

// testSendHeader checks that a handler that sends its header early gets
// the call's own behaviour (SetHeader fails afterwards) and that the header
// it sent is stored.
func testSendHeader(t *testing.T, newStore newStoreFunc) {
	setErr := make(chan error, 2)
	e := start(t, newStore(t), setup{unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		if err := grpc.SendHeader(ctx, metadata.Pairs("x-sent", "yes")); err != nil {
			return nil, err
		}
		setErr <- grpc.SetHeader(ctx, metadata.Pairs("x-late", "no"))
		return echo(ctx, req)
	}})
	ctx, key := testCtx(t), grpcadapter.NewKey()
	for _, status := range []string{grpcadapter.StatusNew, grpcadapter.StatusHit} {
		r := e.call(ctx, key, order("book"))
		wantOK(t, r, status)
		if got := first(r.header.Get("x-sent")); got != "yes" {
			t.Errorf("%s: x-sent = %q, want yes", status, got)
		}
		if got := r.header.Get("x-late"); got != nil {
			t.Errorf("%s: x-late = %q, set after SendHeader", status, got)
		}
	}
	if err := <-setErr; err == nil {
		t.Error("SetHeader after SendHeader succeeded")
	}
}

// testNoKey checks that a call without a key goes through untouched.
func testNoKey(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), setup{})
	ctx := testCtx(t)
	for range 2 {
		r := e.call(ctx, "", order("book"))
		if r.err != nil {
			t.Fatal(r.err)
		}
		if got := r.header.Get(grpcadapter.HeaderStatus); got != nil {
			t.Errorf("%s = %q without a key", grpcadapter.HeaderStatus, got)
		}
	}
	if n := e.runs.Load(); n != 2 {
		t.Errorf("handler ran %d times, want 2", n)
	}
}

// testWithMethods checks that calls to methods left out by WithMethods or
// WithMethodFilter go through untouched, key or not.
func testWithMethods(t *testing.T, newStore newStoreFunc) {
	for name, opt := range map[string]grpcadapter.Option{
		"list":   grpcadapter.WithMethods(testpb.TestService_EmptyCall_FullMethodName),
		"filter": grpcadapter.WithMethodFilter(func(m string) bool { return strings.HasSuffix(m, "/EmptyCall") }),
	} {
		t.Run(name, func(t *testing.T) {
			e := start(t, newStore(t), setup{opts: []grpcadapter.Option{opt}})
			ctx, key := testCtx(t), grpcadapter.NewKey()
			for range 2 {
				r := e.call(ctx, key, order("book"))
				if r.err != nil || r.header.Get(grpcadapter.HeaderStatus) != nil {
					t.Fatalf("unprotected call: %v, header %v", r.err, r.header)
				}
			}
			if n := e.runs.Load(); n != 2 {
				t.Errorf("unprotected handler ran %d times, want 2", n)
			}
			kctx := metadata.AppendToOutgoingContext(ctx, grpcadapter.MetadataKey, grpcadapter.NewKey())
			for range 2 {
				if _, err := e.client.EmptyCall(kctx, &testpb.Empty{}); err != nil {
					t.Fatal(err)
				}
			}
			if n := e.emptyRuns.Load(); n != 1 {
				t.Errorf("protected handler ran %d times, want 1", n)
			}
		})
	}
}

// testKeyRequired checks that a method whose key is required refuses calls
// without one, and is protected even when WithMethods leaves it out, while
// other methods still accept calls without a key.
func testKeyRequired(t *testing.T, newStore newStoreFunc) {
	for name, opt := range map[string]grpcadapter.Option{
		"list":   grpcadapter.WithKeyRequired(testpb.TestService_UnaryCall_FullMethodName),
		"filter": grpcadapter.WithKeyRequiredFilter(func(m string) bool { return strings.HasSuffix(m, "/UnaryCall") }),
	} {
		t.Run(name, func(t *testing.T) {
			e := start(t, newStore(t), setup{opts: []grpcadapter.Option{
				grpcadapter.WithMethods(testpb.TestService_EmptyCall_FullMethodName), opt,
			}})
			ctx := testCtx(t)
			r := e.call(ctx, "", order("book"))
			wantRefusal(t, r.err, codes.InvalidArgument, grpcadapter.ReasonKeyMissing)
			if _, err := e.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
				t.Errorf("EmptyCall without a key: %v", err)
			}
			key := grpcadapter.NewKey()
			wantOK(t, e.call(ctx, key, order("book")), grpcadapter.StatusNew)
			wantOK(t, e.call(ctx, key, order("book")), grpcadapter.StatusHit)
			if n := e.runs.Load(); n != 1 {
				t.Errorf("handler ran %d times, want 1", n)
			}
		})
	}
}

// testKeyInvalid checks the refusal of keys that are empty, too long or
// repeated, and that the longest key is accepted.
func testKeyInvalid(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), setup{})
	ctx := testCtx(t)
	for name, md := range map[string]metadata.MD{
		"empty":    metadata.Pairs(grpcadapter.MetadataKey, ""),
		"too long": metadata.Pairs(grpcadapter.MetadataKey, keyOfLen(idem.MaxKeyLen+1)),
		"repeated": metadata.Pairs(grpcadapter.MetadataKey, grpcadapter.NewKey(), grpcadapter.MetadataKey, grpcadapter.NewKey()),
	} {
		_, err := e.client.UnaryCall(metadata.NewOutgoingContext(ctx, md), order("book"))
		t.Run(name, func(t *testing.T) { wantRefusal(t, err, codes.InvalidArgument, grpcadapter.ReasonKeyInvalid) })
	}
	wantOK(t, e.call(ctx, keyOfLen(idem.MaxKeyLen), order("book")), grpcadapter.StatusNew)
	if n := e.runs.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

// testKeyReused checks that a key sent with another request, or to another
// method, is refused.
func testKeyReused(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), setup{})
	ctx, key := testCtx(t), grpcadapter.NewKey()
	wantOK(t, e.call(ctx, key, order("book")), grpcadapter.StatusNew)
	r := e.call(ctx, key, order("pen"))
	wantRefusal(t, r.err, codes.FailedPrecondition, grpcadapter.ReasonKeyReused)
	_, err := e.client.EmptyCall(metadata.AppendToOutgoingContext(ctx, grpcadapter.MetadataKey, key), &testpb.Empty{})
	wantRefusal(t, err, codes.FailedPrecondition, grpcadapter.ReasonKeyReused)
	if n := e.runs.Load() + e.emptyRuns.Load(); n != 1 {
		t.Errorf("handlers ran %d times, want 1", n)
	}
}

// testSignatureValidationOff checks that without signature validation
// another request with the key is given the stored response, but another
// method is still refused: its response type differs.
func testSignatureValidationOff(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), setup{opts: []grpcadapter.Option{
		grpcadapter.WithOptions(idem.WithSignatureValidation(false)),
	}})
	ctx, key := testCtx(t), grpcadapter.NewKey()
	first := e.call(ctx, key, order("book"))
	wantOK(t, first, grpcadapter.StatusNew)
	other := e.call(ctx, key, order("pen"))
	wantOK(t, other, grpcadapter.StatusHit)
	if diff := cmp.Diff(first.resp, other.resp, protocmp.Transform()); diff != "" {
		t.Errorf("response (-first +other):\n%s", diff)
	}
	_, err := e.client.EmptyCall(metadata.AppendToOutgoingContext(ctx, grpcadapter.MetadataKey, key), &testpb.Empty{})
	wantRefusal(t, err, codes.FailedPrecondition, grpcadapter.ReasonKeyReused)
}

// testMetadataKey checks that WithMetadataKey moves the key to another
// metadata key, on both sides, and that the default one is then ignored.
func testMetadataKey(t *testing.T, newStore newStoreFunc) {
	opt := grpcadapter.WithMetadataKey("X-Request-ID")
	e := start(t, newStore(t), setup{
		opts:  []grpcadapter.Option{opt},
		dial:  []grpc.DialOption{grpc.WithUnaryInterceptor(grpcadapter.UnaryClientInterceptor(opt))},
		mdKey: "x-request-id",
	})
	ctx, key := testCtx(t), grpcadapter.NewKey()
	wantOK(t, e.call(ctx, "", order("book"), grpcadapter.CallKey(key)), grpcadapter.StatusNew)
	wantOK(t, e.call(ctx, "", order("book"), grpcadapter.CallKey(key)), grpcadapter.StatusHit)
	if got := e.seenKeys(); len(got) != 1 || got[0] != key {
		t.Errorf("handler saw keys %q, want [%s]", got, key)
	}
	// The interceptor sees the key under the default name as any other
	// metadata: it gives the call a key of its own.
	wantOK(t, e.call(ctx, key, order("book")), grpcadapter.StatusNew)
}

// testNamespace checks that the interceptor's records are kept apart, under
// DefaultNamespace, from those of another Operation on the same store.
func testNamespace(t *testing.T, newStore newStoreFunc) {
	store := newStore(t)
	ctx, key := testCtx(t), grpcadapter.NewKey()
	other := idem.New[string, string](store)
	if _, err := other.Do(ctx, key, "x", func(context.Context, string) (string, error) { return "x", nil }); err != nil {
		t.Fatal(err)
	}
	e := start(t, store, setup{})
	wantOK(t, e.call(ctx, key, order("book")), grpcadapter.StatusNew)
	acq, err := store.Acquire(ctx, grpcadapter.DefaultNamespace+":"+key, "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if acq.Record == nil {
		t.Errorf("no record under %s:%s", grpcadapter.DefaultNamespace, key)
	}
}

// testCodecJSON checks that responses survive another codec than the
// default.
func testCodecJSON(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), setup{
		opts: []grpcadapter.Option{grpcadapter.WithOptions(idem.WithCodec(codec.JSON{}))},
		unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			if err := grpc.SetHeader(ctx, metadata.Pairs("x-order", "ord_1")); err != nil {
				return nil, err
			}
			return echo(ctx, req)
		},
	})
	ctx, key := testCtx(t), grpcadapter.NewKey()
	r1 := e.call(ctx, key, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte{0, 0xff, 'x'}}})
	wantOK(t, r1, grpcadapter.StatusNew)
	r2 := e.call(ctx, key, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte{0, 0xff, 'x'}}})
	wantOK(t, r2, grpcadapter.StatusHit)
	if diff := cmp.Diff(r1.resp, r2.resp, protocmp.Transform()); diff != "" {
		t.Errorf("replayed response differs (-first +second):\n%s", diff)
	}
	if got := first(r2.header.Get("x-order")); got != "ord_1" {
		t.Errorf("replayed x-order = %q, want ord_1", got)
	}
}
