package httpadapter

import (
	"cmp"
	"encoding/binary"
	"math"
	"net/http"
	"slices"
)

// codec.MsgPack hands a response its bytes directly, through the methods
// below, rather than through msgpack/v5's Encoder and Decoder and the
// coders registered with them (msgpack.go), which cost as much again. They
// write and read exactly what those coders write and read.

// AppendMsgpack appends the encoding of resp to dst, as encodeResponse
// writes it with a msgpack.Encoder of default settings (as codec.MsgPack
// uses), and a nil resp as msgpack writes a nil pointer. dst grows at most
// once, to the size needed. codec.MsgPack.AppendMarshal calls it.
func (resp *response) AppendMsgpack(dst []byte) ([]byte, error) {
	if resp == nil {
		return append(dst, mpNil), nil
	}
	var small [16]headerField // on the stack for most responses
	var fields []headerField
	if resp.Header != nil {
		fields = sortedHeader(resp.Header, small[:0])
	}
	if size := resp.msgpackSize(fields); cap(dst)-len(dst) < size {
		// As codec.MsgPack grows it: no room to spare, which whoever keeps
		// the result would keep too.
		dst = append(make([]byte, 0, len(dst)+size), dst...)
	}
	dst = appendMapLen(dst, 5)
	dst = appendStr(dst, fieldStatus)
	dst = appendInt(dst, int64(resp.Status))
	dst = appendStr(dst, fieldHeader)
	if resp.Header == nil {
		dst = append(dst, mpNil)
	} else {
		dst = appendMapLen(dst, len(fields))
		for _, f := range fields {
			dst = appendStr(dst, f.name)
			if f.values == nil {
				dst = append(dst, mpNil)
				continue
			}
			dst = appendArrayLen(dst, len(f.values))
			for _, v := range f.values {
				dst = appendStr(dst, v)
			}
		}
	}
	dst = appendStr(dst, fieldBody)
	if resp.Body == nil {
		dst = append(dst, mpNil)
	} else {
		dst = appendBinLen(dst, len(resp.Body))
		dst = append(dst, resp.Body...)
	}
	dst = appendStr(dst, fieldMethod)
	dst = appendStr(dst, resp.Method)
	dst = appendStr(dst, fieldPath)
	dst = appendStr(dst, resp.Path)
	return dst, nil
}

// msgpackSize returns the size of resp's encoding, fields being its header.
func (resp *response) msgpackSize(fields []headerField) int {
	n := 1 + strSize(fieldStatus) + intSize(int64(resp.Status)) +
		strSize(fieldHeader) + 1 + strSize(fieldBody) + 1 +
		strSize(fieldMethod) + strSize(resp.Method) + strSize(fieldPath) + strSize(resp.Path)
	if resp.Header != nil {
		n += lenSize(len(fields)) - 1
		for _, f := range fields {
			n += strSize(f.name) + lenSize(len(f.values))
			for _, v := range f.values {
				n += strSize(v)
			}
		}
	}
	if resp.Body != nil {
		n += binSize(len(resp.Body)) - 1
	}
	return n
}

// DecodeMsgpackBytes decodes data into resp as decodeResponse does:
// codec.MsgPack.Unmarshal calls it, on data it has not checked. Bytes after
// the response are ignored. It reports checked when it read the response
// without skipping a value: all it read are then strings, binaries,
// integers, nils, and maps and arrays of them nested three levels deep at
// most, each within data, which codec's check accepts.
func (resp *response) DecodeMsgpackBytes(data []byte) (checked bool, err error) {
	st := decodePool.Get().(*decodeState)
	defer st.release()
	r := msgpackReader{b: data}
	err = st.decode(&r, resp)
	return err == nil && !r.skipped, err
}

// headerField is a header entry, for encoding.
type headerField struct {
	name   string
	values []string
}

// sortedHeader appends the entries of h to buf, sorted by name, and returns
// the extended slice.
func sortedHeader(h http.Header, buf []headerField) []headerField {
	for k, vs := range h {
		buf = append(buf, headerField{k, vs})
	}
	slices.SortFunc(buf, func(a, b headerField) int { return cmp.Compare(a.name, b.name) })
	return buf
}

// The functions below append values in the shortest of the encodings that
// msgpack/v5's Encoder writes for them.

func appendMapLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x80|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, mpMap16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, mpMap32), uint32(n))
}

func appendArrayLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, mpArray16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, mpArray32), uint32(n))
}

func appendStr(b []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		b = append(b, mpStr8, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, mpStr16), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, mpStr32), uint32(n))
	}
	return append(b, s...)
}

func appendBinLen(b []byte, n int) []byte {
	switch {
	case n <= math.MaxUint8:
		return append(b, mpBin8, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, mpBin16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, mpBin32), uint32(n))
}

// appendInt appends n as msgpack/v5's Encoder.EncodeInt does.
func appendInt(b []byte, n int64) []byte {
	be := binary.BigEndian
	switch {
	case n >= 0 && n <= math.MaxInt8, n < 0 && n >= -32:
		return append(b, byte(n))
	case n > 0 && n <= math.MaxUint8:
		return append(b, mpUint8, byte(n))
	case n > 0 && n <= math.MaxUint16:
		return be.AppendUint16(append(b, mpUint16), uint16(n))
	case n > 0 && n <= math.MaxUint32:
		return be.AppendUint32(append(b, mpUint32), uint32(n))
	case n > 0:
		return be.AppendUint64(append(b, mpUint64), uint64(n))
	case n >= math.MinInt8:
		return append(b, mpInt8, byte(n))
	case n >= math.MinInt16:
		return be.AppendUint16(append(b, mpInt16), uint16(n))
	case n >= math.MinInt32:
		return be.AppendUint32(append(b, mpInt32), uint32(n))
	}
	return be.AppendUint64(append(b, mpInt64), uint64(n))
}

// lenSize is the size of a map or array length.
func lenSize(n int) int {
	switch {
	case n < 16:
		return 1
	case n <= math.MaxUint16:
		return 3
	}
	return 5
}

func strSize(s string) int {
	switch n := len(s); {
	case n < 32:
		return 1 + n
	case n <= math.MaxUint8:
		return 2 + n
	case n <= math.MaxUint16:
		return 3 + n
	default:
		return 5 + n
	}
}

func binSize(n int) int {
	switch {
	case n <= math.MaxUint8:
		return 2 + n
	case n <= math.MaxUint16:
		return 3 + n
	}
	return 5 + n
}

func intSize(n int64) int {
	switch {
	case n >= -32 && n <= math.MaxInt8:
		return 1
	case n >= math.MinInt8 && n <= math.MaxUint8:
		return 2
	case n >= math.MinInt16 && n <= math.MaxUint16:
		return 3
	case n >= math.MinInt32 && n <= math.MaxUint32:
		return 5
	}
	return 9
}
