package idemotel_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"maps"
	"slices"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemotel"
	"github.com/idemkit/idem/memstore"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// Keys that must never show in telemetry: distinctive, so that finding
// one is no accident.
const secret = "cust-5f1e9b-secret-"

var (
	k1, k2, k3, k4 = secret + "one", secret + "two", secret + "three", secret + "four"
	allKeys        = []string{secret, k1, k2, k3, k4}
)

func ok(context.Context, string) (int, error) { return 7, nil }

// TestOutcomes runs a scripted sequence of calls on memstore and checks
// the exact count of every outcome, the other instruments, one span per
// call, and that no key shows anywhere.
func TestOutcomes(t *testing.T) {
	h := newHarness(t)
	store := memstore.New()
	pay := idem.New[string, int](store, idem.WithNamespace("pay"), idem.WithObserver(h.obs), idem.WithWaitTimeout(0))
	plain := idem.New[string, int](store, idem.WithObserver(h.obs))
	ctx := context.Background()
	fnErr := func(context.Context, string) (int, error) { return 0, errors.New("gateway unavailable") }
	final := func(context.Context, string) (int, error) { return 0, idem.Final(errors.New("card declined")) }

	for i, step := range []struct {
		op       *idem.Operation[string, int]
		key, req string
		fn       func(context.Context, string) (int, error)
		want     idem.Outcome
	}{
		{pay, k1, "a", ok, idem.OutcomeExecuted},
		{pay, k1, "a", ok, idem.OutcomeReplayed},
		{pay, k1, "a", ok, idem.OutcomeReplayed},
		{pay, k1, "b", ok, idem.OutcomeKeyReused},
		{pay, k2, "a", fnErr, idem.OutcomeFnError},
		{pay, k2, "a", ok, idem.OutcomeExecuted}, // released: runs again
		{pay, k3, "a", final, idem.OutcomeFinalError},
		{pay, k3, "a", ok, idem.OutcomeReplayed}, // the final error, replayed
		{pay, "", "a", ok, idem.OutcomeInvalidKey},
		{pay, k1 + "\x00", "a", ok, idem.OutcomeInvalidKey},
		{plain, k1, "a", ok, idem.OutcomeExecuted}, // another namespace
	} {
		if _, info, _ := step.op.DoInfo(ctx, step.key, step.req, step.fn); info.Outcome != step.want {
			t.Fatalf("step %d: outcome %v, want %v", i, info.Outcome, step.want)
		}
	}

	// In flight: a call holds k4 while another, not waiting, is refused.
	started, release, held := make(chan struct{}), make(chan struct{}), make(chan idem.Outcome)
	go func() {
		_, info, _ := pay.DoInfo(ctx, k4, "a", func(context.Context, string) (int, error) {
			close(started)
			<-release
			return 1, nil
		})
		held <- info.Outcome
	}()
	<-started
	m := h.collect(t)
	if n := m.count(t, "idem.execution.active", "idem.namespace=pay"); n != 1 {
		t.Errorf("idem.execution.active{pay} = %d while one call holds a key, want 1", n)
	}
	if _, info, err := pay.DoInfo(ctx, k4, "a", ok); info.Outcome != idem.OutcomeInFlight || !errors.Is(err, idem.ErrInFlight) {
		t.Fatalf("call on a held key: %v, %v; want in_flight", info.Outcome, err)
	}
	close(release)
	if o := <-held; o != idem.OutcomeExecuted {
		t.Fatalf("holder: %v", o)
	}

	m = h.collect(t)
	const dur = "idem.operation.duration"
	for _, c := range []struct {
		attrs []string
		want  int64
	}{
		{[]string{"idem.namespace=pay", "idem.outcome=executed", "!error.type"}, 3},
		{[]string{"idem.namespace=pay", "idem.outcome=replayed", "!error.type"}, 2},
		{[]string{"idem.namespace=pay", "idem.outcome=replayed", "error.type=final_error"}, 1},
		{[]string{"idem.namespace=pay", "idem.outcome=key_reused", "error.type=key_reused"}, 1},
		{[]string{"idem.namespace=pay", "idem.outcome=fn_error", "error.type=fn_error"}, 1},
		{[]string{"idem.namespace=pay", "idem.outcome=final_error", "error.type=final_error"}, 1},
		{[]string{"idem.namespace=pay", "idem.outcome=invalid_key", "error.type=invalid_key"}, 2},
		{[]string{"idem.namespace=pay", "idem.outcome=in_flight", "error.type=in_flight"}, 1},
		{[]string{"idem.namespace=pay"}, 12},
		{[]string{"idem.namespace=", "idem.outcome=executed", "!error.type"}, 1},
		{[]string{"idem.namespace="}, 1},
		{nil, 13},
	} {
		if got := m.count(t, dur, c.attrs...); got != c.want {
			t.Errorf("%s%q: %d, want %d", dur, c.attrs, got, c.want)
		}
	}
	for _, c := range []struct {
		name  string
		attrs []string
		want  int64
	}{
		// fn ran for k1, k2 twice, k3 and k4 in pay, k1 in "".
		{"idem.execution.duration", []string{"idem.namespace=pay", "idem.outcome=executed"}, 3},
		{"idem.execution.duration", []string{"idem.namespace=pay", "idem.outcome=fn_error"}, 1},
		{"idem.execution.duration", []string{"idem.namespace=pay", "idem.outcome=final_error"}, 1},
		{"idem.execution.duration", []string{"idem.namespace="}, 1},
		{"idem.execution.duration", nil, 6},
		// Records: k1, k2, k3 (the final error) and k4; k1 in "".
		{"idem.record.size", []string{"idem.namespace=pay"}, 4},
		{"idem.record.size", []string{"idem.namespace="}, 1},
		{"idem.execution.active", []string{"idem.namespace=pay"}, 0},
		{"idem.execution.active", []string{"idem.namespace="}, 0},
		{"idem.wait.duration", nil, 0},
		{"idem.lease.losses", nil, 0},
		{"idem.store.errors", nil, 0},
	} {
		if got := m.count(t, c.name, c.attrs...); got != c.want {
			t.Errorf("%s%q: %d, want %d", c.name, c.attrs, got, c.want)
		}
	}
	for name, unit := range map[string]string{
		"idem.operation.duration": "s", "idem.execution.duration": "s", "idem.record.size": "By", "idem.execution.active": "{call}",
	} {
		if got := m[name].Unit; got != unit {
			t.Errorf("%s: unit %q, want %q", name, got, unit)
		}
	}

	// One span per call, with its outcome; fn's failures are errors.
	spans := h.idemSpans()
	if len(spans) != 13 || len(h.spans.Ended()) != 13 {
		t.Fatalf("%d idem.Do spans of %d ended, want 13 of 13", len(spans), len(h.spans.Ended()))
	}
	outcomes := map[string]int{}
	for _, s := range spans {
		out, _ := spanAttr(s, "idem.outcome")
		ns, hasNS := spanAttr(s, "idem.namespace")
		replayed, _ := spanAttr(s, "idem.replayed")
		errType, hasErrType := spanAttr(s, "error.type")
		outcomes[ns+"/"+out]++
		if !hasNS || s.SpanKind() != trace.SpanKindInternal {
			t.Errorf("span %v: namespace %v, kind %v", s.Attributes(), hasNS, s.SpanKind())
		}
		if replayed != map[bool]string{true: "true", false: "false"}[out == "replayed"] {
			t.Errorf("span with outcome %s: idem.replayed=%s", out, replayed)
		}
		wantStatus := codes.Unset
		if out == "fn_error" || out == "final_error" {
			wantStatus = codes.Error
		}
		if st := s.Status(); st.Code != wantStatus || (wantStatus == codes.Error && st.Description != out) {
			t.Errorf("span with outcome %s: status %v %q, want %v", out, st.Code, st.Description, wantStatus)
		}
		if hasErrType != (out != "executed" && !(out == "replayed" && errType == "")) {
			t.Errorf("span with outcome %s: error.type %q", out, errType)
		}
		if _, ok := spanAttr(s, "idem.key.hash"); ok {
			t.Errorf("span with a key hash without WithHashedKeys")
		}
	}
	want := map[string]int{"pay/executed": 3, "pay/replayed": 3, "pay/key_reused": 1, "pay/fn_error": 1, "pay/final_error": 1, "pay/invalid_key": 2, "pay/in_flight": 1, "/executed": 1}
	if !maps.Equal(outcomes, want) {
		t.Errorf("span outcomes %v, want %v", outcomes, want)
	}
	h.noKeys(t, m, allKeys...)
}

