// Command idemdemo shows idem at work.
//
// With no flags it runs a short demo on the embedded store and exits:
// concurrent duplicate calls collapse into one execution, a retry is
// replayed, and a key reused for another request is refused; then the same
// through the HTTP middleware and the gRPC interceptors, on servers it starts
// on loopback ports; then a queue consumer whose broker delivers twice.
//
//	go run ./cmd/idemdemo
//
// With -serve it serves an HTTP API (POST /orders) and a gRPC endpoint
// protected by idem, on the embedded store or, with -redis, on Redis; -call
// runs the gRPC client demo against such a server:
//
//	go run ./cmd/idemdemo -serve -http 127.0.0.1:8080 -grpc 127.0.0.1:9090
//	go run ./cmd/idemdemo -serve -redis 127.0.0.1:6379
//	go run ./cmd/idemdemo -call 127.0.0.1:9090
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/redisstore"
	"github.com/redis/go-redis/v9"
)

func main() {
	serve := flag.Bool("serve", false, "serve the HTTP and gRPC APIs instead of running the in-process demo")
	httpAddr := flag.String("http", "127.0.0.1:8080", "HTTP listen address (with -serve)")
	grpcAddr := flag.String("grpc", "127.0.0.1:9090", "gRPC listen address (with -serve)")
	redisAddr := flag.String("redis", "", "Redis address; empty uses the embedded store")
	call := flag.String("call", "", "call the gRPC demo server at this address twice with one key, and exit")
	flag.Parse()

	if *call != "" {
		if err := runGRPCClientDemo(context.Background(), os.Stdout, *call); err != nil {
			log.Fatal(err)
		}
		return
	}

	store, closeStore, err := openStore(*redisAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer closeStore()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *serve {
		err = serveAPIs(ctx, store, *httpAddr, *grpcAddr)
	} else {
		err = runDemo(ctx, os.Stdout, store)
		if err == nil {
			err = runAdapterDemo(ctx, os.Stdout, store)
		}
		if err == nil {
			err = runConsumerDemo(ctx, os.Stdout, store)
		}
	}
	if err != nil {
		log.Fatal(err)
	}
}

func openStore(redisAddr string) (idem.Store, func(), error) {
	if redisAddr == "" {
		return memstore.New(), func() {}, nil
	}
	client := redis.NewClient(&redis.Options{Addr: redisAddr, ContextTimeoutEnabled: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		return nil, nil, fmt.Errorf("redis at %s: %w", redisAddr, err)
	}
	return redisstore.New(client, redisstore.WithPrefix("idemdemo:")), func() { client.Close() }, nil
}

type payment struct {
	Customer string
	Amount   int64
}

// runDemo shows the core behaviours on store and prints what happened.
func runDemo(ctx context.Context, w io.Writer, store idem.Store) error {
	charges := idem.New[payment, string](store, idem.WithWaitTimeout(5*time.Second), idem.WithNamespace("demo"))
	if err := charges.Err(); err != nil {
		return err
	}
	key := fmt.Sprint("demo-", time.Now().UnixNano())
	var executions atomic.Int32
	charge := func(ctx context.Context, p payment) (string, error) {
		n := executions.Add(1)
		time.Sleep(100 * time.Millisecond) // the payment gateway
		return fmt.Sprintf("charged %s %d cents (execution #%d)", p.Customer, p.Amount, n), nil
	}
	req := payment{Customer: "cus_42", Amount: 1999}

	fmt.Fprintf(w, "20 concurrent calls with idempotency key %q:\n", key)
	var wg sync.WaitGroup
	var replayed atomic.Int32
	results := make([]string, 20)
	errs := make([]error, 20)
	for i := range results {
		wg.Go(func() {
			var info idem.Info
			results[i], info, errs[i] = charges.DoInfo(ctx, key, req, charge)
			if info.Replayed {
				replayed.Add(1)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintf(w, "  charge ran %d time(s); all 20 callers got: %s\n", executions.Load(), results[0])
	fmt.Fprintf(w, "  (%d callers waited for the first and were given its result)\n", replayed.Load())

	r, info, err := charges.DoInfo(ctx, key, req, charge)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "a retry a moment later: replayed=%v, %s\n", info.Replayed, r)

	_, err = charges.Do(ctx, key, payment{Customer: "cus_42", Amount: 5000}, charge)
	fmt.Fprintf(w, "the same key with another amount: %v\n", err)
	fmt.Fprintf(w, "executions in all: %d\n", executions.Load())
	return nil
}

// serveAPIs serves the HTTP and gRPC demo APIs until ctx ends.
func serveAPIs(ctx context.Context, store idem.Store, httpAddr, grpcAddr string) error {
	handler, gs, err := newServers(store)
	if err != nil {
		return err
	}
	hl, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return err
	}
	gl, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		hl.Close()
		return err
	}
	hs := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- hs.Serve(hl) }()
	go func() { errc <- gs.Serve(gl) }()
	log.Printf("HTTP on http://%s (POST /orders), gRPC on %s; Ctrl-C stops", hl.Addr(), gl.Addr())
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	gs.GracefulStop()
	if serr := hs.Shutdown(sctx); err == nil && !errors.Is(serr, http.ErrServerClosed) {
		err = serr
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// newServers builds the demo's HTTP handler and gRPC server on store.
func newServers(store idem.Store) (http.Handler, *grpc.Server, error) {
	handler, err := newHTTPHandler(store)
	if err != nil {
		return nil, nil, err
	}
	gs, err := newGRPCServer(store)
	if err != nil {
		return nil, nil, err
	}
	return handler, gs, nil
}

// runAdapterDemo starts the HTTP and gRPC demo servers on loopback ports,
// shows a request, its retry and a reused key through each, and stops them.
func runAdapterDemo(ctx context.Context, w io.Writer, store idem.Store) error {
	handler, gs, err := newServers(store)
	if err != nil {
		return err
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(hl)
	defer hs.Close()
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go gs.Serve(gl)
	defer gs.Stop()

	url := "http://" + hl.Addr().String() + "/orders"
	key := fmt.Sprint("order-", time.Now().UnixNano())
	fmt.Fprintf(w, "\nHTTP: POST %s with Idempotency-Key %q:\n", url, key)
	for _, body := range []string{`{"item":"book","qty":1}`, `{"item":"book","qty":1}`, `{"item":"pen","qty":2}`} {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var out bytes.Buffer
		if json.Compact(&out, raw) != nil {
			out.Write(raw)
		}
		fmt.Fprintf(w, "  %s -> %s, X-Idempotency-Status: %q\n    %s\n", body, resp.Status,
			resp.Header.Get("X-Idempotency-Status"), out.String())
	}
	fmt.Fprintln(w)
	return runGRPCClientDemo(ctx, w, gl.Addr().String())
}
