package grpcadapter

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestOutcome checks that stored responses are rebuilt as their message
// type, and that records the interceptor cannot read are ErrCorruptRecord.
func TestOutcome(t *testing.T) {
	msg := &testpb.SimpleResponse{Username: "u", Payload: &testpb.Payload{Body: []byte("b")}}
	m, err := (&response{Type: "grpc.testing.SimpleResponse", Body: mustMarshal(t, msg)}).outcome()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(msg, m, protocmp.Transform()); diff != "" {
		t.Errorf("message (-want +got):\n%s", diff)
	}

	st := &spb.Status{Code: int32(codes.NotFound), Message: "gone"}
	_, err = (&response{Status: mustMarshal(t, st)}).outcome()
	if diff := cmp.Diff(st, status.Convert(err).Proto(), protocmp.Transform()); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}

	for name, resp := range map[string]*response{
		"unknown type": {Type: "no.such.Message"},
		"bad body":     {Type: "grpc.testing.SimpleResponse", Body: []byte{0xff}},
		"bad status":   {Status: []byte{0xff}},
		"status OK":    {Status: mustMarshal(t, &spb.Status{Message: "ok?"})},
	} {
		if _, err := resp.outcome(); !errors.Is(err, idem.ErrCorruptRecord) {
			t.Errorf("%s: error %v, want ErrCorruptRecord", name, err)
		}
	}
}

// TestNotProto checks that a protected call whose request is not a
// protocol buffer (possible with another codec) fails with Internal, is
// reported, and does not run the handler; without a key it goes through.
// A response that is not a protocol buffer is returned but not stored.
func TestNotProto(t *testing.T) {
	var reported error
	intercept := UnaryServerInterceptor(memstore.New(), WithErrorHook(func(_ context.Context, _ string, err error) { reported = err }))
	info := &grpc.UnaryServerInfo{FullMethod: "/svc.S/M"}
	ran := 0
	handler := func(context.Context, any) (any, error) { ran++; return "ok", nil }

	ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs(MetadataKey, "k"))
	if _, err := intercept(ctx, "not proto", info, handler); status.Code(err) != codes.Internal {
		t.Errorf("error %v, want Internal", err)
	}
	if reported == nil || ran != 0 {
		t.Errorf("reported %v, handler ran %d times; want a report and no run", reported, ran)
	}
	if resp, err := intercept(t.Context(), "not proto", info, handler); err != nil || resp != "ok" || ran != 1 {
		t.Errorf("without a key: %v, %v, ran %d; want the handler's response", resp, err, ran)
	}

	// A response that is not a protocol buffer is returned, not stored.
	reported = nil
	for i := range 2 {
		resp, err := intercept(ctx, &testpb.Empty{}, info, handler)
		if err != nil || resp != "ok" {
			t.Errorf("response %v, %v; want the handler's", resp, err)
		}
		if reported == nil || ran != 2+i {
			t.Errorf("reported %v, handler ran %d times; want a report and a run", reported, ran)
		}
	}
}
