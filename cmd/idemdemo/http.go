package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/httpadapter"
)

// httpSlowDelay is how long POST /orders?slow=1 takes, long enough to send a
// second request while the first is running.
const httpSlowDelay = 2 * time.Second

// newHTTPHandler returns the demo HTTP API, its idempotency records kept in
// store:
//
//   - POST /orders creates an order from a JSON body such as
//     {"item":"book","qty":1} and answers 201 with it. It requires an
//     Idempotency-Key header. With ?slow=1 it takes two seconds, so that a
//     second request can find the first in flight (409); with ?fail=1 it
//     answers 503 and creates nothing, a failure that is not stored.
//   - GET /orders lists the orders created.
//
// Keys are scoped by the X-Demo-Account header, a stand-in for the account
// an authentication middleware would find: never trust a client header for
// this in production.
func newHTTPHandler(store idem.Store) (http.Handler, error) {
	orders := &httpOrderBook{}
	idempotent, err := httpadapter.New(store,
		httpadapter.WithScope(func(r *http.Request) string { return r.Header.Get("X-Demo-Account") }),
		// No waiting: a retry of a request still running gets 409 at once,
		// which ?slow=1 shows. A few seconds would have it wait for the
		// response instead.
		httpadapter.WithOptions(idem.WithWaitTimeout(0)),
		httpadapter.WithErrorHook(func(r *http.Request, err error) {
			log.Printf("idempotency: %s %s: %v", r.Method, r.URL, err)
		}),
	)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("POST /orders", idempotent(http.HandlerFunc(orders.create)))
	mux.HandleFunc("GET /orders", orders.list)
	return mux, nil
}

// httpOrder is an order of the demo API.
type httpOrder struct {
	ID        string    `json:"id"`
	Item      string    `json:"item"`
	Qty       int       `json:"qty"`
	CreatedAt time.Time `json:"created_at"`
}

// httpOrderBook holds the orders created, in memory.
type httpOrderBook struct {
	mu     sync.Mutex
	orders []httpOrder
}

func (b *httpOrderBook) create(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Item string `json:"item"`
		Qty  int    `json:"qty"`
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		writeHTTPJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid JSON: " + err.Error()})
		return
	}
	if in.Item == "" || in.Qty < 1 {
		writeHTTPJSON(w, http.StatusBadRequest, map[string]string{"error": "item must be set and qty at least 1"})
		return
	}
	if r.URL.Query().Get("fail") == "1" {
		writeHTTPJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "inventory service unavailable, try again"})
		return
	}
	if r.URL.Query().Get("slow") == "1" {
		select {
		case <-time.After(httpSlowDelay):
		case <-r.Context().Done():
			// The client left, or the lease was lost: create nothing, and
			// say so with a status that is not stored. Returning without
			// writing would answer an implicit 200, which the middleware
			// stores and replays to every retry.
			writeHTTPJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "request cancelled, nothing created; retry"})
			return
		}
	}
	o := httpOrder{ID: newHTTPOrderID(), Item: in.Item, Qty: in.Qty, CreatedAt: time.Now().UTC()}
	b.mu.Lock()
	b.orders = append(b.orders, o)
	b.mu.Unlock()
	w.Header().Set("Location", "/orders/"+o.ID)
	writeHTTPJSON(w, http.StatusCreated, o)
}

func (b *httpOrderBook) list(w http.ResponseWriter, _ *http.Request) {
	b.mu.Lock()
	orders := slices.Clone(b.orders)
	b.mu.Unlock()
	if orders == nil {
		orders = []httpOrder{}
	}
	writeHTTPJSON(w, http.StatusOK, map[string]any{"count": len(orders), "orders": orders})
}

// newHTTPOrderID returns a random order ID.
func newHTTPOrderID() string {
	b := make([]byte, 8)
	rand.Read(b) // never fails: crypto/rand.Read crashes the program instead
	return "ord_" + hex.EncodeToString(b)
}

func writeHTTPJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		log.Printf("writing response: %v", err)
	}
}
