package codec_test

import (
	"errors"
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

// TestAppendMarshal checks that AppendMarshal keeps what dst holds, appends
// what Marshal returns, and refuses what Marshal refuses.
func TestAppendMarshal(t *testing.T) {
	var c codec.MsgPack
	v := struct {
		ID string
		N  int
	}{"ch_1", 3}
	want, err := c.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.AppendMarshal([]byte("head"), v)
	if err != nil {
		t.Fatal(err)
	}
	if string(got[:4]) != "head" || string(got[4:]) != string(want) {
		t.Fatalf("AppendMarshal = %q, want %q then %q", got, "head", want)
	}
	type node struct{ Next *node }
	cyc := &node{}
	cyc.Next = cyc
	if _, err := c.AppendMarshal([]byte("head"), cyc); !errors.Is(err, codec.ErrTooDeep) {
		t.Fatalf("AppendMarshal of a cycle: %v, want ErrTooDeep", err)
	}
}
