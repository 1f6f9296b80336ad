package httpadapter_test

import (
	"bytes"
	"encoding/gob"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/codec"
	"github.com/idemkit/idem/httpadapter"
	"github.com/idemkit/idem/memstore"
)

// gobCodec encodes with encoding/gob, which writes maps in random order.
type gobCodec struct{}

func (gobCodec) Name() string { return "gob" }

func (gobCodec) Marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	err := gob.NewEncoder(&b).Encode(v)
	return b.Bytes(), err
}

func (gobCodec) Unmarshal(data []byte, v any) error {
	return gob.NewDecoder(bytes.NewReader(data)).Decode(v)
}

// TestCodecs checks that responses with many headers are stored and
// replayed whatever the codec, including one whose encoding of a map
// changes from call to call.
func TestCodecs(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]codec.Codec{"MsgPack": codec.MsgPack{}, "JSON": codec.JSON{}, "gob": gobCodec{}} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := httpadapter.Middleware(memstore.New(), httpadapter.WithOptions(idem.WithCodec(c)))(http.HandlerFunc(
				func(w http.ResponseWriter, r *http.Request) {
					for _, k := range strings.Fields("A B C D E F G H I J K L M N O P Q R") {
						w.Header().Set("X-"+k, k)
					}
					w.Header()["X-Empty"] = []string{}
					w.WriteHeader(http.StatusCreated)
					_, _ = w.Write([]byte(r.Header.Get(httpadapter.HeaderKey)))
				}))
			for range 3 {
				key := newKey()
				var first *httptest.ResponseRecorder
				for _, want := range []string{httpadapter.StatusNew, httpadapter.StatusHit} {
					r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("{}"))
					r.Header.Set(httpadapter.HeaderKey, key)
					w := httptest.NewRecorder()
					h.ServeHTTP(w, r)
					if got := w.Header().Get(httpadapter.HeaderStatus); got != want || w.Header().Get(httpadapter.HeaderStored) != "" {
						t.Fatalf("%s = %q, %s = %q; want %s, stored", httpadapter.HeaderStatus, got,
							httpadapter.HeaderStored, w.Header().Get(httpadapter.HeaderStored), want)
					}
					if first == nil {
						first = w
						continue
					}
					if w.Code != first.Code || w.Body.String() != key || w.Header().Get("X-R") != "R" || len(w.Header()) != len(first.Header())+1 {
						t.Errorf("replay %d %q %v, first %d %v", w.Code, w.Body, w.Header(), first.Code, first.Header())
					}
				}
			}
		})
	}
}
