package grpcadapter_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/grpcadapter"
	"github.com/idemkit/idem/memstore"
)

// testErrorsNotStored checks that a handler error is not stored: the key is
// released and a retry runs the handler again.
func testErrorsNotStored(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), setup{unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		if err := grpc.SetTrailer(ctx, metadata.Pairs("x-attempt", "1")); err != nil {
			return nil, err
		}
		if string(req.GetPayload().GetBody()) == "fail" {
			return nil, status.Error(codes.Internal, "boom")
		}
		return echo(ctx, req)
	}, opts: []grpcadapter.Option{grpcadapter.WithDisposition(grpcadapter.RecordCodes(codes.NotFound))}})
	ctx, key := testCtx(t), grpcadapter.NewKey()
	for range 2 {
		r := e.call(ctx, key, order("fail"))
		if status.Code(r.err) != codes.Internal || status.Convert(r.err).Message() != "boom" {
			t.Fatalf("error %v, want the handler's", r.err)
		}
		if r.status() != grpcadapter.StatusNew || r.stored() != "false" || first(r.trailer.Get("x-attempt")) != "1" {
			t.Errorf("trailer %v, want status new, stored false and the handler's", r.trailer)
		}
		// An error without a header stays a trailers-only response, which
		// gRPC's retry policy can retry.
		if got := r.header.Get(grpcadapter.HeaderStatus); got != nil {
			t.Errorf("header %s = %q on an error", grpcadapter.HeaderStatus, got)
		}
	}
	if n := e.runs.Load(); n != 2 {
		t.Errorf("handler ran %d times, want 2", n)
	}
}

// testFinalCodes checks that an error whose code RecordCodes lists is
// stored and replayed whole, with its details and metadata.
func testFinalCodes(t *testing.T, newStore newStoreFunc) {
	st, err := status.New(codes.InvalidArgument, "bad item").WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "payload.body", Description: "unknown item"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, newStore(t), setup{
		opts: []grpcadapter.Option{grpcadapter.WithDisposition(grpcadapter.RecordCodes(codes.InvalidArgument, codes.NotFound))},
		unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			if err := grpc.SetHeader(ctx, metadata.Pairs("x-check", "done")); err != nil {
				return nil, err
			}
			if err := grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "t")); err != nil {
				return nil, err
			}
			return nil, st.Err()
		},
	})
	ctx, key := testCtx(t), grpcadapter.NewKey()
	for _, want := range []string{grpcadapter.StatusNew, grpcadapter.StatusHit} {
		r := e.call(ctx, key, order("unicorn"))
		if diff := cmp.Diff(st.Proto(), status.Convert(r.err).Proto(), protocmp.Transform()); diff != "" {
			t.Errorf("%s: status (-want +got):\n%s", want, diff)
		}
		if r.status() != want || r.stored() != "" {
			t.Errorf("trailer %v, want status %s and no %s", r.trailer, want, grpcadapter.HeaderStored)
		}
		if first(r.header.Get("x-check")) != "done" || first(r.trailer.Get("x-trailer")) != "t" {
			t.Errorf("%s: header %v, trailer %v, want the handler's", want, r.header, r.trailer)
		}
	}
	if n := e.runs.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

// testFinalStatus checks that WithDisposition decides by the whole status,
// and that a plain error is seen as Unknown.
func testFinalStatus(t *testing.T, newStore newStoreFunc) {
	declined, err := status.New(codes.FailedPrecondition, "declined").WithDetails(&errdetails.ErrorInfo{Reason: "CARD_DECLINED", Domain: "pay.example"})
	if err != nil {
		t.Fatal(err)
	}
	errs := map[string]error{
		"declined": declined.Err(),
		"busy":     status.Error(codes.FailedPrecondition, "busy"),
		"plain":    errors.New("plain"),
		"deadline": context.DeadlineExceeded,
	}
	e := start(t, newStore(t), setup{
		opts: []grpcadapter.Option{grpcadapter.WithDisposition(func(st *status.Status) idem.Disposition {
			for _, d := range st.Details() {
				if i, ok := d.(*errdetails.ErrorInfo); ok && i.Reason == "CARD_DECLINED" {
					return idem.Record
				}
			}
			if st.Code() == codes.Unknown {
				return idem.Record
			}
			return idem.Release
		})},
		unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			return nil, errs[string(req.GetPayload().GetBody())]
		},
	})
	ctx := testCtx(t)
	for _, tc := range []struct {
		body     string
		want     *status.Status
		wantRuns int32
	}{
		{"declined", declined, 1},
		{"busy", status.New(codes.FailedPrecondition, "busy"), 2},
		{"plain", status.New(codes.Unknown, "plain"), 1},
		// A context error has the code gRPC gives it, not Unknown.
		{"deadline", status.New(codes.DeadlineExceeded, context.DeadlineExceeded.Error()), 2},
	} {
		before := e.runs.Load()
		key := grpcadapter.NewKey()
		for range 2 {
			r := e.call(ctx, key, order(tc.body))
			want := tc.want
			if diff := cmp.Diff(want.Proto(), status.Convert(r.err).Proto(), protocmp.Transform()); diff != "" {
				t.Errorf("%s: status (-want +got):\n%s", tc.body, diff)
			}
		}
		if n := e.runs.Load() - before; n != tc.wantRuns {
			t.Errorf("%s: handler ran %d times, want %d", tc.body, n, tc.wantRuns)
		}
	}
}

