package memstore_test

import (
	"context"
	"fmt"
	"log"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// A bounded in-process store: once it holds two keys, the completed record
// closest to expiry makes room for a new key, and a later call with the
// evicted key (k1 here) runs afresh.
func ExampleNew() {
	store := memstore.New(memstore.WithMaxEntries(2))
	op := idem.New[string, string](store)
	if err := op.Err(); err != nil {
		log.Fatal(err)
	}
	runs := 0
	greet := func(_ context.Context, name string) (string, error) {
		runs++
		return "hello " + name, nil
	}
	ctx := context.Background()
	for _, key := range []string{"k1", "k2", "k2", "k3", "k1"} {
		out, info, err := op.DoInfo(ctx, key, "ann", greet)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(key, out, info.Outcome)
	}
	fmt.Println("runs:", runs, "entries:", store.Len())
	// Output:
	// k1 hello ann executed
	// k2 hello ann executed
	// k2 hello ann replayed
	// k3 hello ann executed
	// k1 hello ann executed
	// runs: 4 entries: 2
}
