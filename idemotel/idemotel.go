package idemotel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the meter and the tracer.
const ScopeName = "github.com/idemkit/idem/idemotel"

// The span's name and the attributes' keys.
const (
	spanName = "idem.Do"

	attrNamespace = "idem.namespace"
	attrOutcome   = "idem.outcome"
	attrErrorType = "error.type"
	attrReplayed  = "idem.replayed"
	attrKeyHash   = "idem.key.hash"
	attrStoreOp   = "idem.store.operation"
)

// An Option configures New.
type Option func(*config)

type config struct {
	mp       metric.MeterProvider
	tp       trace.TracerProvider
	hashKeys bool
}

// WithMeterProvider sets the MeterProvider the instruments are created
// with; by default, and when mp is nil, otel.GetMeterProvider().
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) {
		if mp != nil {
			c.mp = mp
		}
	}
}

// WithTracerProvider sets the TracerProvider the spans are started with;
// by default, and when tp is nil, otel.GetTracerProvider().
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) {
		if tp != nil {
			c.tp = tp
		}
	}
}

// WithHashedKeys puts the idempotency key on each span, as the attribute
// idem.key.hash: the hex encoding of the first 16 bytes of the key's
// SHA-256, never the key itself, so that the calls of one key can be found
// among traces. Metrics never carry it.
//
// The hash is not salted: it tells calls apart, it does not keep a secret.
// A key drawn from a small or guessable set (an order number) can be found
// again from its hash by hashing every candidate.
func WithHashedKeys() Option {
	return func(c *config) { c.hashKeys = true }
}

// New returns an Observer, for idem.WithObserver, that records metrics and
// spans of every call of Do (see the package documentation). An error from
// creating an instrument is given to otel.Handle, and that instrument left
// out; the others still work.
func New(opts ...Option) *idem.Observer {
	var cfg config
	for _, opt := range opts {
		opt(&cfg)
	}
	if cfg.mp == nil {
		cfg.mp = otel.GetMeterProvider()
	}
	if cfg.tp == nil {
		cfg.tp = otel.GetTracerProvider()
	}
	o := &observer{
		tracer:   cfg.tp.Tracer(ScopeName),
		hashKeys: cfg.hashKeys,
		overflow: newNSAttrs(overflowNamespace, true),
	}
	o.instruments(cfg.mp.Meter(ScopeName))
	return &idem.Observer{
		Start:        o.start,
		Wait:         o.wait,
		LeaseRefresh: o.leaseRefresh,
		LeaseLost:    o.leaseLost,
		StoreError:   o.storeError,
		CommitRetry:  o.commitRetry,
		Done:         o.done,
	}
}

// Advised bucket boundaries: seconds from a memstore replay (a few µs) to a
// long fn, and bytes from a small value to a large one.
var (
	secondsBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
	bytesBuckets   = []float64{64, 256, 1024, 4096, 16384, 65536, 262144, 1048576}
)

type observer struct {
	tracer   trace.Tracer
	hashKeys bool

	opDuration   metric.Float64Histogram
	execDuration metric.Float64Histogram
	waitDuration metric.Float64Histogram
	recordSize   metric.Int64Histogram
	leaseLosses  metric.Int64Counter
	storeErrors  metric.Int64Counter

	// namespaces maps a namespace to its precomputed attribute sets and
	// its count of calls in progress; it is copied on write, under mu.
	// Namespaces past maxNamespaces share overflow.
	namespaces atomic.Pointer[map[string]*nsAttrs]
	mu         sync.Mutex
	overflow   *nsAttrs
}

