// Package natstest starts throw-away nats-server processes with JetStream for
// tests: one shared server per test binary, and servers of their own for
// tests that stop or restart them, each on a free loopback port with its
// JetStream store, log and pid files in a temporary directory. It never
// touches a NATS server it did not start.
//
// A test package that uses it wraps its tests so the servers are stopped:
//
//	func TestMain(m *testing.M) { os.Exit(natstest.Main(m)) }
//
// The shared server keeps what the tests create on it (streams, consumers,
// key-value buckets) until the binary ends, across -test.count runs, so each
// test should use names of its own.
//
// The nats-server binary is looked for on PATH, then in /usr/sbin (where the
// Debian package puts it, not on every user's PATH) and /usr/local/sbin, then
// where go install puts it ($GOBIN, $GOPATH/bin, ~/go/bin). When it is
// missing, URL, Conn and Start skip the test with a message saying how to
// install it, unless IDEM_REQUIRE_NATS=1 is set, in which case they fail it.
//
// On Linux the servers die with the test binary, even when it exits without
// Main (as on Ctrl-C); their temporary directories are then left behind until
// a later server start removes them.
package natstest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/idemkit/idem/internal/testserver"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// RequireEnv names the environment variable that turns a missing
// nats-server from a skip into a failure.
const RequireEnv = "IDEM_REQUIRE_NATS"

// startTimeout bounds how long a server start may take, until JetStream
// answers, before it is reported as failed.
const startTimeout = 15 * time.Second

// stopTimeout is how long Stop waits after SIGTERM before it kills the
// server.
const stopTimeout = 10 * time.Second

// Names of the files in a server's directory.
const (
	storeDir = "js"
	logFile  = "nats-server.log"
	pidFile  = "nats-server.pid"
	// ownerFile holds the pid of the test binary that made the directory.
	ownerFile = "natstest.pid"
)

// dirPattern names the temporary directories of the servers.
const dirPattern = "idem-natstest-*"

// servers holds what this test binary started. It is per process by nature:
// the shared server is shared by all tests of the binary, and Main stops
// every server still running.
var servers struct {
	mu      sync.Mutex
	found   bool   // the binary has been looked for
	bin     string // the nats-server binary; "" when not found
	shared  *Server
	err     error // a start failure of the shared server, reported to every caller
	started []*Server
}

// Main runs the tests and stops every server they started, removing their
// directories.
//
// Like redistest.Main, unless -test.parallel is given, Main lets 4 parallel
// tests run at once when GOMAXPROCS is less than 4: messaging tests mostly
// wait on the server and on timers rather than compute.
func Main(m *testing.M) int {
	defer stopAll()
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if f := flag.Lookup("test.parallel"); f != nil && !given && runtime.GOMAXPROCS(0) < 4 {
		_ = f.Value.Set("4")
	}
	return m.Run()
}

// StopAll stops every server the binary started and removes their
// directories. Main calls it; a package whose TestMain runs another
// harness's Main (redistest.Main) calls it after that returns.
func StopAll() { stopAll() }

func stopAll() {
	servers.mu.Lock()
	defer servers.mu.Unlock()
	for _, s := range servers.started {
		s.Stop()
		os.RemoveAll(s.Dir)
	}
	servers.started = nil
	servers.shared = nil
}

// Server is one nats-server process with JetStream enabled, listening on
// 127.0.0.1 without authentication, TLS or a monitoring port. Its methods are
// not safe for concurrent use.
type Server struct {
	URL  string // nats://127.0.0.1:Port
	Port int
	// Dir is the temporary directory that holds the JetStream store (js),
	// the server log (nats-server.log) and pid files. It outlives Stop,
	// for Restart, and is removed when the server's owner ends (Main for the
	// shared server).
	Dir string

	bin    string          // the nats-server binary
	name   string          // the server name, to tell it from another on the port
	cmd    *exec.Cmd       // nil when stopped
	exited <-chan struct{} // closed when cmd has been waited for
}

// LogTail returns the last lines of the server log, for failure messages.
func (s *Server) LogTail() string {
	return testserver.Tail(filepath.Join(s.Dir, logFile))
}