func TestHashedKeys(t *testing.T) {
	h := newHarness(t, idemotel.WithHashedKeys())
	op := idem.New[string, int](memstore.New(), idem.WithNamespace("pay"), idem.WithObserver(h.obs))
	ctx := context.Background()
	_, _ = op.Do(ctx, k1, "a", ok)
	_, _ = op.Do(ctx, k1, "a", ok)
	_, _ = op.Do(ctx, k2, "a", ok)
	sum := sha256.Sum256([]byte(k1))
	hash1 := hex.EncodeToString(sum[:16])

	spans := h.idemSpans()
	if len(spans) != 3 {
		t.Fatalf("%d spans, want 3", len(spans))
	}
	var hashes []string
	for _, s := range spans {
		v, _ := spanAttr(s, "idem.key.hash")
		hashes = append(hashes, v)
	}
	if hashes[0] != hash1 || hashes[1] != hash1 || hashes[2] == hash1 || len(hashes[2]) != 32 {
		t.Errorf("idem.key.hash %q; want %s twice, then another 32-digit hash", hashes, hash1)
	}
	m := h.collect(t)
	h.noKeys(t, m, allKeys...)
	for name, kvs := range m.attributeSets() {
		for _, kv := range kvs {
			if kv.Key == "idem.key.hash" || kv.Value.String() == hash1 {
				t.Errorf("metric %s carries the key hash: %v", name, kv)
			}
		}
	}
}

