package natsadapter_test

// Adversarial tests of what natsadapter reads: keys, stream names and
// payloads, options it cannot honour, and many waiting duplicates.

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/natstest"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/natsadapter"
)

// TestAttackStreamRecreatedReplays: a message without a key header is
// keyed by its stream sequence; a stream deleted and created again under
// the same name, with the same durable consumer, restarts its sequences,
// and its new messages must not replay (or be refused as reused) the old
// ones' records. The key now holds the time the message was stored.
func TestAttackStreamRecreatedReplays(t *testing.T) {
	nc := natstest.Conn(t)
	env := attackSetup(t, nc, "", jetstream.MemoryStorage, 5*time.Second)
	var runs counter
	var terminated atomic.Int32
	h := natsadapter.Handler(memstore.New(), func(_ context.Context, msg jetstream.Msg) error {
		runs.add(msg.Data())
		return nil
	}, natsadapter.WithOnTerminate(func(jetstream.Msg, error) { terminated.Add(1) }))

	cc, err := env.cons.Consume(h, jetstream.PullMaxMessages(1))
	if err != nil {
		t.Fatal(err)
	}
	pub(t, env.js, env.subject, []byte("rebuild cache"))
	pub(t, env.js, env.subject, []byte("charge 10"))
	settled(t, env.cons, 5*time.Second)
	cc.Stop()

	if err := env.js.DeleteStream(ctxFor(t), env.name); err != nil {
		t.Fatal(err)
	}
	env = attackSetup(t, nc, env.name, jetstream.MemoryStorage, 5*time.Second)
	consume(t, env.cons, h)
	pub(t, env.js, env.subject, []byte("rebuild cache")) // sequence 1 again
	pub(t, env.js, env.subject, []byte("charge 99"))     // sequence 2 again
	settled(t, env.cons, 5*time.Second)
	if n := runs.get("rebuild cache"); n != 2 {
		t.Errorf("a new message at a reused stream sequence: fn ran %d times for two published messages, want 2 (acked without being processed)", n)
	}
	if n := runs.get("charge 99"); n != 1 || terminated.Load() != 0 {
		t.Errorf("a new message at a reused stream sequence: fn ran %d times, %d terminated; want 1 and 0", n, terminated.Load())
	}
}

// TestAttackLongStreamName: JetStream accepts stream names of up to 255
// bytes; the key of a message without a key header (its sequence, scoped
// by stream and consumer) must then still be usable: idem.ScopedKey hashes
// it. (Before the keys were scoped, "stream/sequence" was refused as over
// idem.MaxKeyLen and every such message terminated.)
func TestAttackLongStreamName(t *testing.T) {
	env := attackSetup(t, natstest.Conn(t), fmt.Sprintf("L%d_%s", attackStreams.Add(1), strings.Repeat("X", 250)), jetstream.MemoryStorage, 5*time.Second)
	pub(t, env.js, env.subject, []byte("no id"))
	m := &recMsg{Msg: fetch(t, env.cons, 1)[0]}
	var runs atomic.Int32
	var terminated []error
	var mu sync.Mutex
	natsadapter.Handler(memstore.New(), func(context.Context, jetstream.Msg) error { runs.Add(1); return nil },
		natsadapter.WithOnTerminate(hookErr(&terminated, &mu)))(m)
	if runs.Load() != 1 || !m.is("ack") {
		t.Errorf("stream %d bytes long: fn ran %d times, message %v (%v); want 1 run and [ack]", len(env.name), runs.Load(), m.actions(), terminated)
	}
}

