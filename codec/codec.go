// Package codec encodes the results that idem stores and replays.
//
// A Codec turns a value into bytes and back. The zero values of MsgPack (the
// default) and JSON are ready to use. A record is tagged with the Name of the
// codec that wrote it, so reading it with another codec is reported as an
// error rather than decoded into garbage.
package codec

import (
	"encoding/json"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// A Codec encodes and decodes stored results. Implementations must be safe
// for concurrent use, and Unmarshal must return an error, never panic, on
// bytes it did not write.
type Codec interface {
	// Name identifies the encoding in stored records; at most 255 bytes.
	Name() string
	// Marshal encodes v.
	Marshal(v any) ([]byte, error)
	// Unmarshal decodes data into the value v points to.
	Unmarshal(data []byte, v any) error
}

// MsgPack encodes with MessagePack (github.com/vmihailenco/msgpack/v5):
// compact and fast. Struct fields are keyed by their msgpack tag, or by their
// Go name when untagged; unexported fields are not stored. A time.Time comes
// back in the local time zone, equal under time.Time.Equal.
type MsgPack struct{}

// Name returns "msgpack".
func (MsgPack) Name() string { return "msgpack" }

// Marshal encodes v with msgpack. It refuses values that Unmarshal would
// not accept back: those holding msgpack extension types other than
// time.Time (types registered with msgpack.RegisterExt). Storing them would
// give a record that can never be replayed.
func (MsgPack) Marshal(v any) ([]byte, error) {
	b, err := msgpack.Marshal(v)
	if err != nil {
		return nil, err
	}
	if err := checkMsgpack(b); err != nil {
		return nil, fmt.Errorf("%w (the encoding would not decode)", err)
	}
	return b, nil
}

// Unmarshal decodes msgpack data into v.
// Foreign or damaged bytes are checked first, so that they give an error
// without the large allocations msgpack/v5 makes for declared lengths; a
// panic inside msgpack/v5 on such bytes (it has some, found by fuzzing) is
// returned as an error too.
func (MsgPack) Unmarshal(data []byte, v any) (err error) {
	if err := checkMsgpack(data); err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", errMsgpack, r)
		}
	}()
	return msgpack.Unmarshal(data, v)
}

// JSON encodes with encoding/json: readable in the store, and the choice
// when results must be inspected by other tools. Struct fields follow their
// json tags.
type JSON struct{}

// Name returns "json".
func (JSON) Name() string { return "json" }

// Marshal encodes v with encoding/json.
func (JSON) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal decodes JSON data into v.
func (JSON) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
