// Package fwcheck checks which ways of mounting httpadapter.Middleware in
// chi, gorilla/mux, echo, gin and fiber behave correctly, with real HTTP
// requests over loopback.
//
// Scenario, for every pattern (POST /orders, an order-creating handler that
// counts its runs; item "bad" makes it fail with 400 through the framework's
// own error mechanism where it has one):
//
//  1. POST with key k1 creates (201, body); a retry with k1 replays the same
//     status and body (Idempotent-Replayed: true); the handler ran once.
//  2. POST with key k2 and item "bad": the client sees 400 with the error
//     body; a retry replays that 400 (DefaultDisposition records 4xx but
//     429); the handler ran once.
//  3. k1 again with another body: 422, the handler does not run.
//  4. No key: 400 problem, the handler does not run.
//
// Working patterns must pass wantCorrect. Broken patterns assert the
// misbehaviour actually observed, so the README's warnings stay reproducible.
package fwcheck

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/go-chi/chi/v5"
	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/gorilla/mux"
	"github.com/labstack/echo/v4"

	"github.com/idemkit/idem/httpadapter"
	"github.com/idemkit/idem/memstore"
)

type order struct {
	Item string `json:"item"`
}

func newMW() func(http.Handler) http.Handler {
	return httpadapter.Middleware(memstore.New())
}

// --- handlers -------------------------------------------------------------

// netHTTPCreate is the handler written against net/http.
func netHTTPCreate(runs *atomic.Int64) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n := runs.Add(1)
		var o order
		if err := json.NewDecoder(r.Body).Decode(&o); err != nil || o.Item == "bad" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"bad item"}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Location", fmt.Sprintf("/orders/%d", n))
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":%d,"item":%q}`, n, o.Item)
	}
}

func echoCreate(runs *atomic.Int64) echo.HandlerFunc {
	return func(c echo.Context) error {
		n := runs.Add(1)
		var o order
		if err := json.NewDecoder(c.Request().Body).Decode(&o); err != nil || o.Item == "bad" {
			return echo.NewHTTPError(http.StatusBadRequest, "bad item")
		}
		return c.JSON(http.StatusCreated, map[string]any{"id": n, "item": o.Item})
	}
}

func ginCreate(runs *atomic.Int64) gin.HandlerFunc {
	return func(c *gin.Context) {
		n := runs.Add(1)
		var o order
		if err := json.NewDecoder(c.Request.Body).Decode(&o); err != nil || o.Item == "bad" {
			c.AbortWithStatusJSON(http.StatusBadRequest, gin.H{"error": "bad item"})
			return
		}
		c.JSON(http.StatusCreated, gin.H{"id": n, "item": o.Item})
	}
}

func fiberCreate(runs *atomic.Int64) fiber.Handler {
	return func(c *fiber.Ctx) error {
		n := runs.Add(1)
		var o order
		if err := json.Unmarshal(c.Body(), &o); err != nil || o.Item == "bad" {
			return fiber.NewError(fiber.StatusBadRequest, "bad item")
		}
		return c.Status(fiber.StatusCreated).JSON(fiber.Map{"id": n, "item": o.Item})
	}
}

// --- client and scenario --------------------------------------------------

// client opens a connection per request: a broken pattern may leave a
// keep-alive connection unusable (more bytes than its Content-Length), and
// one test must not fail the next request for it.
var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

type resp struct {
	status int
	body   string
	h      http.Header
}

func (r resp) replayed() bool { return r.h.Get(httpadapter.HeaderReplayed) == "true" }

func (r resp) String() string {
	s := fmt.Sprintf("%d %q", r.status, r.body)
	if st := r.h.Get(httpadapter.HeaderStatus); st != "" {
		s += " status=" + st
	}
	if r.replayed() {
		s += " replayed"
	}
	return s
}

func post(t *testing.T, base, key, body string) resp {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/orders", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set(httpadapter.HeaderKey, key)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp{res.StatusCode, string(b), res.Header}
}

type observed struct {
	first, retry       resp
	createRuns         int64
	errFirst, errRetry resp
	errRuns            int64
	reuse              resp
	reuseRuns          int64
	noKey              resp
	noKeyRuns          int64
}

