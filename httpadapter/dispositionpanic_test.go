package httpadapter_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/httpadapter"
	"github.com/idemkit/idem/memstore"
)

// TestDispositionPanicHoldsKey checks that a disposition function that
// panics after the handler ran holds the key, as the core does when its own
// disposition panics: the handler's effect stands, so the retry a client
// makes after its call failed must not run it again.
func TestDispositionPanicHoldsKey(t *testing.T) {
	var runs atomic.Int32
	mw, err := httpadapter.New(memstore.New(), httpadapter.WithScope(nil),
		httpadapter.WithDisposition(func(status int) idem.Disposition {
			if status == http.StatusCreated {
				panic("buggy disposition")
			}
			return httpadapter.DefaultDisposition(status)
		}))
	if err != nil {
		t.Fatal(err)
	}
	h := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1) // charge the card
		w.WriteHeader(http.StatusCreated)
	}))
	send := func() (code int) {
		defer func() {
			if recover() != nil {
				code = -1 // net/http drops the connection
			}
		}()
		req := httptest.NewRequest(http.MethodPost, "/charges", strings.NewReader("{}"))
		req.Header.Set(httpadapter.HeaderKey, "k1")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	first := send()
	second := send()
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times (first %d, retry %d): the retry after a dropped connection re-ran it", n, first, second)
	}
}
