package idemotel_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/redisstore"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// faultClient returns a client of s that gives up quickly, as a service
// with tight timeouts would: a dead server is refused at once, and a live
// one on a loaded machine still answers in time.
func faultClient(t *testing.T, s *redistest.Server) *redis.Client {
	o := redistest.Options(s.Addr)
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout = time.Second, time.Second, time.Second
	o.MaxRetries = -1
	o.DialerRetries = 1
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

func uniquePrefix(t *testing.T) string {
	return "idemotel:" + t.Name() + ":" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
}

// oneSpan returns the only idem.Do span, with its event names.
func oneSpan(t *testing.T, h *harness) (sdktrace.ReadOnlySpan, []string) {
	t.Helper()
	spans := h.idemSpans()
	if len(spans) != 1 {
		t.Fatalf("%d idem.Do spans, want 1", len(spans))
	}
	return spans[0], eventNames(spans[0])
}

func storeOps(s sdktrace.ReadOnlySpan) []string {
	var ops []string
	for _, e := range s.Events() {
		if e.Name == "idem.store.error" {
			for _, kv := range e.Attributes {
				if kv.Key == "idem.store.operation" {
					ops = append(ops, kv.Value.AsString())
				}
			}
		}
	}
	return ops
}

// TestRedisDown: Acquire fails, counted as a store error of acquire.
func TestRedisDown(t *testing.T) {
	t.Parallel()
	srv := redistest.StartSingle(t)
	h := newHarness(t)
	op := idem.New[string, int](redisstore.New(faultClient(t, srv), redisstore.WithPrefix(uniquePrefix(t))),
		idem.WithNamespace("pay"), idem.WithObserver(h.obs))
	srv.Kill()
	if _, info, err := op.DoInfo(context.Background(), k1, "a", ok); info.Outcome != idem.OutcomeStoreError || !errors.Is(err, idem.ErrStore) {
		t.Fatalf("Do with Redis down: %v, %v; want store_error", info.Outcome, err)
	}
	m := h.collect(t)
	if n := m.count(t, "idem.store.errors", "idem.namespace=pay", "idem.store.operation=acquire"); n != 1 {
		t.Errorf("idem.store.errors{acquire} = %d, want 1", n)
	}
	if n := m.count(t, "idem.store.errors"); n != 1 {
		t.Errorf("idem.store.errors = %d, want 1", n)
	}
	if n := m.count(t, "idem.operation.duration", "idem.namespace=pay", "idem.outcome=store_error", "error.type=store_error"); n != 1 {
		t.Errorf("idem.operation.duration{store_error} = %d, want 1", n)
	}
	s, events := oneSpan(t, h)
	if st := s.Status(); st.Code != codes.Error || st.Description != "store_error" {
		t.Errorf("span status %v", st)
	}
	if !slices.Equal(events, []string{"idem.store.error"}) || !slices.Equal(storeOps(s), []string{"acquire"}) {
		t.Errorf("span events %q, store errors %q; want one store error of acquire", events, storeOps(s))
	}
	h.noKeys(t, m, allKeys...)
}

// TestRedisDiesDuringFn: the commit fails until the lease TTL is past,
// counted as store errors of commit, with retries on the span.
func TestRedisDiesDuringFn(t *testing.T) {
	t.Parallel()
	srv := redistest.StartSingle(t)
	h := newHarness(t)
	// The lease TTL bounds the commit's retries, and thus this test's
	// length, but must be long enough that on a loaded machine the Acquire
	// comes within a third of it, or else the refresh before fn, given a
	// third of it, succeeds: a Do that fails there returns a store error
	// of acquire or refresh, before fn.
	op := idem.New[string, int](redisstore.New(faultClient(t, srv), redisstore.WithPrefix(uniquePrefix(t))),
		idem.WithNamespace("pay"), idem.WithObserver(h.obs), idem.WithLockTTL(time.Second))
	_, info, err := op.DoInfo(context.Background(), k1, "a", func(context.Context, string) (int, error) {
		srv.Kill()
		return 1, nil
	})
	if info.Outcome != idem.OutcomeNotStored || !errors.Is(err, idem.ErrNotStored) {
		t.Fatalf("Do: %v, %v; want not_stored", info.Outcome, err)
	}
	m := h.collect(t)
	commits := m.count(t, "idem.store.errors", "idem.namespace=pay", "idem.store.operation=commit")
	if commits < 1 {
		t.Errorf("idem.store.errors{commit} = %d, want at least 1", commits)
	}
	if n := m.count(t, "idem.operation.duration", "idem.outcome=not_stored", "error.type=not_stored"); n != 1 {
		t.Errorf("idem.operation.duration{not_stored} = %d, want 1", n)
	}
	if n := m.count(t, "idem.execution.duration", "idem.outcome=not_stored"); n != 1 {
		t.Errorf("idem.execution.duration{not_stored} = %d, want 1", n)
	}
	if n := m.count(t, "idem.record.size"); n != 0 {
		t.Errorf("idem.record.size: %d points for a record not stored", n)
	}
	s, events := oneSpan(t, h)
	if st := s.Status(); st.Code != codes.Error || st.Description != "not_stored" {
		t.Errorf("span status %v", st)
	}
	retries := 0
	for _, e := range events {
		if e == "idem.commit.retry" {
			retries++
		}
	}
	var commitErrs int64
	for _, op := range storeOps(s) {
		if op == "commit" {
			commitErrs++
		}
	}
	if retries < 1 || commitErrs != commits {
		t.Errorf("span events %q: %d commit retries, %d commit store errors; want some, and as many as counted (%d)", events, retries, commitErrs, commits)
	}
	t.Logf("commit failures: %d, retries: %d, lease losses: %d", commits, retries, m.count(t, "idem.lease.losses"))
	h.noKeys(t, m, allKeys...)
}

// TestRedisLeaseStolen: the key is overwritten while fn runs, so that the
// commit finds the lease lost: one lease loss, no store error.
func TestRedisLeaseStolen(t *testing.T) {
	t.Parallel()
	client := redistest.Single(t)
	prefix := uniquePrefix(t)
	h := newHarness(t)
	op := idem.New[string, int](redisstore.New(client, redisstore.WithPrefix(prefix)),
		idem.WithNamespace("pay"), idem.WithObserver(h.obs))
	_, info, err := op.DoInfo(context.Background(), k1, "a", func(ctx context.Context, _ string) (int, error) {
		return 1, client.Set(ctx, prefix+"pay:"+k1, "stolen", time.Minute).Err()
	})
	if info.Outcome != idem.OutcomeNotStored || !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("Do: %v, %v; want not_stored, lease lost", info.Outcome, err)
	}
	m := h.collect(t)
	if n := m.count(t, "idem.lease.losses", "idem.namespace=pay"); n != 1 {
		t.Errorf("idem.lease.losses = %d, want 1", n)
	}
	if n := m.count(t, "idem.store.errors"); n != 0 {
		t.Errorf("idem.store.errors = %d, want 0", n)
	}
	s, events := oneSpan(t, h)
	if !slices.Equal(events, []string{"idem.lease.lost"}) {
		t.Errorf("span events %q, want the lease loss", events)
	}
	if st := s.Status(); st.Code != codes.Error || st.Description != "not_stored" {
		t.Errorf("span status %v", st)
	}
	h.noKeys(t, m, allKeys...)
}

