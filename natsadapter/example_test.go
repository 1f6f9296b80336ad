package natsadapter_test

import (
	"context"
	"errors"
	"log"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/natsadapter"
	"github.com/idemkit/idem/redisstore"
)

// A consumer that charges each order once, however often JetStream
// delivers it, on workers that share a Redis. It needs a NATS server with
// JetStream and a Redis, so it is compiled, not run.
func ExampleHandler() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop() // at shutdown: fn's context ends, messages in hand are redelivered

	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "ORDERS", jetstream.ConsumerConfig{
		Durable:   "charger",
		AckPolicy: jetstream.AckExplicitPolicy,
		AckWait:   30 * time.Second, // above the lock TTL
	})
	if err != nil {
		log.Fatal(err)
	}

	store := redisstore.New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", ContextTimeoutEnabled: true}))
	handler := natsadapter.Handler(store, func(ctx context.Context, msg jetstream.Msg) error {
		if len(msg.Data()) == 0 {
			return idem.Final(errors.New("empty order")) // terminated, never redelivered
		}
		return charge(ctx, msg.Data()) // an error: redelivered with backoff
	},
		natsadapter.WithContext(ctx),
		natsadapter.WithOptions(idem.WithNamespace("charger"), idem.WithLockTTL(10*time.Second)),
		natsadapter.WithOnTerminate(func(msg jetstream.Msg, err error) {
			log.Printf("dead-lettered %s: %v", msg.Subject(), err)
		}),
	)
	cc, err := cons.Consume(handler, jetstream.PullMaxMessages(1))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Stop()
	<-ctx.Done()
}

func charge(context.Context, []byte) error { return nil }
