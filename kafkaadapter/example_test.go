package kafkaadapter_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/idemkit/idem/kafkaadapter"
	"github.com/idemkit/idem/memstore"
)

// A poll loop that charges each order once, although the producer sent
// order-1 twice. Records are marked for commit only once Process settled
// them; a record it did not settle is fetched again, and its partition
// waits for it.
func Example() {
	// A fake Kafka cluster, so that the example runs: use your brokers.
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"))
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()
	seeds := kgo.SeedBrokers(cluster.ListenAddrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The producer sets one idempotency key per order, and sends it
	// again when it sends the order again.
	producer, err := kgo.NewClient(seeds)
	if err != nil {
		log.Fatal(err)
	}
	for _, o := range [][2]string{{"order-1", "a book"}, {"order-2", "a lamp"}, {"order-1", "a book"}} {
		rec := &kgo.Record{Topic: "orders", Value: []byte(o[1]),
			Headers: []kgo.RecordHeader{{Key: kafkaadapter.DefaultKeyHeader, Value: []byte(o[0])}}}
		if err := producer.ProduceSync(ctx, rec).FirstErr(); err != nil {
			log.Fatal(err)
		}
	}
	producer.Close()

	proc := kafkaadapter.New(memstore.New(), "billing", func(ctx context.Context, rec *kgo.Record) error {
		fmt.Printf("charging for %s\n", rec.Value)
		return nil
	})
	if err := proc.Err(); err != nil {
		log.Fatal(err)
	}
	cl, err := kgo.NewClient(seeds,
		kgo.ConsumerGroup("billing"),
		kgo.ConsumeTopics("orders"),
		kgo.AutoCommitMarks(),      // commit only the records marked below
		kgo.BlockRebalanceOnPoll(), // no revocation while records are processed
	)
	if err != nil {
		log.Fatal(err)
	}
	defer cl.CloseAllowingRebalance() // commits the marks

	for settled := 0; settled < 3; { // a consumer loops until shutdown
		fetches := cl.PollRecords(ctx, 100)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			break
		}
		fetches.EachError(func(topic string, p int32, err error) { log.Printf("fetch %s/%d: %v", topic, p, err) })
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			for _, rec := range p.Records {
				res := proc.Process(ctx, rec)
				if !res.Commit() {
					// Fetch rec, and the records after it, again.
					cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{
						rec.Topic: {rec.Partition: {Epoch: rec.LeaderEpoch, Offset: rec.Offset}},
					})
					return // the rest of the partition waits
				}
				cl.MarkCommitRecords(rec)
				settled++
				fmt.Printf("offset %d: %s\n", rec.Offset, res.Info.Outcome)
			}
		})
		cl.AllowRebalance()
	}
	// Output:
	// charging for a book
	// offset 0: executed
	// charging for a lamp
	// offset 1: executed
	// offset 2: replayed
}
