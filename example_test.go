package idem_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

type ChargeRequest struct {
	Customer string
	Amount   int64
}

type Charge struct {
	ID     string
	Amount int64
}

// A service charges a card at most once per idempotency key, however often
// the client retries.
func ExampleOperation_Do() {
	charges := idem.New[ChargeRequest, Charge](memstore.New())
	if err := charges.Err(); err != nil {
		log.Fatal(err) // an option that cannot be honoured: fail at start
	}
	var calls int
	charge := func(ctx context.Context, r ChargeRequest) (Charge, error) {
		calls++
		return Charge{ID: fmt.Sprint("ch_", calls), Amount: r.Amount}, nil
	}
	ctx := context.Background()
	req := ChargeRequest{Customer: "cus_1", Amount: 1999}

	// The client's key, private to the account that sent it: two accounts
	// that pick the same key never share a record.
	key := idem.ScopedKey("acct_1", "key-1")
	first, _ := charges.Do(ctx, key, req, charge)
	retry, info, _ := charges.DoInfo(ctx, key, req, charge)
	fmt.Println(first.ID, retry.ID, calls, info.Outcome)

	_, err := charges.Do(ctx, key, ChargeRequest{Customer: "cus_1", Amount: 5}, charge)
	fmt.Println(errors.Is(err, idem.ErrKeyReused))
	// Output:
	// ch_1 ch_1 1 replayed
	// true
}

// Concurrent duplicates collapse into one execution: with a wait timeout,
// every caller receives the one result.
func ExampleWithWaitTimeout() {
	op := idem.New[string, string](memstore.New(), idem.WithWaitTimeout(5*time.Second))
	var runs atomic.Int32
	var wg sync.WaitGroup
	results := make([]string, 10)
	for i := range results {
		wg.Go(func() {
			results[i], _ = op.Do(context.Background(), "order-42", "create", func(context.Context, string) (string, error) {
				runs.Add(1)
				time.Sleep(20 * time.Millisecond)
				return "order created", nil
			})
		})
	}
	wg.Wait()
	fmt.Println(runs.Load(), results[0], results[9])
	// Output: 1 order created order created
}

// A queue consumer deduplicates redelivered messages by using the message ID
// as the key: a message delivered twice (for example, because the ack was
// lost) is processed once.
func Example_queueConsumer() {
	type Message struct {
		ID   string
		Body string
	}
	handle := idem.New[Message, struct{}](memstore.New(), idem.WithNamespace("emails"))
	sent := 0
	consume := func(ctx context.Context, m Message) error {
		_, err := handle.Do(ctx, m.ID, m, func(ctx context.Context, m Message) (struct{}, error) {
			sent++ // send the email
			return struct{}{}, nil
		})
		return err
	}
	deliveries := []Message{{"msg-1", "hello"}, {"msg-2", "bye"}, {"msg-1", "hello"}}
	for _, m := range deliveries {
		if err := consume(context.Background(), m); err != nil {
			fmt.Println(err)
		}
	}
	fmt.Println("emails sent:", sent)
	// Output: emails sent: 2
}

// A declined card is a final answer: Final stores it, and retries get the
// same decline instead of charging again.
func ExampleFinal() {
	op := idem.New[ChargeRequest, Charge](memstore.New())
	decline := func(context.Context, ChargeRequest) (Charge, error) {
		return Charge{}, idem.Final(errors.New("card declined"))
	}
	ctx := context.Background()
	_, err := op.Do(ctx, "key-7", ChargeRequest{Amount: 1}, decline)
	fmt.Println(err)
	_, info, err := op.DoInfo(ctx, "key-7", ChargeRequest{Amount: 1}, decline)
	fmt.Println(err, info.Replayed, errors.Is(err, idem.ErrReplayed))
	// Output:
	// card declined
	// card declined true true
}

// Errors that are not final are not stored: the next call runs again.
func ExampleOperation_Do_retryAfterError() {
	op := idem.New[string, string](memstore.New())
	attempts := 0
	flaky := func(context.Context, string) (string, error) {
		attempts++
		if attempts == 1 {
			return "", errors.New("gateway timeout")
		}
		return "ok", nil
	}
	_, err := op.Do(context.Background(), "k", "r", flaky)
	fmt.Println(err)
	r, err := op.Do(context.Background(), "k", "r", flaky)
	fmt.Println(r, err, attempts)
	// Output:
	// gateway timeout
	// ok <nil> 2
}

// A declined card is an outcome to replay; a gateway timeout is one whose
// effect is unknown, so the key is held for a lease TTL rather than
// released for an immediate second charge.
func ExampleWithDisposition() {
	errDeclined := errors.New("card declined")
	errTimeout := errors.New("gateway timeout")
	charges := idem.New[ChargeRequest, Charge](memstore.New(),
		idem.WithDisposition(func(err error) idem.Disposition {
			switch {
			case errors.Is(err, errDeclined):
				return idem.Record
			case errors.Is(err, errTimeout):
				return idem.Hold
			}
			return idem.Release
		}))
	ctx := context.Background()
	req := ChargeRequest{Customer: "cus_1", Amount: 1999}
	for _, fail := range []error{errDeclined, errTimeout} {
		key := idem.ScopedKey("acct_1", fail.Error())
		_, info, _ := charges.DoInfo(ctx, key, req, func(context.Context, ChargeRequest) (Charge, error) { return Charge{}, fail })
		_, retry, err := charges.DoInfo(ctx, key, req, func(context.Context, ChargeRequest) (Charge, error) { return Charge{ID: "ch_2"}, nil })
		fmt.Println(info.Outcome, "then", retry.Outcome, err)
	}
	// Output:
	// final_error then replayed card declined
	// held then in_flight idem: request with this idempotency key is in flight
}

// storeCalls counts the calls that reach a store.
type storeCalls struct {
	idem.Store
	n int
}

func (s *storeCalls) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	s.n++
	return s.Store.Acquire(ctx, key, fp, ttl)
}

// With a local cache, retries of a key completed in this process are
// answered without asking the store; a request that reuses the key for
// something else is refused from the cache as from the store. Forget drops
// an entry, for example after an operator purged the key from the store.
func ExampleWithLocalCache() {
	store := &storeCalls{Store: memstore.New()}
	charges := idem.New[ChargeRequest, Charge](store, idem.WithLocalCache(10_000))
	charge := func(ctx context.Context, r ChargeRequest) (Charge, error) {
		return Charge{ID: "ch_1", Amount: r.Amount}, nil
	}
	ctx := context.Background()
	req := ChargeRequest{Customer: "cus_1", Amount: 1999}

	c, _ := charges.Do(ctx, "order-42", req, charge)
	for range 3 {
		c, _ = charges.Do(ctx, "order-42", req, charge) // retries
	}
	_, err := charges.Do(ctx, "order-42", ChargeRequest{Customer: "cus_1", Amount: 5}, charge)
	fmt.Println(c.ID, "store calls:", store.n, "reused:", errors.Is(err, idem.ErrKeyReused))

	charges.Forget("order-42")
	c, _ = charges.Do(ctx, "order-42", req, charge)
	fmt.Println(c.ID, "store calls:", store.n)
	// Output:
	// ch_1 store calls: 1 reused: true
	// ch_1 store calls: 2
}
