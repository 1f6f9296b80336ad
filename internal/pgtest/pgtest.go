// Package pgtest starts a throw-away PostgreSQL server for tests: one per
// test binary, on a free loopback port, with its data, socket and log in a
// temporary directory. Every caller gets a new empty database of its own on
// that server. It never touches a PostgreSQL it did not start.
//
// A test package that uses it wraps its tests so the server is stopped:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// The binaries (initdb and postgres) are found through pg_config --bindir,
// else in the newest /usr/lib/postgresql/*/bin (Debian, Ubuntu), else on
// PATH. When they are missing, ConnString and Pool skip the test with a
// message saying how to install them, unless IDEM_REQUIRE_POSTGRES=1 is set,
// in which case they fail it.
//
// initdb and postgres refuse to run as root, so a test binary running as root
// runs them as the postgres system user, which must exist.
//
// On Linux the server shuts down when the test binary dies, even when it
// exits without Main (as on Ctrl-C); its temporary directory is then left
// behind until the next server start removes it.
//
// The temporary directory is made in os.TempDir, so TMPDIR=/dev/shm (a
// tmpfs) makes starting the server and creating databases faster.
package pgtest

import (
	"context"
	"flag"
	"github.com/idemkit/idem/internal/testserver"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// RequireEnv names the environment variable that turns missing PostgreSQL
// binaries from a skip into a failure.
const RequireEnv = "IDEM_REQUIRE_POSTGRES"

// Superuser is the name of the superuser of the test server, the user of
// every connection string this package returns. Authentication is trust: no
// password.
const Superuser = "postgres"

// startTimeout bounds how long a server start may take before it is reported
// as failed.
const startTimeout = 30 * time.Second

// servers holds what this test binary started. It is per process by nature:
// the server is shared by all tests of the binary and stopped by Main.
var servers struct {
	mu     sync.Mutex
	found  bool       // the binaries have been looked for
	bindir string     // where initdb and postgres are; "" when not found
	cred   *user.User // the user to run them as, when running as root
	setup  string     // why they cannot be run, when they cannot
	shared *Server
	err    error // a start failure, reported to every caller
	admin  *pgxpool.Pool
	dbs    int // databases created so far, for unique names
}

// Main runs the tests and stops the server they started.
//
// Like redistest.Main, unless -test.parallel is given, Main lets 4 parallel
// tests run at once when GOMAXPROCS is less than 4: database tests mostly
// wait on the server rather than compute.
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
	if servers.admin != nil {
		servers.admin.Close()
		servers.admin = nil
	}
	if servers.shared != nil {
		servers.shared.stop()
		servers.shared = nil
	}
}

// Server is one postgres process with its own data directory. Connect to it
// over TCP at Host:Port as Superuser, without a password or TLS.
type Server struct {
	Host string // always 127.0.0.1
	Port int
	// Dir is the temporary directory that holds the data directory, the
	// Unix socket and the server log (postgres.log). It is removed when the
	// server is stopped.
	Dir string

	cmd     *exec.Cmd
	exited  <-chan struct{} // closed when cmd has been waited for
	version int             // server_version_num, such as 150014
}

// ConnString returns a URL connection string for database db on s, usable by
// pgx (pgx.ParseConfig, pgxpool.ParseConfig), lib/pq and psql.
func (s *Server) ConnString(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(Superuser),
		Host:     net.JoinHostPort(s.Host, strconv.Itoa(s.Port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// LogTail returns the last lines of the server log, for failure messages.
func (s *Server) LogTail() string {
	return testserver.Tail(filepath.Join(s.Dir, "postgres.log"))
}

// SharedServer returns the binary's server, starting it on first use. It
// skips or fails tb (see RequireEnv) when PostgreSQL is not installed.
func SharedServer(tb testing.TB) *Server {
	tb.Helper()
	servers.mu.Lock()
	defer servers.mu.Unlock()
	findBinaries()
	if servers.setup != "" {
		if os.Getenv(RequireEnv) == "1" {
			tb.Fatalf("pgtest: %s (%s=1 makes this a failure)", servers.setup, RequireEnv)
		}
		tb.Skip("pgtest: " + servers.setup)
	}
	if servers.shared == nil && servers.err == nil {
		servers.shared, servers.err = newServer()
	}
	if servers.err != nil {
		tb.Fatalf("pgtest: %v", servers.err)
	}
	return servers.shared
}

// ConnString returns a connection string (URL form, usable by
// pgxpool.ParseConfig) for a new empty database, created for tb alone on the
// binary's server, starting the server on first use. Each call creates
// another database; it is dropped when tb ends, after the cleanups
// registered later (such as closing a pool on it) have run.
func ConnString(tb testing.TB) string {
	tb.Helper()
	s := SharedServer(tb)
	servers.mu.Lock()
	servers.dbs++
	name := dbName(servers.dbs, tb.Name())
	if servers.admin == nil {
		cfg, err := pgxpool.ParseConfig(s.ConnString("postgres"))
		if err == nil {
			cfg.MaxConns = 4
			servers.admin, err = pgxpool.NewWithConfig(context.Background(), cfg)
		}
		if err != nil {
			servers.mu.Unlock()
			tb.Fatalf("pgtest: connecting to the server: %v", err)
		}
	}
	admin := servers.admin
	servers.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+ident+" TEMPLATE template0"); err != nil {
		tb.Fatalf("pgtest: creating database %s: %v\n%s", name, err, s.LogTail())
	}
	drop := "DROP DATABASE " + ident
	if s.version >= 130000 {
		// End the sessions the test left open.
		drop += " WITH (FORCE)"
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		if _, err := admin.Exec(ctx, drop); err != nil {
			tb.Errorf("pgtest: dropping database %s: %v", name, err)
		}
	})
	return s.ConnString(name)
}

// Pool returns a pool of connections to a new empty database (see
// ConnString), with at most maxConns connections (0: the pgxpool default).
// The pool is closed when tb ends.
func Pool(tb testing.TB, maxConns int32) *pgxpool.Pool {
	tb.Helper()
	if maxConns < 0 {
		tb.Fatalf("pgtest: Pool: maxConns %d < 0", maxConns)
	}
	cfg, err := pgxpool.ParseConfig(ConnString(tb))
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// dbName returns the name of the n-th database: unique in the binary, and
// with a hint of the test it is for, in at most 63 bytes (NAMEDATALEN-1).
func dbName(n int, test string) string {
	var b strings.Builder
	b.WriteString("t" + strconv.Itoa(n) + "_")
	for _, r := range strings.ToLower(test) {
		if b.Len() >= 63 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}
