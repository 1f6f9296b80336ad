package kafkaadapter_test

import (
	"context"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/kafkaadapter"
	"github.com/idemkit/idem/memstore"
)

func TestKeyFromContext(t *testing.T) {
	for _, tc := range []struct {
		name      string
		opts      []kafkaadapter.Option
		rec       *kgo.Record
		wantScope string
		wantRaw   string // "" to check only Scope and Stored
	}{
		{"header key", nil, rec("k-1", "order"), "payments", "k-1"},
		{"WithKey", []kafkaadapter.Option{kafkaadapter.WithKey(func(*kgo.Record) (string, error) { return "order-9", nil })},
			rec("", "order"), "payments", "order-9"},
		{"position key", nil, rec("", "order"), "payments/position", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got kafkaadapter.Key
			var ok, ran bool
			p := kafkaadapter.New(memstore.New(), "payments", func(ctx context.Context, _ *kgo.Record) error {
				ran = true
				got, ok = kafkaadapter.KeyFromContext(ctx)
				return nil
			}, tc.opts...)
			res := p.Process(t.Context(), tc.rec)
			if !ran {
				t.Fatalf("handler did not run: %+v", res)
			}
			if !ok || got.Scope != tc.wantScope || got.Raw == "" || got.Stored != idem.ScopedKey(got.Scope, got.Raw) ||
				(tc.wantRaw != "" && got.Raw != tc.wantRaw) {
				t.Errorf("KeyFromContext = %+v, %v; want Raw %q, Scope %q", got, ok, tc.wantRaw, tc.wantScope)
			}
		})
	}
	if _, ok := kafkaadapter.KeyFromContext(t.Context()); ok {
		t.Error("KeyFromContext of a bare context reports a key")
	}
}
