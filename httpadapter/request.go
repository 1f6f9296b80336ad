package httpadapter

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"mime/multipart"
	"net/http"
	"net/url"
	"slices"
	"sync"
)

// request is the idem request of the middleware: what identifies an HTTP
// request for its fingerprint, and the request itself for the handler.
type request struct {
	r    *http.Request
	path string // r.URL.EscapedPath() before the handler ran
	body []byte // borrowed from scr
	form []byte // formDigest of r, nil when no form was parsed before
	// bodySum is the SHA-256 of what the WithBodyFingerprint function made
	// of body, when bodySet; otherwise the body's own digest is used.
	bodySum [sha256.Size]byte
	bodySet bool
	scr     *scratch
}

// release returns the scratch buffers of req to their pool. Nothing may
// point into them any more.
func (req *request) release() {
	req.body = nil
	req.scr.release()
	req.scr = nil
}

// fingerprintVersion starts every fingerprint, so that a future change of
// the encoding cannot collide with this one.
const fingerprintVersion = "idem-http-1"

// fingerprinter returns the function that encodes a request for its
// fingerprint: the method, the escaped path, the raw query, the values of
// the headers named (in order, with their count), each length-prefixed, and
// the SHA-256 of the body (or of what the WithBodyFingerprint function made
// of it), then the digest of a form that outer handlers parsed, if any. idem hashes the result. Hashing the body apart keeps a
// large body from being copied.
//
// The encoding is written in the request's scratch buffer, which idem
// only hashes: the buffer returns to its pool once Do has returned.
func fingerprinter(headers []string) func(*request) ([]byte, error) {
	return func(req *request) ([]byte, error) {
		r := req.r
		b := req.scr.fp[:0]
		b = appendString(b, fingerprintVersion)
		b = appendString(b, r.Method)
		b = appendString(b, req.path)
		b = appendString(b, r.URL.RawQuery)
		for _, name := range headers {
			vs := r.Header[name]
			b = binary.AppendUvarint(b, uint64(len(vs)))
			for _, v := range vs {
				b = appendString(b, v)
			}
		}
		if req.bodySet {
			b = append(b, req.bodySum[:]...)
		} else {
			sum := sha256.Sum256(req.body)
			b = append(b, sum[:]...)
		}
		// What follows the headers is the body's digest alone or followed
		// by the form's: their lengths tell them apart.
		b = append(b, req.form...)
		req.scr.fp = b
		return b, nil
	}
}

// scratch holds the buffers that a protected request borrows from
// scratchPool: its body, the encoding of its fingerprint, and the response
// body the handler writes. Nothing that outlives the request points into
// them: the body the handler reads is detached when it returns, the
// response body is copied out (finish), and idem hashes the fingerprint's
// encoding before Do returns.
type scratch struct {
	body, fp, out []byte
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// maxPooled is the largest buffer kept in scratchPool: a larger one, grown
// for a large body, is left to the garbage collector.
const maxPooled = 64 << 10

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

// release returns s to its pool. The caller must hold no reference into
// its buffers.
func (s *scratch) release() {
	for _, b := range []*[]byte{&s.body, &s.fp, &s.out} {
		if cap(*b) > maxPooled {
			*b = nil
		} else {
			*b = (*b)[:0]
		}
	}
	scratchPool.Put(s)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

var errTooLarge = errors.New("httpadapter: request body too large")

// bodySizeHint bounds the buffer allocated for a body before reading it. The
// declared Content-Length only sizes the first buffer, up to this: a client
// may declare any length, and an outer handler may have replaced the body
// (decompressing it, say) without updating the length.
const bodySizeHint = 64 << 10

// readBody reads the body of r whole, up to max bytes, appending it to
// buf[:0]; a longer body gives errTooLarge, as does an outer
// http.MaxBytesReader that ran out (the error then also wraps its
// *http.MaxBytesError). The body is read to its end whatever its declared
// length, which serves only as a hint. A request without a body gives nil.
func readBody(r *http.Request, maxBytes int64, buf []byte) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	limit := maxBytes
	if limit < math.MaxInt64 {
		limit++
	}
	lr := io.LimitedReader{R: r.Body, N: limit}
	size := 512 // as io.ReadAll starts
	if n := r.ContentLength; n > 0 {
		// One byte more, so that a body of exactly the declared length
		// reaches io.EOF without growing the buffer.
		size = int(min(n, maxBytes, bodySizeHint)) + 1
	}
	b := slices.Grow(buf[:0], size)
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)] // grow, as io.ReadAll does
		}
		n, err := lr.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return nil, fmt.Errorf("%w: %w", errTooLarge, err)
			}
			return nil, err
		}
	}
	if int64(len(b)) > maxBytes {
		return nil, errTooLarge
	}
	return b, nil
}

// formDigest returns the SHA-256 of the form that handlers outside the
// middleware parsed from the body of r (with ParseForm, FormValue,
// ParseMultipartForm...), or nil when they parsed none or an empty one. Such
// a form consumed the body, so it stands in for it in the fingerprint: the
// values of r.PostForm, and the files of r.MultipartForm with their names,
// MIME headers, sizes and contents. A form larger than maxBytes (its
// encoded values and the sizes of its files) gives errTooLarge, as a body
// would.
func formDigest(r *http.Request, maxBytes int64) ([]byte, error) {
	var files map[string][]*multipart.FileHeader
	if r.MultipartForm != nil {
		files = r.MultipartForm.File
	}
	if len(r.PostForm) == 0 && len(files) == 0 {
		return nil, nil
	}
	values := r.PostForm.Encode() // sorted by key, values in order
	total := int64(len(values))
	if total > maxBytes {
		return nil, errTooLarge
	}
	h := sha256.New()
	b := appendString(nil, values)
	b = binary.AppendUvarint(b, uint64(len(files)))
	h.Write(b)
	for _, field := range slices.Sorted(maps.Keys(files)) {
		fhs := files[field]
		b = appendString(b[:0], field)
		b = binary.AppendUvarint(b, uint64(len(fhs)))
		h.Write(b)
		for _, fh := range fhs {
			if total += fh.Size; fh.Size < 0 || total > maxBytes {
				return nil, errTooLarge
			}
			b = appendString(b[:0], fh.Filename)
			b = appendString(b, url.Values(fh.Header).Encode())
			b = binary.AppendUvarint(b, uint64(fh.Size))
			h.Write(b)
			if err := hashFile(h, fh); err != nil {
				return nil, err
			}
		}
	}
	return h.Sum(nil), nil
}

// hashFile writes the contents of the uploaded file fh, fh.Size bytes, to
// h.
func hashFile(h io.Writer, fh *multipart.FileHeader) error {
	f, err := fh.Open()
	if err != nil {
		return fmt.Errorf("httpadapter: opening uploaded file: %w", err)
	}
	defer f.Close()
	if _, err := io.CopyN(h, f, fh.Size); err != nil {
		return fmt.Errorf("httpadapter: reading uploaded file: %w", err)
	}
	return nil
}