func scenario(t *testing.T, base string, runs *atomic.Int64) observed {
	t.Helper()
	var o observed
	before := runs.Load()
	o.first = post(t, base, "k1", `{"item":"book"}`)
	o.retry = post(t, base, "k1", `{"item":"book"}`)
	o.createRuns = runs.Load() - before

	before = runs.Load()
	o.errFirst = post(t, base, "k2", `{"item":"bad"}`)
	o.errRetry = post(t, base, "k2", `{"item":"bad"}`)
	o.errRuns = runs.Load() - before

	before = runs.Load()
	o.reuse = post(t, base, "k1", `{"item":"pen"}`)
	o.reuseRuns = runs.Load() - before

	before = runs.Load()
	o.noKey = post(t, base, "", `{"item":"book"}`)
	o.noKeyRuns = runs.Load() - before

	t.Logf("create: first=%v | retry=%v | runs=%d", o.first, o.retry, o.createRuns)
	t.Logf("error:  first=%v | retry=%v | runs=%d", o.errFirst, o.errRetry, o.errRuns)
	t.Logf("reuse:  %v | runs=%d", o.reuse, o.reuseRuns)
	t.Logf("no key: %d | runs=%d", o.noKey.status, o.noKeyRuns)
	return o
}

func wantCorrect(t *testing.T, o observed) {
	t.Helper()
	if o.first.status != http.StatusCreated || !strings.Contains(o.first.body, `"book"`) ||
		o.first.h.Get(httpadapter.HeaderStatus) != httpadapter.StatusNew {
		t.Errorf("first create: got %v, want 201 with the order, status=new", o.first)
	}
	if o.retry.status != o.first.status || o.retry.body != o.first.body || !o.retry.replayed() {
		t.Errorf("retry: got %v, want the first response (%v) replayed", o.retry, o.first)
	}
	if o.createRuns != 1 {
		t.Errorf("create: handler ran %d times, want 1", o.createRuns)
	}
	if o.errFirst.status != http.StatusBadRequest || !strings.Contains(o.errFirst.body, "bad item") {
		t.Errorf("error path: client got %v, want 400 with the handler's error body", o.errFirst)
	}
	if o.errRetry.status != http.StatusBadRequest || o.errRetry.body != o.errFirst.body || !o.errRetry.replayed() {
		t.Errorf("error retry: got %v, want the 400 replayed", o.errRetry)
	}
	if o.errRuns != 1 {
		t.Errorf("error path: handler ran %d times, want 1", o.errRuns)
	}
	if o.reuse.status != http.StatusUnprocessableEntity || o.reuseRuns != 0 {
		t.Errorf("key reuse: got %d with %d runs, want 422 and no run", o.reuse.status, o.reuseRuns)
	}
	if o.noKey.status != http.StatusBadRequest || o.noKeyRuns != 0 {
		t.Errorf("no key: got %d with %d runs, want 400 and no run", o.noKey.status, o.noKeyRuns)
	}
}

func serve(t *testing.T, h http.Handler) string {
	srv := httptest.NewServer(h) // 127.0.0.1, free port
	t.Cleanup(srv.Close)
	return srv.URL
}

// --- chi, gorilla/mux: net/http-native routers ---------------------------

func TestChiUse(t *testing.T) {
	var runs atomic.Int64
	r := chi.NewRouter()
	r.Use(newMW())
	r.Post("/orders", netHTTPCreate(&runs))
	wantCorrect(t, scenario(t, serve(t, r), &runs))
}

func TestChiWith(t *testing.T) {
	var runs atomic.Int64
	r := chi.NewRouter()
	r.With(newMW()).Post("/orders", netHTTPCreate(&runs))
	wantCorrect(t, scenario(t, serve(t, r), &runs))
}

func TestGorillaUse(t *testing.T) {
	var runs atomic.Int64
	r := mux.NewRouter()
	r.Use(newMW())
	r.Handle("/orders", netHTTPCreate(&runs)).Methods(http.MethodPost)
	wantCorrect(t, scenario(t, serve(t, r), &runs))
}

func TestGorillaPerRoute(t *testing.T) {
	var runs atomic.Int64
	r := mux.NewRouter()
	r.Handle("/orders", newMW()(netHTTPCreate(&runs))).Methods(http.MethodPost)
	wantCorrect(t, scenario(t, serve(t, r), &runs))
}

// --- echo -----------------------------------------------------------------

