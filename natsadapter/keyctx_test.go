package natsadapter_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/natsadapter"
)

func TestKeyFromContext(t *testing.T) {
	withMD := fakeMsg("k-1", "order", true)
	noKey := fakeMsg("", "order", true)
	seq := strconv.FormatUint(noKey.md.Sequence.Stream, 10) + "@" + strconv.FormatInt(noKey.md.Timestamp.UnixNano(), 10)
	for _, tc := range []struct {
		name string
		msg  jetstream.Msg
		want natsadapter.Key
	}{
		{"header key", withMD, natsadapter.Key{Raw: "k-1", Scope: "FAKE/workers", Stored: idem.ScopedKey("FAKE/workers", "k-1")}},
		{"sequence key", noKey, natsadapter.Key{Raw: seq, Scope: "FAKE/workers", Stored: idem.ScopedKey("FAKE/workers", seq)}},
		{"no metadata", fakeMsg("k-1", "order", false), natsadapter.Key{Raw: "k-1", Stored: "k-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got natsadapter.Key
			var ok, ran bool
			h := natsadapter.Handler(memstore.New(), func(ctx context.Context, _ jetstream.Msg) error {
				ran = true
				got, ok = natsadapter.KeyFromContext(ctx)
				return nil
			})
			h(tc.msg)
			if !ran {
				t.Fatal("handler did not run")
			}
			if !ok || got != tc.want {
				t.Errorf("KeyFromContext = %+v, %v; want %+v, true", got, ok, tc.want)
			}
		})
	}
}
