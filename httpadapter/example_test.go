package httpadapter_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/httpadapter"
	"github.com/idemkit/idem/memstore"
)

// A client retries a POST with the same Idempotency-Key: the order is
// created once, and the retry gets the stored response. Sending the key with
// another request is refused.
func Example() {
	var orders atomic.Int32
	create := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"order":%d}`, orders.Add(1))
	})
	idempotent, err := httpadapter.New(memstore.New(),
		// The account an authentication middleware found; a header here.
		httpadapter.WithScope(func(r *http.Request) string { return r.Header.Get("X-Account") }),
	)
	if err != nil {
		log.Fatal(err) // an option that cannot be honoured
	}
	srv := httptest.NewServer(idempotent(create))
	defer srv.Close()

	post := func(body string) {
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/orders", strings.NewReader(body))
		if err != nil {
			log.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Account", "acct_1")
		req.Header.Set("Idempotency-Key", `"8e03978e-40d5-43e8-bc93-6894a57f9324"`)
		resp, err := srv.Client().Do(req)
		if err != nil {
			log.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			log.Fatal(err)
		}
		if resp.Header.Get("Content-Type") == "application/problem+json" {
			var p struct{ Type string }
			if err := json.Unmarshal(b, &p); err != nil {
				log.Fatal(err)
			}
			fmt.Println(resp.StatusCode, p.Type)
			return
		}
		fmt.Println(resp.StatusCode, resp.Header.Get("X-Idempotency-Status"), string(b))
	}
	post(`{"item":"book"}`)
	post(`{"item":"book"}`)
	post(`{"item":"pen"}`)
	fmt.Println("orders created:", orders.Load())
	// Output:
	// 201 new {"order":1}
	// 201 hit {"order":1}
	// 422 https://idemkit.dev/problems/idempotency-key-reused
	// orders created: 1
}

// A typical configuration: keys are private to the authenticated account,
// a retry of a request still running waits up to 2 seconds for its
// response, responses are kept for a day, and failures the client cannot
// see are logged.
func ExampleNew() {
	type accountKey struct{}
	idempotent, err := httpadapter.New(memstore.New(),
		httpadapter.WithScope(func(r *http.Request) string {
			account, _ := r.Context().Value(accountKey{}).(string) // set by authentication middleware
			return account
		}),
		httpadapter.WithOptions(
			idem.WithWaitTimeout(2*time.Second),
			idem.WithTTL(24*time.Hour),
		),
		httpadapter.WithErrorHook(func(r *http.Request, err error) {
			log.Printf("idempotency: %s %s: %v", r.Method, r.URL.Path, err)
		}),
	)
	if err != nil {
		log.Fatal(err) // fail at start, not on every request
	}
	mux := http.NewServeMux()
	mux.Handle("POST /payments", idempotent(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	})))
	_ = mux // serve it behind the authentication middleware
}
