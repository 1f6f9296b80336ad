package natsadapter_test

// Helpers of the adversarial tests: streams of their own, messages that
// record what the handler did with them, fake messages, and a store that
// spies on commits and can lie about refreshes.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/natsadapter"
)

// ---- helpers ---------------------------------------------------------------

var attackStreams atomic.Int32

// attackEnv is a stream of a test's own, with a durable consumer "workers".
type attackEnv struct {
	js      jetstream.JetStream
	cons    jetstream.Consumer
	name    string
	subject string
}

// attackSetup makes a stream named name (a fresh one when empty) on nc,
// without JetStream deduplication worth speaking of, and its consumer.
func attackSetup(t *testing.T, nc *nats.Conn, name string, storage jetstream.StorageType, ackWait time.Duration) attackEnv {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if name == "" {
		name = fmt.Sprintf("ATK%d", attackStreams.Add(1))
	}
	subject := "atk" + fmt.Sprint(len(name)) + strings.ToLower(name[:min(len(name), 20)]) + ".msgs"
	stream, err := js.CreateStream(ctxFor(t), jetstream.StreamConfig{
		Name:       name,
		Subjects:   []string{subject},
		Storage:    storage,
		Duplicates: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	cons, err := stream.CreateOrUpdateConsumer(ctxFor(t), jetstream.ConsumerConfig{
		Durable:   "workers",
		AckPolicy: jetstream.AckExplicitPolicy,
		AckWait:   ackWait,
	})
	if err != nil {
		t.Fatal(err)
	}
	return attackEnv{js: js, cons: cons, name: name, subject: subject}
}

// pub publishes data with the given headers (pairs of name and value).
func pub(t *testing.T, js jetstream.JetStream, subject string, data []byte, hdr ...string) {
	t.Helper()
	m := &nats.Msg{Subject: subject, Data: data}
	if len(hdr) > 0 {
		m.Header = nats.Header{}
		for i := 0; i+1 < len(hdr); i += 2 {
			m.Header.Set(hdr[i], hdr[i+1])
		}
	}
	if _, err := js.PublishMsg(ctxFor(t), m); err != nil {
		t.Fatal(err)
	}
}

func fetch(t *testing.T, cons jetstream.Consumer, n int) []jetstream.Msg {
	t.Helper()
	batch, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != n {
		t.Fatalf("fetched %d messages, want %d", len(msgs), n)
	}
	return msgs
}

// recMsg records what the handler does with a message: "ack" (Ack or
// DoubleAck), "nak" (Nak, NakWithDelay), "term", and how often it sent
// InProgress. beforeAck, when set, runs before an ack is passed on.
type recMsg struct {
	jetstream.Msg
	mu        sync.Mutex
	acts      []string
	progress  atomic.Int32
	beforeAck func()
}

func (m *recMsg) did(a string) {
	m.mu.Lock()
	m.acts = append(m.acts, a)
	m.mu.Unlock()
}

func (m *recMsg) actions() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.acts)
}