func (o *observer) instruments(m metric.Meter) {
	o.opDuration = or[metric.Float64Histogram](noop.Float64Histogram{})(m.Float64Histogram("idem.operation.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of calls of idem's Do, by outcome."),
		metric.WithExplicitBucketBoundaries(secondsBuckets...)))
	o.execDuration = or[metric.Float64Histogram](noop.Float64Histogram{})(m.Float64Histogram("idem.execution.duration",
		metric.WithUnit("s"), metric.WithDescription("How long fn ran, in calls of Do where it ran."),
		metric.WithExplicitBucketBoundaries(secondsBuckets...)))
	o.waitDuration = or[metric.Float64Histogram](noop.Float64Histogram{})(m.Float64Histogram("idem.wait.duration",
		metric.WithUnit("s"), metric.WithDescription("Time a call of Do waited for an in-flight call with the same key, per call that waited."),
		metric.WithExplicitBucketBoundaries(secondsBuckets...)))
	o.recordSize = or[metric.Int64Histogram](noop.Int64Histogram{})(m.Int64Histogram("idem.record.size",
		metric.WithUnit("By"), metric.WithDescription("Size of the records stored."),
		metric.WithExplicitBucketBoundaries(bytesBuckets...)))
	o.leaseLosses = or[metric.Int64Counter](noop.Int64Counter{})(m.Int64Counter("idem.lease.losses",
		metric.WithUnit("{loss}"), metric.WithDescription("Calls of Do whose lease was lost: fn cancelled, or its outcome not stored.")))
	o.storeErrors = or[metric.Int64Counter](noop.Int64Counter{})(m.Int64Counter("idem.store.errors",
		metric.WithUnit("{error}"), metric.WithDescription("Failed store operations, other than lost leases.")))
	// Calls in progress are counted in the namespaces' atomic counters,
	// and observed at collection: two atomic adds per call instead of two
	// measurements.
	_ = or[metric.Int64ObservableUpDownCounter](nil)(m.Int64ObservableUpDownCounter("idem.execution.active",
		metric.WithUnit("{call}"), metric.WithDescription("Calls of Do in progress: started, not yet returned."),
		metric.WithInt64Callback(o.observeActive)))
}

// or returns a function that gives err to otel.Handle, and returns inst,
// or fallback when inst is nil: an instrument that could not be created
// records nothing, and the others still work.
func or[T any](fallback T) func(inst T, err error) T {
	return func(inst T, err error) T {
		if err != nil {
			otel.Handle(err)
		}
		if any(inst) == nil {
			return fallback
		}
		return inst
	}
}

func (o *observer) observeActive(_ context.Context, obs metric.Int64Observer) error {
	if m := o.namespaces.Load(); m != nil {
		for _, a := range *m {
			obs.Observe(a.active.Load(), a.observe...)
		}
	}
	if m := o.namespaces.Load(); m != nil && len(*m) >= maxNamespaces {
		obs.Observe(o.overflow.active.Load(), o.overflow.observe...)
	}
	return nil
}

// spanKey is the context key under which start leaves its recording span
// for the other funcs: the span in the context may be another's, when
// another observer's Start ran after this one's.
type spanKey struct{ o *observer }

func (o *observer) span(ctx context.Context) trace.Span {
	s, _ := ctx.Value(spanKey{o}).(trace.Span)
	return s
}

func (o *observer) start(ctx context.Context, c idem.Call) context.Context {
	ns := o.namespace(c.Namespace)
	ns.active.Add(1)
	opts := ns.spanStart
	if ns == o.overflow {
		opts = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(attribute.String(attrNamespace, c.Namespace))}
	}
	ctx, span := o.tracer.Start(ctx, spanName, opts...)
	if !span.IsRecording() {
		// ctx keeps the span for its span context (children are not
		// sampled either). A call of Do within fn of another, whose span
		// records, must not take that span for its own.
		if o.span(ctx) != nil {
			return context.WithValue(ctx, spanKey{o}, nil)
		}
		return ctx
	}
	if o.hashKeys {
		span.SetAttributes(attribute.String(attrKeyHash, hashKey(c.Key)))
	}
	return context.WithValue(ctx, spanKey{o}, span)
}

func hashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:16])
}

func (o *observer) wait(ctx context.Context, _ idem.Call, d time.Duration) {
	if span := o.span(ctx); span != nil {
		span.AddEvent("idem.wait", trace.WithAttributes(attribute.Float64("idem.wait.duration", d.Seconds())))
	}
}

var (
	refreshOK     = trace.WithAttributes(attribute.Bool("idem.lease.refresh.failed", false))
	refreshFailed = trace.WithAttributes(attribute.Bool("idem.lease.refresh.failed", true))
)