// TestAttackInvalidOptions: an Operation with options it cannot honour
// must retry every message (never ack, never terminate) and report it.
func TestAttackInvalidOptions(t *testing.T) {
	for name, opt := range map[string]idem.Option{
		"lock TTL":    idem.WithLockTTL(time.Millisecond),
		"namespace":   idem.WithNamespace("a:b"),
		"fingerprint": idem.WithFingerprint(func(string) ([]byte, error) { return nil, nil }),
		"TTL":         idem.WithTTL(-time.Second),
		"codec":       idem.WithCodec(nil),
	} {
		t.Run(name, func(t *testing.T) {
			var runs atomic.Int32
			var mu sync.Mutex
			var errs, terms []error
			h := natsadapter.Handler(memstore.New(), func(context.Context, jetstream.Msg) error { runs.Add(1); return nil },
				natsadapter.WithOptions(opt), natsadapter.WithOnError(hookErr(&errs, &mu)), natsadapter.WithOnTerminate(hookErr(&terms, &mu)))
			msgs := []*recMsg{newFake("m1", "x", true), newFake("", "y", true),
				newFake(strings.Repeat("i", 256), "z", true), newFake("", "", false)} // invalid keys too: options come first
			for _, m := range msgs {
				h(m)
				if !m.is("nak") {
					t.Errorf("message %v, want [nak]", m.actions())
				}
			}
			if runs.Load() != 0 || len(terms) != 0 || len(errs) != len(msgs) || !errors.Is(errs[0], idem.ErrInvalidOption) {
				t.Errorf("fn ran %d times, terminated %v, reported %v; want 0, none, %d ErrInvalidOption", runs.Load(), terms, errs, len(msgs))
			}
		})
	}
}

// TestAttackWaitGoroutines: 200 duplicates wait for an in-flight attempt
// (WithWaitTimeout), sending InProgress; first their wait runs out
// (nakked), then a second wave sees the attempt finish (replayed, acked).
// No goroutine is left behind.
func TestAttackWaitGoroutines(t *testing.T) {
	const n = 200
	release := make(chan struct{})
	var releaseOnce sync.Once
	finish := func() { releaseOnce.Do(func() { close(release) }) }
	defer finish() // a failed test must not leave the holder running
	var runs atomic.Int32
	// The first run returns when its context ends (its lease lost, on a
	// machine too loaded to refresh it in time) as well as when released,
	// and a second returns at once, so that such a loss fails the test
	// instead of hanging it.
	fn := func(ctx context.Context, _ jetstream.Msg) error {
		if runs.Add(1) > 1 {
			return nil
		}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	store := memstore.New()
	// The holder's lease of 2 s outlives stalls of a loaded machine. The
	// duplicates' lock TTL of 150 ms has them send InProgress every 50 ms
	// while they wait: in the first wave for 1 s, long enough to send it
	// more than once on a loaded machine; in the second until the
	// attempt finishes, which it does once every duplicate waits.
	holder := newFake("w1", "pay", true)
	hHolder := natsadapter.Handler(store, fn, natsadapter.WithOptions(idem.WithLockTTL(2*time.Second)))
	hTimeout := natsadapter.Handler(store, fn, natsadapter.WithOptions(idem.WithLockTTL(150*time.Millisecond), idem.WithWaitTimeout(time.Second)))
	hFinish := natsadapter.Handler(store, fn, natsadapter.WithOptions(idem.WithLockTTL(150*time.Millisecond), idem.WithWaitTimeout(10*time.Second)))
	before := runtime.NumGoroutine()
	holderDone := make(chan struct{})
	go func() { defer close(holderDone); hHolder(holder) }()
	waitFor(t, "fn to start", 5*time.Second, func() bool { return runs.Load() == 1 })
	wave := func(h jetstream.MessageHandler, mid func([]*recMsg)) []*recMsg {
		msgs := make([]*recMsg, n)
		var wg sync.WaitGroup
		for i := range msgs {
			msgs[i] = newFake("w1", "pay", true)
			wg.Add(1)
			go func() { defer wg.Done(); h(msgs[i]) }()
		}
		if mid != nil {
			mid(msgs)
		}
		wg.Wait()
		return msgs
	}
	for i, m := range wave(hTimeout, nil) {
		if !m.is("nak") || m.progress.Load() < 2 {
			t.Fatalf("waiting duplicate %d past the wait timeout: %v, %d InProgress; want [nak] and several", i, m.actions(), m.progress.Load())
		}
	}
	for i, m := range wave(hFinish, func(msgs []*recMsg) {
		waitFor(t, "every duplicate to wait, sending InProgress", 5*time.Second, func() bool {
			for _, m := range msgs {
				if m.progress.Load() == 0 {
					return false
				}
			}
			return true
		})
		finish()
	}) {
		if !m.is("ack") {
			t.Fatalf("duplicate %d waiting when the attempt finished: %v, want [ack]", i, m.actions())
		}
	}
	select {
	case <-holderDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the holder did not return")
	}
	if runs.Load() != 1 || !holder.is("ack") {
		t.Errorf("fn ran %d times, holder %v", runs.Load(), holder.actions())
	}
	waitFor(t, fmt.Sprintf("goroutines back to %d", before), 5*time.Second, func() bool { return runtime.NumGoroutine() <= before })
}

// TestAttackKeys: what the handler does with keys it cannot use, and with
// messages without JetStream metadata (a key header is used unscoped;
// without one the message is terminated). A Nats-Msg-Id that idem refuses (over 255
// bytes, a control character) terminates the message, fn not run, and
// WithOnTerminate hears of it with ErrInvalidKey: documented ("invalid
// key" → Term), as in kafkaadapter. Falling back to stream/sequence would
// be worse (a duplicate publish would run fn again); hashing such IDs
// (idem.ScopedKey-style "sha256:...") would process them.
func TestAttackKeys(t *testing.T) {
	for _, c := range []struct {
		name string
		msg  *recMsg
		want string
	}{
		{"id of 256 bytes", newFake(strings.Repeat("i", 256), "a", true), "term"},
		{"id with a control character", newFake("id\x01", "b", true), "term"},
		{"id, no metadata", newFake("id-nomd", "c", false), "ack"},
		{"no id, no metadata", newFake("", "d", false), "term"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var runs atomic.Int32
			var mu sync.Mutex
			var terms []error
			natsadapter.Handler(memstore.New(), func(context.Context, jetstream.Msg) error { runs.Add(1); return nil },
				natsadapter.WithOnTerminate(hookErr(&terms, &mu)))(c.msg)
			if !c.msg.is(c.want) {
				t.Errorf("message %v, want [%s]", c.msg.actions(), c.want)
			}
			if c.want == "term" && (runs.Load() != 0 || len(terms) != 1 || !errors.Is(terms[0], idem.ErrInvalidKey)) {
				t.Errorf("fn ran %d times, WithOnTerminate got %v; want 0 runs, ErrInvalidKey", runs.Load(), terms)
			}
		})
	}
}

