package idem_test

import (
	"context"
	"errors"
	"math"
	"math/big"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/codec"
	"github.com/idemkit/idem/memstore"
)

// storeAndReplay runs fn's value v through op once, and replays it; it
// returns the first call's error and, when that was nil, the replay.
func storeAndReplay[Resp any](t *testing.T, op *idem.Operation[string, Resp], key string, v Resp) (Resp, idem.Info, error) {
	t.Helper()
	ctx := context.Background()
	if err := op.Err(); err != nil {
		t.Fatal(err)
	}
	_, info, err := op.DoInfo(ctx, key, "r", func(context.Context, string) (Resp, error) { return v, nil })
	if err != nil {
		return v, info, err
	}
	return op.DoInfo(ctx, key, "r", mustNotRun[string, Resp](t))
}

// TestReplayChangesValueNotStored checks that a result the codec would
// bring back as another value is not stored: the first caller gets fn's
// value with ErrNotStored, and the key is held rather than replayed with
// something else.
func TestReplayChangesValueNotStored(t *testing.T) {
	type inAny struct{ V any }
	type point struct{ X, Y int }
	type partlyHidden struct {
		ID   string
		note string
	}
	zone := time.FixedZone("odd", 5*3600+1800)
	cases := map[string]func(t *testing.T, cd codec.Codec) (any, error){
		"struct in an interface": func(t *testing.T, cd codec.Codec) (any, error) {
			_, _, err := storeAndReplay(t, idem.New[string, inAny](memstore.New(), idem.WithCodec(cd)), "k", inAny{point{1, 2}})
			return nil, err
		},
		"int in a map[string]any": func(t *testing.T, cd codec.Codec) (any, error) {
			_, _, err := storeAndReplay(t, idem.New[string, map[string]any](memstore.New(), idem.WithCodec(cd)), "k", map[string]any{"n": 5})
			return nil, err
		},
		"unexported field set": func(t *testing.T, cd codec.Codec) (any, error) {
			_, _, err := storeAndReplay(t, idem.New[string, partlyHidden](memstore.New(), idem.WithCodec(cd)), "k", partlyHidden{"ch_1", "internal"})
			return nil, err
		},
	}
	for _, cd := range []codec.Codec{codec.MsgPack{}, codec.JSON{}} {
		for name, run := range cases {
			t.Run(cd.Name()+"/"+name, func(t *testing.T) {
				if _, err := run(t, cd); !errors.Is(err, idem.ErrNotStored) || !strings.Contains(err.Error(), "same value") {
					t.Fatalf("err = %v, want ErrNotStored saying the value would change", err)
				}
			})
		}
	}
	t.Run("msgpack/time at another offset", func(t *testing.T) {
		if _, off := time.Now().In(time.Local).Zone(); off == 5*3600+1800 {
			t.Skip("time.Local is at the test's odd offset")
		}
		at := time.Date(2026, 12, 2, 17, 0, 0, 0, zone)
		_, _, err := storeAndReplay(t, idem.New[string, time.Time](memstore.New()), "k", at)
		if !errors.Is(err, idem.ErrNotStored) || !strings.Contains(err.Error(), "codec.JSON") {
			t.Fatalf("err = %v, want ErrNotStored pointing to a codec that keeps the offset", err)
		}
	})
	t.Run("held, not released", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			op := idem.New[string, inAny](memstore.New(), idem.WithLockTTL(time.Second))
			ctx := context.Background()
			v, info, err := op.DoInfo(ctx, "k", "r", func(context.Context, string) (inAny, error) { return inAny{point{1, 2}}, nil })
			if !errors.Is(err, idem.ErrNotStored) || info.Outcome != idem.OutcomeNotStored || v.V != (point{1, 2}) {
				t.Fatalf("Do = %v, %v, %v; want fn's value, not stored", v, info.Outcome, err)
			}
			if _, err := op.Do(ctx, "k", "r", mustNotRun[string, inAny](t)); !errors.Is(err, idem.ErrInFlight) {
				t.Fatalf("retry at once: %v, want ErrInFlight (held)", err)
			}
			time.Sleep(1100 * time.Millisecond)
			if _, info, _ := op.DoInfo(ctx, "k", "r", func(context.Context, string) (inAny, error) { return inAny{"s"}, nil }); info.Outcome != idem.OutcomeExecuted {
				t.Fatalf("after the lease: %v, want executed", info.Outcome)
			}
		})
	})
}

