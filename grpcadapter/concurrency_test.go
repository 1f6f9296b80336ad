package grpcadapter_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/grpcadapter"
)

// blocking returns a handler that signals started, then waits to receive
// from release (or for its call to end) before it echoes.
func blocking(started chan<- struct{}, release <-chan struct{}) handlerFunc {
	return func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return echo(ctx, req)
	}
}

// inFlight starts a call under key whose handler blocks, and returns once
// the handler runs. Closing release lets it finish; the result arrives on
// the returned channel.
func inFlight(t *testing.T, e *env, key string, req *testpb.SimpleRequest, started <-chan struct{}) <-chan result {
	t.Helper()
	done := make(chan result, 1)
	ctx := testCtx(t)
	go func() { done <- e.call(ctx, key, req) }()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("handler did not start")
	}
	return done
}

// testInFlight checks that a call whose key is in flight is refused with
// Aborted, ErrorInfo and RetryInfo, and that the key is not reusable for
// another request meanwhile.
func testInFlight(t *testing.T, newStore newStoreFunc) {
	started, release := make(chan struct{}, 1), make(chan struct{}, 1)
	e := start(t, newStore(t), setup{unary: blocking(started, release)})
	ctx, key := testCtx(t), grpcadapter.NewKey()
	done := inFlight(t, e, key, order("book"), started)

	r := e.call(ctx, key, order("book"))
	st := wantRefusal(t, r.err, codes.Aborted, grpcadapter.ReasonInFlight)
	if d := retryDelay(st); d != grpcadapter.DefaultRetryDelay {
		t.Errorf("RetryInfo delay %v, want %v", d, grpcadapter.DefaultRetryDelay)
	}
	r = e.call(ctx, key, order("pen"))
	wantRefusal(t, r.err, codes.FailedPrecondition, grpcadapter.ReasonKeyReused)

	release <- struct{}{}
	wantOK(t, <-done, grpcadapter.StatusNew)
	wantOK(t, e.call(ctx, key, order("book")), grpcadapter.StatusHit)

	// An empty SimpleRequest and an Empty have the same encoding: only the
	// method tells them apart.
	key = grpcadapter.NewKey()
	done = inFlight(t, e, key, &testpb.SimpleRequest{}, started)
	_, err := e.client.EmptyCall(metadata.AppendToOutgoingContext(ctx, grpcadapter.MetadataKey, key), &testpb.Empty{})
	wantRefusal(t, err, codes.FailedPrecondition, grpcadapter.ReasonKeyReused)
	release <- struct{}{}
	wantOK(t, <-done, grpcadapter.StatusNew)
	if n := e.runs.Load(); n != 2 {
		t.Errorf("handler ran %d times, want 2", n)
	}
}

// testInFlightCode checks WithInFlightCode and WithRetryDelay.
func testInFlightCode(t *testing.T, newStore newStoreFunc) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	e := start(t, newStore(t), setup{unary: blocking(started, release), opts: []grpcadapter.Option{
		grpcadapter.WithInFlightCode(codes.Unavailable),
		grpcadapter.WithRetryDelay(250 * time.Millisecond),
	}})
	key := grpcadapter.NewKey()
	done := inFlight(t, e, key, order("book"), started)
	r := e.call(testCtx(t), key, order("book"))
	st := wantRefusal(t, r.err, codes.Unavailable, grpcadapter.ReasonInFlight)
	if d := retryDelay(st); d != 250*time.Millisecond {
		t.Errorf("RetryInfo delay %v, want 250ms", d)
	}
	close(release)
	wantOK(t, <-done, grpcadapter.StatusNew)
}

// testConcurrent checks that concurrent identical calls, with a wait
// timeout, run the handler once and all receive its response.
func testConcurrent(t *testing.T, newStore newStoreFunc) {
	const n = 16
	e := start(t, newStore(t), setup{
		opts: []grpcadapter.Option{grpcadapter.WithOptions(idem.WithWaitTimeout(5 * time.Second))},
		unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			time.Sleep(50 * time.Millisecond)
			return echo(ctx, req)
		},
	})
	ctx, key := testCtx(t), grpcadapter.NewKey()
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() { results[i] = e.call(ctx, key, order("book")) })
	}
	wg.Wait()
	statuses := map[string]int{}
	for _, r := range results {
		if r.err != nil {
			t.Fatal(r.err)
		}
		statuses[r.status()]++
		if diff := cmp.Diff(results[0].resp, r.resp, protocmp.Transform()); diff != "" {
			t.Errorf("responses differ (-first +other):\n%s", diff)
		}
	}
	if diff := cmp.Diff(map[string]int{grpcadapter.StatusNew: 1, grpcadapter.StatusHit: n - 1}, statuses); diff != "" {
		t.Errorf("statuses (-want +got):\n%s", diff)
	}
	if got := e.runs.Load(); got != 1 {
		t.Errorf("handler ran %d times, want 1", got)
	}
}

// testWaitDeadline checks that a call whose context ends while it waits
// for an in-flight call ends with the context's status.
func testWaitDeadline(t *testing.T, newStore newStoreFunc) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	var waits atomic.Int32
	e := start(t, newStore(t), setup{
		unary: blocking(started, release),
		opts:  []grpcadapter.Option{grpcadapter.WithOptions(idem.WithWaitTimeout(time.Minute))},
		// The second call's server context gets a short deadline, so that
		// the client, whose own deadline is far, sees the server's status.
		outer: []grpc.UnaryServerInterceptor{func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if waits.Add(1) == 2 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 100*time.Millisecond)
				defer cancel()
			}
			return handler(ctx, req)
		}},
	})
	key := grpcadapter.NewKey()
	done := inFlight(t, e, key, order("book"), started)
	r := e.call(testCtx(t), key, order("book"))
	if code := status.Code(r.err); code != codes.DeadlineExceeded {
		t.Errorf("error %v, want DeadlineExceeded", r.err)
	}
	close(release)
	wantOK(t, <-done, grpcadapter.StatusNew)
}
