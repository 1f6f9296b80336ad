package idemotel_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemotel"
	"github.com/idemkit/idem/memstore"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// TestPrometheus scrapes the metrics through the OpenTelemetry Prometheus
// exporter, served by promhttp.
func TestPrometheus(t *testing.T) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	op := idem.New[string, int](memstore.New(), idem.WithNamespace("pay"), idem.WithObserver(idemotel.New(idemotel.WithMeterProvider(mp))))
	ctx := context.Background()
	for _, req := range []string{"a", "a", "b"} {
		_, _ = op.Do(ctx, k1, req, ok)
	}
	down := idem.New[string, int](downStore{}, idem.WithNamespace("pay"), idem.WithObserver(idemotel.New(idemotel.WithMeterProvider(mp))))
	_, _ = down.Do(ctx, k1, "a", ok)

	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, want := range []string{
		"# TYPE idem_operation_duration_seconds histogram",
		`idem_operation_duration_seconds_count{error_type="key_reused",idem_namespace="pay",idem_outcome="key_reused"`,
		`idem_operation_duration_seconds_count{idem_namespace="pay",idem_outcome="executed"`,
		`idem_operation_duration_seconds_count{idem_namespace="pay",idem_outcome="replayed"`,
		"idem_execution_duration_seconds_bucket{",
		"idem_record_size_bytes_bucket{",
		"idem_execution_active{",
		`idem_store_errors_total{idem_namespace="pay",idem_store_operation="acquire",`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the scrape lacks %q", want)
		}
	}
	if strings.Contains(text, secret) {
		t.Error("the scrape shows a key")
	}
	if t.Failed() || testing.Verbose() {
		for _, l := range strings.Split(text, "\n") {
			if strings.HasPrefix(l, "idem_") && !strings.Contains(l, "_bucket") || strings.HasPrefix(l, "# TYPE idem") {
				t.Log(l)
			}
		}
	}
}

// downStore fails every call, as a store that is down.
type downStore struct{}

func (downStore) Acquire(context.Context, string, string, time.Duration) (idem.Acquisition, error) {
	return idem.Acquisition{}, errors.New("connection refused")
}

func (downStore) Wait(context.Context, string) error { return errors.New("connection refused") }
