package codec_test

import (
	"fmt"
	"log"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/codec"
	"github.com/idemkit/idem/memstore"
)

type Receipt struct {
	ID     string
	Amount int
}

// Both codecs round-trip a result to an equal value; a record is tagged
// with the Name of the codec that wrote it.
func Example() {
	in := Receipt{ID: "r_1", Amount: 1999}
	for _, c := range []codec.Codec{codec.MsgPack{}, codec.JSON{}} {
		b, err := c.Marshal(in)
		if err != nil {
			log.Fatal(err)
		}
		var out Receipt
		if err := c.Unmarshal(b, &out); err != nil {
			log.Fatal(err)
		}
		fmt.Println(c.Name(), len(b), "bytes, equal:", out == in)
	}
	// Output:
	// msgpack 18 bytes, equal: true
	// json 26 bytes, equal: true
}

// An Operation stores its results with MsgPack unless told otherwise.
// Records written with one codec are reported as corrupt when read with
// another, so keep the codec fixed for a namespace.
func Example_withCodec() {
	op := idem.New[string, Receipt](memstore.New(), idem.WithCodec(codec.JSON{}))
	if err := op.Err(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("ready")
	// Output: ready
}
