package idemslog_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemslog"
	"github.com/idemkit/idem/memstore"
)

// records is a slog.Handler that keeps every record, as "LEVEL msg
// k=v...".
type records struct {
	mu    sync.Mutex
	lines []string
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Level.String() + " " + rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	})
	r.mu.Lock()
	r.lines = append(r.lines, b.String())
	r.mu.Unlock()
	return nil
}

func (r *records) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.lines
	r.lines = nil
	return l
}

// leaseThief wraps memstore: its leases' refreshes find the lease gone.
type leaseThief struct{ *memstore.Store }

func (s leaseThief) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	a, err := s.Store.Acquire(ctx, key, fp, ttl)
	if a.Lease != nil {
		a.Lease = stolen{a.Lease}
	}
	return a, err
}

type stolen struct{ idem.Lease }

func (stolen) Refresh(context.Context, time.Duration) error { return idem.ErrLeaseLost }
func (stolen) Commit(context.Context, []byte, time.Duration) error {
	return idem.ErrLeaseLost
}

func TestLogs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var rec records
		const key = "cus_42/order-7"
		op := idem.New[string, int](memstore.New(), idem.WithNamespace("pay"), idem.WithObserver(idemslog.New(slog.New(&rec))))
		ctx := context.Background()
		_, _ = op.Do(ctx, key, "r", func(context.Context, string) (int, error) { return 1, nil })
		_, _ = op.Do(ctx, key, "r", func(context.Context, string) (int, error) { return 1, nil })
		_, _ = op.Do(ctx, "k2", "r", func(context.Context, string) (int, error) { return 0, errors.New("no") })
		hash := idemslog.HashKey(key)
		lines := rec.take()
		want := []string{
			"DEBUG idem: call namespace=pay key_hash=" + hash + " outcome=executed duration=0s fn_duration=0s record_size=",
			"DEBUG idem: call namespace=pay key_hash=" + hash + " outcome=replayed duration=0s",
			"DEBUG idem: call namespace=pay key_hash=" + idemslog.HashKey("k2") + " outcome=fn_error duration=0s fn_duration=0s error=no",
		}
		if len(lines) != len(want) {
			t.Fatalf("logged %q, want %d lines", lines, len(want))
		}
		for i := range want {
			if !strings.HasPrefix(lines[i], want[i]) {
				t.Errorf("line %d: %q, want it to start with %q", i, lines[i], want[i])
			}
			if strings.Contains(lines[i], key) {
				t.Errorf("line %d holds the raw key: %q", i, lines[i])
			}
		}

		// A lost lease: Warn, and the not_stored outcome at Warn too.
		thief := idem.New[string, int](leaseThief{memstore.New()}, idem.WithLockTTL(300*time.Millisecond), idem.WithObserver(idemslog.New(slog.New(&rec), idemslog.WithRawKeys())))
		_, _ = thief.Do(ctx, key, "r", func(context.Context, string) (int, error) { time.Sleep(50 * time.Millisecond); return 1, nil })
		lines = rec.take()
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "WARN idem: lease lost namespace= key="+key) ||
			!strings.HasPrefix(lines[1], "WARN idem: call namespace= key="+key+" outcome=not_stored") {
			t.Errorf("lease lost: logged %q", lines)
		}
	})
}

func TestLevels(t *testing.T) {
	// At Info, the Debug lines cost nothing and are not written.
	var out strings.Builder
	l := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo}))
	op := idem.New[string, int](memstore.New(), idem.WithObserver(idemslog.New(l)))
	_, _ = op.Do(context.Background(), "k", "r", func(context.Context, string) (int, error) { return 1, nil })
	if out.Len() != 0 {
		t.Errorf("logged at Info: %s", out.String())
	}
}

// A service logs idem's warnings through its own logger.
func ExampleNew() {
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		Level:       slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr { return dropTime(a) },
	}))
	op := idem.New[string, int](memstore.New(), idem.WithNamespace("pay"), idem.WithObserver(idemslog.New(logger)))
	_, _ = op.Do(context.Background(), "order-7", "r", func(context.Context, string) (int, error) { return 1, nil })
	_, _ = op.Do(context.Background(), "order-7", "other", func(context.Context, string) (int, error) { return 1, nil })
	// Output:
	// level=DEBUG msg="idem: call" namespace=pay key_hash=df8cf80227ec3237 outcome=executed record_size=93
	// level=DEBUG msg="idem: call" namespace=pay key_hash=df8cf80227ec3237 outcome=key_reused error="idem: idempotency key reused with a different request"
}

// dropTime leaves out what changes from run to run: the time and the
// durations.
func dropTime(a slog.Attr) slog.Attr {
	switch a.Key {
	case slog.TimeKey, "duration", "fn_duration":
		return slog.Attr{}
	}
	return a
}
