package connectadapter_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/connectadapter"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/redisstore"
)

// attackSrv is a server of createProc with handler h, protected by the
// server interceptor on store.
type attackSrv struct {
	url    string
	client *http.Client
	runs   atomic.Int32
	panics atomic.Int32
}

func startAttack(t *testing.T, store idem.Store, opts []connectadapter.Option, h handlerFunc, hopts ...connect.HandlerOption) *attackSrv {
	t.Helper()
	a := &attackSrv{}
	wrapped := func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
		a.runs.Add(1)
		return h(ctx, req)
	}
	hopts = append(hopts, connect.WithInterceptors(connectadapter.NewInterceptor(store, opts...)))
	mux := http.NewServeMux()
	mux.Handle(createProc, connect.NewUnaryHandler(createProc, wrapped, hopts...))
	var root http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				a.panics.Add(1)
				panic(http.ErrAbortHandler)
			}
		}()
		mux.ServeHTTP(w, r)
	})
	srv := httptest.NewUnstartedServer(root)
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = nil
	srv.StartTLS()
	t.Cleanup(srv.Close)
	a.url, a.client = srv.URL, srv.Client()
	return a
}

func (a *attackSrv) newClient(opts ...connect.ClientOption) *connect.Client[wrapperspb.StringValue, wrapperspb.StringValue] {
	return connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](a.client, a.url+createProc, opts...)
}

func keyed(key, value string) *connect.Request[wrapperspb.StringValue] {
	req := connect.NewRequest(wrapperspb.String(value))
	if key != "" {
		req.Header().Set(connectadapter.HeaderKey, key)
	}
	return req
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestAttackConcurrent64: 64 callers with one key and a slow handler, with
// waiting on: the handler runs once and every caller gets its response.
func TestAttackConcurrent64(t *testing.T) {
	t.Parallel()
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			a := startAttack(t, memstore.New(),
				[]connectadapter.Option{connectadapter.WithOptions(idem.WithWaitTimeout(5 * time.Second))},
				func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
					time.Sleep(200 * time.Millisecond)
					return echo(ctx, req)
				})
			c := a.newClient(p.opts...)
			key := connectadapter.NewKey()
			var wg sync.WaitGroup
			var news atomic.Int32
			for range 64 {
				wg.Go(func() {
					resp, err := c.CallUnary(ctx10(t), keyed(key, "book"))
					if err != nil {
						t.Error(err)
						return
					}
					if resp.Msg.GetValue() != "book" || resp.Header().Get("X-Order") != "order-book" || resp.Trailer().Get("X-Total") != "42" {
						t.Errorf("response %v, header %v, trailer %v", resp.Msg, resp.Header(), resp.Trailer())
					}
					if resp.Header().Get(connectadapter.HeaderStatus) == connectadapter.StatusNew {
						news.Add(1)
					}
				})
			}
			wg.Wait()
			if a.runs.Load() != 1 || news.Load() != 1 {
				t.Fatalf("runs %d, new %d; want 1, 1", a.runs.Load(), news.Load())
			}
			// Without waiting, the duplicates are refused, never run.
			a2 := startAttack(t, memstore.New(), nil,
				func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
					time.Sleep(200 * time.Millisecond)
					return echo(ctx, req)
				})
			c2 := a2.newClient(p.opts...)
			var ok, inflight atomic.Int32
			for range 64 {
				wg.Go(func() {
					_, err := c2.CallUnary(ctx10(t), keyed(key, "book"))
					if err == nil {
						ok.Add(1)
					} else if connect.CodeOf(err) == connect.CodeAborted {
						inflight.Add(1)
					} else {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			if a2.runs.Load() != 1 || ok.Load()+inflight.Load() != 64 {
				t.Fatalf("runs %d, ok %d, in flight %d", a2.runs.Load(), ok.Load(), inflight.Load())
			}
		})
	}
}

// TestAttackPanic: a panicking handler's panic propagates (connect does not
// recover) and its key is released (idem's documented rule).
func TestAttackPanic(t *testing.T) {
	t.Parallel()
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			var first atomic.Bool
			first.Store(true)
			a := startAttack(t, memstore.New(), nil,
				func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
					if first.Swap(false) {
						panic("boom")
					}
					return echo(ctx, req)
				})
			c := a.newClient(p.opts...)
			key := connectadapter.NewKey()
			if _, err := c.CallUnary(ctx10(t), keyed(key, "book")); err == nil {
				t.Fatal("panicking handler: no error")
			}
			if a.panics.Load() != 1 {
				t.Fatalf("panics seen by the server: %d, want 1", a.panics.Load())
			}
			resp, err := c.CallUnary(ctx10(t), keyed(key, "book"))
			if err != nil {
				t.Fatal(err)
			}
			if a.runs.Load() != 2 || resp.Header().Get(connectadapter.HeaderStatus) != connectadapter.StatusNew {
				t.Fatalf("runs %d, status %q", a.runs.Load(), resp.Header().Get(connectadapter.HeaderStatus))
			}
		})
	}
}

