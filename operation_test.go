package idem_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/codec"
	"github.com/idemkit/idem/memstore"
)

// countingStore counts Acquire calls on a real memstore.
type countingStore struct {
	*memstore.Store
	acquires atomic.Int32
}

func (s *countingStore) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	s.acquires.Add(1)
	return s.Store.Acquire(ctx, key, fp, ttl)
}

func mustNotRun[Req, Resp any](t *testing.T) func(context.Context, Req) (Resp, error) {
	return func(context.Context, Req) (Resp, error) {
		t.Error("fn ran")
		var zero Resp
		return zero, nil
	}
}

func TestInvalidKey(t *testing.T) {
	s := &countingStore{Store: memstore.New()}
	op := idem.New[string, int](s)
	for name, key := range map[string]string{
		"empty":        "",
		"256 bytes":    strings.Repeat("k", 256),
		"newline":      "abc\ndef",
		"NUL":          "abc\x00",
		"DEL":          "abc\x7f",
		"C1 control":   "abc\u0085",
		"invalid UTF8": "abc\xff",
	} {
		_, err := op.Do(context.Background(), key, "r", mustNotRun[string, int](t))
		if !errors.Is(err, idem.ErrInvalidKey) {
			t.Errorf("%s: err = %v, want ErrInvalidKey", name, err)
		}
	}
	if n := s.acquires.Load(); n != 0 {
		t.Errorf("invalid keys reached the store %d times", n)
	}
	for _, key := range []string{strings.Repeat("k", 255), "ünïcødé key with spaces", "8e03978e-40d5-43e8-bc93-6894a57f9324"} {
		if _, err := op.Do(context.Background(), key, "r", func(context.Context, string) (int, error) { return 1, nil }); err != nil {
			t.Errorf("valid key %q: %v", key, err)
		}
	}
}

func TestInvalidOptions(t *testing.T) {
	s := memstore.New()
	for name, opt := range map[string]idem.Option{
		"ttl 0":              idem.WithTTL(0),
		"lock ttl 1ms":       idem.WithLockTTL(time.Millisecond),
		"negative wait":      idem.WithWaitTimeout(-time.Second),
		"nil codec":          idem.WithCodec(nil),
		"namespace colon":    idem.WithNamespace("a:b"),
		"namespace control":  idem.WithNamespace("a\nb"),
		"fingerprint type":   idem.WithFingerprint(func(int) ([]byte, error) { return nil, nil }),
		"nil fingerprint fn": idem.WithFingerprint[string](nil),
	} {
		op := idem.New[string, int](s, opt)
		if _, err := op.Do(context.Background(), "k", "r", mustNotRun[string, int](t)); !errors.Is(err, idem.ErrInvalidOption) {
			t.Errorf("%s: err = %v, want ErrInvalidOption", name, err)
		}
	}
	if _, err := idem.New[string, int](nil).Do(context.Background(), "k", "r", mustNotRun[string, int](t)); !errors.Is(err, idem.ErrInvalidOption) {
		t.Errorf("nil store: err = %v, want ErrInvalidOption", err)
	}
}

func TestNamespace(t *testing.T) {
	s := memstore.New()
	a := idem.New[string, string](s, idem.WithNamespace("charges"))
	b := idem.New[string, string](s, idem.WithNamespace("refunds"))
	ctx := context.Background()
	ra, _ := a.Do(ctx, "k", "r", func(context.Context, string) (string, error) { return "charge", nil })
	rb, _ := b.Do(ctx, "k", "r", func(context.Context, string) (string, error) { return "refund", nil })
	if ra != "charge" || rb != "refund" {
		t.Fatalf("namespaces share a record: %q, %q", ra, rb)
	}
}

func TestInfoAndCustomFingerprint(t *testing.T) {
	type payment struct {
		ID      string
		Attempt int
	}
	byID := idem.WithFingerprint(func(p payment) ([]byte, error) { return []byte(p.ID), nil })
	op := idem.New[payment, string](memstore.New(), byID)
	ctx := context.Background()
	fn := func(_ context.Context, p payment) (string, error) { return "paid " + p.ID, nil }

	r, info, err := op.DoInfo(ctx, "k", payment{"p1", 1}, fn)
	if err != nil || r != "paid p1" || info.Replayed || info.Key != "k" {
		t.Fatalf("first: %q %+v %v", r, info, err)
	}
	const sha256p1 = "f64551fcd6f07823cb87971cfb91446425da18286b3ab1ef935e0cbd7a69f68a" // sha256("p1")
	if info.Fingerprint != sha256p1 {
		t.Fatalf("fingerprint %q, want the SHA-256 of what the custom function returned", info.Fingerprint)
	}
	r, info2, err := op.DoInfo(ctx, "k", payment{"p1", 2}, fn)
	if err != nil || !info2.Replayed || r != "paid p1" || info2.Fingerprint != info.Fingerprint {
		t.Fatalf("retry with a field outside the fingerprint: %q %+v %v; want replay", r, info2, err)
	}
	if _, err := op.Do(ctx, "k", payment{"p2", 1}, fn); !errors.Is(err, idem.ErrKeyReused) {
		t.Fatalf("different ID: %v, want ErrKeyReused", err)
	}
	failing := idem.New[payment, string](memstore.New(), idem.WithFingerprint(func(payment) ([]byte, error) { return nil, errors.New("nope") }))
	if _, err := failing.Do(ctx, "k", payment{}, fn); !errors.Is(err, idem.ErrFingerprint) {
		t.Fatalf("failing fingerprint function: %v, want ErrFingerprint", err)
	}
}

