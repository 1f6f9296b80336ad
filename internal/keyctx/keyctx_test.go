package keyctx

import (
	"context"
	"testing"
)

type a struct{ s string }
type b a // the same shape, another type

func TestWithFrom(t *testing.T) {
	ctx := With(context.Background(), &a{"x"})
	if got, ok := From[a](ctx); !ok || got.s != "x" {
		t.Errorf("From[a] = %v, %v; want {x}, true", got, ok)
	}
	// Another type of the same shape has a key of its own.
	if got, ok := From[b](ctx); ok {
		t.Errorf("From[b] = %v, true; want none", got)
	}
	if _, ok := From[a](With[a](context.Background(), nil)); ok {
		t.Error("From of a nil *a reports a key")
	}
	if _, ok := From[a](context.Background()); ok {
		t.Error("From of a bare context reports a key")
	}
}