// userMeta returns the non-protocol, non-idempotency entries of h.
func userMeta(h http.Header) http.Header {
	out := http.Header{}
	for k, vs := range h {
		if strings.HasPrefix(k, "X-") {
			out[k] = vs
		}
	}
	return out
}

func headersEqual(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, vs := range a {
		if !slices.Equal(vs, b[k]) {
			return false
		}
	}
	return true
}

// TestAttackErrorReplay: a recorded error with details, metadata, and
// headers and trailers set through CallInfo replays exactly.
func TestAttackErrorReplay(t *testing.T) {
	t.Parallel()
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			a := startAttack(t, memstore.New(),
				[]connectadapter.Option{connectadapter.WithDisposition(connectadapter.RecordCodes(connect.CodeNotFound))},
				func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
					ce := connect.NewError(connect.CodeNotFound, errors.New("no such item: é\u2603"))
					for _, m := range []*errdetails.ResourceInfo{{ResourceName: "a"}, {ResourceName: "b"}} {
						d, _ := connect.NewErrorDetail(m)
						ce.AddDetail(d)
					}
					ce.Meta().Add("X-Why", "gone")
					ce.Meta().Add("X-Why", "really")
					ce.Meta().Set("X-Data-Bin", connect.EncodeBinaryHeader([]byte{0, 1, 2, 255}))
					if info, ok := connect.CallInfoForHandlerContext(ctx); ok {
						info.ResponseHeader().Add("X-Hdr", "h1")
						info.ResponseHeader().Add("X-Hdr", "h2")
						info.ResponseTrailer().Set("X-Trl", "t")
					}
					return nil, ce
				})
			c := a.newClient(p.opts...)
			key := connectadapter.NewKey()
			var errs [2]*connect.Error
			for i := range errs {
				_, err := c.CallUnary(ctx10(t), keyed(key, "x"))
				if !errors.As(err, &errs[i]) {
					t.Fatalf("call %d: %v", i, err)
				}
			}
			if a.runs.Load() != 1 {
				t.Fatalf("runs %d", a.runs.Load())
			}
			e0, e1 := errs[0], errs[1]
			if e0.Code() != e1.Code() || e0.Message() != e1.Message() {
				t.Errorf("replay %v %q, first %v %q", e1.Code(), e1.Message(), e0.Code(), e0.Message())
			}
			if len(e0.Details()) != len(e1.Details()) {
				t.Fatalf("details: %d then %d", len(e0.Details()), len(e1.Details()))
			}
			for i := range e0.Details() {
				if e0.Details()[i].Type() != e1.Details()[i].Type() || !bytes.Equal(e0.Details()[i].Bytes(), e1.Details()[i].Bytes()) {
					t.Errorf("detail %d differs", i)
				}
			}
			if m0, m1 := userMeta(e0.Meta()), userMeta(e1.Meta()); !headersEqual(m0, m1) {
				t.Errorf("meta: first %v, replay %v", m0, m1)
			}
			if e1.Meta().Get(connectadapter.HeaderStatus) != connectadapter.StatusHit {
				t.Errorf("replay status %q", e1.Meta().Get(connectadapter.HeaderStatus))
			}
		})
	}
}

