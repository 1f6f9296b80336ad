package httpadapter

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
)

// With idem's default codec, MessagePack, a response is stored as
// msgpack/v5 encodes the struct by reflection: a map from the names of its
// exported fields to their values,
//
//	{"Status": int, "Header": {name: [value, ...] or nil, ...} or nil,
//	 "Body": bin or nil, "Method": str, "Path": str}
//
// encodeResponse and decodeResponse write and read that same format, only
// faster: records stored before they existed replay as before, and older
// releases replay the records they store. Other codecs (codec.JSON) still
// go through reflection.
//
// They are registered with msgpack rather than made methods of response
// (msgpack.CustomEncoder and CustomDecoder): idem checks that a result
// comes back from its codec as the same value by comparing the two field by
// field, but compares the encodings of a type with encoding methods, which
// would make a codec that writes maps in random order (gob, say) refuse
// every response with two headers or more. (codec.MsgPack itself calls
// the AppendMsgpack and DecodeMsgpackBytes methods of msgpackbytes.go,
// which write and read the same bytes without msgpack/v5's Encoder and
// Decoder around them; idem does not count them as encoding methods.)
func init() {
	msgpack.Register(response{}, encodeResponse, decodeResponse)
}

// Names of the fields of response in its encoding.
const (
	fieldStatus = "Status"
	fieldHeader = "Header"
	fieldBody   = "Body"
	fieldMethod = "Method"
	fieldPath   = "Path"
)

// fieldOrder is the order of the fields in the array form of a response.
var fieldOrder = [...]string{fieldStatus, fieldHeader, fieldBody, fieldMethod, fieldPath}

// encodeResponse writes the response v, as msgpack writes it by reflection
// but with the header names sorted, so that equal responses encode alike:
// the bytes of AppendMsgpack, which codec.MsgPack calls without an Encoder.
func encodeResponse(e *msgpack.Encoder, v reflect.Value) error {
	var resp *response
	if v.CanAddr() {
		resp = v.Addr().Interface().(*response)
	} else {
		r := v.Interface().(response)
		resp = &r
	}
	b, err := resp.AppendMsgpack(nil)
	if err == nil {
		_, err = e.Writer().Write(b)
	}
	return err
}

// decodeResponse reads into the response v what encodeResponse writes, and
// what msgpack writes by reflection: fields by name in any order, unknown
// ones skipped, or all in an array; a string or binary (or nil, as empty)
// wherever text is expected. The header names and values, the method and
// the path are sliced from one string, and the header's value slices from
// one array.
//
// When the decoder reads from a bytes.Reader, as msgpack.Unmarshal does,
// the rest of the input is decoded as a slice, which is much faster than
// through the decoder; else the value is read raw first. (idem's codec
// calls DecodeMsgpackBytes instead, which decodes the same way.)
// Strings interned by msgpack (Encoder.UseInternedStrings, dictionaries),
// which idem's codec does not use, are not read.
func decodeResponse(d *msgpack.Decoder, v reflect.Value) error {
	if !v.CanAddr() {
		return fmt.Errorf("httpadapter: decoding into an unaddressable %s", v.Type())
	}
	resp := v.Addr().Interface().(*response)
	st := decodePool.Get().(*decodeState)
	defer st.release()
	br, direct := d.Buffered().(*bytes.Reader)
	var data []byte
	if direct {
		n := br.Len()
		st.raw = slices.Grow(st.raw[:0], n)[:n]
		if m, _ := br.ReadAt(st.raw, br.Size()-int64(n)); m != n {
			return io.ErrUnexpectedEOF
		}
		data = st.raw
	} else {
		raw, err := d.DecodeRaw()
		if err != nil {
			return err
		}
		data = raw
	}
	r := msgpackReader{b: data}
	if err := st.decode(&r, resp); err != nil {
		return err
	}
	if direct {
		if _, err := br.Seek(int64(r.i), io.SeekCurrent); err != nil {
			return err
		}
	}
	return nil
}

// decodeState is where decodeResponse keeps the input and gathers the text
// of a response before it copies that into one string. It holds no
// reference to what it decoded once released.
type decodeState struct {
	raw     []byte // the input, when copied
	text    []byte
	header  bool          // a header was read, not nil
	entries []headerEntry // its entries
	values  []span        // their values, in the order of entries
}

