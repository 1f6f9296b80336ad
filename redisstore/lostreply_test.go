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
// transactions (MULTI ... EXEC) it forwards, throws the server's reply away
// and closes the client's connection: the transaction is applied, and the
// client learns nothing of it.
type replyDropper struct {
	ln      net.Listener
	target  string
	drops   atomic.Int64 // replies still to drop
	dropped atomic.Int64
}

func newReplyDropper(t *testing.T, target string, drops int64) *replyDropper {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &replyDropper{ln: ln, target: target}
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
				if bytes.Contains(bytes.ToLower(buf[:n]), []byte("multi")) && d.drops.Add(-1) >= 0 {
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
			// The transaction's reply: drop it, and the connection.
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

// TestLostAcquireReply checks that an Acquire whose transaction was applied
// but whose reply was lost (go-redis does not retry a transaction) sends it
// again and finds its own lease: fn runs once, and its result replays; on
// both the Redis 7.0 path and the older servers' path.
func TestLostAcquireReply(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprint("legacy=", legacy), func(t *testing.T) {
			proxy := newReplyDropper(t, redistest.SingleServer(t).Addr, 1)
			client := redis.NewClient(redistest.Options(proxy.addr()))
			t.Cleanup(func() { client.Close() })
			s := redisstore.New(client, redisstore.WithPrefix(fmt.Sprint("lost:", time.Now().UnixNano(), ":")))
			if legacy {
				redisstore.UseLegacyAcquire(s)
			}
			op := idem.New[string, int](s)
			var runs atomic.Int64
			fn := func(context.Context, string) (int, error) { return int(runs.Add(1)), nil }
			ctx := context.Background()
			for i, want := range []idem.Outcome{idem.OutcomeExecuted, idem.OutcomeReplayed} {
				v, info, err := op.DoInfo(ctx, "k", "r", fn)
				if err != nil || v != 1 || info.Outcome != want {
					t.Fatalf("call %d: %d, %v, %v; want 1, %v", i, v, info.Outcome, err, want)
				}
			}
			if n := proxy.dropped.Load(); n != 1 {
				t.Fatalf("the proxy dropped %d replies, want 1: the test did not test", n)
			}
		})
	}
}

// TestLostAcquireRepliesAbandon checks that when every try of an Acquire
// loses its reply, the lease it set is deleted: the key is not left
// blocked for the lease TTL.
func TestLostAcquireRepliesAbandon(t *testing.T) {
	server := redistest.SingleServer(t)
	proxy := newReplyDropper(t, server.Addr, 3)
	client := redis.NewClient(redistest.Options(proxy.addr()))
	t.Cleanup(func() { client.Close() })
	prefix := fmt.Sprint("abandon:", time.Now().UnixNano(), ":")
	s := redisstore.New(client, redisstore.WithPrefix(prefix))
	ctx := context.Background()
	if _, err := s.Acquire(ctx, "k", "fp", time.Minute); err == nil || errors.Is(err, idem.ErrCorruptRecord) {
		t.Fatalf("Acquire with every reply lost: %v, want a transport error", err)
	}
	direct := redistest.Single(t)
	if n, err := direct.Exists(ctx, prefix+"k").Result(); err != nil || n != 0 {
		t.Fatalf("after the lost Acquire the key exists (%d, %v): a lease was left behind", n, err)
	}
}
