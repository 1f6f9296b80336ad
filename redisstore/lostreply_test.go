package redisstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/redisstore"
	"github.com/redis/go-redis/v9"
)

// replyDropper is a TCP proxy to a Redis server that, for the first drops
// requests it forwards that contain match (in lower case), throws the
// server's reply away and closes the client's connection: the request is
// applied, and the client learns nothing of it.
type replyDropper struct {
	ln      net.Listener
	target  string
	match   []byte
	drops   atomic.Int64 // replies still to drop
	dropped atomic.Int64
}

// What replyDropper matches: a transaction, and the argument NX of a SET
// sent alone or in one (as RESP sends it; a random token, in base64url,
// cannot hold the CR LF around it).
var (
	matchMulti = []byte("multi")
	matchNX    = []byte("\r\nnx\r\n")
)

func newReplyDropper(t *testing.T, target string, drops int64, match []byte) *replyDropper {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &replyDropper{ln: ln, target: target, match: match}
	d.drops.Store(drops)
	t.Cleanup(func() { ln.Close() })
	go d.serve()
	return d
}

func (d *replyDropper) addr() string { return d.ln.Addr().String() }

func (d *replyDropper) serve() {
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", d.target)
		if err != nil {
			c.Close()
			continue
		}
		go d.pipe(c, s)
	}
}

func (d *replyDropper) pipe(c, s net.Conn) {
	defer c.Close()
	defer s.Close()
	var armed atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() { // client to server
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if bytes.Contains(bytes.ToLower(buf[:n]), d.match) && d.drops.Add(-1) >= 0 {
					armed.Store(true)
				}
				if _, err := s.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				s.Close()
				return
			}
		}
	})
	buf := make([]byte, 64<<10)
	for { // server to client
		n, err := s.Read(buf)
		if n > 0 && armed.Load() {
			// The request's reply: drop it, and the connection.
			d.dropped.Add(1)
			time.Sleep(10 * time.Millisecond) // let the whole reply arrive, unread
			c.Close()
			break
		}
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	c.Close()
	_, _ = io.Copy(io.Discard, s)
	wg.Wait()
}

// lostReplyPaths are the ways an Acquire reaches Redis, and what
// replyDropper must match to lose its reply: the plain SET NX GET of
// Acquire, which go-redis resends by itself after a lost reply (unless its
// retries are off: noRetries), and the transactions of an Acquire asked for
// the TTL and of the older servers' path, which it does not resend.
var lostReplyPaths = []struct {
	name      string
	legacy    bool
	withTTL   bool // Acquire asked for the TTL, as by an Operation with a local cache
	noRetries bool // go-redis's own retries off (MaxRetries -1)
	match     []byte
}{
	{"Acquire", false, false, false, matchNX},
	{"Acquire/go-redis-no-retries", false, false, true, matchNX},
	{"AcquireWithTTL", false, true, false, matchMulti},
	{"legacy/Acquire", true, false, false, matchMulti},
	{"legacy/AcquireWithTTL", true, true, false, matchMulti},
}

// proxiedStore returns a Store on a client that reaches the test's
// single-node server through a replyDropper for path, and the dropper.
func proxiedStore(t *testing.T, prefix string, drops int64, path string) (*redisstore.Store, *replyDropper) {
	for _, p := range lostReplyPaths {
		if p.name != path {
			continue
		}
		proxy := newReplyDropper(t, redistest.SingleServer(t).Addr, drops, p.match)
		o := redistest.Options(proxy.addr())
		if p.noRetries {
			o.MaxRetries = -1
		}
		client := redis.NewClient(o)
		t.Cleanup(func() { client.Close() })
		s := redisstore.New(client, redisstore.WithPrefix(prefix))
		if p.legacy {
			redisstore.UseLegacyAcquire(s)
		}
		return s, proxy
	}
	t.Fatalf("no path %q", path)
	return nil, nil
}

// TestLostAcquireReply checks that an Acquire whose command or transaction
// was applied but whose reply was lost, and which go-redis or the Store
// sends again, finds its own lease and takes it, never reporting it as
// another holder's: fn runs once, and its result replays; on every path
// (see lostReplyPaths).
func TestLostAcquireReply(t *testing.T) {
	for _, path := range lostReplyPaths {
		t.Run(path.name, func(t *testing.T) {
			s, proxy := proxiedStore(t, fmt.Sprint("lost:", time.Now().UnixNano(), ":"), 1, path.name)
			var opts []idem.Option
			if path.withTTL {
				opts = append(opts, idem.WithLocalCache(8)) // the Operation asks for the TTL
			}
			op := idem.New[string, int](s, opts...)
			var runs atomic.Int64
			fn := func(context.Context, string) (int, error) { return int(runs.Add(1)), nil }
			ctx := context.Background()
			v, info, err := op.DoInfo(ctx, "k", "r", fn)
			if err != nil || v != 1 || info.Outcome != idem.OutcomeExecuted {
				t.Fatalf("first call: %d, %v, %v; want 1, executed", v, info.Outcome, err)
			}
			if n := proxy.dropped.Load(); n != 1 {
				t.Fatalf("the proxy dropped %d replies, want 1: the test did not test", n)
			}
			// Through the store, not a local cache: the key holds the record.
			for _, replay := range []*idem.Operation[string, int]{op, idem.New[string, int](s)} {
				v, info, err := replay.DoInfo(ctx, "k", "r", fn)
				if err != nil || v != 1 || info.Outcome != idem.OutcomeReplayed {
					t.Fatalf("replay: %d, %v, %v; want 1, replayed", v, info.Outcome, err)
				}
			}
		})
	}
}

// TestLostAcquireRepliesAbandon checks that when every try of an Acquire
// loses its reply, the lease it set is deleted: the key is not left
// blocked for the lease TTL.
func TestLostAcquireRepliesAbandon(t *testing.T) {
	for _, path := range lostReplyPaths {
		t.Run(path.name, func(t *testing.T) {
			prefix := fmt.Sprint("abandon:", time.Now().UnixNano(), ":")
			s, proxy := proxiedStore(t, prefix, 1000, path.name)
			ctx := context.Background()
			actx := ctx
			if path.withTTL {
				actx = idem.ContextWithTTLRequest(ctx)
			}
			if _, err := s.Acquire(actx, "k", "fp", time.Minute); err == nil || errors.Is(err, idem.ErrCorruptRecord) {
				t.Fatalf("Acquire with every reply lost: %v, want a transport error", err)
			}
			if n := proxy.dropped.Load(); n < 3 {
				t.Fatalf("the proxy dropped %d replies, want at least 3 (every try's)", n)
			}
			direct := redistest.Single(t)
			if n, err := direct.Exists(ctx, prefix+"k").Result(); err != nil || n != 0 {
				t.Fatalf("after the lost Acquire the key exists (%d, %v): a lease was left behind", n, err)
			}
		})
	}
}