// URL returns the nats:// URL of the binary's shared JetStream server,
// starting it on first use. It skips or fails tb (see RequireEnv) when
// nats-server is not installed.
func URL(tb testing.TB) string {
	tb.Helper()
	bin := lookPath(tb)
	servers.mu.Lock()
	defer servers.mu.Unlock()
	if servers.shared == nil && servers.err == nil {
		servers.shared, servers.err = newServer(bin)
		if servers.err == nil {
			servers.started = append(servers.started, servers.shared)
		}
	}
	if servers.err != nil {
		tb.Fatalf("natstest: %v", servers.err)
	}
	return servers.shared.URL
}

// Conn returns a connection to the binary's shared server (see URL), closed
// when tb ends.
func Conn(tb testing.TB) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(URL(tb), nats.Name(tb.Name()))
	if err != nil {
		tb.Fatalf("natstest: connecting to the shared server: %v", err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// Start starts a new server owned by tb alone, for tests that stop or
// restart it. It is stopped, and its directory removed, when tb ends. It
// skips or fails tb (see RequireEnv) when nats-server is not installed.
func Start(tb testing.TB) *Server {
	tb.Helper()
	bin := lookPath(tb)
	s, err := newServer(bin)
	if err != nil {
		tb.Fatalf("natstest: %v", err)
	}
	servers.mu.Lock()
	servers.started = append(servers.started, s)
	servers.mu.Unlock()
	tb.Cleanup(func() {
		servers.mu.Lock()
		i := slices.Index(servers.started, s)
		if i >= 0 {
			servers.started = slices.Delete(servers.started, i, i+1)
		}
		servers.mu.Unlock()
		if i >= 0 { // else Main has stopped it
			s.Stop()
			os.RemoveAll(s.Dir)
		}
	})
	return s
}

// Stop stops the server: SIGTERM, which shuts it down cleanly (JetStream
// flushes its store), then SIGKILL if it has not exited after 10 seconds. It
// returns once the process has exited, and does nothing when the server is
// not running. The directory is kept, for Restart.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	if !s.waitExit(stopTimeout) {
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd, s.exited = nil, nil
}

// Restart stops the server if it runs, then starts it again on the same port
// with the same store directory, so file-backed streams and consumers
// survive. It returns once JetStream answers; it fails if the port has been
// taken meanwhile.
func (s *Server) Restart() error {
	s.Stop()
	return s.start()
}

// lookPath returns the nats-server binary, or skips or fails tb.
func lookPath(tb testing.TB) string {
	tb.Helper()
	bin, err := binary()
	if err != nil {
		if os.Getenv(RequireEnv) == "1" {
			tb.Fatalf("natstest: %v (%s=1 makes this a failure)", err, RequireEnv)
		}
		tb.Skip("natstest: " + err.Error())
	}
	return bin
}

// binary returns the nats-server binary, looking for it once.
func binary() (string, error) {
	servers.mu.Lock()
	defer servers.mu.Unlock()
	if !servers.found {
		servers.found = true
		servers.bin = findBinary()
	}
	if servers.bin == "" {
		return "", errors.New("nats-server not found on PATH, in /usr/sbin, /usr/local/sbin, $GOBIN, $GOPATH/bin or ~/go/bin; install it (Debian/Ubuntu: apt-get install -y nats-server; or go install github.com/nats-io/nats-server/v2@latest)")
	}
	return servers.bin, nil
}

// findBinary returns the path of the nats-server executable, or "".
func findBinary() string {
	if p, err := exec.LookPath("nats-server"); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
		return p
	}
	dirs := []string{"/usr/sbin", "/usr/local/sbin"}
	if d := os.Getenv("GOBIN"); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range filepath.SplitList(os.Getenv("GOPATH")) {
		if d != "" {
			dirs = append(dirs, filepath.Join(d, "bin"))
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "nats-server")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// staleOnce removes stale directories before the binary's first server
// start.
var staleOnce sync.Once

// newServer starts a server in a new temporary directory on a free port.
func newServer(bin string) (*Server, error) {
	staleOnce.Do(removeStale)
	dir, err := os.MkdirTemp("", dirPattern)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &Server{Dir: dir, bin: bin, name: "natstest-" + strings.TrimPrefix(filepath.Base(dir), "idem-natstest-")}
	// The port is free when chosen but may be taken before nats-server
	// binds it; then nats-server exits and the start is retried on
	// another port.
	for attempt := 1; ; attempt++ {
		port, err := testserver.FreePort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		s.Port = port
		s.URL = "nats://127.0.0.1:" + strconv.Itoa(port)
		err = s.start()
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, errPortTaken) || attempt == 5 {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

// removeStale removes the directories of servers whose test binary died
// without Main: on Linux the death of the binary kills its servers and leaves
// their directories behind. A directory is left alone while the test binary
// that made it runs (even with its server stopped, for a Restart to come),
// while its server runs, and when it cannot tell.
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPattern))
	for _, dir := range dirs {
		if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() {
			continue
		}
		// Without an owner file the directory is not ours, not readable by
		// this user, or still being set up.
		if !stopped(filepath.Join(dir, ownerFile), false) || !stopped(filepath.Join(dir, pidFile), true) {
			continue
		}
		os.RemoveAll(dir)
	}
}

// stopped reports whether the process whose pid the file at path holds is
// known not to run; a missing file counts as stopped when missingOK.
func stopped(path string, missingOK bool) bool {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return missingOK
	}
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return err == nil && pid > 0 && !running(pid)
}

