package natsadapter_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/natstest"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/natsadapter"
	"github.com/idemkit/idem/redisstore"
)

func TestMain(m *testing.M) {
	code := redistest.Main(m)
	natstest.StopAll()
	os.Exit(code)
}

var streams atomic.Int32

// setup makes a stream of its own on the shared server, with a duplicate
// window of 100 ms, and a durable consumer on it with the given AckWait.
func setup(t *testing.T, ackWait time.Duration) (jetstream.JetStream, jetstream.Consumer, string) {
	t.Helper()
	js, err := jetstream.New(natstest.Conn(t))
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("S%d", streams.Add(1))
	subject := strings.ToLower(name) + ".orders"
	ctx := ctxFor(t)
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:       name,
		Subjects:   []string{subject},
		Storage:    jetstream.MemoryStorage,
		Duplicates: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:   "workers",
		AckPolicy: jetstream.AckExplicitPolicy,
		AckWait:   ackWait,
	})
	if err != nil {
		t.Fatal(err)
	}
	return js, cons, subject
}

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// publish publishes data on subject with the key header id (none when
// empty), past the stream's duplicate window, so that JetStream stores
// every publish.
func publish(t *testing.T, js jetstream.JetStream, subject, header, id, data string) {
	t.Helper()
	m := &nats.Msg{Subject: subject, Data: []byte(data), Header: nats.Header{}}
	if id != "" {
		m.Header.Set(header, id)
	}
	if _, err := js.PublishMsg(ctxFor(t), m); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
}

