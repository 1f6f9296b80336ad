package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/queue"
)

// delivery is one delivery of a message by an at-least-once broker.
type delivery struct {
	ID, Body string
	Attempt  int
}

// runConsumerDemo consumes a queue whose broker delivers some messages
// twice, on store, and prints what the consumer does with each delivery:
// what natsadapter and kafkaadapter do on real brokers, with queue.Decide.
func runConsumerDemo(ctx context.Context, w io.Writer, store idem.Store) error {
	emails := idem.New[string, struct{}](store, idem.WithNamespace(fmt.Sprint("demo-consumer-", time.Now().UnixNano())))
	if err := emails.Err(); err != nil {
		return err
	}
	sent, failedOnce := 0, false
	send := func(_ context.Context, body string) (struct{}, error) {
		switch {
		case body == "":
			return struct{}{}, idem.Final(errors.New("empty email"))
		case body == "flaky" && !failedOnce:
			failedOnce = true
			return struct{}{}, errors.New("smtp unavailable")
		}
		sent++
		return struct{}{}, nil
	}
	pending := []delivery{{"m1", "hello", 1}, {"m2", "flaky", 1}, {"m1", "hello", 2}, {"m3", "", 1}, {"m1", "other body", 1}}
	fmt.Fprintln(w, "a queue consumer, with duplicate deliveries:")
	for len(pending) > 0 {
		d := pending[0]
		pending = pending[1:]
		_, info, err := emails.DoInfo(ctx, d.ID, d.Body, send)
		action := queue.Decide(info, err)
		fmt.Fprintf(w, "  %s %q (delivery %d): %s -> %s\n", d.ID, d.Body, d.Attempt, info.Outcome, action)
		if action == queue.Retry || action == queue.RetryAfterLease {
			d.Attempt++
			pending = append(pending, d) // the broker redelivers it
		}
	}
	fmt.Fprintf(w, "  emails sent: %d (m1 once, m2 after one failure)\n", sent)
	return nil
}
