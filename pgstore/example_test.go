package pgstore_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/pgtest"
	"github.com/idemkit/idem/pgstore"
)

// A service places an order at most once per idempotency key. The order's
// row and the stored receipt commit in one transaction: a crash loses both
// or neither, never the receipt of an order that was not placed, nor an
// order whose retry would place it again.
//
// The example needs a PostgreSQL database, named by DATABASE_URL. On an
// empty one it prints:
//
//	placed ord_1 1999 (fn ran 1 time)
//	retried ord_1 1999 (fn ran 1 time)
//	orders: 1, stored results: 1
func ExampleDoTx() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	// At start: the store's table (or apply pgstore.DDL with your own
	// migration tool), and the service's.
	store := pgstore.New(pool)
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS orders (
	id       text PRIMARY KEY,
	customer text NOT NULL,
	amount   bigint NOT NULL
)`); err != nil {
		log.Fatal(err)
	}

	type Order struct {
		ID       string
		Customer string
		Amount   int64
	}
	type Receipt struct {
		OrderID string
		Amount  int64
	}
	placeOrder := idem.New[Order, Receipt](store)
	if err := placeOrder.Err(); err != nil {
		log.Fatal(err)
	}

	runs := 0
	insert := func(ctx context.Context, tx pgx.Tx, o Order) (Receipt, error) {
		runs++
		// In the call's transaction: the row commits with the receipt.
		_, err := tx.Exec(ctx, `INSERT INTO orders (id, customer, amount) VALUES ($1, $2, $3)`, o.ID, o.Customer, o.Amount)
		if err != nil {
			return Receipt{}, err // rolled back, the key released
		}
		return Receipt{OrderID: o.ID, Amount: o.Amount}, nil
	}

	key := idem.ScopedKey("acct_1", "key-1") // the client's Idempotency-Key
	req := Order{ID: "ord_1", Customer: "cus_1", Amount: 1999}
	placed, err := pgstore.DoTx(ctx, placeOrder, key, req, insert)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("placed %s %d (fn ran %d time)\n", placed.OrderID, placed.Amount, runs)

	// The reply was lost, and the client retries: the stored receipt comes
	// back, without running fn or inserting the order again.
	retried, err := pgstore.DoTx(ctx, placeOrder, key, req, insert)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("retried %s %d (fn ran %d time)\n", retried.OrderID, retried.Amount, runs)

	var orders, results int
	err = pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM orders),
	(SELECT count(*) FROM idem_records WHERE record IS NOT NULL)`).Scan(&orders, &results)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("orders: %d, stored results: %d\n", orders, results)
}

// exampleDoTxOutput is what ExampleDoTx prints on an empty database, as its
// comment says.
const exampleDoTxOutput = `placed ord_1 1999 (fn ran 1 time)
retried ord_1 1999 (fn ran 1 time)
orders: 1, stored results: 1
`

// exampleChildEnv, set to 1, makes TestExampleDoTx run ExampleDoTx itself.
const exampleChildEnv = "PGSTORE_EXAMPLE_CHILD"

// TestExampleDoTx runs ExampleDoTx, which has no Output comment for want of
// a database in `go test`, on a new database of the test server, and checks
// what it prints. The example runs in a child process (this test binary,
// running this test alone), so that its log.Fatal ends the child, not the
// tests, and its output is read from the child's stdout.
func TestExampleDoTx(t *testing.T) {
	if os.Getenv(exampleChildEnv) == "1" {
		ExampleDoTx()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestExampleDoTx$", "-test.count=1")
	cmd.Env = append(os.Environ(), exampleChildEnv+"=1", "DATABASE_URL="+pgtest.ConnString(t))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ExampleDoTx: %v\nstdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
	}
	// The child's testing package prints PASS after the example.
	if got := stdout.String(); !strings.HasPrefix(got, exampleDoTxOutput) {
		t.Errorf("ExampleDoTx printed:\n%s\nwant:\n%s", got, exampleDoTxOutput)
	}
}

// Expired rows already count as absent; a periodic Sweep reclaims their
// space. Run the loop for as long as the service runs, in a goroutine of
// its own. Every replica may run it: concurrent sweeps skip the rows that
// another is deleting rather than wait for them.
func ExampleStore_Sweep() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	store := pgstore.New(pool)

	const batch = 1000
	ticker := time.NewTicker(5 * time.Minute)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		// A full batch may leave more behind: sweep again at once, in
		// short statements rather than one long one.
		for {
			n, err := store.Sweep(ctx, batch)
			if err != nil {
				log.Printf("idem: sweep: %v", err)
				break
			}
			if n < batch {
				break
			}
		}
	}
}

// DDL gives the store's table to a migration tool that keeps its own
// files, in place of Migrate.
func ExampleDDL() {
	fmt.Print(pgstore.DDL("idem_records"))
	// Output:
	// CREATE TABLE IF NOT EXISTS "idem_records" (
	// 	key         text COLLATE "C" PRIMARY KEY,
	// 	token       text        NOT NULL,
	// 	fingerprint text        NOT NULL,
	// 	record      bytea,
	// 	expires_at  timestamptz NOT NULL
	// );
	// CREATE INDEX IF NOT EXISTS "idem_records_expires_at_idx" ON "idem_records" (expires_at);
}
