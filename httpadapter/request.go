package httpadapter

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net/http"
)

// request is the idem request of the middleware: what identifies an HTTP
// request for its fingerprint, and the request itself for the handler.
type request struct {
	r    *http.Request
	body []byte
}

// fingerprintVersion starts every fingerprint, so that a future change of
// the encoding cannot collide with this one.
const fingerprintVersion = "idem-http-1"

// fingerprinter returns the function that encodes a request for its
// fingerprint: the method, the escaped path, the raw query, the values of
// the headers named (in order, with their count), and the SHA-256 of the
// body, each length-prefixed. idem hashes the result. Hashing the body apart
// keeps a large body from being copied.
func fingerprinter(headers []string) func(*request) ([]byte, error) {
	return func(req *request) ([]byte, error) {
		r := req.r
		path, query := r.URL.EscapedPath(), r.URL.RawQuery
		n := len(fingerprintVersion) + len(r.Method) + len(path) + len(query) + sha256.Size + 4*binary.MaxVarintLen64
		for _, name := range headers {
			for _, v := range r.Header[name] {
				n += len(v) + binary.MaxVarintLen64
			}
			n += binary.MaxVarintLen64
		}
		b := make([]byte, 0, n)
		b = appendString(b, fingerprintVersion)
		b = appendString(b, r.Method)
		b = appendString(b, path)
		b = appendString(b, query)
		for _, name := range headers {
			vs := r.Header[name]
			b = binary.AppendUvarint(b, uint64(len(vs)))
			for _, v := range vs {
				b = appendString(b, v)
			}
		}
		sum := sha256.Sum256(req.body)
		return append(b, sum[:]...), nil
	}
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

var errTooLarge = errors.New("httpadapter: request body too large")

// readBody reads the body of r whole, up to max bytes; a longer body gives
// errTooLarge.
func readBody(r *http.Request, max int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	if r.ContentLength > max {
		return nil, errTooLarge
	}
	if r.ContentLength > 0 {
		b := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	limit := max
	if limit < math.MaxInt64 {
		limit++
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, limit))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, errTooLarge
	}
	return b, nil
}
