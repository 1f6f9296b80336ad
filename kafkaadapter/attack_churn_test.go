package kafkaadapter_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/kafkaadapter"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/queue"
)

// The churn test: members join and leave, leaders move, fn fails, while
// the documented poll loop runs; no record is lost, skipped or run twice.

// ledger records, for TestAttackChurn, which records the poll loops
// settled (Result.Commit), and checks the loop's two invariants: Process
// is never called for a record while an earlier record of its partition is
// unsettled (no gap, no reordering after a rewind), and the group never
// commits past an unsettled record.
type ledger struct {
	mu      sync.Mutex
	settled map[int32]map[int64]bool
	prefix  map[int32]int64 // every record of the partition below it is settled
	runs    map[string]int  // fn's runs per record value
	oks     map[string]int  // fn's runs that completed: returned nil or a final error
	hooks   map[string]int  // WithOnTerminate calls per record value
	calls   atomic.Int64    // Process calls
	zombie  []zombieCall    // the Process calls of zombieValue
	bad     []string
}

// zombieValue is the record whose first run outlasts the rebalance
// timeout in TestAttackChurn.
const zombieValue = "v-200"

type zombieCall struct {
	member    string
	partition int32
	offset    int64
	outcome   idem.Outcome
}

func newLedger() *ledger {
	return &ledger{settled: map[int32]map[int64]bool{}, prefix: map[int32]int64{},
		runs: map[string]int{}, oks: map[string]int{}, hooks: map[string]int{}}
}

// failf records a violation; l.mu is held.
func (l *ledger) failf(format string, args ...any) {
	if len(l.bad) < 30 {
		l.bad = append(l.bad, fmt.Sprintf(format, args...))
	}
}

func (l *ledger) start(member string, r *kgo.Record) {
	l.calls.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if p := l.prefix[r.Partition]; r.Offset > p {
		l.failf("%s: Process(%d/%d) while %d/%d is not settled", member, r.Partition, r.Offset, r.Partition, p)
	}
}

func (l *ledger) result(member string, r *kgo.Record, res kafkaadapter.Result) {
	l.mu.Lock()
	defer l.mu.Unlock()
	i := index(r)
	if string(r.Value) == zombieValue {
		l.zombie = append(l.zombie, zombieCall{member, r.Partition, r.Offset, res.Info.Outcome})
	}
	switch {
	case errors.Is(res.Err, idem.ErrNotStored):
		l.failf("%s: %d/%d (%s): not stored: %v", member, r.Partition, r.Offset, r.Value, res.Err)
	case res.Action == queue.Terminate && i%17 != 0:
		l.failf("%s: %d/%d (%s) terminated: %v/%v", member, r.Partition, r.Offset, r.Value, res.Info.Outcome, res.Err)
	case res.Action == queue.Ack && i%17 == 0:
		l.failf("%s: %d/%d (%s) acked, want terminated", member, r.Partition, r.Offset, r.Value)
	}
}

func (l *ledger) settle(r *kgo.Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.settled[r.Partition]
	if s == nil {
		s = map[int64]bool{}
		l.settled[r.Partition] = s
	}
	s[r.Offset] = true
	for s[l.prefix[r.Partition]] {
		l.prefix[r.Partition]++
	}
}

// checkCommits checks the group's committed offsets, read before l.mu is
// taken: the settled prefix only grows.
func (l *ledger) checkCommits(info *kfake.GroupInfo) {
	if info == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for p, c := range info.Commits["t"] {
		if c.Offset > l.prefix[p] {
			l.failf("group committed %d/%d while %d/%d is not settled", p, c.Offset, p, l.prefix[p])
		}
	}
}

func (l *ledger) done(ends map[int32]int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for p, e := range ends {
		if l.prefix[p] < e {
			return false
		}
	}
	return true
}

// index returns i of a record "v-i", -1 for other records.
func index(r *kgo.Record) int {
	var i int
	if _, err := fmt.Sscanf(string(r.Value), "v-%d", &i); err != nil {
		return -1
	}
	return i
}

// churnMember is one group member running the documented poll loop.
type churnMember struct {
	name     string
	stopPoll context.CancelFunc // graceful: finish the poll's records, close
	stopProc context.CancelFunc // hard: cancel Process too (shutdown mid-fn)
	done     chan struct{}
}