// TestAttackResponseReplay: multi-valued and binary headers and trailers,
// set on the response and through CallInfo, replay exactly.
func TestAttackResponseReplay(t *testing.T) {
	t.Parallel()
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			a := startAttack(t, memstore.New(), nil,
				func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
					if info, ok := connect.CallInfoForHandlerContext(ctx); ok {
						info.ResponseHeader().Add("X-Multi", "ci")
						info.ResponseTrailer().Add("X-Tmulti", "ci")
					}
					resp := connect.NewResponse(wrapperspb.String(req.Msg.GetValue()))
					resp.Header().Add("X-Multi", "a")
					resp.Header().Add("X-Multi", "b")
					resp.Header().Set("X-Data-Bin", connect.EncodeBinaryHeader([]byte{0, 0xff, '\n'}))
					resp.Trailer().Add("X-Tmulti", "1")
					resp.Trailer().Add("X-Tmulti", "2")
					resp.Trailer().Set("X-Tdata-Bin", connect.EncodeBinaryHeader([]byte{7}))
					return resp, nil
				})
			c := a.newClient(p.opts...)
			key := connectadapter.NewKey()
			var rs [2]*connect.Response[wrapperspb.StringValue]
			for i := range rs {
				var err error
				if rs[i], err = c.CallUnary(ctx10(t), keyed(key, "v")); err != nil {
					t.Fatal(err)
				}
			}
			if a.runs.Load() != 1 {
				t.Fatalf("runs %d", a.runs.Load())
			}
			if h0, h1 := userMeta(rs[0].Header()), userMeta(rs[1].Header()); !headersEqual(h0, h1) {
				t.Errorf("header: first %v, replay %v", h0, h1)
			}
			if h0, h1 := userMeta(rs[0].Trailer()), userMeta(rs[1].Trailer()); !headersEqual(h0, h1) {
				t.Errorf("trailer: first %v, replay %v", h0, h1)
			}
			if rs[1].Msg.GetValue() != "v" {
				t.Errorf("replay %q", rs[1].Msg.GetValue())
			}
		})
	}
}

// TestAttackCodecs: the same request sent as binary and as JSON, by
// different clients, is one call; the replay is encoded for each client;
// Connect GET requests share it too; a huge response replays whole.
func TestAttackCodecs(t *testing.T) {
	t.Parallel()
	huge := strings.Repeat("x", 1<<20)
	a := startAttack(t, memstore.New(),
		[]connectadapter.Option{connectadapter.WithMethods(createProc)},
		func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
			if req.Msg.GetValue() == "huge" {
				return connect.NewResponse(wrapperspb.String(huge)), nil
			}
			return echo(ctx, req)
		},
		connect.WithIdempotency(connect.IdempotencyNoSideEffects))
	get := []connect.ClientOption{connect.WithHTTPGet(), connect.WithIdempotency(connect.IdempotencyNoSideEffects)}
	clients := []*connect.Client[wrapperspb.StringValue, wrapperspb.StringValue]{
		a.newClient(),
		a.newClient(connect.WithProtoJSON()),
		a.newClient(connect.WithGRPC()),
		a.newClient(connect.WithGRPCWeb(), connect.WithProtoJSON()),
		a.newClient(get...),
		a.newClient(append(get, connect.WithProtoJSON())...),
		a.newClient(connect.WithSendGzip()),
	}
	for _, value := range []string{"book", "huge"} {
		for _, order := range [][]int{{0, 1, 2, 3, 4, 5, 6}, {5, 4, 3, 2, 1, 0, 6}} {
			before := a.runs.Load()
			key := connectadapter.NewKey()
			for j, i := range order {
				resp, err := clients[i].CallUnary(ctx10(t), keyed(key, value))
				if err != nil {
					t.Fatalf("%s client %d: %v", value, i, err)
				}
				want := value
				if value == "huge" {
					want = huge
				}
				if resp.Msg.GetValue() != want {
					t.Errorf("%s client %d: wrong value (%d bytes)", value, i, len(resp.Msg.GetValue()))
				}
				st := resp.Header().Get(connectadapter.HeaderStatus)
				if (j == 0) != (st == connectadapter.StatusNew) {
					t.Errorf("%s client %d (call %d): status %q", value, i, j, st)
				}
			}
			if got := a.runs.Load() - before; got != 1 {
				t.Errorf("%s %v: runs %d, want 1", value, order, got)
			}
		}
	}
}