// Broken: echo.WrapMiddleware. The error returned by the handler is turned
// into a response by echo's HTTPErrorHandler only after the middleware
// returned, so the middleware stored (and sent) an empty 200.
func TestEchoWrapMiddlewareBroken(t *testing.T) {
	var runs atomic.Int64
	e := echo.New()
	e.Use(echo.WrapMiddleware(newMW()))
	e.POST("/orders", echoCreate(&runs))
	o := scenario(t, serve(t, e), &runs)
	// The success path works (c.JSON writes through the middleware).
	if o.first.status != 201 || o.retry.status != 201 || o.retry.body != o.first.body || o.createRuns != 1 {
		t.Errorf("success path changed: %v / %v", o.first, o.retry)
	}
	// The error path: the client gets 200 with an empty body, and so does
	// the retry, replayed.
	if o.errFirst.status != http.StatusOK || o.errFirst.body != "" {
		t.Errorf("expected the broken empty 200 on the error path, got %v", o.errFirst)
	}
	if o.errRetry.status != http.StatusOK || o.errRetry.body != "" || !o.errRetry.replayed() {
		t.Errorf("expected the empty 200 replayed, got %v", o.errRetry)
	}
}

// Works: the handler written against net/http, wrapped per route.
func TestEchoWrapHandlerPerRoute(t *testing.T) {
	var runs atomic.Int64
	e := echo.New()
	e.POST("/orders", echo.WrapHandler(newMW()(netHTTPCreate(&runs))))
	wantCorrect(t, scenario(t, serve(t, e), &runs))
}

// Works: the whole echo app inside the middleware, as an http.Handler. Echo
// handlers keep returning errors (echo.NewHTTPError).
func TestEchoAppInsideMiddleware(t *testing.T) {
	var runs atomic.Int64
	e := echo.New()
	e.POST("/orders", echoCreate(&runs))
	wantCorrect(t, scenario(t, serve(t, newMW()(e)), &runs))
}

// Works: an echo middleware that, unlike echo.WrapMiddleware, renders the
// handler's error with c.Error inside the wrapped handler, so the middleware
// sees the error response.
func idemEcho(mw func(http.Handler) http.Handler) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				c.SetRequest(r)
				c.SetResponse(echo.NewResponse(w, c.Echo()))
				if err := next(c); err != nil {
					c.Error(err) // render the error while the middleware records
				}
			})).ServeHTTP(c.Response(), c.Request())
			return nil
		}
	}
}

func TestEchoErrorRenderingMiddleware(t *testing.T) {
	var runs atomic.Int64
	e := echo.New()
	e.POST("/orders", echoCreate(&runs), idemEcho(newMW()))
	wantCorrect(t, scenario(t, serve(t, e), &runs))
}

// --- gin ------------------------------------------------------------------

func init() { gin.SetMode(gin.TestMode) }

// Works: the handler written against net/http, wrapped per route.
func TestGinWrapHPerRoute(t *testing.T) {
	var runs atomic.Int64
	g := gin.New()
	g.POST("/orders", gin.WrapH(newMW()(netHTTPCreate(&runs))))
	wantCorrect(t, scenario(t, serve(t, g), &runs))
}

// Works: the whole gin engine inside the middleware. Gin handlers keep
// using c.JSON and c.AbortWithStatusJSON.
func TestGinEngineInsideMiddleware(t *testing.T) {
	var runs atomic.Int64
	g := gin.New()
	g.POST("/orders", ginCreate(&runs))
	wantCorrect(t, scenario(t, serve(t, newMW()(g)), &runs))
}

// Broken: the usual hand-written gin adaptor for a net/http middleware.
// c.Next() runs the gin handler, which writes to c.Writer (the real
// connection), not to the ResponseWriter the middleware passed: the
// middleware records an empty 200, and its own headers come too late. When
// the middleware answers without calling next (a replay, 422, no key), gin
// goes on to the handler anyway, which runs again on a body the middleware
// already consumed.
func naiveGin(mw func(http.Handler) http.Handler) gin.HandlerFunc {
	return func(c *gin.Context) {
		mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c.Request = r
			c.Next()
		})).ServeHTTP(c.Writer, c.Request)
	}
}

func TestGinNaiveMiddlewareBroken(t *testing.T) {
	var runs atomic.Int64
	g := gin.New()
	g.Use(naiveGin(newMW()))
	g.POST("/orders", ginCreate(&runs))
	o := scenario(t, serve(t, g), &runs)
	if o.first.status != http.StatusCreated || o.first.h.Get(httpadapter.HeaderStatus) != "" {
		t.Errorf("expected 201 without the idempotency headers, got %v", o.first)
	}
	// The retry: the replayed (empty 200) response is overwritten by the
	// handler, run a second time on an empty body.
	if o.createRuns != 2 || o.retry.body == o.first.body {
		t.Errorf("expected the handler to run again on retry, got runs=%d retry=%v", o.createRuns, o.retry)
	}
	if o.reuseRuns != 1 || o.noKeyRuns != 1 {
		t.Errorf("expected the handler to run after the 422 and the missing-key 400, got %d, %d", o.reuseRuns, o.noKeyRuns)
	}
}