func TestDefaultFingerprintInInfo(t *testing.T) {
	op := idem.New[[]string, int](memstore.New())
	req := []string{"a", "b"}
	_, info, err := op.DoInfo(context.Background(), "k", req, func(context.Context, []string) (int, error) { return 1, nil })
	want, _ := idem.Fingerprint(req)
	if err != nil || info.Fingerprint != want {
		t.Fatalf("Info.Fingerprint = %q (err %v), want Fingerprint(req) = %q", info.Fingerprint, err, want)
	}
}

// commitRaw stores record under key as if an Operation without a namespace
// had committed it (such an Operation stores key under ":" + key).
func commitRaw(t *testing.T, s idem.Store, key string, record []byte) {
	t.Helper()
	a, err := s.Acquire(context.Background(), ":"+key, "x", time.Minute)
	if err != nil || a.Lease == nil {
		t.Fatalf("Acquire: %+v %v", a, err)
	}
	if err := a.Lease.Commit(context.Background(), record, time.Minute); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptRecord(t *testing.T) {
	s := memstore.New()
	op := idem.New[string, int](s)
	fp, _ := idem.Fingerprint("r")
	for name, rec := range map[string]string{
		"empty":         "",
		"foreign":       "{\"status\":200}",
		"truncated":     "idm\x01v\x40" + fp[:10],
		"unknown kind":  "idm\x01x\x00\x00",
		"bad payload":   "idm\x01v\x40" + fp + "\x07msgpack\xc1",
		"error not utf": "idm\x01e\x40" + fp + "\x07msgpack\xff\xfe",
	} {
		commitRaw(t, s, name, []byte(rec))
		_, err := op.Do(context.Background(), name, "r", mustNotRun[string, int](t))
		if !errors.Is(err, idem.ErrCorruptRecord) {
			t.Errorf("%s: err = %v, want ErrCorruptRecord", name, err)
		}
	}
}

func TestCodecMismatchAndJSON(t *testing.T) {
	s := memstore.New()
	ctx := context.Background()
	type out struct{ N int }
	js := idem.New[string, out](s, idem.WithCodec(codec.JSON{}))
	if _, err := js.Do(ctx, "k", "r", func(context.Context, string) (out, error) { return out{7}, nil }); err != nil {
		t.Fatal(err)
	}
	if r, err := js.Do(ctx, "k", "r", mustNotRun[string, out](t)); err != nil || r.N != 7 {
		t.Fatalf("JSON replay: %+v %v", r, err)
	}
	mp := idem.New[string, out](s)
	if _, err := mp.Do(ctx, "k", "r", mustNotRun[string, out](t)); !errors.Is(err, idem.ErrCorruptRecord) || !strings.Contains(err.Error(), "json") {
		t.Fatalf("reading a JSON record with msgpack: %v, want ErrCorruptRecord naming the codec", err)
	}
}

// brokenStore fails every call, as a store that is down.
type brokenStore struct{}

var errDown = errors.New("connection refused")

func (brokenStore) Acquire(context.Context, string, string, time.Duration) (idem.Acquisition, error) {
	return idem.Acquisition{}, errDown
}
func (brokenStore) Wait(context.Context, string) error { return errDown }

func TestStoreFailure(t *testing.T) {
	op := idem.New[string, int](brokenStore{})
	_, err := op.Do(context.Background(), "k", "r", mustNotRun[string, int](t))
	if !errors.Is(err, idem.ErrStore) || !errors.Is(err, errDown) {
		t.Fatalf("err = %v, want ErrStore wrapping the cause", err)
	}
}

// losingStore hands out leases that are really lost at their first refresh.
type losingStore struct{ idem.Store }

func (s losingStore) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	a, err := s.Store.Acquire(ctx, key, fp, ttl)
	if a.Lease != nil {
		a.Lease = losingLease{a.Lease}
	}
	return a, err
}

type losingLease struct{ idem.Lease }

func (l losingLease) Refresh(ctx context.Context, _ time.Duration) error {
	_ = l.Lease.Release(ctx)
	return idem.ErrLeaseLost
}

