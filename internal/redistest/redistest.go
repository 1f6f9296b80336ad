// Package redistest starts real redis-server processes for tests: one single
// node and one 3-master cluster per test binary, on free loopback ports, with
// their data in temporary directories. It never touches a Redis it did not
// start.
//
// A test package that uses it wraps its tests so the servers are stopped:
//
//	func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }
//
// When redis-server is not on PATH, Single and Cluster skip the test with a
// message saying how to install it, unless IDEM_REQUIRE_REDIS=1 is set, in
// which case they fail it.
package redistest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RequireEnv names the environment variable that turns a missing
// redis-server from a skip into a failure.
const RequireEnv = "IDEM_REQUIRE_REDIS"

// servers holds what this test binary started. It is per process by nature:
// the servers are shared by all tests of the binary and stopped by Main.
var servers struct {
	mu      sync.Mutex
	single  *Server
	cluster []*Server
	// sentinel watches its own primary, sentinelOf.
	sentinel, sentinelOf *Server
	err                  error // a start failure, reported to every caller
	started              []*Server
	tmp                  string
}

// Main runs the tests and stops every server they started.
//
// The suites that use it mostly wait on leases and TTLs rather than
// compute, so unless -test.parallel is given, Main lets 4 parallel tests
// run at once instead of GOMAXPROCS (2 on CI), which would otherwise pair
// up sleeping tests.
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

func stopAll() {
	servers.mu.Lock()
	defer servers.mu.Unlock()
	for _, s := range servers.started {
		s.Kill()
	}
	if servers.tmp != "" {
		os.RemoveAll(servers.tmp)
	}
}

// Server is one redis-server process.
type Server struct {
	Addr string
	Port int
	args []string
	cmd  *exec.Cmd
	dir  string
}

// Kill stops the server at once (SIGKILL), as a crash would.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// Restart starts the server again on the same port after Kill.
func (s *Server) Restart() error {
	s.Kill()
	return s.start()
}

func lookPath(tb testing.TB) {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		msg := "redis-server not on PATH; install it (Debian/Ubuntu: apt-get install -y redis-server; macOS: brew install redis)"
		if os.Getenv(RequireEnv) == "1" {
			tb.Fatalf("%s (%s=1 makes this a failure)", msg, RequireEnv)
		}
		tb.Skip(msg)
	}
}

// Options returns client options for addr with the settings the tests need:
// context deadlines honoured and no client-side extras that add commands to
// round-trip counts.
func Options(addr string) *redis.Options {
	return &redis.Options{
		Addr:                  addr,
		ContextTimeoutEnabled: true,
		DisableIdentity:       true,
		Protocol:              2,
		MaintNotificationsConfig: &maintnotifications.Config{
			Mode: maintnotifications.ModeDisabled,
		},
	}
}

// Single returns a client of the binary's single-node server, starting it on
// first use. The client is closed when tb ends.
func Single(tb testing.TB) *redis.Client {
	tb.Helper()
	s := SingleServer(tb)
	c := redis.NewClient(Options(s.Addr))
	tb.Cleanup(func() { c.Close() })
	return c
}

// SingleServer returns the binary's single-node server, starting it on first
// use.
func SingleServer(tb testing.TB) *Server {
	tb.Helper()
	lookPath(tb)
	servers.mu.Lock()
	defer servers.mu.Unlock()
	if servers.single == nil && servers.err == nil {
		servers.single, servers.err = newServer(false)
	}
	if servers.err != nil {
		tb.Fatalf("redistest: %v", servers.err)
	}
	return servers.single
}

// StartSingle starts a new single-node server owned by tb alone (for tests
// that kill or pause it), stopped when tb ends.
func StartSingle(tb testing.TB) *Server {
	tb.Helper()
	lookPath(tb)
	servers.mu.Lock()
	defer servers.mu.Unlock()
	s, err := newServer(false)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	tb.Cleanup(s.Kill)
	return s
}

// Cluster returns a client of the binary's 3-master cluster, forming it on
// first use. The client is closed when tb ends.
func Cluster(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	lookPath(tb)
	servers.mu.Lock()
	if servers.cluster == nil && servers.err == nil {
		servers.cluster, servers.err = newCluster()
	}
	err, nodes := servers.err, servers.cluster
	servers.mu.Unlock()
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	addrs := make([]string, len(nodes))
	for i, n := range nodes {
		addrs[i] = n.Addr
	}
	o := Options("")
	c := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                    addrs,
		ContextTimeoutEnabled:    true,
		DisableIdentity:          true,
		Protocol:                 o.Protocol,
		MaintNotificationsConfig: o.MaintNotificationsConfig,
	})
	tb.Cleanup(func() { c.Close() })
	return c
}

// SentinelMaster is the name under which the test Sentinel monitors its
// primary.
const SentinelMaster = "idemtest"