func (o *observer) leaseRefresh(ctx context.Context, _ idem.Call, err error) {
	if span := o.span(ctx); span != nil {
		if err != nil {
			span.AddEvent("idem.lease.refresh", refreshFailed)
		} else {
			span.AddEvent("idem.lease.refresh", refreshOK)
		}
	}
}

func (o *observer) leaseLost(ctx context.Context, c idem.Call) {
	o.leaseLosses.Add(ctx, 1, o.namespace(c.Namespace).add...)
	if span := o.span(ctx); span != nil {
		span.AddEvent("idem.lease.lost")
	}
}

// The store operations an Observer is told of.
var storeOps = [...]string{"acquire", "wait", "refresh", "commit", "release"}

func storeOpIndex(op string) int {
	for i, s := range storeOps {
		if s == op {
			return i
		}
	}
	return -1
}

func (o *observer) storeError(ctx context.Context, c idem.Call, op string, _ error) {
	ns := o.namespace(c.Namespace)
	i := storeOpIndex(op)
	if i >= 0 {
		o.storeErrors.Add(ctx, 1, ns.store[i]...)
	} else {
		o.storeErrors.Add(ctx, 1, metric.WithAttributes(ns.kv, attribute.String(attrStoreOp, op)))
	}
	if span := o.span(ctx); span != nil {
		if i >= 0 {
			span.AddEvent("idem.store.error", storeEvents[i])
		} else {
			span.AddEvent("idem.store.error", trace.WithAttributes(attribute.String(attrStoreOp, op)))
		}
	}
}

func (o *observer) commitRetry(ctx context.Context, _ idem.Call, attempt int, _ error) {
	if span := o.span(ctx); span != nil {
		span.AddEvent("idem.commit.retry", trace.WithAttributes(attribute.Int("idem.commit.attempt", attempt)))
	}
}

func (o *observer) done(ctx context.Context, c idem.Call, end idem.CallEnd) {
	ns := o.namespace(c.Namespace)
	oc := outcomeIndex(end.Info.Outcome)
	e := 0
	if end.Err != nil {
		e = 1
	}
	ns.active.Add(-1)
	o.opDuration.Record(ctx, end.Duration.Seconds(), ns.op[oc][e]...)
	if end.FnDuration > 0 || end.Info.Outcome.Ran() {
		o.execDuration.Record(ctx, end.FnDuration.Seconds(), ns.outcome[oc]...)
	}
	if end.Waited > 0 {
		o.waitDuration.Record(ctx, end.Waited.Seconds(), ns.outcome[oc]...)
	}
	if end.RecordSize > 0 {
		o.recordSize.Record(ctx, int64(end.RecordSize), ns.rec...)
	}
	if span := o.span(ctx); span != nil {
		span.SetAttributes(spanEnd[oc][e]...)
		if spanError[oc] || (oc == 0 && e == 1) {
			span.SetStatus(codes.Error, outcomeNames[oc])
		}
		span.End()
	}
}

// Outcomes, indexed as outcomeIndex says: 0 for an outcome unknown to this
// package, then idem's in order.
var (
	outcomeNames []string
	errorTypes   []string // error.type of an error with each outcome
	spanError    []bool   // the span's status is Error
	spanEnd      [][2][]attribute.KeyValue
	storeEvents  [len(storeOps)]trace.EventOption
)

func init() {
	outcomeNames = []string{"unknown"}
	errorTypes = []string{"_OTHER"}
	for o := idem.Outcome(1); o != 0 && o.String() != "unknown"; o++ {
		name := o.String()
		outcomeNames = append(outcomeNames, name)
		errorTypes = append(errorTypes, name)
	}
	errorTypes[idem.OutcomeReplayed] = idem.OutcomeFinalError.String()
	spanError = make([]bool, len(outcomeNames))
	for _, o := range []idem.Outcome{
		idem.OutcomeFnError, idem.OutcomeFinalError, idem.OutcomeHeld,
		idem.OutcomeNotStored, idem.OutcomeStoreError, idem.OutcomeCorruptRecord, idem.OutcomeInvalid,
	} {
		spanError[o] = true
	}
	spanEnd = make([][2][]attribute.KeyValue, len(outcomeNames))
	for i, name := range outcomeNames {
		replayed := attribute.Bool(attrReplayed, i == int(idem.OutcomeReplayed))
		spanEnd[i][0] = []attribute.KeyValue{attribute.String(attrOutcome, name), replayed}
		spanEnd[i][1] = []attribute.KeyValue{attribute.String(attrOutcome, name), replayed, attribute.String(attrErrorType, errorTypes[i])}
	}
	for i, op := range storeOps {
		storeEvents[i] = trace.WithAttributes(attribute.String(attrStoreOp, op))
	}
}