// faultyStore is a store whose Acquire fails with acquireErr, or, with
// loseLeases, whose leases are lost when committed: Commit releases the key
// and returns idem.ErrLeaseLost, as when a lease expired before the result
// could be stored.
type faultyStore struct {
	idem.Store
	acquireErr error
	loseLeases bool
}

func (s faultyStore) Acquire(ctx context.Context, key, fingerprint string, ttl time.Duration) (idem.Acquisition, error) {
	if s.acquireErr != nil {
		return idem.Acquisition{}, s.acquireErr
	}
	acq, err := s.Store.Acquire(ctx, key, fingerprint, ttl)
	if acq.Lease != nil && s.loseLeases {
		acq.Lease = lostLease{acq.Lease}
	}
	return acq, err
}

type lostLease struct{ idem.Lease }

func (l lostLease) Commit(ctx context.Context, _ []byte, _ time.Duration) error {
	if err := l.Lease.Release(ctx); err != nil {
		return err
	}
	return idem.ErrLeaseLost
}

// testStoreUnavailable checks that a store failure before the handler runs
// is answered with Unavailable and RetryInfo, and reported.
func testStoreUnavailable(t *testing.T, newStore newStoreFunc) {
	var hook hookErrs
	errDown := errors.New("store down")
	e := start(t, faultyStore{Store: newStore(t), acquireErr: errDown}, setup{opts: []grpcadapter.Option{hook.option()}})
	ctx := testCtx(t)
	r := e.call(ctx, grpcadapter.NewKey(), order("book"))
	st := wantRefusal(t, r.err, codes.Unavailable, grpcadapter.ReasonStoreUnavailable)
	if d := retryDelay(st); d != grpcadapter.DefaultRetryDelay {
		t.Errorf("RetryInfo delay %v, want %v", d, grpcadapter.DefaultRetryDelay)
	}
	if errs := hook.get(); len(errs) != 1 || !errors.Is(errs[0], idem.ErrStore) || !errors.Is(errs[0], errDown) {
		t.Errorf("hook got %v, want one ErrStore wrapping the store's error", errs)
	}
	if n := e.runs.Load(); n != 0 {
		t.Errorf("handler ran %d times, want 0", n)
	}
	if _, err := e.client.UnaryCall(ctx, order("book")); err != nil {
		t.Errorf("call without a key: %v", err)
	}
}

// testNotStored checks that a response that could not be stored is returned
// all the same, marked as not stored, and reported; a retry runs again.
func testNotStored(t *testing.T, newStore newStoreFunc) {
	var hook hookErrs
	e := start(t, faultyStore{Store: newStore(t), loseLeases: true}, setup{opts: []grpcadapter.Option{hook.option()}})
	ctx, key := testCtx(t), grpcadapter.NewKey()
	for i := range 2 {
		r := e.call(ctx, key, order("book"))
		wantOK(t, r, grpcadapter.StatusNew)
		if got := r.stored(); got != "false" {
			t.Errorf("%s = %q, want false", grpcadapter.HeaderStored, got)
		}
		if diff := cmp.Diff(order("book").Payload, r.resp.GetPayload(), protocmp.Transform()); diff != "" {
			t.Errorf("response payload (-want +got):\n%s", diff)
		}
		if errs := hook.get(); len(errs) != i+1 || !errors.Is(errs[i], idem.ErrNotStored) || !errors.Is(errs[i], idem.ErrLeaseLost) {
			t.Errorf("hook got %v, want ErrNotStored wrapping ErrLeaseLost", errs)
		}
	}
	if n := e.runs.Load(); n != 2 {
		t.Errorf("handler ran %d times, want 2", n)
	}
}