// TestAttackPayloads: a payload near the 1 MB limit, published twice with
// one key; an empty payload published with and without headers (keyed by
// WithKey): each runs fn once, and every message is acked.
func TestAttackPayloads(t *testing.T) {
	env := attackSetup(t, natstest.Conn(t), "", jetstream.MemoryStorage, 5*time.Second)
	var runs counter
	consume(t, env.cons, natsadapter.Handler(memstore.New(), func(_ context.Context, msg jetstream.Msg) error {
		runs.add([]byte(fmt.Sprint(len(msg.Data()))))
		return nil
	}, natsadapter.WithKey(func(msg jetstream.Msg) (string, error) {
		if id := msg.Headers().Get("Order-Id"); id != "" {
			return id, nil
		}
		return "empty", nil
	}), natsadapter.WithOnTerminate(func(_ jetstream.Msg, err error) { t.Errorf("terminated: %v", err) })))
	huge := make([]byte, 1<<20-4096)
	for i := range huge {
		huge[i] = byte(i)
	}
	pub(t, env.js, env.subject, huge, "Order-Id", "big")
	pub(t, env.js, env.subject, huge, "Order-Id", "big")
	pub(t, env.js, env.subject, nil, "Trace", "t1")
	pub(t, env.js, env.subject, nil)
	settled(t, env.cons, 10*time.Second)
	if runs.get(fmt.Sprint(len(huge))) != 1 || runs.get("0") != 1 {
		t.Errorf("runs by payload length: %v; want one each", runs.runs)
	}
}