// TestAttackKeys: a repeated key, an empty key and a key too long are
// refused; a key of MaxKeyLen bytes works; a key with a tab is refused.
func TestAttackKeys(t *testing.T) {
	t.Parallel()
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			a := startAttack(t, memstore.New(), nil, echo)
			c := a.newClient(p.opts...)
			req := keyed("", "v")
			req.Header().Add(connectadapter.HeaderKey, connectadapter.NewKey())
			req.Header().Add(connectadapter.HeaderKey, connectadapter.NewKey())
			_, err := c.CallUnary(ctx10(t), req)
			wantRefusal(t, err, connect.CodeInvalidArgument, connectadapter.ReasonKeyInvalid, false)
			req = keyed("", "v")
			req.Header()[connectadapter.HeaderKey] = []string{""}
			_, err = c.CallUnary(ctx10(t), req)
			wantRefusal(t, err, connect.CodeInvalidArgument, connectadapter.ReasonKeyInvalid, false)
			_, err = c.CallUnary(ctx10(t), keyed(strings.Repeat("k", 256), "v"))
			wantRefusal(t, err, connect.CodeInvalidArgument, connectadapter.ReasonKeyInvalid, false)
			_, err = c.CallUnary(ctx10(t), keyed("a\tb", "v"))
			wantRefusal(t, err, connect.CodeInvalidArgument, connectadapter.ReasonKeyInvalid, false)
			if a.runs.Load() != 0 {
				t.Fatalf("runs %d", a.runs.Load())
			}
			long := strings.Repeat("k", idem.MaxKeyLen-len(p.name)) + p.name
			for range 2 {
				if _, err := c.CallUnary(ctx10(t), keyed(long, "v")); err != nil {
					t.Fatal(err)
				}
			}
			if a.runs.Load() != 1 {
				t.Fatalf("runs %d", a.runs.Load())
			}
		})
	}
}

// TestAttackClientRetry: a retrying interceptor after the client
// interceptor resends the key it set, so a retry after a timeout replays.
func TestAttackClientRetry(t *testing.T) {
	t.Parallel()
	// The first attempt gives up once the handler has started, not after a
	// fixed delay: under load a fixed 100 ms could end it before the server
	// took the key, and the retry would then be the first execution.
	started := make(chan struct{})
	var once sync.Once
	a := startAttack(t, memstore.New(),
		[]connectadapter.Option{connectadapter.WithOptions(idem.WithWaitTimeout(3 * time.Second))},
		func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
			once.Do(func() { close(started) })
			time.Sleep(300 * time.Millisecond) // ignores ctx: the effect happens
			return echo(ctx, req)
		})
	var keys []string
	retry := connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			for attempt := 0; ; attempt++ {
				keys = append(keys, req.Header().Get(connectadapter.HeaderKey))
				actx, cancel := context.WithTimeout(ctx, 5*time.Second)
				if attempt == 0 {
					go func() {
						select {
						case <-started:
							cancel()
						case <-actx.Done():
						}
					}()
				}
				resp, err := next(actx, req)
				cancel()
				if err == nil || attempt == 1 {
					return resp, err
				}
			}
		}
	})
	c := a.newClient(connect.WithInterceptors(connectadapter.NewClientInterceptor(), retry))
	resp, err := c.CallUnary(ctx10(t), connect.NewRequest(wrapperspb.String("v")))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0] == "" || keys[0] != keys[1] {
		t.Fatalf("keys %q", keys)
	}
	if a.runs.Load() != 1 || resp.Header().Get(connectadapter.HeaderStatus) != connectadapter.StatusHit {
		t.Fatalf("runs %d, status %q", a.runs.Load(), resp.Header().Get(connectadapter.HeaderStatus))
	}
}

// TestAttackStreamingPassThrough: a streaming procedure is not touched.
func TestAttackStreamingPassThrough(t *testing.T) {
	t.Parallel()
	var runs atomic.Int32
	mux := http.NewServeMux()
	mux.Handle("/test.v1.Orders/Stream", connect.NewServerStreamHandler("/test.v1.Orders/Stream",
		func(_ context.Context, req *connect.Request[wrapperspb.StringValue], s *connect.ServerStream[wrapperspb.StringValue]) error {
			runs.Add(1)
			return s.Send(req.Msg)
		}, connect.WithInterceptors(connectadapter.NewInterceptor(memstore.New()))))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](srv.Client(), srv.URL+"/test.v1.Orders/Stream",
		connect.WithInterceptors(connectadapter.NewClientInterceptor()))
	key := connectadapter.NewKey()
	for range 2 {
		req := keyed(key, "v")
		st, err := c.CallServerStream(ctx10(t), req)
		if err != nil {
			t.Fatal(err)
		}
		for st.Receive() {
		}
		if st.Err() != nil {
			t.Fatal(st.Err())
		}
		if st.ResponseHeader().Get(connectadapter.HeaderStatus) != "" {
			t.Errorf("stream marked %q", st.ResponseHeader().Get(connectadapter.HeaderStatus))
		}
		st.Close()
	}
	if runs.Load() != 2 {
		t.Fatalf("runs %d", runs.Load())
	}
}

