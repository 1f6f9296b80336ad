package idemotel_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"slices"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemotel"
	"github.com/idemkit/idem/memstore"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

func ExampleNew() {
	reader := sdkmetric.NewManualReader() // in production, an exporter's reader
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	tp := sdktrace.NewTracerProvider() // and sdktrace.WithBatcher(exporter)
	charges := idem.New[string, int](memstore.New(),
		idem.WithNamespace("charges"),
		idem.WithObserver(idemotel.New(idemotel.WithMeterProvider(mp), idemotel.WithTracerProvider(tp))))

	ctx := context.Background()
	charge := func(context.Context, string) (int, error) { return 1999, nil }
	_, _ = charges.Do(ctx, "order-1", "1999 EUR", charge) // runs
	_, _ = charges.Do(ctx, "order-1", "1999 EUR", charge) // replayed
	_, _ = charges.Do(ctx, "order-1", "5 EUR", charge)    // key reused

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	var lines []string
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name != "idem.operation.duration" {
			continue
		}
		for _, p := range m.Data.(metricdata.Histogram[float64]).DataPoints {
			ns, _ := p.Attributes.Value("idem.namespace")
			outcome, _ := p.Attributes.Value("idem.outcome")
			lines = append(lines, fmt.Sprintf("%s %s: %d", ns.AsString(), outcome.AsString(), p.Count))
		}
	}
	slices.Sort(lines)
	for _, l := range lines {
		fmt.Println(l)
	}
	// Output:
	// charges executed: 1
	// charges key_reused: 1
	// charges replayed: 1
}

// Metrics for Prometheus to scrape: the OpenTelemetry Prometheus exporter
// registers with the default registry, which promhttp serves. The names
// follow Prometheus's conventions: idem.operation.duration is
// idem_operation_duration_seconds, idem.lease.losses is
// idem_lease_losses_total.
func ExampleNew_prometheus() {
	exporter, err := otelprom.New()
	if err != nil {
		log.Fatal(err)
	}
	otel.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter)))

	charges := idem.New[string, int](memstore.New(), idem.WithObserver(idemotel.New()))
	_ = charges

	http.Handle("/metrics", promhttp.Handler())
	log.Fatal(http.ListenAndServe("localhost:9464", nil))
}
