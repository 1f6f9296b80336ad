package grpcadapter_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/grpcadapter"
)

// tenantMD is the metadata key that names the caller's tenant in these
// tests; a real service would scope by the authenticated principal. It is
// binary metadata so that a tenant may be any bytes.
const tenantMD = "x-tenant-bin"

// tenantScope is the scope of a call: its tenant.
func tenantScope(ctx context.Context) string {
	return first(metadata.ValueFromIncomingContext(ctx, tenantMD))
}

// receipt answers with a receipt for the caller's tenant, as a payment
// method answers with the caller's own receipt.
func receipt(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: []byte("receipt for " + tenantScope(ctx))}}, nil
}

// asTenant returns ctx whose calls name tenant, or no tenant for "".
func asTenant(ctx context.Context, tenant string) context.Context {
	if tenant == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, tenantMD, tenant)
}

// wantReceipt fails the test unless r is a success with status and the
// receipt of tenant's run.
func wantReceipt(t *testing.T, r result, status, tenant, run string) {
	t.Helper()
	wantOK(t, r, status)
	want := &testpb.SimpleResponse{Payload: &testpb.Payload{Body: []byte("receipt for " + tenant)}, Username: run}
	if diff := cmp.Diff(want, r.resp, protocmp.Transform()); diff != "" {
		t.Errorf("tenant %q: response (-want +got):\n%s", tenant, diff)
	}
}

// testScope checks that with WithScope the same key and the same request
// in two scopes run the handler twice, and each scope is replayed its own
// response.
func testScope(t *testing.T, newStore newStoreFunc) {
	store := newStore(t)
	e := start(t, store, setup{unary: receipt, opts: []grpcadapter.Option{grpcadapter.WithScope(tenantScope)}})
	ctx, key := testCtx(t), grpcadapter.NewKey()
	// "" is a scope of its own; the last one is not printable ASCII, so
	// its key is hashed.
	tenants := []string{"tenant-a", "tenant-b", "", "ténant\x00c"}
	for i, tenant := range tenants {
		wantReceipt(t, e.call(asTenant(ctx, tenant), key, order("book")), grpcadapter.StatusNew, tenant, fmt.Sprint("run ", i+1))
	}
	for i, tenant := range tenants {
		wantReceipt(t, e.call(asTenant(ctx, tenant), key, order("book")), grpcadapter.StatusHit, tenant, fmt.Sprint("run ", i+1))
	}
	// Within a scope, the key is still bound to its request.
	r := e.call(asTenant(ctx, "tenant-a"), key, order("pen"))
	wantRefusal(t, r.err, codes.FailedPrecondition, grpcadapter.ReasonKeyReused)
	// A key that spells tenant-a's composed key is another key.
	wantOK(t, e.call(ctx, "8:tenant-a:"+key, order("book")), grpcadapter.StatusNew)
	if n := e.runs.Load(); n != 5 {
		t.Errorf("handler ran %d times, want 5", n)
	}

	// Without a scope, the key is one key, whoever sends it.
	e = start(t, store, setup{unary: receipt})
	key = grpcadapter.NewKey()
	wantReceipt(t, e.call(asTenant(ctx, "tenant-a"), key, order("book")), grpcadapter.StatusNew, "tenant-a", "run 1")
	wantReceipt(t, e.call(asTenant(ctx, "tenant-b"), key, order("book")), grpcadapter.StatusHit, "tenant-a", "run 1")
}

// testScopeKeys checks scopes whose composition with the key is longer than
// idem accepts, and that keys are validated before they are composed: an
// invalid key could otherwise be hashed into a valid one.
func testScopeKeys(t *testing.T, newStore newStoreFunc) {
	e := start(t, newStore(t), setup{unary: receipt, opts: []grpcadapter.Option{grpcadapter.WithScope(tenantScope)}})
	ctx, key := testCtx(t), keyOfLen(idem.MaxKeyLen)
	long := strings.Repeat("tenant", 50)
	tenants := []string{long + "a", long + "b", "c"}
	for i, tenant := range tenants {
		wantReceipt(t, e.call(asTenant(ctx, tenant), key, order("book")), grpcadapter.StatusNew, tenant, fmt.Sprint("run ", i+1))
	}
	for i, tenant := range tenants {
		wantReceipt(t, e.call(asTenant(ctx, tenant), key, order("book")), grpcadapter.StatusHit, tenant, fmt.Sprint("run ", i+1))
	}

	for name, key := range map[string]string{
		"empty":    "",
		"too long": keyOfLen(idem.MaxKeyLen + 1),
	} {
		md := metadata.Pairs(grpcadapter.MetadataKey, key, tenantMD, "c")
		_, err := e.client.UnaryCall(metadata.NewOutgoingContext(ctx, md), order("book"))
		t.Run(name, func(t *testing.T) { wantRefusal(t, err, codes.InvalidArgument, grpcadapter.ReasonKeyInvalid) })
	}
	if n := e.runs.Load(); n != 3 {
		t.Errorf("handler ran %d times, want 3", n)
	}
}
