package httpadapter

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// digestBody computes x.req.bodySum with the WithBodyFingerprint function,
// if there is one. When the function fails, it answers the request with a
// 400 problem and returns false.
func (m *middleware) digestBody(w http.ResponseWriter, x *exchange) bool {
	req := &x.req
	f := m.cfg.bodyFP
	if f == nil || len(req.body) == 0 || req.form != nil {
		return true
	}
	b, err := f(req.r.Header.Get("Content-Type"), req.body)
	if err == nil {
		req.bodySum, req.bodySet = sha256.Sum256(b), true
		return true
	}
	req.release()
	x.marks.set(w.Header())
	m.cfg.problems(w, req.r, Problem{
		Type:   ProblemBodyInvalid,
		Title:  "Request body is invalid",
		Status: http.StatusBadRequest,
		Detail: "The request body could not be fingerprinted: " + err.Error(),
	})
	return false
}

// CanonicalJSON is a body fingerprint (see WithBodyFingerprint) for JSON
// APIs: the body decoded and re-encoded with object keys sorted, no
// insignificant whitespace and strings escaped alike, so that two encodings
// of one JSON value, such as {"qty":1,"item":"book"} and
// { "item": "book", "qty": 1 }, fingerprint alike. Array order is kept.
//
// Numbers are kept as written (json.Decoder.UseNumber), never rounded
// through float64: 1, 1.0 and 1e0 are different fingerprints, as are 10 and
// 1e1, while two large integers that a float64 cannot tell apart stay
// apart. Of an object's duplicate keys, the last one counts, as with
// encoding/json. Invalid UTF-8 in strings becomes U+FFFD.
//
// The Content-Type is not looked at: the body decides. A body that is not
// a single JSON value (malformed, truncated, empty, or followed by more
// than whitespace) is an error, which makes the request a 400.
func CanonicalJSON(contentType string, body []byte) ([]byte, error) {
	v, err := decodeJSON(body)
	if err != nil {
		return nil, err
	}
	return encodeJSON(v)
}

// JSONFields returns a body fingerprint (see WithBodyFingerprint) over the
// named top-level fields of a JSON object alone: other fields may differ
// between two requests with one key, which then are one request. The
// result is the canonical JSON (see CanonicalJSON) of the object reduced
// to the named fields, so their values compare as CanonicalJSON compares
// bodies. A field that is absent and one that is null differ, as do a
// field absent and one present with any value. Names are matched exactly,
// case included. A body that is not a JSON object is an error, which makes
// the request a 400; the whole body must be valid JSON, its other fields
// included. With no names, every JSON object fingerprints alike.
func JSONFields(names ...string) func(contentType string, body []byte) ([]byte, error) {
	names = append([]string(nil), names...)
	return func(_ string, body []byte) ([]byte, error) {
		v, err := decodeJSON(body)
		if err != nil {
			return nil, err
		}
		obj, ok := v.(map[string]any)
		if !ok {
			return nil, errors.New("httpadapter: request body is not a JSON object")
		}
		kept := make(map[string]any, len(names))
		for _, n := range names {
			if fv, ok := obj[n]; ok {
				kept[n] = fv
			}
		}
		return encodeJSON(kept)
	}
}

// decodeJSON decodes body, which must hold exactly one JSON value, with
// numbers as json.Number.
func decodeJSON(body []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		if err == io.EOF {
			return nil, errors.New("httpadapter: request body is not JSON: empty")
		}
		return nil, fmt.Errorf("httpadapter: request body is not JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("httpadapter: request body is not JSON: data after the value")
	}
	return v, nil
}

// encodeJSON encodes v, decoded by decodeJSON, canonically: encoding/json
// sorts map keys and writes no whitespace; HTML characters are not escaped.
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("httpadapter: encoding JSON: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
