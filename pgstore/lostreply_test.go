package pgstore_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/pgtest"
	"github.com/idemkit/idem/pgstore"
)

var (
	// acquireSQL marks the Acquire statement in what a client sends. The
	// proxied pool runs in QueryExecModeExec, so every Acquire sends its SQL
	// text (in a Parse message), not only the first on a connection.
	acquireSQL = []byte("WITH cur AS")
	// deleteSQL marks the DELETE of abandon (and of Release).
	deleteSQL = []byte("DELETE FROM")
)

// replyDropper is a TCP proxy to a PostgreSQL server that, for the first
// drops Acquire statements it forwards, throws the server's reply away and,
// once the server has sent all of it (its ReadyForQuery: the statement was
// autocommitted), closes both sides: the Acquire is applied, and the client
// learns nothing of it. With blockDeletes, it also closes every connection
// that sends a DELETE, before the DELETE reaches the server, so that
// abandon cannot undo the lease.
type replyDropper struct {
	ln           net.Listener
	target       string
	blockDeletes bool
	drops        atomic.Int64 // Acquire replies still to drop
	dropped      atomic.Int64 // Acquire replies dropped
	blocked      atomic.Int64 // DELETE statements kept from the server

	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
}

func newReplyDropper(t *testing.T, target string, drops int64, blockDeletes bool) *replyDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &replyDropper{ln: ln, target: target, blockDeletes: blockDeletes, conns: map[net.Conn]struct{}{}}
	d.drops.Store(drops)
	t.Cleanup(d.close)
	d.wg.Go(d.serve)
	return d
}

func (d *replyDropper) addr() string { return d.ln.Addr().String() }

// close stops the proxy and every connection through it, and waits for its
// goroutines.
func (d *replyDropper) close() {
	d.ln.Close()
	d.mu.Lock()
	d.closed = true
	for c := range d.conns {
		c.Close()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// track registers c to be closed by close, or closes it when the proxy is
// closed already.
func (d *replyDropper) track(c net.Conn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		c.Close()
		return false
	}
	d.conns[c] = struct{}{}
	return true
}

func (d *replyDropper) serve() {
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return
		}
		if !d.track(c) {
			return
		}
		s, err := net.Dial("tcp", d.target)
		if err != nil {
			c.Close()
			continue
		}
		if !d.track(s) {
			c.Close()
			return
		}
		d.wg.Go(func() { d.pipe(c, s) })
	}
}

