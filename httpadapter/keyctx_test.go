package httpadapter_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/httpadapter"
	"github.com/idemkit/idem/memstore"
)

func TestKeyFromContext(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   []httpadapter.Option
		header string // "" for none
		ok     bool
		want   httpadapter.Key
	}{
		{"quoted", nil, `"k-1"`, true, httpadapter.Key{Raw: "k-1", Stored: idem.ScopedKey("", "k-1")}},
		{"bare", nil, "k-1", true, httpadapter.Key{Raw: "k-1", Stored: idem.ScopedKey("", "k-1")}},
		{"scoped", []httpadapter.Option{httpadapter.WithScope(func(*http.Request) string { return "acct-7" })},
			`"k-1"`, true, httpadapter.Key{Raw: "k-1", Scope: "acct-7", Stored: idem.ScopedKey("acct-7", "k-1")}},
		{"no key", []httpadapter.Option{httpadapter.WithKeyRequired()}, "", false, httpadapter.Key{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got httpadapter.Key
			var ok, ran bool
			h := httpadapter.Middleware(memstore.New(), tc.opts...)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ran = true
				got, ok = httpadapter.KeyFromContext(r.Context())
				w.WriteHeader(http.StatusCreated)
			}))
			r := httptest.NewRequest(http.MethodPost, "/orders", nil)
			if tc.header != "" {
				r.Header.Set(httpadapter.HeaderKey, tc.header)
			}
			h.ServeHTTP(httptest.NewRecorder(), r)
			if !ran {
				t.Fatal("handler did not run")
			}
			if ok != tc.ok || got != tc.want {
				t.Errorf("KeyFromContext = %+v, %v; want %+v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
	if _, ok := httpadapter.KeyFromContext(t.Context()); ok {
		t.Error("KeyFromContext of a bare context reports a key")
	}
}
