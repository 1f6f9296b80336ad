// Package kafkaadapter makes a franz-go (kgo) consumer process each record at
// most once per idempotency key: Processor.Process wraps the handling of one
// polled record, and its Result tells the poll loop whether the record may
// be marked for commit.
//
// Kafka delivers at least once: a consumer that crashes, or closes, before
// its offsets are committed gets the same records again on restart, and
// after a rebalance a member that was kicked out (a "zombie") may still be
// processing a record that the partition's new owner now fetches. A
// producer that retries a send writes the record twice. Process runs fn
// once for all of these, and gives the others fn's stored outcome.
//
// # Keys
//
// A record's idempotency key is, in order:
//
//   - what WithKey's function returns, when it is given;
//   - the value of the Idempotency-Key header (WithKeyHeader), which the
//     producer sets once per logical message, and sends again when it
//     produces the message again: this also deduplicates duplicate
//     produces;
//   - else the record's position, "topic/partition/offset@timestamp": this
//     deduplicates redeliveries of the same record (a restart without a
//     commit, a rebalance), not a message produced twice.
//
// Keys are scoped by the group given to New. A header that is present but
// invalid (empty, over idem.MaxKeyLen bytes, repeated with different
// values) terminates the record rather than fall back to its position.
//
// A record is fingerprinted by its topic, key and value, never its headers:
// the same idempotency key on a record with another topic, key or value is
// refused (idem.ErrKeyReused) and terminated, fn not run.
//
// # Results
//
// Process maps idem's outcome to a queue.Action (see queue.Decide):
//
//	outcome                                      Action           Commit
//	executed; replayed                           Ack              yes
//	fn's error, store failure (retried in place) Retry            no
//	in flight past the wait; held; not stored    RetryAfterLease  no
//	final error (idem.Final) stored or replayed  Terminate        yes, once WithOnTerminate took it
//	key reused, invalid key, corrupt record      Terminate        yes, once WithOnTerminate took it
//	ctx ended; invalid options                   Retry            no
//
// # The poll loop and commits
//
// A Kafka consumer cannot negatively acknowledge one record: it commits an
// offset per partition, and committing offset n says every record below n
// is done. So a record that Process did not settle (Result.Commit false)
// must hold back its partition: the loop marks neither it nor any later
// record of the partition, and rewinds the partition to it with
// kgo.Client.SetOffsets, so that the next poll fetches it again. Marks are
// committed by kgo.AutoCommitMarks, which commits only what
// kgo.Client.MarkCommitRecords marked, periodically and when partitions are
// revoked or the client closes (the default OnPartitionsRevoked commits
// the marks; a custom one must call kgo.Client.CommitMarkedOffsets).
// kgo.BlockRebalanceOnPoll keeps partitions from being revoked while a
// poll's records are processed, so that marks and SetOffsets apply to
// partitions the member still owns:
//
//	cl, err := kgo.NewClient(
//		kgo.SeedBrokers(brokers...),
//		kgo.ConsumerGroup("billing"),
//		kgo.ConsumeTopics("orders"),
//		kgo.AutoCommitMarks(),      // commit only records marked below
//		kgo.BlockRebalanceOnPoll(), // no revocation while records are processed
//	)
//	...
//	proc := kafkaadapter.New(store, "billing", charge)
//	for {
//		fetches := cl.PollRecords(ctx, 100)
//		if fetches.IsClientClosed() || ctx.Err() != nil {
//			break
//		}
//		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
//			for _, rec := range p.Records {
//				if !proc.Process(ctx, rec).Commit() {
//					// Fetch rec, and the records after it, again.
//					cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{
//						rec.Topic: {rec.Partition: {Epoch: rec.LeaderEpoch, Offset: rec.Offset}},
//					})
//					return // the rest of the partition waits
//				}
//				cl.MarkCommitRecords(rec)
//			}
//		})
//		cl.AllowRebalance()
//	}
//	cl.CloseAllowingRebalance() // commits the marks
//
// SetOffsets also makes the rewound offset committable, which is right:
// every record of the partition before it was settled. Prefer
// AutoCommitMarks to kgo's plain autocommitting, which commits every record
// returned by earlier polls whether Process settled it or not: that is safe
// only while every poll's records are all settled or rewound before the
// next poll, and not, for instance, when records are processed in
// goroutines that outlive the poll.
//
// # In-flight records and rebalances
//
// When a record's key is held by another attempt, Process waits for it up
// to the wait timeout (DefaultWaitTimeout, or idem.WithWaitTimeout through
// WithOptions), with the key's lease refreshed by the attempt that holds
// it. If that attempt succeeds, the record is Ack (replayed, fn not run); if
// it fails, the wait ends at once and fn runs here; if it crashed, its
// lease expires within the lock TTL (idem.WithLockTTL, 10 s) and fn runs
// here. Past the wait, the result is RetryAfterLease: the loop rewinds and
// the next poll tries again. Keep the wait above the lock TTL, and, with
// kgo.BlockRebalanceOnPoll, the time a poll's records take well under the
// group's rebalance timeout (kgo.RebalanceTimeout, 60 s by default): past
// it, the member is kicked out of the group, and becomes a zombie itself.
//
// # Retries
//
// fn's errors, and store failures, are retried in place, with backoff
// (WithRetries), then reported as Retry: the loop rewinds, and the record
// is tried again on the next poll, for as long as it fails. A record that
// can never succeed blocks its partition until fn says so with
// idem.Final(err), which terminates it (or idem.WithDisposition through
// WithOptions, to decide by error). WithOnTerminate's function dead-letters
// terminated records; a failure there keeps the record, and its redelivery
// replays the terminal outcome without running fn.
package kafkaadapter
