package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/redisstore"
	"github.com/redis/go-redis/v9"
)

// faultClient returns a client of s that gives up quickly, as a service
// with tight timeouts would: a dead server is refused at once, and a live
// one on a loaded machine still answers in time.
func faultClient(t *testing.T, s *redistest.Server) *redis.Client {
	o := redistest.Options(s.Addr)
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout = time.Second, time.Second, time.Second
	o.MaxRetries = -1
	o.DialerRetries = 1 // one dial per attempt, not 5 spaced 100ms apart
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRedisDownFailsClosed(t *testing.T) {
	srv := redistest.StartSingle(t)
	op := idem.New[string, int](redisstore.New(faultClient(t, srv)))
	ctx := context.Background()
	var runs atomic.Int32
	fn := func(context.Context, string) (int, error) { return int(runs.Add(1)), nil }

	srv.Kill()
	_, err := op.Do(ctx, "k", "req", fn)
	if !errors.Is(err, idem.ErrStore) {
		t.Fatalf("Do with Redis down: %v, want ErrStore", err)
	}
	if runs.Load() != 0 {
		t.Fatal("fn ran although the lease could not be taken")
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if !eventuallyOK(func() error { _, err := op.Do(ctx, "k", "req", fn); return err }) {
		t.Fatal("service did not resume after Redis came back")
	}
	r, info, err := op.DoInfo(ctx, "k", "req", fn)
	if err != nil || !info.Replayed || r != 1 || runs.Load() != 1 {
		t.Fatalf("after restart: r=%d replayed=%v err=%v runs=%d; want one execution, then replay", r, info.Replayed, err, runs.Load())
	}
}

func eventuallyOK(f func() error) bool {
	for range 100 {
		if f() == nil {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func TestRedisDiesDuringFn(t *testing.T) {
	srv := redistest.StartSingle(t)
	// Do retries a failed commit for as long as the lease may be held, a
	// lease TTL: a short one keeps this test short (the default is 10s).
	// It must still be long enough that on a loaded machine the Acquire
	// comes within a third of it, or else the refresh before fn, which is
	// given a third of it, succeeds: a Do that fails there returns
	// ErrStore, before fn.
	const lockTTL = time.Second
	op := idem.New[string, string](redisstore.New(faultClient(t, srv)), idem.WithLockTTL(lockTTL))
	begin := time.Now()
	r, info, err := op.DoInfo(context.Background(), "k", "req", func(context.Context, string) (string, error) {
		srv.Kill()
		return "charged", nil
	})
	if !errors.Is(err, idem.ErrNotStored) || info.Outcome != idem.OutcomeNotStored {
		t.Fatalf("Do when the final write fails: %v, outcome %v; want ErrNotStored, not_stored", err, info.Outcome)
	}
	if errors.Is(err, idem.ErrLeaseLost) {
		t.Errorf("Do when Redis is down: %v; want a store failure, not a lost lease", err)
	}
	if r != "charged" {
		t.Fatalf("Do returned %q, want fn's result alongside ErrNotStored", r)
	}
	// The commit was retried until the lease could no longer be held, and
	// not much longer.
	if d := time.Since(begin); d < lockTTL || d > lockTTL+2*time.Second {
		t.Errorf("Do returned after %v; want the commit retried for about the lease TTL, %v", d, lockTTL)
	}
}

func TestClientPause(t *testing.T) {
	srv := redistest.StartSingle(t)
	// The pause is long enough that a call returning well before its end
	// was returned by its deadline, on a loaded machine too: a paused
	// server cannot be unpaused early, since it holds CLIENT UNPAUSE too.
	const pause, within = 2500 * time.Millisecond, 1500 * time.Millisecond
	o := redistest.Options(srv.Addr)
	o.ReadTimeout = 2 * pause // calls across the pause wait for its end, not time out
	client := redis.NewClient(o)
	t.Cleanup(func() { client.Close() })
	admin := redis.NewClient(redistest.Options(srv.Addr))
	t.Cleanup(func() { admin.Close() })
	op := idem.New[string, int](redisstore.New(client), idem.WithWaitTimeout(10*time.Second))
	ctx := context.Background()
	if err := client.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := admin.Do(ctx, "CLIENT", "PAUSE", pause.Milliseconds(), "ALL").Err(); err != nil {
		t.Fatal(err)
	}

	var runs atomic.Int32
	fn := func(context.Context, string) (int, error) { runs.Add(1); return 42, nil }

	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	begin := time.Now()
	if _, err := op.Do(short, "paused", "req", fn); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do during CLIENT PAUSE with a 100ms deadline: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(begin); d > within {
		t.Errorf("the deadline was not honoured: returned after %v, during a pause of %v", d, pause)
	}

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			r, err := op.Do(ctx, "paused", "req", fn)
			if err != nil || r != 42 {
				t.Errorf("Do across the pause: %d, %v", r, err)
			}
		})
	}
	wg.Wait()
	if n := runs.Load(); n != 1 {
		t.Fatalf("fn ran %d times across a pause, want 1", n)
	}
}

func TestCorruptData(t *testing.T) {
	client := redistest.Single(t)
	ctx := context.Background()
	prefix := "corrupt:" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	op := idem.New[string, int](redisstore.New(client, redisstore.WithPrefix(prefix)))
	// A real record value of this Operation: "\x00R", the committing
	// lease's 22-byte token, then a record whose payload is msgpack 42.
	if _, err := op.Do(ctx, "good", "req", func(context.Context, string) (int, error) { return 42, nil }); err != nil {
		t.Fatal(err)
	}
	good, err := client.Get(ctx, prefix+":good").Result()
	if err != nil || len(good) < 24 || good[:2] != "\x00R" || good[len(good)-1] != 0x2a {
		t.Fatalf("stored record %q, %v; want \\x00R, a token, a record ending in msgpack 42", good, err)
	}
	// The same record with a payload that is not msgpack (0xc1 is never
	// used): a well-formed value and header, a bad payload.
	badPayload := good[:len(good)-1] + "\xc1"
	// The record without the token, as stored before records carried
	// one: read as foreign data, not replayed, and fn not run.
	noToken := good[:2] + good[24:]
	cases := map[string]func(key string) error{
		"foreign string": func(k string) error { return client.Set(ctx, k, "hello", time.Minute).Err() },
		"record garbage": func(k string) error { return client.Set(ctx, k, "\x00Rjunk", time.Minute).Err() },
		"record short":   func(k string) error { return client.Set(ctx, k, good[:23], time.Minute).Err() },
		"record mark":    func(k string) error { return client.Set(ctx, k, "\x00R", time.Minute).Err() },
		"no token":       func(k string) error { return client.Set(ctx, k, noToken, time.Minute).Err() },
		"bad payload":    func(k string) error { return client.Set(ctx, k, badPayload, time.Minute).Err() },
		"short lease":    func(k string) error { return client.Set(ctx, k, "\x00Lx", time.Minute).Err() },
		"hash":           func(k string) error { return client.HSet(ctx, k, "f", "v").Err() },
		"empty string":   func(k string) error { return client.Set(ctx, k, "", time.Minute).Err() },
	}
	for name, set := range cases {
		t.Run(name, func(t *testing.T) {
			if err := set(prefix + ":" + name); err != nil { // where idem keeps key name
				t.Fatal(err)
			}
			_, err := op.Do(ctx, name, "req", func(context.Context, string) (int, error) {
				t.Error("fn ran over corrupt data")
				return 0, nil
			})
			if !errors.Is(err, idem.ErrCorruptRecord) {
				t.Fatalf("err = %v, want ErrCorruptRecord", err)
			}
		})
	}
}

// TestMultiProcess runs several OS processes (this test binary again) that
// hammer the same keys through one Redis; each key's fn must run once in all.
func TestMultiProcess(t *testing.T) {
	const procs, keys = 3, 20
	client := redistest.Single(t)
	prefix := "mp:" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	cmds := make([]*exec.Cmd, procs)
	for i := range cmds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(),
			"IDEM_HELPER_ADDR="+client.Options().Addr,
			"IDEM_HELPER_PREFIX="+prefix,
			"IDEM_HELPER_KEYS="+strconv.Itoa(keys))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[i] = cmd
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("process %d: %v", i, err)
		}
	}
	for k := range keys {
		n, err := client.Get(context.Background(), prefix+"count:"+strconv.Itoa(k)).Int()
		if err != nil || n != 1 {
			t.Errorf("key %d: fn ran %d times across %d processes (err %v), want 1", k, n, procs, err)
		}
	}
}

