package httpadapter

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
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
// every response with two headers or more.
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
// but with the header names sorted, so that equal responses encode alike.
func encodeResponse(e *msgpack.Encoder, v reflect.Value) error {
	var resp *response
	if v.CanAddr() {
		resp = v.Addr().Interface().(*response)
	} else {
		r := v.Interface().(response)
		resp = &r
	}
	w := msgpackWriter{e: e}
	w.mapLen(5)
	w.str(fieldStatus)
	w.int(resp.Status)
	w.str(fieldHeader)
	if resp.Header == nil {
		w.nil()
	} else {
		w.header(resp.Header)
	}
	w.str(fieldBody)
	w.bytes(resp.Body)
	w.str(fieldMethod)
	w.str(resp.Method)
	w.str(fieldPath)
	w.str(resp.Path)
	return w.err
}

// msgpackWriter writes with a msgpack.Encoder, keeping the first error.
type msgpackWriter struct {
	e   *msgpack.Encoder
	err error
}

// header writes h, its names sorted.
func (w *msgpackWriter) header(h map[string][]string) {
	type entry struct {
		name   string
		values []string
	}
	var small [16]entry // on the stack for most responses
	es := small[:0]
	for k, vs := range h {
		es = append(es, entry{k, vs})
	}
	slices.SortFunc(es, func(a, b entry) int { return cmp.Compare(a.name, b.name) })
	w.mapLen(len(es))
	for _, e := range es {
		w.str(e.name)
		w.strings(e.values)
	}
}

func (w *msgpackWriter) strings(vs []string) {
	if vs == nil {
		w.nil()
		return
	}
	w.arrayLen(len(vs))
	for _, v := range vs {
		w.str(v)
	}
}

func (w *msgpackWriter) mapLen(n int) {
	if w.err == nil {
		w.err = w.e.EncodeMapLen(n)
	}
}

func (w *msgpackWriter) arrayLen(n int) {
	if w.err == nil {
		w.err = w.e.EncodeArrayLen(n)
	}
}

func (w *msgpackWriter) str(s string) {
	if w.err == nil {
		w.err = w.e.EncodeString(s)
	}
}

func (w *msgpackWriter) int(n int) {
	if w.err == nil {
		w.err = w.e.EncodeInt(int64(n))
	}
}

func (w *msgpackWriter) bytes(b []byte) {
	if w.err == nil {
		w.err = w.e.EncodeBytes(b) // nil for nil
	}
}

func (w *msgpackWriter) nil() {
	if w.err == nil {
		w.err = w.e.EncodeNil()
	}
}

// decodeResponse reads into the response v what encodeResponse writes, and
// what msgpack writes by reflection: fields by name in any order, unknown
// ones skipped, or all in an array; a string or binary (or nil, as empty)
// wherever text is expected. The header names and values, the method and
// the path are sliced from one string, and the header's value slices from
// one array.
//
// When the decoder reads from a bytes.Reader, as msgpack.Unmarshal and
// idem's codec do, the rest of the input is decoded as a slice, which is
// much faster than through the decoder; else the value is read raw first.
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
	*resp = response{}
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

