package queue_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/queue"
)

// delivery stands for a message of any broker with acks: a RabbitMQ
// delivery, an SQS message, a Redis stream entry.
type delivery struct {
	ID       string // the producer's message ID
	Body     string
	Attempts int // how often it was delivered
}

func (d delivery) Ack()                           { fmt.Println(d.ID, "ack") }
func (d delivery) Requeue(after time.Duration)    { fmt.Println(d.ID, "requeue after", after) }
func (d delivery) DeadLetter(reason error)        { fmt.Println(d.ID, "dead-letter:", reason) }
func send(ctx context.Context, body string) error { return nil }

// A consumer on any broker: Do runs the handler once per message ID, and
// Decide says what to do with the delivery.
func Example() {
	const lockTTL = 30 * time.Second
	emails := idem.New[string, struct{}](memstore.New(), idem.WithNamespace("emails"), idem.WithLockTTL(lockTTL))

	handle := func(ctx context.Context, d delivery) {
		_, info, err := emails.DoInfo(ctx, d.ID, d.Body, func(ctx context.Context, body string) (struct{}, error) {
			if body == "" {
				return struct{}{}, idem.Final(errors.New("empty email"))
			}
			return struct{}{}, send(ctx, body)
		})
		switch queue.Decide(info, err) {
		case queue.Ack:
			d.Ack()
		case queue.Retry:
			d.Requeue(queue.Backoff(d.Attempts, time.Second, time.Minute))
		case queue.RetryAfterLease:
			d.Requeue(lockTTL)
		case queue.Terminate:
			d.DeadLetter(err)
		}
	}

	ctx := context.Background()
	handle(ctx, delivery{ID: "m1", Body: "hello", Attempts: 1})
	handle(ctx, delivery{ID: "m1", Body: "hello", Attempts: 2}) // redelivered: replayed, not sent again
	handle(ctx, delivery{ID: "m2", Body: "", Attempts: 1})
	handle(ctx, delivery{ID: "m1", Body: "other", Attempts: 1}) // ID reused for another body
	// Output:
	// m1 ack
	// m1 ack
	// m2 dead-letter: empty email
	// m1 dead-letter: idem: idempotency key reused with a different request
}