// TestWait checks the wait metric and event of a call that waits for an
// in-flight one.
func TestWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		store := memstore.New()
		ctx := context.Background()
		holder := idem.New[string, int](store) // not observed
		go holder.Do(ctx, k1, "a", func(context.Context, string) (int, error) {
			time.Sleep(1500 * time.Millisecond)
			return 1, nil
		})
		synctest.Wait()
		op := idem.New[string, int](store, idem.WithObserver(h.obs), idem.WithWaitTimeout(time.Minute))
		if _, info, err := op.DoInfo(ctx, k1, "a", ok); info.Outcome != idem.OutcomeReplayed || err != nil {
			t.Fatalf("waiting call: %v, %v", info.Outcome, err)
		}
		m := h.collect(t)
		if n := m.count(t, "idem.wait.duration", "idem.namespace=", "idem.outcome=replayed"); n != 1 {
			t.Errorf("idem.wait.duration: %d points, want 1", n)
		}
		spans := h.idemSpans()
		if len(spans) != 1 {
			t.Fatalf("%d spans", len(spans))
		}
		ev := spans[0].Events()
		if len(ev) != 1 || ev[0].Name != "idem.wait" || len(ev[0].Attributes) != 1 || ev[0].Attributes[0].Value.AsFloat64() != 1.5 {
			t.Errorf("events %v, want one idem.wait of 1.5 s", ev)
		}
	})
}

// spanStore is memstore whose Acquire starts a span, as an instrumented
// client would.
type spanStore struct {
	*memstore.Store
	tracer trace.Tracer
}

func (s spanStore) Acquire(ctx context.Context, key, fingerprint string, ttl time.Duration) (idem.Acquisition, error) {
	ctx, span := s.tracer.Start(ctx, "store.Acquire")
	defer span.End()
	return s.Store.Acquire(ctx, key, fingerprint, ttl)
}

func TestSpanNesting(t *testing.T) {
	h := newHarness(t)
	tracer := h.tp.Tracer("test")
	op := idem.New[string, int](spanStore{memstore.New(), tracer}, idem.WithObserver(h.obs))
	ctx, request := tracer.Start(context.Background(), "request")
	_, err := op.Do(ctx, k1, "a", func(ctx context.Context, _ string) (int, error) {
		_, span := tracer.Start(ctx, "fn")
		span.End()
		return 1, nil
	})
	request.End()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range h.spans.Ended() {
		byName[s.Name()] = s
	}
	if len(byName) != 4 {
		t.Fatalf("spans %v, want request, idem.Do, store.Acquire and fn", slices.Collect(maps.Keys(byName)))
	}
	do := byName["idem.Do"]
	for child, parent := range map[string]string{"idem.Do": "request", "store.Acquire": "idem.Do", "fn": "idem.Do"} {
		c, p := byName[child], byName[parent]
		if c.Parent().SpanID() != p.SpanContext().SpanID() || c.SpanContext().TraceID() != p.SpanContext().TraceID() {
			t.Errorf("span %s is not a child of %s", child, parent)
		}
	}
	if do.EndTime().Before(byName["store.Acquire"].EndTime()) || do.EndTime().Before(byName["fn"].EndTime()) {
		t.Error("idem.Do ended before its children")
	}
}