// Broken too: the same adaptor with c.Abort() when the middleware did not
// call next. The handler no longer runs twice, but the middleware still
// records what it saw, an empty 200, and replays it.
func abortingGin(mw func(http.Handler) http.Handler) gin.HandlerFunc {
	return func(c *gin.Context) {
		ran := false
		mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ran = true
			c.Request = r
			c.Next()
		})).ServeHTTP(c.Writer, c.Request)
		if !ran {
			c.Abort()
		}
	}
}

func TestGinAbortingMiddlewareBroken(t *testing.T) {
	var runs atomic.Int64
	g := gin.New()
	g.Use(abortingGin(newMW()))
	g.POST("/orders", ginCreate(&runs))
	o := scenario(t, serve(t, g), &runs)
	if o.first.status != http.StatusCreated || o.createRuns != 1 {
		t.Errorf("expected 201 and one run, got %v runs=%d", o.first, o.createRuns)
	}
	if o.retry.status != http.StatusOK || o.retry.body != "" || !o.retry.replayed() {
		t.Errorf("expected an empty 200 replayed to the retry, got %v", o.retry)
	}
	if o.errRetry.status != http.StatusOK || o.errRetry.body != "" || !o.errRetry.replayed() {
		t.Errorf("expected an empty 200 replayed after the 400, got %v", o.errRetry)
	}
	if o.reuse.status != http.StatusUnprocessableEntity || o.reuseRuns != 0 || o.noKeyRuns != 0 {
		t.Errorf("refusals: reuse=%d runs=%d, no key runs=%d", o.reuse.status, o.reuseRuns, o.noKeyRuns)
	}
}

// --- fiber (fasthttp) -----------------------------------------------------

func serveFiber(t *testing.T, app *fiber.App) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Listener(ln)
	t.Cleanup(func() { app.Shutdown() })
	return "http://" + ln.Addr().String()
}

func newFiber() *fiber.App {
	return fiber.New(fiber.Config{DisableStartupMessage: true})
}

// Broken: adaptor.HTTPMiddleware. The net/http "next" it hands the
// middleware only notes that it was called; fiber's real handler runs after
// the middleware returned, so the middleware stores an empty 200.
func TestFiberHTTPMiddlewareBroken(t *testing.T) {
	var runs atomic.Int64
	app := newFiber()
	app.Use(adaptor.HTTPMiddleware(newMW()))
	app.Post("/orders", fiberCreate(&runs))
	o := scenario(t, serveFiber(t, app), &runs)
	if o.retry.status != http.StatusOK || o.retry.body != "" || !o.retry.replayed() {
		t.Errorf("expected an empty 200 replayed to the retry, got %v", o.retry)
	}
	if o.errRetry.status != http.StatusOK || o.errRetry.body != "" || !o.errRetry.replayed() {
		t.Errorf("expected an empty 200 replayed after the 400, got %v", o.errRetry)
	}
}

// Works: the handler written against net/http, wrapped per route and
// converted with adaptor.HTTPHandler.
func TestFiberHTTPHandlerPerRoute(t *testing.T) {
	var runs atomic.Int64
	app := newFiber()
	app.Post("/orders", adaptor.HTTPHandler(newMW()(netHTTPCreate(&runs))))
	wantCorrect(t, scenario(t, serveFiber(t, app), &runs))
}

// Works, but runs fiber under net/http: the fiber app converted with
// adaptor.FiberApp, inside the middleware. Fiber handlers keep returning
// fiber.NewError.
func TestFiberAppInsideMiddleware(t *testing.T) {
	var runs atomic.Int64
	app := newFiber()
	app.Post("/orders", fiberCreate(&runs))
	wantCorrect(t, scenario(t, serve(t, newMW()(adaptor.FiberApp(app))), &runs))
}

// --- scoping keys by an account that a framework middleware found ----------

// accountKey is the request-context key under which the framework's auth
// middleware (here: the X-Account header, as a stand-in) puts the account.
type accountKey struct{}

func scopedMW() func(http.Handler) http.Handler {
	return httpadapter.Middleware(memstore.New(), httpadapter.WithScope(func(r *http.Request) string {
		acct, _ := r.Context().Value(accountKey{}).(string)
		return acct
	}))
}

func postAs(t *testing.T, base, account, key, body string) resp {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/orders", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(httpadapter.HeaderKey, key)
	req.Header.Set("X-Account", account)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, string(b), res.Header}
}

