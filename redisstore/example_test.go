package redisstore_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/redisstore"
)

// A Store on a Redis server shared by every instance of a service. The
// example needs a server, so it is compiled but not run.
func ExampleNew() {
	client := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	defer client.Close()

	store := redisstore.New(client, redisstore.WithPrefix("billing:"))
	op := idem.New[string, string](store,
		idem.WithNamespace("greet"),
		idem.WithTTL(24*time.Hour),
	)
	if err := op.Err(); err != nil {
		log.Fatal(err)
	}
	out, err := op.Do(context.Background(), "key-1", "ann", func(_ context.Context, name string) (string, error) {
		return "hello " + name, nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(out) // stored under the Redis key "billing:greet:key-1"
}