// Sentinel returns a failover client that finds its primary through the
// binary's Redis Sentinel (one sentinel watching one primary), starting them
// on first use. The client is closed when tb ends.
func Sentinel(tb testing.TB) *redis.Client {
	tb.Helper()
	lookPath(tb)
	servers.mu.Lock()
	if servers.sentinel == nil && servers.err == nil {
		servers.sentinel, servers.sentinelOf, servers.err = newSentinel()
	}
	err, sentinel := servers.err, servers.sentinel
	servers.mu.Unlock()
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	o := Options("")
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:            SentinelMaster,
		SentinelAddrs:         []string{sentinel.Addr},
		ContextTimeoutEnabled: true,
		DisableIdentity:       true,
		Protocol:              o.Protocol,
	})
	tb.Cleanup(func() { c.Close() })
	return c
}

// newSentinel starts a primary and a sentinel that monitors it; the caller
// holds servers.mu.
func newSentinel() (sentinel, primary *Server, err error) {
	primary, err = newServer(false)
	if err != nil {
		return nil, nil, err
	}
	port, err := freePort(false)
	if err != nil {
		return nil, nil, err
	}
	dir := filepath.Join(servers.tmp, "sentinel-"+strconv.Itoa(port))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	// Sentinel rewrites its configuration file, so it needs one of its own.
	conf := filepath.Join(dir, "sentinel.conf")
	text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor %s 127.0.0.1 %d 1\nsentinel down-after-milliseconds %s 5000\n",
		port, dir, SentinelMaster, primary.Port, SentinelMaster)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, nil, err
	}
	sentinel = &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), Port: port, dir: dir, args: []string{conf, "--sentinel"}}
	if err := sentinel.start(); err != nil {
		return nil, nil, err
	}
	servers.started = append(servers.started, sentinel)
	c := redis.NewSentinelClient(&redis.Options{Addr: sentinel.Addr})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		addr, err := c.GetMasterAddrByName(ctx, SentinelMaster).Result()
		if err == nil && len(addr) == 2 && addr[1] == strconv.Itoa(primary.Port) {
			return sentinel, primary, nil
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("sentinel does not report its primary: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// newServer starts a redis-server; the caller holds servers.mu.
func newServer(cluster bool) (*Server, error) {
	if servers.tmp == "" {
		d, err := os.MkdirTemp("", "idem-redistest-")
		if err != nil {
			return nil, err
		}
		servers.tmp = d
	}
	port, err := freePort(cluster)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(servers.tmp, strconv.Itoa(port))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), Port: port, dir: dir}
	s.args = []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, "--protected-mode", "no"}
	if cluster {
		s.args = append(s.args, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000")
	}
	if err := s.start(); err != nil {
		return nil, err
	}
	servers.started = append(servers.started, s)
	return s, nil
}

func (s *Server) start() error {
	cmd := exec.Command("redis-server", s.args...)
	cmd.Dir = s.dir
	// The server dies with the test binary, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting redis-server: %w", err)
	}
	s.cmd = cmd
	c := redis.NewClient(Options(s.Addr))
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("redis-server on %s did not answer PING: %w", s.Addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freePort returns a loopback port that is free now; for a cluster node the
// bus port (port+10000) must be free too.
func freePort(cluster bool) (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !cluster {
			return port, nil
		}
		if port+10000 > 65535 {
			continue
		}
		bus, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
		if err != nil {
			continue
		}
		bus.Close()
		return port, nil
	}
	return 0, errors.New("no free port pair for a cluster node")
}

// newCluster starts three masters and forms a cluster of them; the caller
// holds servers.mu.
func newCluster() ([]*Server, error) {
	nodes := make([]*Server, 3)
	for i := range nodes {
		s, err := newServer(true)
		if err != nil {
			return nil, err
		}
		nodes[i] = s
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clients := make([]*redis.Client, len(nodes))
	for i, n := range nodes {
		clients[i] = redis.NewClient(Options(n.Addr))
		defer clients[i].Close()
	}
	ranges := [][2]int{{0, 5460}, {5461, 10922}, {10923, 16383}}
	for i, c := range clients {
		if err := c.ClusterAddSlotsRange(ctx, ranges[i][0], ranges[i][1]).Err(); err != nil {
			return nil, fmt.Errorf("CLUSTER ADDSLOTSRANGE: %w", err)
		}
		if i > 0 {
			if err := c.ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(nodes[0].Port)).Err(); err != nil {
				return nil, fmt.Errorf("CLUSTER MEET: %w", err)
			}
		}
	}
	for {
		ok := true
		for _, c := range clients {
			info, err := c.ClusterInfo(ctx).Result()
			if err != nil {
				return nil, fmt.Errorf("CLUSTER INFO: %w", err)
			}
			if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:3") {
				ok = false
			}
		}
		if ok {
			return nodes, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster did not reach cluster_state:ok: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