// Two accounts using the same key get their own orders; a retry by the first
// gets its own order back.
func wantScoped(t *testing.T, base string, runs *atomic.Int64) {
	t.Helper()
	a := postAs(t, base, "acct-a", "k1", `{"item":"book"}`)
	b := postAs(t, base, "acct-b", "k1", `{"item":"book"}`)
	a2 := postAs(t, base, "acct-a", "k1", `{"item":"book"}`)
	t.Logf("a=%v | b=%v | a retry=%v | runs=%d", a, b, a2, runs.Load())
	if a.status != 201 || b.status != 201 || a.body == b.body || runs.Load() != 2 {
		t.Errorf("accounts not kept apart: a=%v b=%v runs=%d", a, b, runs.Load())
	}
	if a2.body != a.body || !a2.replayed() {
		t.Errorf("retry by a: got %v, want %v replayed", a2, a)
	}
}

func TestEchoPerRouteScope(t *testing.T) {
	var runs atomic.Int64
	e := echo.New()
	e.Use(func(next echo.HandlerFunc) echo.HandlerFunc { // auth, before the route
		return func(c echo.Context) error {
			r := c.Request()
			c.SetRequest(r.WithContext(context.WithValue(r.Context(), accountKey{}, r.Header.Get("X-Account"))))
			return next(c)
		}
	})
	e.POST("/orders", echo.WrapHandler(scopedMW()(netHTTPCreate(&runs))))
	wantScoped(t, serve(t, e), &runs)
}

func TestGinPerRouteScope(t *testing.T) {
	var runs atomic.Int64
	g := gin.New()
	g.Use(func(c *gin.Context) { // auth, before the route
		c.Request = c.Request.WithContext(context.WithValue(c.Request.Context(), accountKey{}, c.GetHeader("X-Account")))
		c.Next()
	})
	g.POST("/orders", gin.WrapH(scopedMW()(netHTTPCreate(&runs))))
	wantScoped(t, serve(t, g), &runs)
}

// In fiber, c.Locals are fasthttp user values, and adaptor.HTTPHandler hands
// the net/http handler a request whose context reads them (Value).
func TestFiberPerRouteScope(t *testing.T) {
	var runs atomic.Int64
	app := newFiber()
	app.Use(func(c *fiber.Ctx) error { // auth, before the route
		c.Locals(accountKey{}, c.Get("X-Account"))
		return c.Next()
	})
	app.Post("/orders", adaptor.HTTPHandler(scopedMW()(netHTTPCreate(&runs))))
	wantScoped(t, serveFiber(t, app), &runs)
}

// With the whole app inside the middleware, the framework's own middleware
// (auth here) runs inside it: its 401 is a 4xx like any other, recorded
// under the key, so the retry with valid credentials is replayed the 401.
// Per route, auth runs before the middleware and nothing is recorded.
func TestEchoAppInsideMiddlewareRecordsAuth401(t *testing.T) {
	var runs atomic.Int64
	e := echo.New()
	e.Use(func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if c.Request().Header.Get("X-Account") == "" {
				return echo.NewHTTPError(http.StatusUnauthorized, "no account")
			}
			return next(c)
		}
	})
	e.POST("/orders", echoCreate(&runs))
	base := serve(t, newMW()(e))
	first := postAs(t, base, "", "k1", `{"item":"book"}`)
	retry := postAs(t, base, "acct-a", "k1", `{"item":"book"}`)
	t.Logf("no account: %v | retry with account: %v | runs=%d", first, retry, runs.Load())
	if first.status != http.StatusUnauthorized || retry.status != http.StatusUnauthorized || !retry.replayed() || runs.Load() != 0 {
		t.Errorf("expected the 401 recorded and replayed, got %v then %v", first, retry)
	}

	// The same auth per route: the retry creates the order.
	runs.Store(0)
	e2 := echo.New()
	e2.Use(func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if c.Request().Header.Get("X-Account") == "" {
				return echo.NewHTTPError(http.StatusUnauthorized, "no account")
			}
			return next(c)
		}
	})
	e2.POST("/orders", echo.WrapHandler(newMW()(netHTTPCreate(&runs))))
	base2 := serve(t, e2)
	first = postAs(t, base2, "", "k1", `{"item":"book"}`)
	retry = postAs(t, base2, "acct-a", "k1", `{"item":"book"}`)
	t.Logf("per route: no account: %v | retry with account: %v | runs=%d", first, retry, runs.Load())
	if first.status != http.StatusUnauthorized || retry.status != http.StatusCreated || runs.Load() != 1 {
		t.Errorf("per route: expected 401 then 201, got %v then %v", first, retry)
	}
}