// testCorruptRecord checks that a record the interceptor cannot read is
// answered with Internal, and reported.
func testCorruptRecord(t *testing.T, newStore newStoreFunc) {
	seeds := map[string]func(ctx context.Context, store idem.Store, key string) error{
		"not a record": func(ctx context.Context, store idem.Store, key string) error {
			acq, err := store.Acquire(ctx, grpcadapter.DefaultNamespace+":"+key, "", time.Minute)
			if err != nil || acq.Lease == nil {
				return fmt.Errorf("Acquire: %+v, %w", acq, err)
			}
			return acq.Lease.Commit(ctx, []byte("not a record"), time.Minute)
		},
		"nil response": func(ctx context.Context, store idem.Store, key string) error {
			// An idem record (format 2, record.go) of the interceptor's
			// types whose payload is a msgpack nil.
			field := func(s string) []byte { return append([]byte{byte(len(s))}, s...) }
			rec := []byte("idm\x02v")
			rec = append(rec, field("fp")...)
			rec = append(rec, field("msgpack")...)
			rec = append(rec, field("grpcadapter.call -> *grpcadapter.response")...)
			rec = append(rec, 0xc0)
			acq, err := store.Acquire(ctx, grpcadapter.DefaultNamespace+":"+key, "", time.Minute)
			if err != nil || acq.Lease == nil {
				return fmt.Errorf("Acquire: %+v, %w", acq, err)
			}
			return acq.Lease.Commit(ctx, rec, time.Minute)
		},
	}
	for name, seed := range seeds {
		t.Run(name, func(t *testing.T) {
			var hook hookErrs
			store := newStore(t)
			ctx, key := testCtx(t), grpcadapter.NewKey()
			if err := seed(ctx, store, key); err != nil {
				t.Fatal(err)
			}
			e := start(t, store, setup{opts: []grpcadapter.Option{
				hook.option(), grpcadapter.WithOptions(idem.WithSignatureValidation(false)),
			}})
			r := e.call(ctx, key, order("book"))
			wantRefusal(t, r.err, codes.Internal, grpcadapter.ReasonInternal)
			if errs := hook.get(); len(errs) != 1 || !errors.Is(errs[0], idem.ErrCorruptRecord) {
				t.Errorf("hook got %v, want ErrCorruptRecord", errs)
			}
			if n := e.runs.Load(); n != 0 {
				t.Errorf("handler ran %d times, want 0", n)
			}
		})
	}
}

// testOtherTypes checks that a record stored by an idem.Operation of other
// types in the interceptor's namespace is refused as a reused key, not
// replayed, even with signature validation off.
func testOtherTypes(t *testing.T, newStore newStoreFunc) {
	store := newStore(t)
	ctx, key := testCtx(t), grpcadapter.NewKey()
	op := idem.New[string, *int](store, idem.WithNamespace(grpcadapter.DefaultNamespace))
	if _, err := op.Do(ctx, key, "", func(context.Context, string) (*int, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	e := start(t, store, setup{opts: []grpcadapter.Option{grpcadapter.WithOptions(idem.WithSignatureValidation(false))}})
	wantRefusal(t, e.call(ctx, key, order("book")).err, codes.FailedPrecondition, grpcadapter.ReasonKeyReused)
	if n := e.runs.Load(); n != 0 {
		t.Errorf("handler ran %d times, want 0", n)
	}
}

// unregisteredReceipt returns a message of a type that is not in
// protoregistry.GlobalTypes, idem.test.Receipt, whose field 2 is a string,
// as SimpleResponse's Username is.
func unregisteredReceipt(t *testing.T, username string) proto.Message {
	t.Helper()
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name:    proto.String("idem/test/receipt.proto"),
		Package: proto.String("idem.test"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("Receipt"),
			Field: []*descriptorpb.FieldDescriptorProto{{
				Name:     proto.String("username"),
				JsonName: proto.String("username"),
				Number:   proto.Int32(2),
				Type:     descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(),
				Label:    descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
			}},
		}},
	}, new(protoregistry.Files))
	if err != nil {
		t.Fatal(err)
	}
	md := fd.Messages().Get(0)
	m := dynamicpb.NewMessage(md)
	m.Set(md.Fields().ByNumber(2), protoreflect.ValueOfString(username))
	return m
}