// TestHelperProcess is the child of TestMultiProcess; on its own it does
// nothing.
func TestHelperProcess(t *testing.T) {
	addr := os.Getenv("IDEM_HELPER_ADDR")
	if addr == "" {
		return
	}
	prefix := os.Getenv("IDEM_HELPER_PREFIX")
	keys, _ := strconv.Atoi(os.Getenv("IDEM_HELPER_KEYS"))
	client := redis.NewClient(redistest.Options(addr))
	defer client.Close()
	op := idem.New[string, int](redisstore.New(client, redisstore.WithPrefix(prefix)),
		idem.WithWaitTimeout(20*time.Second), idem.WithLockTTL(2*time.Second))
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for k := range keys {
				k := (k + g) % keys
				r, err := op.Do(ctx, fmt.Sprint(k), "req", func(ctx context.Context, _ string) (int, error) {
					time.Sleep(5 * time.Millisecond)
					return int(client.Incr(ctx, prefix+"count:"+strconv.Itoa(k)).Val()), nil
				})
				if err != nil || r != 1 {
					t.Errorf("key %d: %d, %v", k, r, err)
				}
			}
		})
	}
	wg.Wait()
}

// TestCommitIsIdempotent: a commit retried after its reply was lost (by
// go-redis or by idem) must report success, not a lost lease.
func TestCommitIsIdempotent(t *testing.T) {
	s := redisstore.New(redistest.Single(t), redisstore.WithPrefix(fmt.Sprint("ci:", time.Now().UnixNano(), ":")))
	ctx := context.Background()
	a, err := s.Acquire(ctx, "k", "fp", time.Minute)
	if err != nil || a.Lease == nil {
		t.Fatalf("Acquire: %+v %v", a, err)
	}
	for i := range 2 {
		if err := a.Lease.Commit(ctx, []byte("record"), time.Minute); err != nil {
			t.Fatalf("Commit #%d: %v", i+1, err)
		}
	}
	if err := a.Lease.Commit(ctx, []byte("other record"), time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("Commit of different bytes after the record: %v, want ErrLeaseLost", err)
	}
}
