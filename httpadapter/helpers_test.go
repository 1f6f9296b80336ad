package httpadapter_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/httpadapter"
	"github.com/idemkit/idem/memstore"
)

// newStoreFunc returns the store a test runs on. It may return one store
// for every test: keys are unique per test and run.
type newStoreFunc func(t *testing.T) idem.Store

func TestMemstore(t *testing.T) {
	t.Parallel()
	testMiddleware(t, func(*testing.T) idem.Store { return memstore.New() })
}

func TestMemstoreShared(t *testing.T) {
	t.Parallel()
	s := memstore.New()
	testMiddleware(t, func(*testing.T) idem.Store { return s })
}

// testMiddleware runs every middleware test, in parallel, on the stores
// newStore returns.
func testMiddleware(t *testing.T, newStore newStoreFunc) {
	tests := []struct {
		name string
		fn   func(*testing.T, newStoreFunc)
	}{
		{"Replay", testReplay},
		{"ReplayFidelity", testReplayFidelity},
		{"EmptyResponses", testEmptyResponses},
		{"HandlerSeesRequest", testHandlerSeesRequest},
		{"DefaultMethods", testDefaultMethods},
		{"WithMethods", testWithMethods},
		{"KeyMissing", testKeyMissing},
		{"KeyOptional", testKeyOptional},
		{"KeyInvalid", testKeyInvalid},
		{"KeyForms", testKeyForms},
		{"KeyReused", testKeyReused},
		{"FingerprintHeaders", testFingerprintHeaders},
		{"Scope", testScope},
		{"ScopeLongKey", testScopeLongKey},
		{"ScopeSameRequest", testScopeSameRequest},
		{"OuterHeaders", testOuterHeaders},
		{"ExcludedHeaders", testExcludedHeaders},
		{"WithExcludedHeaders", testWithExcludedHeaders},
		{"ConnectionRawName", testConnectionRawName},
		{"UnstoredStatuses", testUnstoredStatuses},
		{"WithDisposition", testWithDisposition},
		{"BodyLimit", testBodyLimit},
		{"BodyReplaced", testBodyReplaced},
		{"OuterMaxBytes", testOuterMaxBytes},
		{"OuterForm", testOuterForm},
		{"OuterMultipartForm", testOuterMultipartForm},
		{"ValidationOffEndpoint", testValidationOffEndpoint},
		{"InFlight", testInFlight},
		{"WaitTimeout", testWaitTimeout},
		{"Concurrent", testConcurrent},
		{"ConcurrentWait", testConcurrentWait},
		{"SlowerThanLease", testSlowerThanLease},
		{"Panic", testPanic},
		{"StoreUnavailable", testStoreUnavailable},
		{"NotStored", testNotStored},
		{"ClientGone", testClientGone},
		{"CorruptRecord", testCorruptRecord},
		{"InvalidOptions", testInvalidOptions},
		{"CoreOptions", testCoreOptions},
		{"Namespace", testNamespace},
		{"ResponseControllerPassThrough", testResponseControllerPassThrough},
		{"ResponseControllerProtected", testResponseControllerProtected},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore)
		})
	}
}

// env is a test server: the middleware around a handler, on a store.
type env struct {
	t      *testing.T
	url    string
	client *http.Client
	runs   atomic.Int32 // how many times the handler ran
}

// start serves h behind the middleware built with opts.
func start(t *testing.T, store idem.Store, h http.HandlerFunc, opts ...httpadapter.Option) *env {
	return startWrapped(t, store, nil, h, opts...)
}

// startWrapped is start with outer middleware around the idempotency
// middleware.
func startWrapped(t *testing.T, store idem.Store, outer func(http.Handler) http.Handler, h http.HandlerFunc, opts ...httpadapter.Option) *env {
	t.Helper()
	e := &env{t: t}
	var handler http.Handler = httpadapter.Middleware(store, opts...)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.runs.Add(1)
		h(w, r)
	}))
	if outer != nil {
		handler = outer(handler)
	}
	srv := httptest.NewUnstartedServer(handler)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handlers panic on purpose
	srv.Start()
	t.Cleanup(func() {
		srv.CloseClientConnections() // cancels handlers a failed test left waiting
		srv.Close()
	})
	e.url, e.client = srv.URL, srv.Client()
	e.client.Timeout = 10 * time.Second
	return e
}

// call is a request to send.
type call struct {
	method string      // POST if empty
	path   string      // /orders if empty
	key    string      // the Idempotency-Key header, unless empty
	body   string      // sent with Content-Type application/json unless header says otherwise
	header http.Header // more request headers
}

// reply is a response received.
type reply struct {
	status int
	header http.Header
	body   string
}

