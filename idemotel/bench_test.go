package idemotel_test

import (
	"context"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemotel"
	"github.com/idemkit/idem/memstore"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// The request and result of the core's BenchmarkMemstore.
type benchReq struct {
	Customer string
	Amount   int64
	Currency string
	Metadata map[string]string
}

type benchResp struct {
	ID       string
	Amount   int64
	Currency string
	Status   string
}

var (
	benchIn  = benchReq{Customer: "cus_9s6XKzkNRiz8i3", Amount: 1999, Currency: "eur", Metadata: map[string]string{"order": "o-1", "cart": "c-7"}}
	benchOut = benchResp{ID: "ch_3Mtw4xLkdIwHu7ix0QjHZyqf", Amount: 1999, Currency: "eur", Status: "succeeded"}
)

func benchFn(context.Context, benchReq) (benchResp, error) { return benchOut, nil }

// benchProviders returns the benchmarks' SDK providers: a MeterProvider
// with a ManualReader never read, shut down when b ends, and tracer
// providers that sample every span and none, without exporters.
func benchProviders(b *testing.B) (mp *sdkmetric.MeterProvider, always, never *sdktrace.TracerProvider) {
	mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	always = sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	never = sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	return mp, always, never
}

// BenchmarkReplayHit measures a memstore replay hit without an observer,
// with an observer that does nothing (the core's own cost of observing),
// and with idemotel on an SDK MeterProvider (a ManualReader never read)
// and various tracers: the no-op one, the SDK sampling every span (no
// exporter: the span is built and dropped), the SDK sampling none, and
// the SDK with hashed keys.
func BenchmarkReplayHit(b *testing.B) {
	mp, always, never := benchProviders(b)
	for _, c := range []struct {
		name string
		opts []idem.Option
	}{
		{"NoObserver", nil},
		{"EmptyObserver", []idem.Option{idem.WithObserver(&idem.Observer{
			Start: func(ctx context.Context, _ idem.Call) context.Context { return ctx },
			Done:  func(context.Context, idem.Call, idem.CallEnd) {},
		})}},
		{"Metrics", []idem.Option{idem.WithObserver(idemotel.New(idemotel.WithMeterProvider(mp), idemotel.WithTracerProvider(tracenoop.NewTracerProvider())))}},
		{"MetricsUnsampledSpans", []idem.Option{idem.WithObserver(idemotel.New(idemotel.WithMeterProvider(mp), idemotel.WithTracerProvider(never)))}},
		{"MetricsSampledSpans", []idem.Option{idem.WithObserver(idemotel.New(idemotel.WithMeterProvider(mp), idemotel.WithTracerProvider(always)))}},
		{"MetricsSampledSpansHashedKeys", []idem.Option{idem.WithObserver(idemotel.New(idemotel.WithMeterProvider(mp), idemotel.WithTracerProvider(always), idemotel.WithHashedKeys()))}},
	} {
		b.Run(c.name, func(b *testing.B) {
			op := idem.New[benchReq, benchResp](memstore.New(), c.opts...)
			ctx := context.Background()
			if _, err := op.Do(ctx, "k", benchIn, benchFn); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := op.Do(ctx, "k", benchIn, benchFn); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkObserver measures idemotel's own cost per call of Do, Start
// then Done of a replay, without Do around it.
func BenchmarkObserver(b *testing.B) {
	mp, always, never := benchProviders(b)
	for _, c := range []struct {
		name string
		obs  *idem.Observer
	}{
		{"Metrics", idemotel.New(idemotel.WithMeterProvider(mp), idemotel.WithTracerProvider(tracenoop.NewTracerProvider()))},
		{"MetricsUnsampledSpans", idemotel.New(idemotel.WithMeterProvider(mp), idemotel.WithTracerProvider(never))},
		{"MetricsSampledSpans", idemotel.New(idemotel.WithMeterProvider(mp), idemotel.WithTracerProvider(always))},
	} {
		b.Run(c.name, func(b *testing.B) {
			call := idem.Call{Namespace: "pay", Key: "k"}
			end := idem.CallEnd{Info: idem.Info{Key: "k", Outcome: idem.OutcomeReplayed, Replayed: true}, Duration: 700}
			b.ReportAllocs()
			for b.Loop() {
				ctx := c.obs.Start(context.Background(), call)
				c.obs.Done(ctx, call, end)
			}
		})
	}
}