// Members join and leave a group of 3 while records are produced and
// processed: every ~300 ms one member leaves (alternately finishing its
// poll's records, and cancelled mid-Process) as another joins; partition
// leaders move every third step; one record's fn outlasts the rebalance
// timeout, so that its member is kicked out of the group while fn runs (a
// zombie) and the partition's new owner waits for it. fn fails
// transiently, finally (idem.Final) for every 17th record, and the
// dead-letter hook fails once for every 34th. Every 10th record is also
// produced again, with the same key, value and header, to another
// partition.
//
// Checked: Process never sees a record while an earlier one of its
// partition is unsettled; the group never commits past an unsettled record
// (sampled from the broker every few ms); in the end every record is
// settled, fn completed (returned nil or its final error) exactly once per
// record, the group's commits are the partitions' ends, and a new member
// consuming from them gets only records produced afterwards.
func TestAttackChurn(t *testing.T) {
	t.Parallel()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.SeedTopics(6, "t"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	seeds := kgo.SeedBrokers(cluster.ListenAddrs()...)
	group := groupName(t)
	store := memstore.New()
	l := newLedger()

	zombieStarted := make(chan struct{})
	fn := func(ctx context.Context, r *kgo.Record) error {
		v, i := string(r.Value), index(r)
		l.mu.Lock()
		l.runs[v]++
		run := l.runs[v]
		l.mu.Unlock()
		if v == zombieValue && run == 1 {
			close(zombieStarted)
			time.Sleep(3 * time.Second) // a fn that ignores ctx, past the rebalance timeout
		} else {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(1+i%3) * time.Millisecond):
			}
		}
		switch {
		case i%17 == 0:
			l.mu.Lock()
			l.oks[v]++ // a final error is its outcome too
			l.mu.Unlock()
			return idem.Final(fmt.Errorf("final %d", i))
		case i%5 == 1 && run == 1, i%7 == 3 && run <= 3:
			return errors.New("transient")
		}
		l.mu.Lock()
		l.oks[v]++
		l.mu.Unlock()
		return nil
	}
	hook := func(_ context.Context, r *kgo.Record, _ error) error {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.hooks[string(r.Value)]++
		if index(r)%34 == 0 && l.hooks[string(r.Value)] == 1 {
			return errors.New("dead-letter topic down")
		}
		return nil
	}
	proc := kafkaadapter.New(store, group, fn,
		kafkaadapter.WithRetries(1, time.Millisecond, 2*time.Millisecond),
		kafkaadapter.WithOnTerminate(hook),
		kafkaadapter.WithOptions(idem.WithLockTTL(2*time.Second), idem.WithWaitTimeout(6*time.Second)))
	if err := proc.Err(); err != nil {
		t.Fatal(err)
	}

	var names atomic.Int64
	start := func() *churnMember {
		m := &churnMember{name: fmt.Sprintf("m%d", names.Add(1)), done: make(chan struct{})}
		cl := consumer(t, seeds, group, kgo.RebalanceTimeout(1500*time.Millisecond), kgo.FetchMaxWait(100*time.Millisecond))
		procCtx, stopProc := context.WithCancel(context.Background())
		pollCtx, stopPoll := context.WithCancel(procCtx)
		m.stopPoll, m.stopProc = stopPoll, stopProc
		go func() {
			defer close(m.done)
			defer cl.CloseAllowingRebalance() // commits the marks
			for {
				fetches := cl.PollRecords(pollCtx, 20)
				if fetches.IsClientClosed() || pollCtx.Err() != nil {
					return
				}
				fetches.EachPartition(func(p kgo.FetchTopicPartition) {
					for _, r := range p.Records {
						l.start(m.name, r)
						res := proc.Process(procCtx, r)
						l.result(m.name, r, res)
						if !res.Commit() {
							cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{
								r.Topic: {r.Partition: {Epoch: r.LeaderEpoch, Offset: r.Offset}},
							})
							return
						}
						l.settle(r)
						cl.MarkCommitRecords(r)
					}
				})
				cl.AllowRebalance()
			}
		}()
		return m
	}

	monitorDone, stopMonitor := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(monitorDone)
		for {
			l.checkCommits(cluster.GroupInfo(group))
			select {
			case <-stopMonitor:
				return
			case <-time.After(3 * time.Millisecond):
			}
		}
	}()

	// 500 records, 10 every 80 ms, to partition i%6; every 10th again to
	// partition (i+3)%6.
	ends := map[int32]int64{}
	produced := make(chan error, 1)
	go func() {
		for b := range 50 {
			var recs []*kgo.Record
			for i := b * 10; i < b*10+10; i++ {
				r := rec(fmt.Sprintf("k-%d", i), fmt.Sprintf("v-%d", i))
				r.Key, r.Partition = []byte(fmt.Sprintf("rk-%d", i)), int32(i%6)
				recs = append(recs, r)
				if i%10 == 0 {
					d := rec(fmt.Sprintf("k-%d", i), fmt.Sprintf("v-%d", i))
					d.Key, d.Partition = []byte(fmt.Sprintf("rk-%d", i)), int32((i+3)%6)
					recs = append(recs, d)
				}
			}
			e, err := produceManual(seeds, recs...)
			if err != nil {
				produced <- err
				return
			}
			for p, o := range e {
				ends[p] = max(ends[p], o)
			}
			time.Sleep(80 * time.Millisecond)
		}
		produced <- nil
	}()

	members := []*churnMember{start(), start(), start()}
	var gone []*churnMember
	churnEnd := time.Now().Add(5 * time.Second)
	zombieSeen := false
	for step := 0; time.Now().Before(churnEnd); step++ {
		if !zombieSeen && isClosed(zombieStarted) {
			// One join, then none until the zombie's member is kicked
			// out: every join restarts the rebalance timeout.
			zombieSeen = true
			members = append(members, start())
			time.Sleep(3500 * time.Millisecond)
			continue
		}
		time.Sleep(300 * time.Millisecond)
		victim := members[0]
		members = append(members[1:], start())
		if step%2 == 0 {
			victim.stopPoll()
		} else {
			victim.stopProc()
		}
		gone = append(gone, victim)
		if step%3 == 2 {
			cluster.ShufflePartitionLeaders()
		}
	}
	if err := recv(t, produced, "the producer"); err != nil {
		t.Fatal(err)
	}
	// Whether the zombie's takeover happened depends on timing on a
	// loaded machine; it is logged, not required: the invariants below
	// hold either way, and the InFlightAfterRebalance scenario (TestMemstore, TestRedis) covers the
	// takeover deterministically.
	if !zombieSeen {
		t.Log("the zombie record's fn did not run during the churn")
	}

	deadline := time.Now().Add(20 * time.Second)
	for !l.done(ends) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, m := range append(gone, members...) {
		m.stopPoll()
	}
	for _, m := range append(gone, members...) {
		recv(t, m.done, "member "+m.name+" to stop")
	}
	close(stopMonitor)
	<-monitorDone
	info := cluster.GroupInfo(group)
	l.checkCommits(info)

	l.mu.Lock()
	for _, b := range l.bad {
		t.Error(b)
	}
	for p, e := range ends {
		if l.prefix[p] != e {
			t.Errorf("partition %d: settled up to %d, end %d", p, l.prefix[p], e)
		}
		if c := info.Commits["t"][p].Offset; c != e {
			t.Errorf("partition %d: committed %d, end %d", p, c, e)
		}
	}
	for i := range 500 {
		v := fmt.Sprintf("v-%d", i)
		switch {
		case l.oks[v] != 1:
			t.Errorf("%s: fn completed %d times (ran %d), want once", v, l.oks[v], l.runs[v])
		case i%17 == 0 && l.hooks[v] < 1+btoi(i%34 == 0):
			t.Errorf("%s: dead-letter hook called %d times", v, l.hooks[v])
		}
	}
	// The zombie's partition moved while its fn ran: another member
	// processed the record, and waited for the zombie's attempt.
	moved := false
	for _, e := range l.zombie {
		if e.outcome != idem.OutcomeExecuted {
			continue
		}
		for _, o := range l.zombie {
			moved = moved || o.member != e.member && o.partition == e.partition && o.offset == e.offset && o.outcome == idem.OutcomeReplayed
		}
	}
	if !moved {
		t.Logf("no other member took over the zombie's record this run: %+v", l.zombie)
	}
	calls := l.calls.Load()
	l.mu.Unlock()
	t.Logf("%d Process calls, %d members", calls, names.Load())

	// A member joining now starts at the commits: it gets only what is
	// produced from now on.
	var markers []*kgo.Record
	for p := range int32(6) {
		r := rec("", fmt.Sprintf("marker-%d", p))
		r.Partition = p
		markers = append(markers, r)
	}
	produceTo(t, seeds, markers...)
	var c counter
	out := mustConsume(t, consumer(t, seeds, group), kafkaadapter.New(store, group, c.process), 6)
	for _, o := range out {
		if !strings.HasPrefix(string(o.rec.Value), "marker-") {
			t.Errorf("after the churn, a new member got %d/%d (%s): the commits were behind", o.rec.Partition, o.rec.Offset, o.rec.Value)
		}
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