// waitActions waits until the handler did something with m.
func (m *recMsg) waitActions(t *testing.T, within time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if a := m.actions(); len(a) > 0 {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("the handler neither acked, nakked nor terminated the message within %v", within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (m *recMsg) ack() {
	m.did("ack")
	if m.beforeAck != nil {
		m.beforeAck()
	}
}

func (m *recMsg) Ack() error                          { m.ack(); return m.Msg.Ack() }
func (m *recMsg) DoubleAck(ctx context.Context) error { m.ack(); return m.Msg.DoubleAck(ctx) }
func (m *recMsg) Nak() error                          { m.did("nak"); return m.Msg.Nak() }
func (m *recMsg) NakWithDelay(d time.Duration) error  { m.did("nak"); return m.Msg.NakWithDelay(d) }
func (m *recMsg) Term() error                         { m.did("term"); return m.Msg.Term() }
func (m *recMsg) TermWithReason(reason string) error {
	m.did("term")
	return m.Msg.TermWithReason(reason)
}
func (m *recMsg) InProgress() error            { m.progress.Add(1); return m.Msg.InProgress() }
func (m *recMsg) String() string               { return fmt.Sprint(m.actions()) }
func (m *recMsg) is(want ...string) bool       { return slices.Equal(m.actions(), want) }
func newFake(id, data string, md bool) *recMsg { return &recMsg{Msg: fakeMsg(id, data, md)} }
func hookErr(errs *[]error, mu *sync.Mutex) func(jetstream.Msg, error) {
	return func(_ jetstream.Msg, err error) { mu.Lock(); *errs = append(*errs, err); mu.Unlock() }
}

// fake is a jetstream.Msg of no server: its acks succeed and do nothing.
type fake struct {
	jetstream.Msg // nil: what is not overridden is not expected to be called
	subject       string
	data          []byte
	header        nats.Header
	md            *jetstream.MsgMetadata
}

// fakeMsg returns a message on "fake.orders" with Nats-Msg-Id id (none when
// empty), and JetStream metadata when md.
func fakeMsg(id, data string, md bool) *fake {
	f := &fake{subject: "fake.orders", data: []byte(data), header: nats.Header{}}
	if id != "" {
		f.header.Set(natsadapter.DefaultKeyHeader, id)
	}
	if md {
		f.md = &jetstream.MsgMetadata{Stream: "FAKE", Consumer: "workers", NumDelivered: 1,
			Sequence: jetstream.SequencePair{Stream: 1, Consumer: 1}, Timestamp: time.Now()}
	}
	return f
}

func (f *fake) Subject() string      { return f.subject }
func (f *fake) Data() []byte         { return f.data }
func (f *fake) Headers() nats.Header { return f.header }
func (f *fake) Reply() string        { return "" }
func (f *fake) Metadata() (*jetstream.MsgMetadata, error) {
	if f.md == nil {
		return nil, errors.New("not a JetStream message")
	}
	return f.md, nil
}
func (f *fake) Ack() error                       { return nil }
func (f *fake) DoubleAck(context.Context) error  { return nil }
func (f *fake) Nak() error                       { return nil }
func (f *fake) NakWithDelay(time.Duration) error { return nil }
func (f *fake) InProgress() error                { return nil }
func (f *fake) Term() error                      { return nil }
func (f *fake) TermWithReason(string) error      { return nil }

// spyStore records, per message key (the store key after its last ':',
// past the namespace and the handler's stream and consumer scope), the
// Commits that succeeded and those that failed. With lieOnRefresh, a Refresh that succeeded in the store is
// reported as failed, as when its reply is lost.
type spyStore struct {
	idem.Store
	lieOnRefresh atomic.Bool
	mu           sync.Mutex
	commits      map[string]int
	failed       map[string]int
	skeys        map[string]string // message key -> store key
}

func newSpy(s idem.Store) *spyStore {
	return &spyStore{Store: s, commits: map[string]int{}, failed: map[string]int{}, skeys: map[string]string{}}
}

func (s *spyStore) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	id := key[strings.LastIndexByte(key, ':')+1:]
	s.mu.Lock()
	s.skeys[id] = key
	s.mu.Unlock()
	a, err := s.Store.Acquire(ctx, key, fp, ttl)
	if a.Lease != nil {
		a.Lease = &spyLease{Lease: a.Lease, s: s, key: id}
	}
	return a, err
}

// stored asks the store whether it holds a record for the message key id
// ("" when it does); a lease it is granted on the way is released at once.
func (s *spyStore) stored(id string) string {
	s.mu.Lock()
	skey := s.skeys[id]
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, err := s.Store.Acquire(ctx, skey, "probe", time.Second)
	switch {
	case err != nil:
		return err.Error()
	case a.Record != nil:
		return ""
	case a.Lease != nil:
		_ = a.Lease.Release(ctx)
		return "no record, key free"
	}
	return "no record, key leased"
}

func (s *spyStore) counts(key string) (commits, failed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commits[key], s.failed[key]
}

type spyLease struct {
	idem.Lease
	s   *spyStore
	key string
}

func (l *spyLease) Commit(ctx context.Context, rec []byte, ttl time.Duration) error {
	err := l.Lease.Commit(ctx, rec, ttl)
	l.s.mu.Lock()
	if err == nil {
		l.s.commits[l.key]++
	} else {
		l.s.failed[l.key]++
	}
	l.s.mu.Unlock()
	return err
}

func (l *spyLease) Refresh(ctx context.Context, ttl time.Duration) error {
	err := l.Lease.Refresh(ctx, ttl)
	if err == nil && l.s.lieOnRefresh.Load() {
		return errors.New("read tcp: i/o timeout (injected: the refresh was applied, its reply lost)")
	}
	return err
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ---- storms ----------------------------------------------------------------