func outcomeIndex(o idem.Outcome) int {
	if int(o) < len(outcomeNames) {
		return int(o)
	}
	return 0
}

// nsAttrs holds one namespace's attribute sets, as ready options, so that
// recording allocates nothing.
type nsAttrs struct {
	active    atomic.Int64 // calls in progress
	kv        attribute.KeyValue
	observe   []metric.ObserveOption            // idem.namespace
	add       []metric.AddOption                // idem.namespace
	rec       []metric.RecordOption             // idem.namespace
	outcome   [][]metric.RecordOption           // and idem.outcome
	op        [][2][]metric.RecordOption        // and idem.outcome, and error.type with an error
	store     [len(storeOps)][]metric.AddOption // idem.namespace, idem.store.operation
	spanStart []trace.SpanStartOption
}

// maxNamespaces bounds the namespaces told apart in metrics. Namespaces are
// meant to be few, one per Operation; past this many, the others are
// recorded as one, idem.namespace="_OTHER" with otel.metric.overflow=true,
// as the SDK does past its cardinality limit. Spans still name them.
const (
	maxNamespaces     = 1000
	overflowNamespace = "_OTHER"
)

func (o *observer) namespace(ns string) *nsAttrs {
	if m := o.namespaces.Load(); m != nil {
		if a, ok := (*m)[ns]; ok {
			return a
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	old := o.namespaces.Load()
	if old != nil {
		if a, ok := (*old)[ns]; ok {
			return a
		}
		if len(*old) >= maxNamespaces {
			return o.overflow
		}
	}
	a := newNSAttrs(ns, false)
	m := make(map[string]*nsAttrs, 1)
	if old != nil {
		m = make(map[string]*nsAttrs, len(*old)+1)
		for k, v := range *old {
			m[k] = v
		}
	}
	m[ns] = a
	o.namespaces.Store(&m)
	return a
}

func newNSAttrs(ns string, overflow bool) *nsAttrs {
	kv := attribute.String(attrNamespace, ns)
	opt := func(kvs ...attribute.KeyValue) metric.MeasurementOption {
		if overflow {
			kvs = append(kvs, attribute.Bool("otel.metric.overflow", true))
		}
		return metric.WithAttributeSet(attribute.NewSet(kvs...))
	}
	nsOpt := opt(kv)
	a := &nsAttrs{
		kv:      kv,
		observe: []metric.ObserveOption{nsOpt},
		add:     []metric.AddOption{nsOpt},
		rec:     []metric.RecordOption{nsOpt},
		outcome: make([][]metric.RecordOption, len(outcomeNames)),
		op:      make([][2][]metric.RecordOption, len(outcomeNames)),
		spanStart: []trace.SpanStartOption{
			trace.WithSpanKind(trace.SpanKindInternal),
			trace.WithAttributes(kv),
		},
	}
	for i, name := range outcomeNames {
		out := attribute.String(attrOutcome, name)
		a.outcome[i] = []metric.RecordOption{opt(kv, out)}
		a.op[i][0] = a.outcome[i]
		a.op[i][1] = []metric.RecordOption{opt(kv, out, attribute.String(attrErrorType, errorTypes[i]))}
	}
	for i, op := range storeOps {
		a.store[i] = []metric.AddOption{opt(kv, attribute.String(attrStoreOp, op))}
	}
	if overflow {
		a.spanStart = nil // start names the namespace
	}
	return a
}