// TestAttackCancelDefault: the client gives up mid-handler; the handler
// returns its context's error; the key is released and a retry runs.
func TestAttackCancelDefault(t *testing.T) {
	t.Parallel()
	testCancel(t, nil)
}

// TestAttackCancelRecorded: with a disposition that records the code the
// handler returns when its context ends, the client's giving up must not
// be stored as the key's outcome (every retry would replay the
// cancellation, and the operation never run). It was, until the
// interceptor, which decides in fn, applied idem's rule: an error returned
// after the context ended is released.
func TestAttackCancelRecorded(t *testing.T) {
	t.Parallel()
	testCancel(t, []connectadapter.Option{connectadapter.WithDisposition(
		connectadapter.RecordCodes(connect.CodeCanceled, connect.CodeDeadlineExceeded, connect.CodeUnavailable))})
}

func testCancel(t *testing.T, opts []connectadapter.Option) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			entered := make(chan struct{}, 1)
			done := make(chan struct{}, 1)
			var first atomic.Bool
			first.Store(true)
			a := startAttack(t, memstore.New(), opts,
				func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
					if first.Swap(false) {
						defer func() { done <- struct{}{} }()
						entered <- struct{}{}
						<-ctx.Done()
						// A downstream call failed because the caller left.
						return nil, connect.NewError(connect.CodeUnavailable, ctx.Err())
					}
					return echo(ctx, req)
				})
			c := a.newClient(p.opts...)
			key := connectadapter.NewKey()
			ctx, cancel := context.WithCancel(context.Background())
			go func() { <-entered; cancel() }()
			if _, err := c.CallUnary(ctx, keyed(key, "v")); err == nil {
				t.Fatal("canceled call succeeded")
			}
			<-done
			var resp *connect.Response[wrapperspb.StringValue]
			var err error
			for range 50 { // the first call may still be settling
				resp, err = c.CallUnary(ctx10(t), keyed(key, "v"))
				if connect.CodeOf(err) != connect.CodeAborted {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err != nil {
				var ce *connect.Error
				errors.As(err, &ce)
				t.Fatalf("retry after the client gave up: %v (%s=%q): the cancellation was stored as the key's outcome",
					err, connectadapter.HeaderStatus, ce.Meta().Get(connectadapter.HeaderStatus))
			}
			if a.runs.Load() != 2 || resp.Header().Get(connectadapter.HeaderStatus) != connectadapter.StatusNew {
				t.Fatalf("runs %d, status %q", a.runs.Load(), resp.Header().Get(connectadapter.HeaderStatus))
			}
		})
	}
}

// TestAttackRedisDown: Redis dies; calls are refused as Unavailable,
// never run; when it dies during the handler the outcome is marked not
// stored.
func TestAttackRedisDown(t *testing.T) {
	t.Parallel()
	srv := redistest.StartSingle(t)
	o := redistest.Options(srv.Addr)
	o.MaxRetries = -1
	o.DialTimeout = 200 * time.Millisecond
	rc := redis.NewClient(o)
	t.Cleanup(func() { rc.Close() })
	var kill atomic.Bool
	a := startAttack(t, redisstore.New(rc),
		[]connectadapter.Option{connectadapter.WithOptions(idem.WithLockTTL(time.Second))},
		func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
			if kill.Load() {
				srv.Kill()
			}
			return echo(ctx, req)
		})
	c := a.newClient(connect.WithGRPC())
	key := connectadapter.NewKey()
	if _, err := c.CallUnary(ctx10(t), keyed(key, "v")); err != nil {
		t.Fatal(err)
	}
	kill.Store(true)
	resp, err := c.CallUnary(ctx10(t), keyed(connectadapter.NewKey(), "v"))
	if err != nil {
		t.Fatalf("handler ran, store died: %v", err)
	}
	if resp.Header().Get(connectadapter.HeaderStatus) != connectadapter.StatusNew || resp.Header().Get(connectadapter.HeaderStored) != "false" {
		t.Errorf("status %q, stored %q", resp.Header().Get(connectadapter.HeaderStatus), resp.Header().Get(connectadapter.HeaderStored))
	}
	runs := a.runs.Load()
	_, err = c.CallUnary(ctx10(t), keyed(key, "v"))
	wantRefusal(t, err, connect.CodeUnavailable, connectadapter.ReasonStoreUnavailable, true)
	if a.runs.Load() != runs {
		t.Fatalf("handler ran with the store down")
	}
}
