// Package idemslog logs what happens in calls of idem's Do to a log/slog
// Logger: an idem.Observer for idem.WithObserver.
//
// Lease losses, store errors and commit retries are logged at Warn, as is
// a call whose outcome is not_stored (fn ran, its result was not stored,
// and a retry may run it again: alert on it); every call's outcome at
// Debug. Idempotency keys can carry customer data, so they are logged
// hashed ("key_hash", the first 8 bytes of their SHA-256, in hex) unless
// WithRawKeys says otherwise; the hash is stable, so one key's lines can
// still be found together.
package idemslog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"

	"github.com/idemkit/idem"
)

// Option configures the Observer New returns.
type Option func(*logger)

// WithRawKeys logs idempotency keys as they are ("key"), instead of hashed.
// Use it only where keys carry nothing private.
func WithRawKeys() Option {
	return func(l *logger) { l.rawKeys = true }
}

type logger struct {
	l       *slog.Logger
	rawKeys bool
}

// New returns an Observer that logs to l (slog.Default() when l is nil).
func New(l *slog.Logger, opts ...Option) *idem.Observer {
	if l == nil {
		l = slog.Default()
	}
	lg := &logger{l: l}
	for _, o := range opts {
		o(lg)
	}
	return &idem.Observer{
		LeaseLost: func(ctx context.Context, c idem.Call) {
			lg.log(ctx, slog.LevelWarn, "idem: lease lost", c)
		},
		StoreError: func(ctx context.Context, c idem.Call, op string, err error) {
			lg.log(ctx, slog.LevelWarn, "idem: store error", c, slog.String("operation", op), slog.String("error", err.Error()))
		},
		CommitRetry: func(ctx context.Context, c idem.Call, attempt int, err error) {
			lg.log(ctx, slog.LevelWarn, "idem: commit retried", c, slog.Int("attempt", attempt), slog.String("error", err.Error()))
		},
		Done: func(ctx context.Context, c idem.Call, end idem.CallEnd) {
			level := slog.LevelDebug
			if end.Info.Outcome == idem.OutcomeNotStored {
				level = slog.LevelWarn
			}
			if !lg.l.Enabled(ctx, level) {
				return
			}
			attrs := []slog.Attr{
				slog.String("outcome", end.Info.Outcome.String()),
				slog.Duration("duration", end.Duration),
			}
			if end.Info.Outcome.Ran() {
				attrs = append(attrs, slog.Duration("fn_duration", end.FnDuration))
			}
			if end.Waited > 0 {
				attrs = append(attrs, slog.Duration("waited", end.Waited))
			}
			if end.RecordSize > 0 {
				attrs = append(attrs, slog.Int("record_size", end.RecordSize))
			}
			if end.Err != nil {
				attrs = append(attrs, slog.String("error", end.Err.Error()))
			}
			lg.log(ctx, level, "idem: call", c, attrs...)
		},
	}
}

// log writes one record about call c, with its namespace and key.
func (lg *logger) log(ctx context.Context, level slog.Level, msg string, c idem.Call, attrs ...slog.Attr) {
	if !lg.l.Enabled(ctx, level) {
		return
	}
	key := slog.String("key", c.Key)
	if !lg.rawKeys {
		key = slog.String("key_hash", HashKey(c.Key))
	}
	lg.l.LogAttrs(ctx, level, msg, append([]slog.Attr{slog.String("namespace", c.Namespace), key}, attrs...)...)
}

// HashKey returns how a key is logged without WithRawKeys: the first 8
// bytes of its SHA-256, in hex. Compute it for a key at hand to find its
// lines.
func HashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:8])
}