// TestRedisLeaseLostOnRefresh: the key is overwritten while fn runs, so
// that a refresh finds the lease lost and fn is cancelled.
func TestRedisLeaseLostOnRefresh(t *testing.T) {
	t.Parallel()
	client := redistest.Single(t)
	prefix := uniquePrefix(t)
	h := newHarness(t)
	op := idem.New[string, int](redisstore.New(client, redisstore.WithPrefix(prefix)),
		idem.WithObserver(h.obs), idem.WithLockTTL(600*time.Millisecond))
	_, info, err := op.DoInfo(context.Background(), k1, "a", func(ctx context.Context, _ string) (int, error) {
		if err := client.Set(ctx, prefix+":"+k1, "stolen", time.Minute).Err(); err != nil {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, context.Cause(ctx)
		case <-time.After(10 * time.Second):
			return 0, errors.New("fn was not cancelled")
		}
	})
	if info.Outcome != idem.OutcomeFnError || !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("Do: %v, %v; want fn_error, lease lost", info.Outcome, err)
	}
	m := h.collect(t)
	if n := m.count(t, "idem.lease.losses", "idem.namespace="); n != 1 {
		t.Errorf("idem.lease.losses = %d, want 1", n)
	}
	s, events := oneSpan(t, h)
	if !slices.Contains(events, "idem.lease.lost") || !slices.Contains(events, "idem.lease.refresh") {
		t.Errorf("span events %q, want a refresh and the lease loss", events)
	}
	for _, e := range s.Events() {
		if e.Name == "idem.lease.refresh" {
			if len(e.Attributes) != 1 || e.Attributes[0].Key != "idem.lease.refresh.failed" || !e.Attributes[0].Value.AsBool() {
				t.Errorf("refresh event %v, want it failed", e.Attributes)
			}
		}
	}
	h.noKeys(t, m, allKeys...)
}