// TestUnsampled: with spans sampled out, metrics are still recorded, and
// the store's span is sampled out too, as a child of the unsampled one.
func TestUnsampled(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans), sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0))))
	h := newHarness(t)
	obs := idemotel.New(idemotel.WithMeterProvider(h.mp), idemotel.WithTracerProvider(tp))
	op := idem.New[string, int](spanStore{memstore.New(), tp.Tracer("test")}, idem.WithObserver(obs))
	if _, err := op.Do(context.Background(), k1, "a", ok); err != nil {
		t.Fatal(err)
	}
	if n := len(spans.Started()); n != 0 {
		t.Errorf("%d spans recorded, want none", n)
	}
	if n := h.collect(t).count(t, "idem.operation.duration", "idem.outcome=executed"); n != 1 {
		t.Errorf("idem.operation.duration: %d, want 1", n)
	}
}

// TestTwoObservers: each of two observers ends its own span, the second's
// a child of the first's.
func TestTwoObservers(t *testing.T) {
	h := newHarness(t)
	second := idemotel.New(idemotel.WithMeterProvider(h.mp), idemotel.WithTracerProvider(h.tp))
	op := idem.New[string, int](memstore.New(), idem.WithObserver(h.obs), idem.WithObserver(second))
	if _, err := op.Do(context.Background(), k1, "a", ok); err != nil {
		t.Fatal(err)
	}
	spans := h.idemSpans()
	if len(spans) != 2 || len(h.spans.Started()) != 2 {
		t.Fatalf("%d idem.Do spans ended of %d started, want 2 of 2", len(spans), len(h.spans.Started()))
	}
	outer, inner := spans[0], spans[1]
	if inner.Parent().SpanID() != outer.SpanContext().SpanID() {
		outer, inner = inner, outer
	}
	if inner.Parent().SpanID() != outer.SpanContext().SpanID() {
		t.Error("the second observer's span is not a child of the first's")
	}
	for _, s := range spans {
		if out, _ := spanAttr(s, "idem.outcome"); out != "executed" {
			t.Errorf("span outcome %q", out)
		}
	}
	if n := h.collect(t).count(t, "idem.operation.duration"); n != 2 {
		t.Errorf("idem.operation.duration: %d points, want 2, one per observer", n)
	}
}