// span is where a string lies in decodeState.text.
type span struct{ from, to int }

// headerEntry is a header read: its name, and its values from values[first].
type headerEntry struct {
	name  span
	first int
	n     int // -1 for nil
}

var decodePool = sync.Pool{New: func() any { return new(decodeState) }}

func (st *decodeState) release() {
	if cap(st.raw) > maxPooled || cap(st.text) > maxPooled || cap(st.values) > maxPooled/16 || cap(st.entries) > maxPooled/32 {
		return
	}
	st.raw, st.text, st.entries, st.values, st.header = st.raw[:0], st.text[:0], st.entries[:0], st.values[:0], false
	decodePool.Put(st)
}

// decode reads a response from r into resp: a map of its fields by name,
// or, as msgpack's reflection also reads, an array of them in the order
// they are declared in.
func (st *decodeState) decode(r *msgpackReader, resp *response) error {
	if resp.Status != 0 || resp.Header != nil || resp.Body != nil || resp.Method != "" || resp.Path != "" {
		*resp = response{} // not needed on a new one, where it costs write barriers
	}
	var n int
	var err error
	array := r.i < len(r.b) && (r.b[r.i]&0xf0 == 0x90 || r.b[r.i] == mpArray16 || r.b[r.i] == mpArray32)
	if array {
		n, err = r.arrayLen()
	} else {
		n, err = r.mapLen()
	}
	if err != nil || n < 0 {
		return err
	}
	var method, path span
	for i := range n {
		var key []byte
		switch {
		case !array:
			if key, _, err = r.str(); err != nil {
				return err
			}
		case i < len(fieldOrder):
			key = []byte(fieldOrder[i])
		}
		switch string(key) {
		case fieldStatus:
			var status int64
			status, err = r.int()
			resp.Status = int(status)
		case fieldHeader:
			err = st.readHeader(r)
		case fieldBody:
			var body []byte
			var isNil bool
			if body, isNil, err = r.str(); !isNil {
				resp.Body = make([]byte, len(body))
				copy(resp.Body, body)
			}
		case fieldMethod:
			method, err = st.readText(r)
		case fieldPath:
			path, err = st.readText(r)
		default:
			err = r.skip(0)
		}
		if err != nil {
			return err
		}
	}
	text := string(st.text)
	resp.Method, resp.Path = text[method.from:method.to], text[path.from:path.to]
	if st.header {
		resp.Header = st.buildHeader(text)
	}
	return nil
}

// readText reads a string and appends it to st.text.
func (st *decodeState) readText(r *msgpackReader) (span, error) {
	s, _, err := r.str()
	from := len(st.text)
	st.text = append(st.text, s...)
	return span{from, len(st.text)}, err
}

// readHeader reads a header map, replacing one read before.
func (st *decodeState) readHeader(r *msgpackReader) error {
	st.entries, st.values = st.entries[:0], st.values[:0]
	n, err := r.mapLen()
	st.header = n >= 0
	if err != nil || n < 0 {
		return err
	}
	for range n {
		name, err := st.readText(r)
		if err != nil {
			return err
		}
		nv, err := r.arrayLen()
		if err != nil {
			return err
		}
		st.entries = append(st.entries, headerEntry{name: name, first: len(st.values), n: nv})
		for range nv {
			v, err := st.readText(r)
			if err != nil {
				return err
			}
			st.values = append(st.values, v)
		}
	}
	return nil
}

// buildHeader returns the header read, its strings sliced from text, in a
// map from headerPool. The values share one array; each entry's are
// capped, so that appending to them does not write over the next.
func (st *decodeState) buildHeader(text string) http.Header {
	h := newHeader(len(st.entries))
	values := make([]string, len(st.values))
	for i, v := range st.values {
		values[i] = text[v.from:v.to]
	}
	for _, e := range st.entries {
		var vs []string
		if e.n >= 0 {
			vs = values[e.first : e.first+e.n : e.first+e.n]
		}
		h[text[e.name.from:e.name.to]] = vs
	}
	return h
}