func (d *replyDropper) pipe(c, s net.Conn) {
	closeBoth := func() {
		c.Close()
		s.Close()
	}
	defer closeBoth()
	var swallow atomic.Bool
	d.wg.Go(func() { // client to server
		defer closeBoth()
		buf := make([]byte, 64<<10)
		var tail []byte // the end of the previous read, for a marker split across reads
		for {
			n, err := c.Read(buf)
			if n > 0 {
				seen := append(tail, buf[:n]...)
				switch {
				case d.blockDeletes && bytes.Contains(seen, deleteSQL):
					d.blocked.Add(1)
					return // the DELETE never reaches the server
				case !swallow.Load() && bytes.Contains(seen, acquireSQL) && d.drops.Add(-1) >= 0:
					// Drop the reply to what is sent now. The server
					// flushes its reply only at the Sync that ends this
					// write, so nothing of it has been forwarded yet.
					swallow.Store(true)
					d.dropped.Add(1)
					// Should the reply never end, do not hang the client.
					time.AfterFunc(5*time.Second, closeBoth)
				}
				if _, err := s.Write(buf[:n]); err != nil {
					return
				}
				keep := min(len(seen), len(acquireSQL)-1)
				tail = append([]byte(nil), seen[len(seen)-keep:]...)
			}
			if err != nil {
				return
			}
		}
	})
	buf := make([]byte, 64<<10)
	var last []byte // the last bytes of the reply being dropped
	// Server to client.
	for {
		n, err := s.Read(buf)
		if n > 0 {
			if swallow.Load() {
				last = append(last, buf[:n]...)
				last = last[max(0, len(last)-6):]
				if readyForQuery(last) {
					return // the statement was committed: close both sides
				}
			} else if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// readyForQuery reports whether b ends with a ReadyForQuery message, the end
// of the server's reply to a Sync.
func readyForQuery(b []byte) bool {
	return len(b) == 6 && b[0] == 'Z' && bytes.Equal(b[1:5], []byte{0, 0, 0, 5}) &&
		bytes.IndexByte([]byte("ITE"), b[5]) >= 0
}

// lostAcquireStores returns two Stores on one fresh migrated database: one
// through a replyDropper that drops the reply to the first Acquire (and,
// with blockDeletes, keeps every DELETE from the server), and one direct.
func lostAcquireStores(t *testing.T, blockDeletes bool) (proxied, direct *pgstore.Store, proxy *replyDropper) {
	t.Helper()
	ctx := ctxFor(t)
	server := pgtest.SharedServer(t)
	dsn := pgtest.ConnString(t)
	proxy = newReplyDropper(t, net.JoinHostPort(server.Host, strconv.Itoa(server.Port)), 1, blockDeletes)

	directPool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(directPool.Close)
	direct = pgstore.New(directPool)
	if err := direct.Migrate(ctx); err != nil {
		t.Fatal(err)
	}

	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = proxy.addr()
	cfg, err := pgxpool.ParseConfig(u.String())
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 4
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	proxiedPool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxiedPool.Close)
	return pgstore.New(proxiedPool), direct, proxy
}

// checkDropped fails t unless the proxy dropped exactly one Acquire reply,
// and, when it blocks deletes, kept at least one DELETE from the server.
func checkDropped(t *testing.T, proxy *replyDropper) {
	t.Helper()
	if n := proxy.dropped.Load(); n != 1 {
		t.Fatalf("the proxy dropped %d Acquire replies, want 1: the test did not test", n)
	}
	if proxy.blockDeletes && proxy.blocked.Load() == 0 {
		t.Fatal("the proxy blocked no DELETE: abandon did not try to delete the lease")
	}
}

// leaseRows counts the rows of key that hold a live lease.
func leaseRows(t *testing.T, s *pgstore.Store, key string) int {
	t.Helper()
	var n int
	err := s.Pool().QueryRow(ctxFor(t), `SELECT count(*) FROM idem_records
		WHERE key = $1 AND record IS NULL AND expires_at > clock_timestamp()`, key).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLostAcquireReplyAbandonsLease checks that an Acquire whose statement
// was applied but whose reply was lost deletes the lease it was granted:
// the key is free at once, not refused for the lease TTL.
func TestLostAcquireReplyAbandonsLease(t *testing.T) {
	proxied, direct, proxy := lostAcquireStores(t, false)
	ctx := ctxFor(t)
	acq, err := proxied.Acquire(ctx, "k", "fp", time.Minute)
	if err == nil || acq.Lease != nil {
		t.Fatalf("Acquire with its reply lost: %+v, %v; want an error and no lease", acq, err)
	}
	if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) {
		t.Fatalf("Acquire with its reply lost: %v; want a connection error, not a server error", err)
	}
	checkDropped(t, proxy)
	if n := leaseRows(t, direct, "k"); n != 0 {
		t.Fatalf("after the lost Acquire, %d live leases on the key, want 0: abandon left the lease behind", n)
	}
	acq, err = direct.Acquire(ctx, "k", "fp", time.Minute)
	if err != nil || acq.Lease == nil {
		t.Fatalf("Acquire after the lost one: %+v, %v; want a lease at once", acq, err)
	}
}

// TestLostAcquireReplyWithoutAbandon is the control of
// TestLostAcquireReplyAbandonsLease: when abandon's DELETE cannot reach the
// server, the lease the lost Acquire was granted stays, and refuses the
// key. It shows that the server did run the statement whose reply the
// proxy dropped, so that the row missing in the other test was deleted.
func TestLostAcquireReplyWithoutAbandon(t *testing.T) {
	proxied, direct, proxy := lostAcquireStores(t, true)
	ctx := ctxFor(t)
	acq, err := proxied.Acquire(ctx, "k", "fp", time.Minute)
	if err == nil || acq.Lease != nil {
		t.Fatalf("Acquire with its reply lost: %+v, %v; want an error and no lease", acq, err)
	}
	checkDropped(t, proxy)
	if n := leaseRows(t, direct, "k"); n != 1 {
		t.Fatalf("after the lost Acquire with abandon blocked, %d live leases on the key, want 1", n)
	}
	acq, err = direct.Acquire(ctx, "k", "fp", time.Minute)
	if err != nil || acq.Holder != "fp" {
		t.Fatalf("Acquire after the lost one: %+v, %v; want the lost lease as holder", acq, err)
	}
}

// TestLostAcquireReplyDo checks the same through Do: the call whose Acquire
// lost its reply fails with ErrStore without running fn, and a retry at once
// runs fn, instead of meeting the lost lease (ErrInFlight) for a lease TTL;
// unless abandon is blocked, the control case.
func TestLostAcquireReplyDo(t *testing.T) {
	for _, tc := range []struct {
		name         string
		blockDeletes bool
	}{
		{"abandoned", false},
		{"abandon_blocked", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxied, direct, proxy := lostAcquireStores(t, tc.blockDeletes)
			ctx := ctxFor(t)
			opts := []idem.Option{idem.WithLockTTL(30 * time.Second), idem.WithWaitTimeout(0)}
			var runs atomic.Int64
			fn := func(context.Context, string) (int, error) { return int(runs.Add(1)), nil }

			_, info, err := idem.New[string, int](proxied, opts...).DoInfo(ctx, "k", "r", fn)
			if !errors.Is(err, idem.ErrStore) || info.Outcome != idem.OutcomeStoreError {
				t.Fatalf("Do with the Acquire reply lost: %v, %v; want %v", info.Outcome, err, idem.ErrStore)
			}
			if n := runs.Load(); n != 0 {
				t.Fatalf("fn ran %d times in the failed call, want 0", n)
			}
			checkDropped(t, proxy)

			retry := idem.New[string, int](direct, opts...)
			start := time.Now()
			v, info, err := retry.DoInfo(ctx, "k", "r", fn)
			if tc.blockDeletes {
				if !errors.Is(err, idem.ErrInFlight) || runs.Load() != 0 {
					t.Fatalf("retry with the lost lease left: %v, %v, fn ran %d times; want %v, fn not run",
						info.Outcome, err, runs.Load(), idem.ErrInFlight)
				}
				return
			}
			if err != nil || v != 1 || info.Outcome != idem.OutcomeExecuted || runs.Load() != 1 {
				t.Fatalf("retry: %d, %v, %v, fn ran %d times; want 1, %v, fn run once",
					v, info.Outcome, err, runs.Load(), idem.OutcomeExecuted)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("the retry took %v: it waited for the lost lease", d)
			}
		})
	}
}
