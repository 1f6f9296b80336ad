package httpadapter

import (
	"context"

	"github.com/idemkit/idem/internal/keyctx"
)

// Key is the idempotency key of the call a handler is running for.
type Key struct {
	// Raw is the key as the client sent it, unquoted from the Idempotency-Key header.
	Raw string
	// Scope is the scope WithScope gave, "" without one.
	Scope string
	// Stored is the key idem stores the call under: idem.ScopedKey(Scope, Raw)
	// (before any idem.WithNamespace prefix). It is stable across retries
	// of the call, so a key derived from it can go downstream, as the
	// idempotency key of a request to a payment provider. It is unique
	// only within this Operation's namespace: when several services share
	// a provider account, prefix it with the service's name.
	Stored string
}

// KeyFromContext returns the idempotency key of the call whose handler ctx
// belongs to, and whether there is one: calls that pass through without a
// key, or that are not protected, have none.
func KeyFromContext(ctx context.Context) (Key, bool) {
	return keyctx.From[Key](ctx)
}
