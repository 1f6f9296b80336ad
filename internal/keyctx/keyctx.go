// Package keyctx carries an adapter's call key in a context. Each adapter
// keeps a Key type of its own, documented for its transport, and its own
// KeyFromContext; this package holds the code they share.
package keyctx

import "context"

// ctxKey is the context key for a *K: one type, and so one key, per K.
type ctxKey[K any] struct{}

// With returns ctx holding k, for From.
func With[K any](ctx context.Context, k *K) context.Context {
	return context.WithValue(ctx, ctxKey[K]{}, k)
}

// From returns the K that ctx holds, and whether it holds one: a nil *K
// counts as none.
func From[K any](ctx context.Context) (K, bool) {
	k, ok := ctx.Value(ctxKey[K]{}).(*K)
	if !ok || k == nil {
		var zero K
		return zero, false
	}
	return *k, true
}