// send sends c and fails the test if no response arrives.
func (e *env) send(c call) reply {
	e.t.Helper()
	r, err := e.try(c)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// try sends c. It may be called from any goroutine.
func (e *env) try(c call) (reply, error) {
	if c.method == "" {
		c.method = http.MethodPost
	}
	if c.path == "" {
		c.path = "/orders"
	}
	var body io.Reader
	if c.body != "" {
		body = strings.NewReader(c.body)
	}
	req, err := http.NewRequest(c.method, e.url+c.path, body)
	if err != nil {
		return reply{}, err
	}
	if c.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	if c.key != "" {
		req.Header.Set(httpadapter.HeaderKey, c.key)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: string(b)}, nil
}

// newKey returns an idempotency key unique to this run.
func newKey() string { return "key-" + randomHex(12) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// createHandler answers 201 with a JSON body holding a fresh ID and the
// request body, so that a replay is told from a second run.
func createHandler(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	id := randomHex(8)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/orders/"+id)
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"id":%q,"request":%q}`, id, b)
}

// wantNew checks that r is a response from the handler, run for it.
func wantNew(t *testing.T, r reply, status int) {
	t.Helper()
	if r.status != status || r.header.Get(httpadapter.HeaderStatus) != httpadapter.StatusNew || r.header.Get(httpadapter.HeaderReplayed) != "" {
		t.Errorf("got %d, %s=%q, %s=%q; want %d, new, not replayed (body %s)", r.status,
			httpadapter.HeaderStatus, r.header.Get(httpadapter.HeaderStatus),
			httpadapter.HeaderReplayed, r.header.Get(httpadapter.HeaderReplayed), status, r.body)
	}
}

// wantUnstored checks that r says it was not stored.
func wantUnstored(t *testing.T, r reply) {
	t.Helper()
	if got := r.header.Get(httpadapter.HeaderStored); got != "false" {
		t.Errorf("%s = %q, want false (status %d)", httpadapter.HeaderStored, got, r.status)
	}
}

// wantHit checks that r replays first.
func wantHit(t *testing.T, r, first reply) {
	t.Helper()
	if r.status != first.status || r.body != first.body ||
		r.header.Get(httpadapter.HeaderStatus) != httpadapter.StatusHit || r.header.Get(httpadapter.HeaderReplayed) != "true" {
		t.Errorf("got %d %q, %s=%q, %s=%q; want replay of %d %q", r.status, r.body,
			httpadapter.HeaderStatus, r.header.Get(httpadapter.HeaderStatus),
			httpadapter.HeaderReplayed, r.header.Get(httpadapter.HeaderReplayed), first.status, first.body)
	}
}

// wantProblem checks that r is an RFC 9457 problem of type typ and status.
func wantProblem(t *testing.T, r reply, status int, typ string) {
	t.Helper()
	if r.status != status {
		t.Errorf("status = %d, want %d (body %s)", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("Content-Type = %q, want application/problem+json", ct)
	}
	var p struct {
		Type   string `json:"type"`
		Title  string `json:"title"`
		Status int    `json:"status"`
	}
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		t.Fatalf("problem body %q: %v", r.body, err)
	}
	if p.Type != typ || p.Status != status || p.Title == "" {
		t.Errorf("problem = %+v, want type %s, status %d, a title", p, typ, status)
	}
	if r.header.Get(httpadapter.HeaderStatus) != "" {
		t.Errorf("problem has %s: %q", httpadapter.HeaderStatus, r.header.Get(httpadapter.HeaderStatus))
	}
}

// wantRuns checks how many times the handler ran.
func (e *env) wantRuns(n int32) {
	e.t.Helper()
	if got := e.runs.Load(); got != n {
		e.t.Errorf("handler ran %d times, want %d", got, n)
	}
}

// hookLog collects the errors given to the error hook.
type hookLog struct {
	mu   sync.Mutex
	errs []error
}

func (h *hookLog) option() httpadapter.Option {
	return httpadapter.WithErrorHook(func(_ *http.Request, err error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.errs = append(h.errs, err)
	})
}

// want checks that the hook got exactly one error per target, in order.
func (h *hookLog) want(t *testing.T, targets ...error) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.errs) != len(targets) {
		t.Fatalf("hook got %v, want %d errors", h.errs, len(targets))
	}
	for i, target := range targets {
		if !errors.Is(h.errs[i], target) {
			t.Errorf("hook error %d = %v, want %v", i, h.errs[i], target)
		}
	}
}

// faultStore is a real store whose Acquire, or its leases' Commit, fail on
// demand. A failed Commit finds its lease gone, as after a lost lease (a
// merely transient failure would be retried by idem for the lease TTL).
type faultStore struct {
	idem.Store
	failAcquire atomic.Bool
	failCommit  atomic.Bool
}

var errInjected = errors.New("injected store failure")

func (s *faultStore) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	if s.failAcquire.Load() {
		return idem.Acquisition{}, errInjected
	}
	acq, err := s.Store.Acquire(ctx, key, fp, ttl)
	if acq.Lease != nil && s.failCommit.Load() {
		acq.Lease = failingLease{acq.Lease}
	}
	return acq, err
}

type failingLease struct{ idem.Lease }

func (l failingLease) Commit(ctx context.Context, rec []byte, ttl time.Duration) error {
	_ = l.Lease.Release(ctx)
	return errors.Join(errInjected, l.Lease.Commit(ctx, rec, ttl))
}

// waitSignalStore is a real store that signals on waiting each time a caller
// starts to wait for a key in flight.
type waitSignalStore struct {
	idem.Store
	waiting chan struct{}
}

func (s *waitSignalStore) Wait(ctx context.Context, key string) error {
	select {
	case s.waiting <- struct{}{}:
	default:
	}
	return s.Store.Wait(ctx, key)
}