// buildHeader returns the header read, its strings sliced from text. The
// values share one array; each entry's are capped, so that appending to
// them does not write over the next.
func (st *decodeState) buildHeader(text string) http.Header {
	h := make(http.Header, len(st.entries))
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

// msgpackReader reads MessagePack values from a slice.
type msgpackReader struct {
	b []byte
	i int // where the next value starts
}

// maxSkipDepth bounds the nesting of the unknown values skipped.
const maxSkipDepth = 100

var errShort = errors.New("httpadapter: msgpack: unexpected end of data")

// MessagePack format codes (see the specification, or msgpack/v5's
// msgpcode package).
const (
	mpNil      = 0xc0
	mpFalse    = 0xc2
	mpTrue     = 0xc3
	mpBin8     = 0xc4
	mpBin16    = 0xc5
	mpBin32    = 0xc6
	mpExt8     = 0xc7
	mpExt16    = 0xc8
	mpExt32    = 0xc9
	mpFloat32  = 0xca
	mpFloat64  = 0xcb
	mpUint8    = 0xcc
	mpUint16   = 0xcd
	mpUint32   = 0xce
	mpUint64   = 0xcf
	mpInt8     = 0xd0
	mpInt16    = 0xd1
	mpInt32    = 0xd2
	mpInt64    = 0xd3
	mpFixExt1  = 0xd4
	mpFixExt16 = 0xd8
	mpStr8     = 0xd9
	mpStr16    = 0xda
	mpStr32    = 0xdb
	mpArray16  = 0xdc
	mpArray32  = 0xdd
	mpMap16    = 0xde
	mpMap32    = 0xdf
)

func (r *msgpackReader) code() (byte, error) {
	if r.i >= len(r.b) {
		return 0, errShort
	}
	c := r.b[r.i]
	r.i++
	return c, nil
}

// take returns the next n bytes.
func (r *msgpackReader) take(n int) ([]byte, error) {
	if n < 0 || n > len(r.b)-r.i {
		return nil, errShort
	}
	p := r.b[r.i : r.i+n]
	r.i += n
	return p, nil
}

// uint reads a big-endian unsigned integer of size bytes.
func (r *msgpackReader) uint(size int) (uint64, error) {
	p, err := r.take(size)
	var v uint64
	for _, c := range p {
		v = v<<8 | uint64(c)
	}
	return v, err
}

// length reads a length of size bytes.
func (r *msgpackReader) length(size int) (int, error) {
	v, err := r.uint(size)
	if v > math.MaxInt32 {
		return 0, fmt.Errorf("httpadapter: msgpack: length %d too large", v)
	}
	return int(v), err
}

func invalid(c byte, what string) error {
	return fmt.Errorf("httpadapter: msgpack: invalid code %#x decoding %s", c, what)
}

// mapLen reads a map length, -1 for nil.
func (r *msgpackReader) mapLen() (int, error) {
	c, err := r.code()
	switch {
	case err != nil:
		return 0, err
	case c == mpNil:
		return -1, nil
	case c >= 0x80 && c <= 0x8f:
		return int(c & 0x0f), nil
	case c == mpMap16:
		return r.length(2)
	case c == mpMap32:
		return r.length(4)
	}
	return 0, invalid(c, "a map length")
}

// arrayLen reads an array length, -1 for nil.
func (r *msgpackReader) arrayLen() (int, error) {
	c, err := r.code()
	switch {
	case err != nil:
		return 0, err
	case c == mpNil:
		return -1, nil
	case c >= 0x90 && c <= 0x9f:
		return int(c & 0x0f), nil
	case c == mpArray16:
		return r.length(2)
	case c == mpArray32:
		return r.length(4)
	}
	return 0, invalid(c, "an array length")
}

// str reads a string or binary, as the bytes of r; isNil reports a nil.
func (r *msgpackReader) str() (b []byte, isNil bool, err error) {
	c, err := r.code()
	var n int
	switch {
	case err != nil:
		return nil, false, err
	case c == mpNil:
		return nil, true, nil
	case c >= 0xa0 && c <= 0xbf:
		n = int(c & 0x1f)
	case c == mpStr8 || c == mpBin8:
		n, err = r.length(1)
	case c == mpStr16 || c == mpBin16:
		n, err = r.length(2)
	case c == mpStr32 || c == mpBin32:
		n, err = r.length(4)
	default:
		return nil, false, invalid(c, "a string")
	}
	if err != nil {
		return nil, false, err
	}
	b, err = r.take(n)
	return b, false, err
}

// int reads an integer, 0 for nil, as msgpack's Decoder.DecodeInt64.
func (r *msgpackReader) int() (int64, error) {
	c, err := r.code()
	if err != nil {
		return 0, err
	}
	if c <= 0x7f || c >= 0xe0 {
		return int64(int8(c)), nil
	}
	var v uint64
	switch c {
	case mpNil:
		return 0, nil
	case mpUint8:
		v, err = r.uint(1)
	case mpInt8:
		v, err = r.uint(1)
		v = uint64(int8(v))
	case mpUint16:
		v, err = r.uint(2)
	case mpInt16:
		v, err = r.uint(2)
		v = uint64(int16(v))
	case mpUint32:
		v, err = r.uint(4)
	case mpInt32:
		v, err = r.uint(4)
		v = uint64(int32(v))
	case mpUint64, mpInt64:
		v, err = r.uint(8)
	default:
		return 0, invalid(c, "an integer")
	}
	return int64(v), err
}

// skip skips a value, at depth in those skipped.
func (r *msgpackReader) skip(depth int) error {
	if depth > maxSkipDepth {
		return fmt.Errorf("httpadapter: msgpack: nested deeper than %d levels", maxSkipDepth)
	}
	c, err := r.code()
	if err != nil {
		return err
	}
	var n, size int // n values to skip, or size bytes
	switch {
	case c <= 0x7f || c >= 0xe0, c == mpNil, c == mpFalse, c == mpTrue:
		return nil
	case c >= 0x80 && c <= 0x8f:
		n = 2 * int(c&0x0f)
	case c >= 0x90 && c <= 0x9f:
		n = int(c & 0x0f)
	case c >= 0xa0 && c <= 0xbf:
		size = int(c & 0x1f)
	case c >= mpFixExt1 && c <= mpFixExt16:
		size = 1 + 1<<(c-mpFixExt1) // the type, then 1 to 16 bytes
	default:
		switch c {
		case mpUint8, mpInt8:
			size = 1
		case mpUint16, mpInt16:
			size = 2
		case mpUint32, mpInt32, mpFloat32:
			size = 4
		case mpUint64, mpInt64, mpFloat64:
			size = 8
		case mpBin8, mpStr8:
			size, err = r.length(1)
		case mpBin16, mpStr16:
			size, err = r.length(2)
		case mpBin32, mpStr32:
			size, err = r.length(4)
		case mpExt8:
			size, err = r.length(1)
			size++
		case mpExt16:
			size, err = r.length(2)
			size++
		case mpExt32:
			size, err = r.length(4)
			size++
		case mpArray16:
			n, err = r.length(2)
		case mpArray32:
			n, err = r.length(4)
		case mpMap16:
			n, err = r.length(2)
			n *= 2
		case mpMap32:
			n, err = r.length(4)
			n *= 2
		default:
			return invalid(c, "a value")
		}
	}
	if err != nil {
		return err
	}
	if _, err := r.take(size); err != nil {
		return err
	}
	for range n {
		if err := r.skip(depth + 1); err != nil {
			return err
		}
	}
	return nil
}
