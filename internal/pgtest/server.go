package pgtest

import (
	"context"
	"errors"
	"fmt"
	"github.com/idemkit/idem/internal/testserver"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// findBinaries looks for initdb and postgres, and the user to run them as,
// once; the caller holds servers.mu.
func findBinaries() {
	if servers.found {
		return
	}
	servers.found = true
	servers.bindir = bindir()
	if servers.bindir == "" {
		servers.setup = "PostgreSQL server binaries (initdb, postgres) not found via pg_config --bindir, in /usr/lib/postgresql/*/bin or on PATH; install them (Debian/Ubuntu: apt-get install -y postgresql; macOS: brew install postgresql)"
		return
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			servers.setup = fmt.Sprintf("initdb and postgres refuse to run as root, so they run as the postgres system user, but looking it up failed (%v); create it (Debian/Ubuntu: apt-get install -y postgresql does) or run the tests as another user", err)
			return
		}
		servers.cred = u
	}
}

// bindir returns the directory that holds initdb and postgres, or "".
func bindir() string {
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); hasServer(dir) {
			return dir
		}
	}
	// Debian and Ubuntu install servers of several major versions side by
	// side, none of them on PATH.
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return slices.Compare(versionOf(b), versionOf(a)) })
	for _, dir := range dirs {
		if hasServer(dir) {
			return dir
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil && hasServer(filepath.Dir(real)) {
			return filepath.Dir(real)
		}
		if hasServer(filepath.Dir(p)) {
			return filepath.Dir(p)
		}
	}
	return ""
}

// versionOf returns the version numbers of a /usr/lib/postgresql/V/bin
// directory: [15] for 15, [9 6] for 9.6.
func versionOf(dir string) []int {
	var v []int
	for _, f := range strings.Split(filepath.Base(filepath.Dir(dir)), ".") {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil
		}
		v = append(v, n)
	}
	return v
}

// hasServer reports whether dir holds the initdb and postgres executables.
func hasServer(dir string) bool {
	if dir == "" {
		return false
	}
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// newServer initialises a cluster in a new temporary directory and starts
// postgres on it; the caller holds servers.mu.
func newServer() (*Server, error) {
	removeStale()
	dir, err := os.MkdirTemp("", dirPattern)
	if err != nil {
		return nil, err
	}
	s := &Server{Host: "127.0.0.1", Dir: dir}
	if err := s.initdb(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// The port is free when chosen but may be taken before postgres binds
	// it; then postgres exits and the start is retried on another port.
	for attempt := 1; ; attempt++ {
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

// dirPattern names the temporary directories of the servers.
const dirPattern = "idem-pg-*"

// removeStale removes the directories of servers whose test binary died
// without Main: on Linux, the death of the binary shuts the server down,
// which then removes its postmaster.pid, and the directory is left behind.
// A directory is left alone while its server runs or less than a minute after
// its last change, which covers an initdb in progress.
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPattern))
	for _, dir := range dirs {
		fi, err := os.Lstat(dir)
		if err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < time.Minute {
			continue
		}
		if _, err := os.Lstat(filepath.Join(dir, "initdb.log")); err != nil {
			continue // not ours, or not readable by this user
		}
		b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
		if err == nil {
			line, _, _ := strings.Cut(string(b), "\n")
			pid, err := strconv.Atoi(strings.TrimSpace(line))
			if err != nil || pid <= 0 || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
				continue // running, or cannot tell
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			continue
		}
		os.RemoveAll(dir)
	}
}

// sysProcAttr returns the attributes of a child process: run as the postgres
// user when the binary runs as root, and stopped when the binary dies.
func sysProcAttr() *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{}
	setDeathSignal(a)
	if u := servers.cred; u != nil {
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		a.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	return a
}

// initdb creates the cluster in s.Dir/data; the caller holds servers.mu.
func (s *Server) initdb() error {
	if u := servers.cred; u != nil {
		// The directory is root's, 0700; the postgres user must own it.
		uid, err1 := strconv.Atoi(u.Uid)
		gid, err2 := strconv.Atoi(u.Gid)
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("user %s: %w", u.Username, err)
		}
		if err := os.Chown(s.Dir, uid, gid); err != nil {
			return err
		}
	}
	logPath := filepath.Join(s.Dir, "initdb.log")
	log, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(filepath.Join(servers.bindir, "initdb"),
		"-D", filepath.Join(s.Dir, "data"),
		"-A", "trust", "-U", Superuser,
		"--no-sync", "-E", "UTF8", "--locale=C")
	cmd.Dir = s.Dir
	cmd.Env = childEnv()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = sysProcAttr()
	// The death signal is sent when the thread that started the child ends,
	// so the thread must live as long as the child.
	runtime.LockOSThread()
	err = cmd.Run()
	runtime.UnlockOSThread()
	if err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, testserver.Tail(logPath))
	}
	return nil
}