// running reports whether process pid may still run: it exists (or cannot
// be signalled) and, where /proc tells, is not a zombie. A killed server
// stays a zombie until its new parent, the init process, reaps it, which
// some container inits do late or never.
func running(pid int) bool {
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	// pid (comm) state ...
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) == 0 || f[0] != "Z"
}

// errPortTaken reports that nats-server could not listen on its port.
var errPortTaken = errors.New("port taken")

// start runs nats-server on s.Port and waits until JetStream answers.
func (s *Server) start() error {
	logPath := filepath.Join(s.Dir, logFile)
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	fmt.Fprintf(log, "natstest: starting on port %d\n", s.Port)
	cmd := exec.Command(s.bin,
		"-js",
		"-a", "127.0.0.1",
		"-p", strconv.Itoa(s.Port),
		"-sd", filepath.Join(s.Dir, storeDir),
		"-n", s.name,
		"-l", logPath,
		"-P", filepath.Join(s.Dir, pidFile),
	)
	cmd.Dir = s.Dir
	// A file, not a pipe: go test waits for its output pipes to close, so
	// the server must not hold them. The server writes its own log to the
	// same file (-l); what it prints before opening it lands there too.
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	setDeathSignal(cmd.SysProcAttr)
	// The server stops when the binary dies (the death signal), or when
	// Main stops it.
	exited, err := testserver.Start(cmd)
	if err != nil {
		return fmt.Errorf("starting nats-server: %w", err)
	}
	s.cmd, s.exited = cmd, exited

	deadline := time.Now().Add(startTimeout)
	for {
		// In a goroutine, so that an exit is seen at once: a process that
		// took the port first may accept the probe and never answer.
		pinged := make(chan error, 1)
		go func(url, name string) { pinged <- ping(url, name) }(s.URL, s.name)
		var err error
		select {
		case err = <-pinged:
			if err == nil {
				return nil
			}
		case <-exited:
		}
		select {
		case <-exited:
			s.cmd, s.exited = nil, nil
			t := testserver.Tail(logPath)
			if strings.Contains(t, "address already in use") {
				return fmt.Errorf("nats-server on port %d: %w", s.Port, errPortTaken)
			}
			return fmt.Errorf("nats-server exited while starting: %s\n%s", cmd.ProcessState, t)
		default:
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("nats-server on port %d not ready after %v: %w\n%s", s.Port, startTimeout, err, testserver.Tail(logPath))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping connects to url, checks that the server there is the one named name
// and not another that took the port, and that JetStream answers.
func ping(url, name string) error {
	nc, err := nats.Connect(url, nats.NoReconnect(), nats.Timeout(time.Second), nats.Name("natstest"))
	if err != nil {
		return err
	}
	defer nc.Close()
	if got := nc.ConnectedServerName(); got != name {
		return fmt.Errorf("%s is served by %q, not %q", url, got, name)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}

// waitExit reports whether the server exits within d.
func (s *Server) waitExit(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.exited:
		return true
	case <-t.C:
		return false
	}
}
