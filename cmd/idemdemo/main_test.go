package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/redisstore"
)

func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }

func checkDemo(t *testing.T, store idem.Store) {
	var out bytes.Buffer
	if err := runDemo(context.Background(), &out, store); err != nil {
		t.Fatal(err)
	}
	if err := runAdapterDemo(context.Background(), &out, store); err != nil {
		t.Fatal(err)
	}
	if err := runConsumerDemo(context.Background(), &out, store); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"charge ran 1 time(s); all 20 callers got: charged cus_42 1999 cents (execution #1)",
		"a retry a moment later: replayed=true",
		"the same key with another amount: idem: idempotency key reused with a different request",
		"executions in all: 1",
		`{"item":"book","qty":1} -> 201 Created, X-Idempotency-Status: "new"`,
		`{"item":"book","qty":1} -> 201 Created, X-Idempotency-Status: "hit"`,
		`{"item":"pen","qty":2} -> 422 Unprocessable Entity`,
		"the second call was a hit: true; one order created: true",
		`m1 "hello" (delivery 1): executed -> ack`,
		`m2 "flaky" (delivery 1): fn_error -> retry`,
		`m1 "hello" (delivery 2): replayed -> ack`,
		`m3 "" (delivery 1): final_error -> terminate`,
		`m1 "other body" (delivery 1): key_reused -> terminate`,
		`m2 "flaky" (delivery 2): executed -> ack`,
		"emails sent: 2 (m1 once, m2 after one failure)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestDemoMemstore(t *testing.T) { checkDemo(t, memstore.New()) }

func TestDemoRedis(t *testing.T) { checkDemo(t, redisstore.New(redistest.Single(t))) }