// testUnregisteredType checks that a stored response whose message type is
// not registered in protoregistry.GlobalTypes is answered with Internal,
// without running the handler, and reported as such.
func testUnregisteredType(t *testing.T, newStore newStoreFunc) {
	var hook hookErrs
	receipt := unregisteredReceipt(t, "receipt 1")
	e := start(t, newStore(t), setup{
		opts: []grpcadapter.Option{hook.option()},
		// The handler's response is replaced by a dynamic message, which
		// the client reads as a SimpleResponse.
		inner: []grpc.UnaryServerInterceptor{func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if _, err := handler(ctx, req); err != nil {
				return nil, err
			}
			return receipt, nil
		}},
	})
	ctx, key := testCtx(t), grpcadapter.NewKey()
	r := e.call(ctx, key, order("book"))
	wantOK(t, r, grpcadapter.StatusNew)
	if got := r.resp.GetUsername(); got != "receipt 1" {
		t.Errorf("Username = %q, want receipt 1", got)
	}
	for range 2 {
		r = e.call(ctx, key, order("book"))
		wantRefusal(t, r.err, codes.Internal, grpcadapter.ReasonInternal)
	}
	errs := hook.get()
	if len(errs) != 2 {
		t.Fatalf("hook got %v, want two errors", errs)
	}
	for _, err := range errs {
		msg := err.Error()
		if !errors.Is(err, idem.ErrCorruptRecord) || !errors.Is(err, protoregistry.NotFound) ||
			!strings.Contains(msg, `"idem.test.Receipt" is not registered in protoregistry.GlobalTypes`) ||
			!strings.Contains(msg, "until the record expires") {
			t.Errorf("hook got %q, want it to say that idem.test.Receipt is not registered, until the record expires", msg)
		}
	}
	if n := e.runs.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

// testInvalidOptions checks that an option that cannot be honoured makes
// every protected call fail with Internal, and is reported.
func testInvalidOptions(t *testing.T, newStore newStoreFunc) {
	for name, opt := range map[string]grpcadapter.Option{
		"WithMethods":      grpcadapter.WithMethods("UnaryCall"),
		"WithKeyRequired":  grpcadapter.WithKeyRequired("/grpc.testing.TestService/"),
		"WithMetadataKey":  grpcadapter.WithMetadataKey("grpc-key"),
		"binary key":       grpcadapter.WithMetadataKey("key-bin"),
		"WithInFlightCode": grpcadapter.WithInFlightCode(codes.OK),
		"WithRetryDelay":   grpcadapter.WithRetryDelay(-time.Second),
		"core option":      grpcadapter.WithOptions(idem.WithTTL(-time.Second)),
	} {
		t.Run(name, func(t *testing.T) {
			var hook hookErrs
			e := start(t, newStore(t), setup{opts: []grpcadapter.Option{opt, hook.option()}})
			ctx := testCtx(t)
			for _, key := range []string{grpcadapter.NewKey(), ""} {
				r := e.call(ctx, key, order("book"))
				wantRefusal(t, r.err, codes.Internal, grpcadapter.ReasonInternal)
			}
			if errs := hook.get(); len(errs) != 2 || !errors.Is(errs[0], idem.ErrInvalidOption) {
				t.Errorf("hook got %v, want ErrInvalidOption twice", errs)
			}
			if n := e.runs.Load(); n != 0 {
				t.Errorf("handler ran %d times, want 0", n)
			}
		})
	}
}

// TestCancelledCallNotRecorded: with a disposition that records the code a
// handler returns once its context ended, a client that gives up mid-call
// must not have its cancellation stored as the key's outcome: the retry
// runs the handler (found in connectadapter by review; grpcadapter decided
// the same way, in fn, before idem could apply its own rule).
func TestCancelledCallNotRecorded(t *testing.T) {
	started := make(chan struct{}, 1)
	var calls atomic.Int32
	e := start(t, memstore.New(), setup{unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		if calls.Add(1) == 1 { // the first call waits for the client to give up
			started <- struct{}{}
			<-ctx.Done()
			return nil, status.Error(codes.Unavailable, "downstream: "+ctx.Err().Error())
		}
		return echo(ctx, req)
	}, opts: []grpcadapter.Option{grpcadapter.WithDisposition(grpcadapter.RecordCodes(codes.Unavailable, codes.Canceled))}})
	key := grpcadapter.NewKey()
	ctx, cancel := context.WithCancel(testCtx(t))
	go func() { <-started; cancel() }()
	if r := e.call(ctx, key, order("wait")); status.Code(r.err) != codes.Canceled {
		t.Fatalf("cancelled call: %v", r.err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := e.call(testCtx(t), key, order("wait"))
		if status.Code(r.err) == codes.Aborted && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond) // the first call is still winding down
			continue
		}
		if r.err != nil || r.status() != grpcadapter.StatusNew {
			t.Fatalf("retry = %v (status %q), want the handler run afresh: the cancellation was stored as the outcome", r.err, r.status())
		}
		break
	}
}
