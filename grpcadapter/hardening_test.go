package grpcadapter_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/grpcadapter"
	"github.com/idemkit/idem/memstore"
)

// TestNewInterceptorsReportInvalidOptions checks that the constructors that
// return errors report options that cannot be honoured, and that the client
// refuses server-only options rather than ignore them.
func TestNewInterceptorsReportInvalidOptions(t *testing.T) {
	for name, opt := range map[string]grpcadapter.Option{
		"WithMethods":      grpcadapter.WithMethods("UnaryCall"),
		"WithInFlightCode": grpcadapter.WithInFlightCode(codes.OK),
		"core option":      grpcadapter.WithOptions(idem.WithTTL(-time.Second)),
	} {
		if i, err := grpcadapter.NewUnaryServerInterceptor(memstore.New(), opt); !errors.Is(err, idem.ErrInvalidOption) || i != nil {
			t.Errorf("server, %s: %v; want no interceptor and ErrInvalidOption", name, err)
		}
	}
	if _, err := grpcadapter.NewUnaryServerInterceptor(nil); !errors.Is(err, idem.ErrInvalidOption) {
		t.Errorf("server, nil store: %v, want ErrInvalidOption", err)
	}
	if i, err := grpcadapter.NewUnaryServerInterceptor(memstore.New(), grpcadapter.WithScope(nil)); err != nil || i == nil {
		t.Errorf("server, valid options: %v", err)
	}

	for name, opt := range map[string]grpcadapter.Option{
		"WithOptions":     grpcadapter.WithOptions(idem.WithTTL(time.Hour)),
		"WithScope":       grpcadapter.WithScope(nil),
		"WithKeyRequired": grpcadapter.WithKeyRequired("/grpc.testing.TestService/UnaryCall"),
		"WithDisposition": grpcadapter.WithDisposition(grpcadapter.RecordCodes(codes.NotFound)),
		"WithRetryDelay":  grpcadapter.WithRetryDelay(time.Second),
		"invalid":         grpcadapter.WithMetadataKey("grpc-x"),
	} {
		i, err := grpcadapter.NewUnaryClientInterceptor(opt)
		if !errors.Is(err, idem.ErrInvalidOption) || i != nil {
			t.Errorf("client, %s: %v; want no interceptor and ErrInvalidOption", name, err)
		}
		if name != "invalid" && !strings.Contains(err.Error(), name) {
			t.Errorf("client, %s: %q does not name the option", name, err)
		}
	}
	if i, err := grpcadapter.NewUnaryClientInterceptor(grpcadapter.WithMetadataKey("x-request-id"), grpcadapter.WithMethods("/a.B/C")); err != nil || i == nil {
		t.Errorf("client, valid options: %v", err)
	}
}

// TestClientServerOnlyOption checks that UnaryClientInterceptor given a
// server-only option fails calls unsent, rather than ignore the option.
func TestClientServerOnlyOption(t *testing.T) {
	var hook hookErrs
	e := start(t, memstore.New(), setup{dial: []grpc.DialOption{withClient(grpcadapter.WithScope(nil), hook.option())}})
	r := e.call(testCtx(t), "", order("book"))
	if status.Code(r.err) != codes.Internal || !strings.Contains(r.err.Error(), "WithScope") {
		t.Errorf("error %v, want Internal naming WithScope", r.err)
	}
	if n := e.runs.Load(); n != 0 || len(hook.get()) != 1 {
		t.Errorf("handler ran %d times, hook got %v; want no run, one report", n, hook.get())
	}
}

// TestCallKeyWithoutInterceptor checks that CallKey on a connection without
// the client interceptor fails the call before it is sent, instead of
// sending it without its key.
func TestCallKeyWithoutInterceptor(t *testing.T) {
	e := start(t, memstore.New(), setup{})
	r := e.call(testCtx(t), "", order("book"), grpcadapter.CallKey("k-1"))
	if r.err == nil || !strings.Contains(status.Convert(r.err).Message(), "UnaryClientInterceptor") {
		t.Fatalf("error %v, want the call refused, naming UnaryClientInterceptor", r.err)
	}
	if n := e.runs.Load(); n != 0 {
		t.Errorf("handler ran %d times, want 0: the call was sent", n)
	}
	// With the interceptor, the key is sent.
	e = start(t, memstore.New(), setup{dial: []grpc.DialOption{withClient()}})
	wantOK(t, e.call(testCtx(t), "", order("book"), grpcadapter.CallKey("k-1")), grpcadapter.StatusNew)
	if keys := e.seenKeys(); len(keys) != 1 || keys[0] != "k-1" {
		t.Errorf("handler saw keys %q, want k-1", keys)
	}
}

// TestScopeWarning checks the one-time warning when protected calls carry
// authorization metadata and no scope was chosen.
func TestScopeWarning(t *testing.T) {
	var buf bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	defer slog.SetDefault(prev)

	serve := func(opts ...grpcadapter.Option) testpb.TestServiceClient {
		srv := grpc.NewServer(grpc.UnaryInterceptor(grpcadapter.UnaryServerInterceptor(memstore.New(), opts...)))
		testpb.RegisterTestServiceServer(srv, &service{unary: echo, mdKey: grpcadapter.MetadataKey})
		lis := bufconn.Listen(1 << 20)
		go srv.Serve(lis)
		conn, err := grpc.NewClient("passthrough:///bufnet",
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(); srv.Stop() })
		return testpb.NewTestServiceClient(conn)
	}
	call := func(c testpb.TestServiceClient, key string, auth bool) {
		ctx := metadata.AppendToOutgoingContext(testCtx(t), grpcadapter.MetadataKey, key)
		if auth {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer x")
		}
		if _, err := c.UnaryCall(ctx, order("book")); err != nil {
			t.Fatal(err)
		}
	}
	c := serve()
	call(c, "a", false)
	if buf.Len() != 0 {
		t.Fatalf("warned without credentials: %s", &buf)
	}
	call(c, "b", true)
	call(c, "c", true)
	if n := strings.Count(buf.String(), "level=WARN"); n != 1 {
		t.Fatalf("warnings %q, want exactly one", &buf)
	}
	buf.Reset()
	call(serve(grpcadapter.WithScope(nil)), "d", true)
	if buf.Len() != 0 {
		t.Errorf("warned with a scope chosen: %s", &buf)
	}
}