// TestDefaults: New without options uses the global providers, no-ops
// until the application installs an SDK; nil providers keep the defaults.
func TestDefaults(t *testing.T) {
	for _, obs := range []*idem.Observer{idemotel.New(), idemotel.New(idemotel.WithMeterProvider(nil), idemotel.WithTracerProvider(nil))} {
		op := idem.New[string, int](memstore.New(), idem.WithObserver(obs))
		for range 2 {
			if _, err := op.Do(context.Background(), k1, "a", ok); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestNamespaceOverflow: past 1000 namespaces, metrics record the others
// as one; spans still name them.
func TestNamespaceOverflow(t *testing.T) {
	h := newHarness(t)
	store := memstore.New()
	const n = 1003
	for i := range n {
		op := idem.New[string, int](store, idem.WithNamespace("ns"+strconv.Itoa(i)), idem.WithObserver(h.obs))
		if _, err := op.Do(context.Background(), k1, "a", ok); err != nil {
			t.Fatal(err)
		}
	}
	m := h.collect(t)
	if got := m.count(t, "idem.operation.duration", "idem.namespace=_OTHER", "otel.metric.overflow=true"); got != 3 {
		t.Errorf("overflow namespace: %d calls, want 3", got)
	}
	if got := m.count(t, "idem.operation.duration", "idem.namespace=ns999", "!otel.metric.overflow"); got != 1 {
		t.Errorf("namespace ns999: %d calls, want 1", got)
	}
	if got := m.count(t, "idem.operation.duration", "idem.namespace=ns1000"); got != 0 {
		t.Errorf("namespace ns1000 recorded by name (%d calls), want it in the overflow", got)
	}
	if got := m.count(t, "idem.execution.active"); got != 0 {
		t.Errorf("idem.execution.active: %d, want 0", got)
	}
	spans := h.idemSpans()
	if ns, _ := spanAttr(spans[len(spans)-1], "idem.namespace"); ns != "ns1002" {
		t.Errorf("the last span's namespace is %q, want ns1002", ns)
	}
}

// rootsOnly samples the spans that have no parent.
type rootsOnly struct{}

func (rootsOnly) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if trace.SpanContextFromContext(p.ParentContext).IsValid() {
		return sdktrace.SamplingResult{Decision: sdktrace.Drop}
	}
	return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample}
}

func (rootsOnly) Description() string { return "rootsOnly" }

// TestNested: a call of Do within fn of another, on the same observer,
// has its own span, a child of the outer one, or none when it is not
// sampled; either way the outer span is the outer call's.
func TestNested(t *testing.T) {
	for _, sampler := range []sdktrace.Sampler{sdktrace.AlwaysSample(), rootsOnly{}} {
		t.Run(sampler.Description(), func(t *testing.T) {
			spans := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans), sdktrace.WithSampler(sampler))
			obs := idemotel.New(idemotel.WithMeterProvider(newHarness(t).mp), idemotel.WithTracerProvider(tp))
			store := memstore.New()
			inner := idem.New[string, int](store, idem.WithNamespace("inner"), idem.WithObserver(obs))
			outer := idem.New[string, int](store, idem.WithNamespace("outer"), idem.WithObserver(obs))
			_, err := outer.Do(context.Background(), k1, "a", func(ctx context.Context, _ string) (int, error) {
				_, _ = inner.Do(ctx, k2, "a", func(context.Context, string) (int, error) { return 0, errors.New("no") })
				_, _ = inner.Do(ctx, k2, "a", ok)
				return 1, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			var outerSpan sdktrace.ReadOnlySpan
			for _, s := range spans.Ended() {
				ns, _ := spanAttr(s, "idem.namespace")
				out, _ := spanAttr(s, "idem.outcome")
				got[ns] += out + " "
				if ns == "outer" {
					outerSpan = s
				}
			}
			want := map[string]string{"outer": "executed ", "inner": "fn_error executed "}
			if sampler.Description() == "rootsOnly" {
				want = map[string]string{"outer": "executed "}
			}
			if !maps.Equal(got, want) || len(spans.Started()) != len(spans.Ended()) {
				t.Errorf("span outcomes %q (%d started, %d ended), want %q", got, len(spans.Started()), len(spans.Ended()), want)
			}
			if outerSpan != nil && outerSpan.Status().Code != codes.Unset {
				t.Errorf("the outer span's status is %v", outerSpan.Status())
			}
		})
	}
}

// failingMeter fails to create float64 histograms.
type failingMeter struct{ metricnoop.Meter }

func (failingMeter) Float64Histogram(string, ...metric.Float64HistogramOption) (metric.Float64Histogram, error) {
	return nil, errors.New("no histograms today")
}

type failingProvider struct{ metricnoop.MeterProvider }

func (failingProvider) Meter(string, ...metric.MeterOption) metric.Meter { return failingMeter{} }

type errorHandler func(error)

func (h errorHandler) Handle(err error) { h(err) }

// TestInstrumentErrors: instruments that cannot be created are reported
// to otel.Handle, and the observer works without them.
func TestInstrumentErrors(t *testing.T) {
	// The default handler delegates to the first handler set, for good:
	// this one records only while the test runs.
	var (
		mu      sync.Mutex
		handled []error
		done    bool
	)
	prev := otel.GetErrorHandler()
	otel.SetErrorHandler(errorHandler(func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			handled = append(handled, err)
		}
	}))
	defer func() {
		otel.SetErrorHandler(prev)
		mu.Lock()
		done = true
		mu.Unlock()
	}()
	op := idem.New[string, int](memstore.New(), idem.WithObserver(idemotel.New(idemotel.WithMeterProvider(failingProvider{}))))
	for range 2 {
		if _, err := op.Do(context.Background(), k1, "a", ok); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != 3 {
		t.Errorf("otel.Handle got %v, want the 3 histograms' errors", handled)
	}
}