func TestLostLeaseCancelsFn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		op := idem.New[string, int](losingStore{memstore.New()}, idem.WithLockTTL(30*time.Millisecond))
		var cause error
		_, err := op.Do(context.Background(), "k", "r", func(ctx context.Context, _ string) (int, error) {
			select {
			case <-ctx.Done():
				cause = context.Cause(ctx)
				return 0, cause
			case <-time.After(5 * time.Second):
				return 1, nil
			}
		})
		if !errors.Is(cause, idem.ErrLeaseLost) {
			t.Fatalf("fn's context cause = %v, want ErrLeaseLost", cause)
		}
		if !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("Do = %v, want fn's error", err)
		}
	})
}

// TestUnencodableResult: a result the codec cannot encode, or cannot decode
// back, is not stored (ErrNotStored, fn's value returned), and the lease is
// left to expire rather than released for an immediate re-run.
func TestUnencodableResult(t *testing.T) {
	const lockTTL = 200 * time.Millisecond
	ctx := context.Background()
	t.Run("encode", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			op := idem.New[string, chan int](memstore.New(), idem.WithLockTTL(lockTTL))
			_, err := op.Do(ctx, "k", "r", func(context.Context, string) (chan int, error) { return make(chan int), nil })
			if !errors.Is(err, idem.ErrNotStored) {
				t.Fatalf("err = %v, want ErrNotStored", err)
			}
			if _, err := op.Do(ctx, "k", "r", mustNotRun[string, chan int](t)); !errors.Is(err, idem.ErrInFlight) {
				t.Fatalf("immediate retry: %v, want ErrInFlight (lease kept)", err)
			}
		})
	})
	t.Run("decode", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			type withIface struct{ S fmt.Stringer }
			op := idem.New[string, withIface](memstore.New(), idem.WithLockTTL(lockTTL))
			r, err := op.Do(ctx, "k", "r", func(context.Context, string) (withIface, error) { return withIface{time.Second}, nil })
			if !errors.Is(err, idem.ErrNotStored) || r.S != time.Second {
				t.Fatalf("Do = %v, %v; want fn's value and ErrNotStored (a record that would never replay)", r, err)
			}
			time.Sleep(lockTTL + 50*time.Millisecond)
			runs := 0
			_, _ = op.Do(ctx, "k", "r", func(context.Context, string) (withIface, error) { runs++; return withIface{}, nil })
			if runs != 1 {
				t.Fatalf("after the lease expired fn ran %d times, want 1: nothing was stored", runs)
			}
		})
	})
}

func TestGoexitReleasesLease(t *testing.T) {
	s := memstore.New()
	op := idem.New[string, int](s, idem.WithLockTTL(time.Minute))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = op.Do(context.Background(), "k", "r", func(context.Context, string) (int, error) {
			runtime.Goexit()
			return 0, nil
		})
	}()
	<-done
	if r, err := op.Do(context.Background(), "k", "r", func(context.Context, string) (int, error) { return 2, nil }); err != nil || r != 2 {
		t.Fatalf("after Goexit in fn: %d, %v; want the lease released", r, err)
	}
}

func TestFnGetsContext(t *testing.T) {
	type ctxKey struct{}
	op := idem.New[string, string](memstore.New())
	ctx := context.WithValue(context.Background(), ctxKey{}, "v")
	r, err := op.Do(ctx, "k", "r", func(ctx context.Context, _ string) (string, error) {
		s, _ := ctx.Value(ctxKey{}).(string)
		return s, nil
	})
	if err != nil || r != "v" {
		t.Fatalf("fn saw %q, %v; want the caller's context values", r, err)
	}
}

// prefixedMsgPack embeds codec.MsgPack, as a user's codec might to wrap it,
// and overrides Marshal and Unmarshal: its records start with a mark that
// its Unmarshal requires.
type prefixedMsgPack struct{ codec.MsgPack }

func (prefixedMsgPack) Name() string { return "prefixed-msgpack" }

func (c prefixedMsgPack) Marshal(v any) ([]byte, error) {
	b, err := c.MsgPack.Marshal(v)
	return append([]byte("PFX"), b...), err
}

func (c prefixedMsgPack) Unmarshal(b []byte, v any) error {
	if !strings.HasPrefix(string(b), "PFX") {
		return errors.New("prefixed-msgpack: no mark")
	}
	return c.MsgPack.Unmarshal(b[3:], v)
}

// TestEmbeddedCodecEncodes checks that a codec embedding codec.MsgPack is
// encoded with its own Marshal, not MsgPack's AppendMarshal, which it
// inherits.
func TestEmbeddedCodecEncodes(t *testing.T) {
	ctx := context.Background()
	op := idem.New[string, int](memstore.New(), idem.WithCodec(prefixedMsgPack{}))
	fn := func(context.Context, string) (int, error) { return 7, nil }
	for i, want := range []idem.Outcome{idem.OutcomeExecuted, idem.OutcomeReplayed} {
		v, info, err := op.DoInfo(ctx, "k", "r", fn)
		if err != nil || v != 7 || info.Outcome != want {
			t.Fatalf("call %d: %d, %v, %v; want 7, %v", i, v, info.Outcome, err, want)
		}
	}
}
