package codec_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/idemkit/idem/codec"
)

// TestMsgPackReuse checks that encodings and decoded values never share
// memory with the buffers the codec reuses: many goroutines encode and
// decode different values, and each keeps what it got.
func TestMsgPackReuse(t *testing.T) {
	type payload struct {
		ID    string
		Items []string
		Blob  []byte
	}
	var c codec.MsgPack
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			var kept [][]byte
			var want []payload
			for i := range 200 {
				p := payload{ID: fmt.Sprint(g, "-", i), Items: []string{fmt.Sprint(i), "x"}, Blob: []byte(fmt.Sprint("blob", g, i))}
				b, err := c.Marshal(p)
				if err != nil {
					t.Error(err)
					return
				}
				kept, want = append(kept, b), append(want, p)
			}
			for i, b := range kept {
				var got payload
				if err := c.Unmarshal(b, &got); err != nil {
					t.Error(err)
					return
				}
				if d := cmp.Diff(want[i], got); d != "" {
					t.Errorf("value %d changed after later calls (-want +got):\n%s", i, d)
					return
				}
			}
		})
	}
	wg.Wait()
}