// TestReplaySameValue checks values that come back the same, by the rules
// in the package documentation.
func TestReplaySameValue(t *testing.T) {
	type rec struct {
		ID      string
		At      time.Time
		Tags    []string
		None    []string
		Empty   []string
		Meta    map[string]any
		Ratio   float64
		Big     *big.Int
		private string // zero: nothing lost
	}
	now := time.Now()
	want := rec{
		ID: "ch_1", At: now, Tags: []string{"a"}, Empty: []string{},
		Meta:  map[string]any{"s": "x", "b": true, "nested": map[string]any{"t": "u"}},
		Ratio: math.NaN(), Big: big.NewInt(1 << 40),
	}
	for _, cd := range []codec.Codec{codec.MsgPack{}, codec.JSON{}} {
		t.Run(cd.Name(), func(t *testing.T) {
			w := want
			if cd.Name() == "json" {
				w.Ratio = 0.5 // JSON has no NaN
			}
			got, info, err := storeAndReplay(t, idem.New[string, rec](memstore.New(), idem.WithCodec(cd)), "k", w)
			if err != nil || info.Outcome != idem.OutcomeReplayed {
				t.Fatalf("replay: %v, %v", info.Outcome, err)
			}
			if !got.At.Equal(w.At) || got.None != nil || got.Empty == nil || got.Big.Cmp(w.Big) != 0 || got.private != "" {
				t.Errorf("replayed %+v, want %+v", got, w)
			}
			if _, wo := w.At.Zone(); func() bool { _, go_ := got.At.Zone(); return go_ != wo }() {
				t.Errorf("offset changed: %v -> %v", w.At, got.At)
			}
			if diff := cmp.Diff(w.Meta, got.Meta); diff != "" {
				t.Errorf("Meta (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("json/time at another offset", func(t *testing.T) {
		at := time.Date(2026, 12, 2, 17, 0, 0, 0, time.FixedZone("odd", 5*3600+1800))
		got, _, err := storeAndReplay(t, idem.New[string, time.Time](memstore.New(), idem.WithCodec(codec.JSON{})), "k", at)
		if err != nil || got.Format(time.RFC3339) != at.Format(time.RFC3339) {
			t.Fatalf("replay %v, %v; want %v", got, err, at)
		}
	})
}

// TestFinalErrorNotUTF8 checks that a final error whose message is not
// valid UTF-8 is stored in a form that replays, not as a record every
// retry finds corrupt.
func TestFinalErrorNotUTF8(t *testing.T) {
	op := idem.New[string, int](memstore.New())
	ctx := context.Background()
	_, err := op.Do(ctx, "k", "r", func(context.Context, string) (int, error) { return 0, idem.Final(errors.New("bad \xff byte")) })
	if err == nil || err.Error() != "bad \xff byte" {
		t.Fatalf("first call: %v, want fn's own error", err)
	}
	_, err = op.Do(ctx, "k", "r", mustNotRun[string, int](t))
	var re *idem.ReplayedError
	if !errors.As(err, &re) || re.Message != "bad \uFFFD byte" {
		t.Fatalf("replay: %v, want a *ReplayedError with the invalid byte replaced", err)
	}
}

type chargeRequest struct {
	Account string
	Amount  int64
}
type refundRequest struct {
	Account string
	Amount  int64
}
type charge struct{ ID string }
type refund struct{ ID string }

// TestOperationsOfOtherTypes checks that two Operations on one store and
// namespace, with same-shaped request types, never replay each other's
// records: the second is refused with ErrKeyReused, fn not run, also with
// signature validation off and while the first is in flight.
func TestOperationsOfOtherTypes(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	charges := idem.New[chargeRequest, charge](s)
	req := chargeRequest{"acct_1", 500}
	if _, err := charges.Do(ctx, "k", req, func(context.Context, chargeRequest) (charge, error) { return charge{"ch_1"}, nil }); err != nil {
		t.Fatal(err)
	}
	for name, op := range map[string]interface {
		DoInfo(context.Context, string, refundRequest, func(context.Context, refundRequest) (refund, error)) (refund, idem.Info, error)
	}{
		"validated":      idem.New[refundRequest, refund](s),
		"validation off": idem.New[refundRequest, refund](s, idem.WithSignatureValidation(false)),
	} {
		_, info, err := op.DoInfo(ctx, "k", refundRequest(req), mustNotRun[refundRequest, refund](t))
		if !errors.Is(err, idem.ErrKeyReused) || info.Outcome != idem.OutcomeKeyReused || !strings.Contains(err.Error(), "idem_test.refund") {
			t.Errorf("%s: %v, %v; want ErrKeyReused naming the types", name, info.Outcome, err)
		}
	}
	// Same result type, other request type.
	other := idem.New[refundRequest, charge](s)
	if _, err := other.Do(ctx, "k", refundRequest(req), mustNotRun[refundRequest, charge](t)); !errors.Is(err, idem.ErrKeyReused) {
		t.Errorf("other request type: %v, want ErrKeyReused", err)
	}

	synctest.Test(t, func(t *testing.T) {
		s := memstore.New()
		charges := idem.New[chargeRequest, charge](s)
		refunds := idem.New[refundRequest, refund](s, idem.WithWaitTimeout(time.Minute))
		started := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = charges.Do(ctx, "k", req, func(context.Context, chargeRequest) (charge, error) {
				close(started)
				time.Sleep(time.Second)
				return charge{"ch_1"}, nil
			})
		}()
		<-started
		if _, err := refunds.Do(ctx, "k", refundRequest(req), mustNotRun[refundRequest, refund](t)); !errors.Is(err, idem.ErrKeyReused) {
			t.Errorf("refund waiting for the charge: %v, want ErrKeyReused", err)
		}
		<-done
	})
}

type listNode struct {
	V    int
	Next *listNode
}

// TestReplayDeepResult checks that a result as deep as the codec accepts
// (a 9,000-node list: 9,000 levels, 18,000 steps with the pointers) is
// stored and replayed, not refused by the replay check, and that a
// difference is reported with its path.
func TestReplayDeepResult(t *testing.T) {
	var head *listNode
	for i := range 9000 {
		head = &listNode{V: i, Next: head}
	}
	got, info, err := storeAndReplay(t, idem.New[string, *listNode](memstore.New()), "k", head)
	if err != nil || info.Outcome != idem.OutcomeReplayed {
		t.Fatalf("deep list: %v, %v; want it stored and replayed", info.Outcome, err)
	}
	n := 0
	for p := got; p != nil; p = p.Next {
		n++
	}
	if n != 9000 || got.V != 8999 {
		t.Fatalf("replayed %d nodes, head %d", n, got.V)
	}

	type inner struct{ V any }
	type outer struct{ Items []inner }
	_, _, err = storeAndReplay(t, idem.New[string, outer](memstore.New()), "k",
		outer{Items: []inner{{"s"}, {map[string]any{"n": 1}}}})
	if !errors.Is(err, idem.ErrNotStored) || !strings.Contains(err.Error(), `result.Items[1].V["n"]: int comes back as int8`) {
		t.Fatalf("err = %v, want the path of the difference", err)
	}
}
