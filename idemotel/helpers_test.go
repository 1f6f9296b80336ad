package idemotel_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemotel"
	"github.com/idemkit/idem/internal/redistest"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }

// harness is an SDK MeterProvider read by hand and a TracerProvider that
// records every span, with an Observer on them.
type harness struct {
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	obs    *idem.Observer
}

func newHarness(t testing.TB, opts ...idemotel.Option) *harness {
	t.Helper()
	h := &harness{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	h.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader))
	h.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(h.spans))
	t.Cleanup(func() {
		_ = h.mp.Shutdown(context.Background())
		_ = h.tp.Shutdown(context.Background())
	})
	h.obs = idemotel.New(append([]idemotel.Option{idemotel.WithMeterProvider(h.mp), idemotel.WithTracerProvider(h.tp)}, opts...)...)
	return h
}

// collect returns the metrics recorded so far, checking that they are all
// under the package's scope.
func (h *harness) collect(t testing.TB) metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	m := metrics{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != idemotel.ScopeName {
			t.Errorf("metrics under scope %q, want %q", sm.Scope.Name, idemotel.ScopeName)
		}
		for _, x := range sm.Metrics {
			m[x.Name] = x
		}
	}
	return m
}

type metrics map[string]metricdata.Metrics

// match reports whether set has every attribute of want (name=value; an
// empty value must be present and empty) and, for a name given as "!name",
// does not have it.
func match(set attribute.Set, want []string) bool {
	for _, w := range want {
		if absent, ok := strings.CutPrefix(w, "!"); ok {
			if set.HasValue(attribute.Key(absent)) {
				return false
			}
			continue
		}
		k, v, _ := strings.Cut(w, "=")
		got, ok := set.Value(attribute.Key(k))
		if !ok || got.String() != v {
			return false
		}
	}
	return true
}

// count is the number of measurements of the histogram name, or the sum of
// the counter name, over the points with the attributes want.
func (m metrics) count(t testing.TB, name string, want ...string) int64 {
	t.Helper()
	x, ok := m[name]
	if !ok {
		return 0
	}
	var n int64
	switch d := x.Data.(type) {
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			if match(p.Attributes, want) {
				n += int64(p.Count)
			}
		}
	case metricdata.Histogram[int64]:
		for _, p := range d.DataPoints {
			if match(p.Attributes, want) {
				n += int64(p.Count)
			}
		}
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			if match(p.Attributes, want) {
				n += p.Value
			}
		}
	default:
		t.Fatalf("%s: unexpected data %T", name, x.Data)
	}
	return n
}

// attributeSets returns every attribute set of every data point and
// exemplar.
func (m metrics) attributeSets() map[string][]attribute.KeyValue {
	out := map[string][]attribute.KeyValue{}
	add := func(name string, s attribute.Set, filtered ...[]attribute.KeyValue) {
		out[name] = append(out[name], s.ToSlice()...)
		for _, f := range filtered {
			out[name] = append(out[name], f...)
		}
	}
	for name, x := range m {
		switch d := x.Data.(type) {
		case metricdata.Histogram[float64]:
			for _, p := range d.DataPoints {
				add(name, p.Attributes)
				for _, e := range p.Exemplars {
					add(name+" exemplar", attribute.NewSet(), e.FilteredAttributes)
				}
			}
		case metricdata.Histogram[int64]:
			for _, p := range d.DataPoints {
				add(name, p.Attributes)
				for _, e := range p.Exemplars {
					add(name+" exemplar", attribute.NewSet(), e.FilteredAttributes)
				}
			}
		case metricdata.Sum[int64]:
			for _, p := range d.DataPoints {
				add(name, p.Attributes)
				for _, e := range p.Exemplars {
					add(name+" exemplar", attribute.NewSet(), e.FilteredAttributes)
				}
			}
		}
	}
	return out
}

// idemSpans returns the ended spans named idem.Do.
func (h *harness) idemSpans() []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range h.spans.Ended() {
		if s.Name() == "idem.Do" {
			out = append(out, s)
		}
	}
	return out
}

func spanAttr(s sdktrace.ReadOnlySpan, key string) (string, bool) {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.String(), true
		}
	}
	return "", false
}

func eventNames(s sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, e := range s.Events() {
		out = append(out, e.Name)
	}
	return out
}

// noKeys fails t if any of keys appears in a metric's name, attribute key
// or value, or in a span's name, attributes, status, or events, of every
// span started, ended or not.
func (h *harness) noKeys(t testing.TB, m metrics, keys ...string) {
	t.Helper()
	check := func(where, s string) {
		for _, k := range keys {
			if strings.Contains(s, k) {
				t.Errorf("the key %q appears in %s: %q", k, where, s)
			}
		}
	}
	for name, kvs := range m.attributeSets() {
		check("a metric name", name)
		for _, kv := range kvs {
			check("metric "+name+" attribute "+string(kv.Key), string(kv.Key)+"="+kv.Value.String())
		}
	}
	var spans []sdktrace.ReadOnlySpan
	for _, s := range h.spans.Started() {
		spans = append(spans, s)
	}
	for _, s := range spans {
		check("a span name", s.Name())
		check("span status", s.Status().Description)
		for _, kv := range s.Attributes() {
			check("span attribute "+string(kv.Key), string(kv.Key)+"="+kv.Value.String())
		}
		for _, e := range s.Events() {
			check("span event", e.Name)
			for _, kv := range e.Attributes {
				check("span event "+e.Name+" attribute "+string(kv.Key), string(kv.Key)+"="+kv.Value.String())
			}
		}
		for _, l := range s.Links() {
			for _, kv := range l.Attributes {
				check("span link attribute", string(kv.Key)+"="+kv.Value.String())
			}
		}
	}
}
