package codec

import (
	"bytes"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
)

// msgpackCoder is a msgpack encoder and decoder with the buffer and reader
// they work on, reused across calls through coders: msgpack.Marshal and
// msgpack.Unmarshal allocate a bytes.Buffer or bytes.Reader, and grow the
// buffer, on every call.
type msgpackCoder struct {
	enc *msgpack.Encoder
	dec *msgpack.Decoder
	buf bytes.Buffer
	r   bytes.Reader
}

var coders = sync.Pool{New: func() any {
	c := &msgpackCoder{}
	c.enc = msgpack.NewEncoder(&c.buf)
	c.dec = msgpack.NewDecoder(&c.r)
	return c
}}

// maxPooledBuf is the largest encoding buffer kept for reuse, so that one
// huge result does not stay pinned in memory.
const maxPooledBuf = 64 << 10

// appendMarshal appends the encoding of v, as msgpack.Marshal encodes it,
// to dst. A coder whose encoder panicked is not reused.
func appendMarshal(dst []byte, v any) ([]byte, error) {
	c := coders.Get().(*msgpackCoder)
	c.buf.Reset()
	c.enc.Reset(&c.buf) // Reset clears flags; msgpack.Marshal sets none
	if err := c.enc.Encode(v); err != nil {
		coders.Put(c)
		return nil, err
	}
	if n := c.buf.Len(); cap(dst)-len(dst) < n {
		// Grow to the size needed, not as append would, with room to
		// spare that whoever keeps the result would keep too.
		dst = append(make([]byte, 0, len(dst)+n), dst...)
	}
	dst = append(dst, c.buf.Bytes()...)
	if c.buf.Cap() <= maxPooledBuf {
		coders.Put(c)
	}
	return dst, nil
}

// unmarshal decodes data into v as msgpack.Unmarshal does. A coder whose
// decoder panicked is not reused.
func unmarshal(data []byte, v any) error {
	c := coders.Get().(*msgpackCoder)
	c.r.Reset(data)
	c.dec.Reset(&c.r)
	// No UsePreallocateValues: msgpack.Unmarshal sets it and then Reset
	// clears it, so it decodes without it too. With it, a new value comes
	// through a channel that a goroutine per type keeps filled.
	err := c.dec.Decode(v)
	c.r.Reset(nil) // hold no reference to data
	coders.Put(c)
	return err
}
