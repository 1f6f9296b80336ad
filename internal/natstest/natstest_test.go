package natstest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// childEnvVar set to 1 makes the binary a child of TestDiesWithBinary: it
// starts the shared server and exits without Main.
const childEnvVar = "IDEM_NATSTEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnvVar) == "1" {
		os.Exit(m.Run())
	}
	os.Exit(Main(m))
}

// checkLoopback checks that u is a nats URL on 127.0.0.1 at a free port,
// not the default 4222.
func checkLoopback(t *testing.T, u string) int {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(p.Port())
	if p.Scheme != "nats" || p.Hostname() != "127.0.0.1" || port <= 0 || port == nats.DefaultPort {
		t.Errorf("URL %s: want nats://127.0.0.1 at a port other than %d", u, nats.DefaultPort)
	}
	return port
}

// streams counts the streams the tests made, for unique names: the shared
// server keeps its streams for the whole binary, across -test.count runs.
var streams atomic.Int64

// uniqueStream returns a stream name that no test of the binary used yet.
func uniqueStream(prefix string) string {
	return prefix + "_" + strconv.FormatInt(streams.Add(1), 10)
}

// publishAndConsume creates a stream on nc, publishes one message and reads
// it back through a durable pull consumer.
func publishAndConsume(t *testing.T, nc *nats.Conn, stream string, storage jetstream.StorageType) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	subject := strings.ToLower(stream) + ".in"
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{subject}, Storage: storage})
	if err != nil {
		t.Fatalf("CreateStream: %v", err)
	}
	ack, err := js.Publish(ctx, subject, []byte("hello"))
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if ack.Stream != stream || ack.Sequence != 1 {
		t.Errorf("PubAck = %+v, want stream %s sequence 1", ack, stream)
	}
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "reader", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatalf("CreateOrUpdateConsumer: %v", err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	if string(msg.Data()) != "hello" || msg.Subject() != subject {
		t.Errorf("got %q on %s, want %q on %s", msg.Data(), msg.Subject(), "hello", subject)
	}
	if err := msg.DoubleAck(ctx); err != nil {
		t.Errorf("DoubleAck: %v", err)
	}
}

func TestSharedServerHasJetStream(t *testing.T) {
	start := time.Now()
	u := URL(t)
	t.Logf("shared server ready at %s after %v (0 if another test started it)", u, time.Since(start).Round(time.Millisecond))
	checkLoopback(t, u)
	if again := URL(t); again != u {
		t.Errorf("second URL = %s, want the same server %s", again, u)
	}
	nc := Conn(t)
	if got := nc.ConnectedUrl(); got != u {
		t.Errorf("Conn connected to %s, want %s", got, u)
	}
	publishAndConsume(t, nc, uniqueStream("SHARED"), jetstream.MemoryStorage)
}

