package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemtest"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/redisstore"
	"github.com/redis/go-redis/v9"
)

// oldServer is a go-redis hook that answers SET ... NX ... GET with the
// syntax error of Redis before 7.0, without sending it, as an older server
// would: sent alone, or in a pipeline, whose other commands go through.
type oldServer struct{ refused atomic.Int64 }

func (*oldServer) DialHook(next redis.DialHook) redis.DialHook { return next }

// refuse answers cmd with the syntax error if it is SET NX GET.
func (o *oldServer) refuse(cmd redis.Cmder) bool {
	args := cmd.Args()
	if cmd.Name() == "set" && slices.Contains(args, any("nx")) && slices.Contains(args, any("get")) {
		cmd.SetErr(errors.New("ERR syntax error"))
		o.refused.Add(1)
		return true
	}
	return false
}

func (o *oldServer) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if o.refuse(cmd) {
			return cmd.Err()
		}
		return next(ctx, cmd)
	}
}

func (o *oldServer) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var rest []redis.Cmder
		for _, cmd := range cmds {
			if !o.refuse(cmd) {
				rest = append(rest, cmd)
			}
		}
		if len(rest) == 0 {
			return nil
		}
		return next(ctx, rest)
	}
}

// TestOlderServerFallsBack checks that a Store whose server refuses SET NX
// GET (Redis before 7.0) keeps to GET and the obtain script from then on,
// and stays correct: fn runs once, and its result replays. It does so
// whether the refusal comes to an Acquire asked for no TTL (SET alone) or
// to one asked for it (SET in a transaction with PTTL), and then both
// answer alike, the second with the record's TTL.
func TestOlderServerFallsBack(t *testing.T) {
	for _, withTTL := range []bool{false, true} {
		t.Run(fmt.Sprint("TTLRequested=", withTTL), func(t *testing.T) {
			client := redistest.Single(t)
			old := &oldServer{}
			client.AddHook(old)
			prefix := fmt.Sprint("old:", time.Now().UnixNano(), ":")
			s := redisstore.New(client, redisstore.WithPrefix(prefix))
			var opts []idem.Option
			if withTTL {
				opts = append(opts, idem.WithLocalCache(8)) // the Operation asks for the TTL
			}
			ctx := context.Background()
			var runs atomic.Int64
			fn := func(context.Context, string) (string, error) { runs.Add(1); return "result", nil }
			for i := range 5 {
				// A new Operation for each call, so that a replay asks
				// the store rather than the local cache.
				v, info, err := idem.New[string, string](s, opts...).DoInfo(ctx, "k", "req", fn)
				if err != nil || v != "result" {
					t.Fatalf("call %d: %q, %v", i, v, err)
				}
				if want := i > 0; info.Replayed != want {
					t.Errorf("call %d: replayed = %v, want %v", i, info.Replayed, want)
				}
			}
			if n := runs.Load(); n != 1 {
				t.Errorf("fn ran %d times, want 1", n)
			}
			if !redisstore.LegacyAcquire(s) {
				t.Error("the Store did not fall back after the syntax error")
			}
			// The record is stored under prefix, ":" (no namespace), key.
			a, err := s.Acquire(ctx, ":k", "fp", time.Minute)
			if err != nil || a.Record == nil || a.TTL != 0 {
				t.Errorf("Acquire of the completed key: %+v, %v; want the record, TTL 0", a, err)
			}
			a, err = s.Acquire(idem.ContextWithTTLRequest(ctx), ":k", "fp", time.Minute)
			if err != nil || a.Record == nil || a.TTL <= 0 || a.TTL > idem.DefaultTTL {
				t.Errorf("Acquire asked for the TTL of the completed key: %+v, %v; want the record, its TTL", a, err)
			}
			if n := old.refused.Load(); n != 1 {
				t.Errorf("SET NX GET was tried %d times, want once: the fallback is for good", n)
			}
		})
	}
}

// TestConformanceLegacy runs the conformance suite on the way the Store
// acquires keys on servers older than Redis 7.0.
func TestConformanceLegacy(t *testing.T) {
	s := redisstore.New(redistest.Single(t))
	redisstore.UseLegacyAcquire(s)
	idemtest.TestStore(t, func(*testing.T) idem.Store { return s })
}