// consume runs handler on cons until the test ends. Each worker pulls one
// message at a time: a message buffered in the client while the handler is
// busy is not in progress, and JetStream redelivers it after AckWait.
func consume(t *testing.T, cons jetstream.Consumer, handler jetstream.MessageHandler) {
	t.Helper()
	cc, err := cons.Consume(handler, jetstream.PullMaxMessages(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
}

// settled waits until the consumer has nothing pending or awaiting an ack,
// and fails the test if that does not happen in time.
func settled(t *testing.T, cons jetstream.Consumer, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		info, err := cons.Info(ctxFor(t))
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer not settled after %v: %d pending, %d awaiting ack, %d redelivered", within, info.NumPending, info.NumAckPending, info.NumRedelivered)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// counter counts fn's runs per payload.
type counter struct {
	mu   sync.Mutex
	runs map[string]int
}

func (c *counter) add(data []byte) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.runs == nil {
		c.runs = map[string]int{}
	}
	c.runs[string(data)]++
	return c.runs[string(data)]
}

func (c *counter) get(data string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs[data]
}

func TestDuplicatePublishPastWindow(t *testing.T) {
	js, cons, subject := setup(t, 5*time.Second)
	var runs counter
	consume(t, cons, natsadapter.Handler(memstore.New(), func(_ context.Context, msg jetstream.Msg) error {
		runs.add(msg.Data())
		return nil
	}))
	publish(t, js, subject, natsadapter.DefaultKeyHeader, "order-1", "pay 10")
	publish(t, js, subject, natsadapter.DefaultKeyHeader, "order-1", "pay 10")
	settled(t, cons, 5*time.Second)
	if n := runs.get("pay 10"); n != 1 {
		t.Errorf("fn ran %d times for one Nats-Msg-Id stored twice, want 1", n)
	}
}

func TestSlowFnTwoWorkers(t *testing.T) {
	for _, store := range []string{"memstore", "redis"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel() // the subtests mostly sleep: overlapped, they cost one's wall time
			var s idem.Store = memstore.New()
			if store == "redis" {
				s = redisstore.New(redistest.Single(t), redisstore.WithPrefix(fmt.Sprint("nats:", time.Now().UnixNano(), ":")))
			}
			// fn takes longer than AckWait and the lock TTL; the lease is
			// refreshed every 300 ms, and each refresh tells JetStream the
			// message is in progress, so no other worker gets it. The
			// margins (a lease lost after 900 ms without a refresh, a
			// redelivery after 1.5 s without InProgress) outlast stalls
			// of a loaded machine.
			js, cons, subject := setup(t, 1500*time.Millisecond)
			var runs counter
			fn := func(ctx context.Context, msg jetstream.Msg) error {
				runs.add(msg.Data())
				select {
				case <-time.After(2 * time.Second):
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			var deliveries counter
			opts := []natsadapter.Option{
				natsadapter.WithOptions(idem.WithLockTTL(900 * time.Millisecond)),
				natsadapter.WithKey(countDeliveries(&deliveries)),
			}
			for range 2 {
				consume(t, cons, natsadapter.Handler(s, fn, opts...))
			}
			for i := range 3 {
				publish(t, js, subject, natsadapter.DefaultKeyHeader, fmt.Sprint("m", i), fmt.Sprint("payload ", i))
			}
			settled(t, cons, 20*time.Second)
			for i := range 3 {
				p := fmt.Sprint("payload ", i)
				if n := runs.get(p); n != 1 {
					t.Errorf("message %d: fn ran %d times, want 1", i, n)
				}
				if n := deliveries.get(p); n != 1 {
					t.Errorf("message %d delivered %d times, want once: InProgress should hold it past AckWait", i, n)
				}
			}
		})
	}
}

func TestFailsOnceThenSucceeds(t *testing.T) {
	js, cons, subject := setup(t, 5*time.Second)
	var runs counter
	consume(t, cons, natsadapter.Handler(memstore.New(), func(_ context.Context, msg jetstream.Msg) error {
		if runs.add(msg.Data()) == 1 {
			return errors.New("downstream unavailable")
		}
		return nil
	}, natsadapter.WithBackoff(50*time.Millisecond, time.Second)))
	publish(t, js, subject, natsadapter.DefaultKeyHeader, "m1", "hello")
	settled(t, cons, 5*time.Second)
	if n := runs.get("hello"); n != 2 {
		t.Errorf("fn ran %d times, want 2 (a failure, then the redelivery)", n)
	}
}

func TestFinalErrorTerminates(t *testing.T) {
	js, cons, subject := setup(t, 300*time.Millisecond)
	var runs counter
	var terminated atomic.Int32
	consume(t, cons, natsadapter.Handler(memstore.New(), func(_ context.Context, msg jetstream.Msg) error {
		runs.add(msg.Data())
		return idem.Final(errors.New("invalid order"))
	}, natsadapter.WithOnTerminate(func(_ jetstream.Msg, err error) {
		if err == nil || err.Error() != "invalid order" {
			t.Errorf("terminated with %v", err)
		}
		terminated.Add(1)
	})))
	publish(t, js, subject, natsadapter.DefaultKeyHeader, "m1", "bad")
	settled(t, cons, 5*time.Second)
	time.Sleep(500 * time.Millisecond) // past AckWait: no redelivery
	settled(t, cons, time.Second)
	if n := runs.get("bad"); n != 1 || terminated.Load() != 1 {
		t.Errorf("fn ran %d times and %d terminations, want 1 and 1", n, terminated.Load())
	}
}

func TestKeyReusedForOtherPayload(t *testing.T) {
	js, cons, subject := setup(t, 300*time.Millisecond)
	var runs counter
	var terminated atomic.Int32
	consume(t, cons, natsadapter.Handler(memstore.New(), func(_ context.Context, msg jetstream.Msg) error {
		runs.add(msg.Data())
		return nil
	}, natsadapter.WithOnTerminate(func(_ jetstream.Msg, err error) {
		if !errors.Is(err, idem.ErrKeyReused) {
			t.Errorf("terminated with %v, want ErrKeyReused", err)
		}
		terminated.Add(1)
	})))
	publish(t, js, subject, natsadapter.DefaultKeyHeader, "m1", "pay 10")
	publish(t, js, subject, natsadapter.DefaultKeyHeader, "m1", "pay 99")
	settled(t, cons, 5*time.Second)
	time.Sleep(500 * time.Millisecond) // past AckWait: no redelivery
	settled(t, cons, time.Second)
	if runs.get("pay 10") != 1 || runs.get("pay 99") != 0 || terminated.Load() != 1 {
		t.Errorf("runs %v, %d terminations; want the first payload once, the second never, one termination", runs.runs, terminated.Load())
	}
}

func TestRedeliveryWhileFirstFails(t *testing.T) {
	// JetStream redelivers a message while its first attempt still runs
	// (here the lock TTL is above AckWait, as when a worker is paused).
	// The redelivery must not be acked: the first attempt then fails, and
	// the message is processed to success later, not lost.
	js, cons, subject := setup(t, 300*time.Millisecond)
	var runs atomic.Int32
	var deliveries counter
	release := make(chan struct{})
	h := natsadapter.Handler(memstore.New(), func(_ context.Context, msg jetstream.Msg) error {
		if runs.Add(1) == 1 {
			<-release
			return errors.New("first attempt fails")
		}
		return nil
	}, natsadapter.WithOptions(idem.WithLockTTL(time.Second)), natsadapter.WithKey(countDeliveries(&deliveries)),
		natsadapter.WithBackoff(50*time.Millisecond, time.Second))
	// Two workers: a subscription hands its messages to its handler one
	// at a time, so the redelivery reaches the other worker.
	consume(t, cons, h)
	consume(t, cons, h)
	publish(t, js, subject, natsadapter.DefaultKeyHeader, "m1", "charge")
	deadline := time.Now().Add(5 * time.Second)
	for deliveries.get("charge") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no redelivery while the first attempt ran")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // the redelivery has been answered
	close(release)
	settled(t, cons, 10*time.Second)
	if n := runs.Load(); n != 2 {
		t.Errorf("fn ran %d times, want 2: the failed first attempt and one success", n)
	}
}

// countDeliveries is a key function that counts the deliveries of each
// payload, and keys by Nats-Msg-Id.
func countDeliveries(c *counter) func(jetstream.Msg) (string, error) {
	return func(msg jetstream.Msg) (string, error) {
		c.add(msg.Data())
		return msg.Headers().Get(natsadapter.DefaultKeyHeader), nil
	}
}

func TestCustomKeyHeader(t *testing.T) {
	js, cons, subject := setup(t, 5*time.Second)
	var runs counter
	consume(t, cons, natsadapter.Handler(memstore.New(), func(_ context.Context, msg jetstream.Msg) error {
		runs.add(msg.Data())
		return nil
	}, natsadapter.WithKeyHeader("Order-Id")))
	// Two publishes of one order, each with its own transport message ID.
	for _, msgID := range []string{"t1", "t2"} {
		m := &nats.Msg{Subject: subject, Data: []byte("order 7"), Header: nats.Header{}}
		m.Header.Set("Order-Id", "order-7")
		m.Header.Set("Nats-Msg-Id", msgID)
		if _, err := js.PublishMsg(ctxFor(t), m); err != nil {
			t.Fatal(err)
		}
	}
	settled(t, cons, 5*time.Second)
	if n := runs.get("order 7"); n != 1 {
		t.Errorf("fn ran %d times for one Order-Id, want 1", n)
	}
}

func TestKeyedByStreamSequence(t *testing.T) {
	// Without a key header, a message is keyed by its stream and stream
	// sequence: the same stored message handled twice runs fn once.
	js, cons, subject := setup(t, 5*time.Second)
	var runs counter
	var errs atomic.Int32
	h := natsadapter.Handler(memstore.New(), func(_ context.Context, msg jetstream.Msg) error {
		runs.add(msg.Data())
		return nil
	}, natsadapter.WithOnError(func(jetstream.Msg, error) { errs.Add(1) }))
	publish(t, js, subject, "", "", "no id")
	publish(t, js, subject, "", "", "no id") // another stored message
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != 2 {
		t.Fatalf("fetched %d messages, want 2", len(msgs))
	}
	h(msgs[0])
	h(msgs[0]) // as a redelivery would: replayed
	h(msgs[1])
	if n := runs.get("no id"); n != 2 {
		t.Errorf("fn ran %d times for two stored messages, one handled twice; want 2", n)
	}
	settled(t, cons, 5*time.Second)
}

func TestKeyFuncError(t *testing.T) {
	js, cons, subject := setup(t, 300*time.Millisecond)
	var runs, terminated atomic.Int32
	consume(t, cons, natsadapter.Handler(memstore.New(), func(context.Context, jetstream.Msg) error {
		runs.Add(1)
		return nil
	}, natsadapter.WithKey(func(jetstream.Msg) (string, error) { return "", errors.New("no order id in payload") }),
		natsadapter.WithOnTerminate(func(_ jetstream.Msg, err error) {
			if !errors.Is(err, idem.ErrInvalidKey) {
				t.Errorf("terminated with %v, want ErrInvalidKey", err)
			}
			terminated.Add(1)
		})))
	publish(t, js, subject, "", "", "x")
	settled(t, cons, 5*time.Second)
	if runs.Load() != 0 || terminated.Load() != 1 {
		t.Errorf("fn ran %d times, %d terminations; want 0 and 1", runs.Load(), terminated.Load())
	}
}

func TestConsumersSharingAStore(t *testing.T) {
	// Two durable consumers of one stream do different work on one store:
	// each processes the message once; neither replays the other's record.
	js, billing, subject := setup(t, 5*time.Second)
	stream, err := js.Stream(ctxFor(t), billing.CachedInfo().Stream)
	if err != nil {
		t.Fatal(err)
	}
	shipping, err := stream.CreateOrUpdateConsumer(ctxFor(t), jetstream.ConsumerConfig{Durable: "shipping", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	store := memstore.New()
	var billed, shipped atomic.Int32
	consume(t, billing, natsadapter.Handler(store, func(context.Context, jetstream.Msg) error { billed.Add(1); return nil }))
	consume(t, shipping, natsadapter.Handler(store, func(context.Context, jetstream.Msg) error { shipped.Add(1); return nil }))
	publish(t, js, subject, natsadapter.DefaultKeyHeader, "order-1", "order")
	publish(t, js, subject, natsadapter.DefaultKeyHeader, "order-1", "order")
	settled(t, billing, 5*time.Second)
	settled(t, shipping, 5*time.Second)
	if billed.Load() != 1 || shipped.Load() != 1 {
		t.Errorf("billed %d times and shipped %d times, want once each", billed.Load(), shipped.Load())
	}
}