func TestStartSeparateServer(t *testing.T) {
	t.Parallel()
	shared := URL(t)
	var s *Server
	t.Run("owner", func(t *testing.T) {
		start := time.Now()
		s = Start(t)
		t.Logf("own server ready at %s after %v", s.URL, time.Since(start).Round(time.Millisecond))
		port := checkLoopback(t, s.URL)
		if s.URL == shared || port != s.Port {
			t.Errorf("Start: URL %s, Port %d; shared server at %s", s.URL, s.Port, shared)
		}
		if fi, err := os.Stat(filepath.Join(s.Dir, storeDir)); err != nil || !fi.IsDir() {
			t.Errorf("store directory: %v", err)
		}
		nc, err := nats.Connect(s.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		if nc.ConnectedServerName() == Conn(t).ConnectedServerName() {
			t.Errorf("Start's server is the shared server %s", nc.ConnectedServerName())
		}
		// The same stream name as on the shared server: the stores are
		// separate.
		name := uniqueStream("SEPARATE")
		publishAndConsume(t, nc, name, jetstream.FileStorage)
		publishAndConsume(t, Conn(t), name, jetstream.MemoryStorage)
	})
	if s == nil {
		return
	}
	if s.cmd != nil {
		t.Errorf("server of an ended test still runs")
	}
	if _, err := os.Stat(s.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory of an ended test's server: %v, want it removed", err)
	}
	if nc, err := nats.Connect(s.URL, nats.NoReconnect()); err == nil {
		nc.Close()
		t.Errorf("server of an ended test still answers at %s", s.URL)
	}
}

func TestStopRestartKeepsStreams(t *testing.T) {
	t.Parallel()
	s := Start(t)
	port, dir := s.Port, s.Dir
	nc, err := nats.Connect(s.URL, nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	publishAndConsume(t, nc, "DURABLE", jetstream.FileStorage)
	nc.Close()

	s.Stop()
	s.Stop() // a no-op
	if nc, err := nats.Connect(s.URL, nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatalf("stopped server still answers at %s", s.URL)
	}
	start := time.Now()
	if err := s.Restart(); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	t.Logf("restarted after %v", time.Since(start).Round(time.Millisecond))
	if s.Port != port || s.Dir != dir {
		t.Errorf("after Restart: port %d, dir %s; want %d, %s", s.Port, s.Dir, port, dir)
	}

	nc, err = nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "DURABLE")
	if err != nil {
		t.Fatalf("stream after restart: %v", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 || info.State.LastSeq != 1 {
		t.Errorf("stream state after restart: %d messages, last sequence %d; want 1, 1", info.State.Msgs, info.State.LastSeq)
	}
	m, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatalf("GetMsg: %v", err)
	}
	if string(m.Data) != "hello" {
		t.Errorf("message after restart = %q, want %q", m.Data, "hello")
	}
	cons, err := st.Consumer(ctx, "reader")
	if err != nil {
		t.Fatalf("consumer after restart: %v", err)
	}
	if ci := cons.CachedInfo(); ci.AckFloor.Stream != 1 {
		t.Errorf("consumer ack floor after restart = %d, want 1", ci.AckFloor.Stream)
	}
	if _, err := js.Publish(ctx, "durable.in", []byte("again")); err != nil {
		t.Errorf("Publish after restart: %v", err)
	}

	// Restart of a running server stops it first.
	if err := s.Restart(); err != nil {
		t.Fatalf("second Restart: %v", err)
	}
}

// TestChildStartServer starts the shared server in a child of
// TestDiesWithBinary and prints where it is.
func TestChildStartServer(t *testing.T) {
	if os.Getenv(childEnvVar) != "1" {
		t.Skip("run by TestDiesWithBinary")
	}
	URL(t)
	s := servers.shared
	fmt.Printf("NATSTEST pid=%d dir=%s\n", s.cmd.Process.Pid, s.Dir)
}

// TestDiesWithBinary checks that a binary that exits without Main leaves no
// server running, and that a later start removes the directory it left, but
// not those of this binary.
func TestDiesWithBinary(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("only Linux kills a child with its parent")
	}
	URL(t) // skips when nats-server is not installed
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestChildStartServer$", "-test.count=1")
	// Without the race detector's second of sleep before exiting.
	cmd.Env = append(os.Environ(), childEnvVar+"=1", "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	// A pipe, as under go test: the child's exit must close it.
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var pid int
	var dir string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "NATSTEST "); ok {
			fmt.Sscanf(rest, "pid=%d dir=%s", &pid, &dir)
		}
	}
	if pid == 0 || !strings.Contains(dir, "idem-natstest-") {
		t.Fatalf("child did not say where its server is:\n%s", out)
	}
	defer os.RemoveAll(dir)
	deadline := time.Now().Add(10 * time.Second)
	for running(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("server %d of the child still runs", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The directory of a stopped server of a running binary stays, for
	// its Restart.
	own := Start(t)
	own.Stop()
	removeStale()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale directory %s not removed: %v", dir, err)
	}
	if _, err := os.Stat(own.Dir); err != nil {
		t.Errorf("directory of a stopped server of this binary: %v", err)
	}
	if err := own.Restart(); err != nil {
		t.Errorf("Restart after removeStale: %v", err)
	}
	servers.mu.Lock()
	shared := servers.shared.Dir
	servers.mu.Unlock()
	if _, err := os.Stat(shared); err != nil {
		t.Errorf("directory of the running server: %v", err)
	}
}

// TestPortTaken checks that a start on a port another process listens on
// fails as errPortTaken, the error newServer retries on another port.
func TestPortTaken(t *testing.T) {
	t.Parallel()
	bin := lookPath(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	s := &Server{URL: "nats://127.0.0.1:" + strconv.Itoa(port), Port: port, Dir: t.TempDir(), bin: bin, name: "natstest-taken"}
	err = s.start()
	if !errors.Is(err, errPortTaken) {
		t.Errorf("start on a taken port: %v, want errPortTaken", err)
	}
	if s.cmd != nil {
		s.Stop()
		t.Errorf("server of a failed start still recorded as running")
	}
}