// errPortTaken reports that postgres could not listen on its port.
var errPortTaken = errors.New("port taken")

// start runs postgres on a free port and waits until it accepts connections;
// the caller holds servers.mu.
func (s *Server) start() error {
	port, err := testserver.FreePort()
	if err != nil {
		return err
	}
	s.Port = port
	data := filepath.Join(s.Dir, "data")
	logPath := filepath.Join(s.Dir, "postgres.log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	fmt.Fprintf(log, "pgtest: starting on port %d\n", port)
	cmd := exec.Command(filepath.Join(servers.bindir, "postgres"),
		"-D", data,
		"-p", strconv.Itoa(port),
		"-k", s.Dir,
		"-F", // fsync off: the data is thrown away
		"-c", "listen_addresses=127.0.0.1",
		"-c", "max_connections=200",
		"-c", "shared_buffers=32MB",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "wal_level=minimal",
		"-c", "max_wal_senders=0",
		"-c", "autovacuum=off",
		"-c", "jit=off",
		"-c", "huge_pages=off",
		// Files in the data directory rather than in /dev/shm, which
		// would keep them if the server were killed.
		"-c", "dynamic_shared_memory_type=mmap",
	)
	cmd.Dir = s.Dir
	cmd.Env = childEnv()
	// A file, not a pipe: go test waits for its output pipes to close, so
	// the server must not hold them.
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = sysProcAttr()
	// The server stops when the binary dies (the death signal), or when
	// Main stops it, not while a binary that handles SIGINT still runs
	// tests.
	exited, err := testserver.Start(cmd)
	if err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	s.cmd, s.exited = cmd, exited

	deadline := time.Now().Add(startTimeout)
	for {
		err := s.ping(data)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			t := testserver.Tail(logPath)
			if strings.Contains(t, "could not bind") || strings.Contains(t, "already in use") {
				return fmt.Errorf("postgres on port %d: %w", port, errPortTaken)
			}
			return fmt.Errorf("postgres exited while starting: %s\n%s", cmd.ProcessState, t)
		default:
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("postgres on port %d not ready after %v: %w\n%s", port, startTimeout, err, testserver.Tail(logPath))
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// ping connects to s and checks that it is the server of data, not another
// that took the port.
func (s *Server) ping(data string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.ConnString("postgres"))
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	var got string
	var version int
	if err := c.QueryRow(ctx, "SELECT current_setting('data_directory'), current_setting('server_version_num')::int").Scan(&got, &version); err != nil {
		return err
	}
	if got != data {
		return fmt.Errorf("port %d is served from %s, not %s", s.Port, got, data)
	}
	s.version = version
	return nil
}

// stop shuts the server down and removes its directory. It asks for a fast
// shutdown (sessions are ended, not waited for), then after a few seconds
// for an immediate one, then kills it.
func (s *Server) stop() {
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(syscall.SIGINT)
		if !s.waitExit(5 * time.Second) {
			_ = s.cmd.Process.Signal(syscall.SIGQUIT)
			if !s.waitExit(5 * time.Second) {
				// Its children (each in a session of its own) exit
				// when they see it die.
				_ = s.cmd.Process.Kill()
				<-s.exited
			}
		}
		s.cmd = nil
	}
	os.RemoveAll(s.Dir)
}

// waitExit reports whether the server exits within d.
func (s *Server) waitExit(d time.Duration) bool {
	select {
	case <-s.exited:
		return true
	case <-time.After(d):
		return false
	}
}

// childEnv returns the environment of initdb and postgres: this process's,
// without the PG* variables that could change what they do.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}
