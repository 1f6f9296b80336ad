package httpadapter

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Problem type URIs: the "type" member of the RFC 9457 problem details
// (application/problem+json) the middleware answers with when it does not
// run the handler. They are stable; match on them, not on titles or details.
const (
	// ProblemKeyMissing (400): the request has no Idempotency-Key header,
	// and the key is required.
	ProblemKeyMissing = "https://idemkit.dev/problems/idempotency-key-missing"
	// ProblemKeyInvalid (400): the Idempotency-Key header is empty, repeated,
	// too long, not printable ASCII, or a malformed quoted string.
	ProblemKeyInvalid = "https://idemkit.dev/problems/idempotency-key-invalid"
	// ProblemKeyReused (422): the key was first used with another request
	// (another method, path, query, body or fingerprinted header; only
	// another method or path with signature validation off).
	ProblemKeyReused = "https://idemkit.dev/problems/idempotency-key-reused"
	// ProblemInFlight (409): a request with this key is still being
	// processed; retry after the Retry-After delay.
	ProblemInFlight = "https://idemkit.dev/problems/idempotency-request-in-flight"
	// ProblemBodyTooLarge (413): the request body is larger than the limit
	// set by WithMaxBodyBytes, or by an outer http.MaxBytesReader.
	ProblemBodyTooLarge = "https://idemkit.dev/problems/request-body-too-large"
	// ProblemBodyUnreadable (400): the request body could not be read,
	// usually because the client went away while sending it.
	ProblemBodyUnreadable = "https://idemkit.dev/problems/request-body-unreadable"
	// ProblemBodyInvalid (400): the function set by WithBodyFingerprint could
	// not fingerprint the request body (with CanonicalJSON, the body is not
	// JSON); the problem's detail carries its error.
	ProblemBodyInvalid = "https://idemkit.dev/problems/request-body-invalid"
	// ProblemStoreUnavailable (503): the idempotency store failed, or the
	// request ended while waiting for it or for an in-flight request, before
	// the handler ran; retry after the Retry-After delay.
	ProblemStoreUnavailable = "https://idemkit.dev/problems/idempotency-store-unavailable"
	// ProblemInternal (500): the middleware is misconfigured, a stored
	// response could not be read, or an uploaded file of a form parsed by
	// outer handlers could not be reread. The hook set by WithErrorHook
	// gets the cause.
	ProblemInternal = "https://idemkit.dev/problems/idempotency-internal-error"
)

// retryAfter is the Retry-After value, in seconds, of 409 and 503 problems.
const retryAfter = "1"

// problemTitle returns the title and status of the problem type typ.
func problemTitle(typ string) (title string, status int) {
	switch typ {
	case ProblemKeyMissing:
		return "Idempotency-Key is missing", http.StatusBadRequest
	case ProblemKeyInvalid:
		return "Idempotency-Key is invalid", http.StatusBadRequest
	case ProblemKeyReused:
		return "Idempotency-Key is already used", http.StatusUnprocessableEntity
	case ProblemInFlight:
		return "A request is outstanding for this Idempotency-Key", http.StatusConflict
	case ProblemBodyTooLarge:
		return "Request body is too large", http.StatusRequestEntityTooLarge
	case ProblemBodyUnreadable:
		return "Request body could not be read", http.StatusBadRequest
	case ProblemBodyInvalid:
		return "Request body is invalid", http.StatusBadRequest
	case ProblemStoreUnavailable:
		return "Idempotency store is unavailable", http.StatusServiceUnavailable
	default:
		return "Idempotency processing failed", http.StatusInternalServerError
	}
}

// Problem is a refusal of the middleware: a request it answered without
// running the handler. It marshals as an RFC 9457 problem details object.
type Problem struct {
	// Type is one of the Problem constants, such as ProblemKeyReused.
	Type string `json:"type"`
	// Title is a short, fixed summary of the type.
	Title string `json:"title"`
	// Status is the HTTP status code of the refusal: 400, 409, 413, 422,
	// 500 or 503.
	Status int `json:"status"`
	// Detail explains this occurrence; it may be empty.
	Detail string `json:"detail,omitempty"`
}

// WriteProblem writes p as application/problem+json with status p.Status.
// It is the default of WithProblemWriter, and a writer of one's own may
// fall back to it.
func WriteProblem(w http.ResponseWriter, _ *http.Request, p Problem) {
	b, err := json.Marshal(p)
	if err != nil { // cannot happen: the struct holds only strings and an int
		http.Error(w, p.Title, p.Status)
		return
	}
	b = append(b, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(p.Status)
	_, _ = w.Write(b)
}

// problem answers r with a problem of type typ, one of the Problem
// constants, through the configured writer.
func (m *middleware) problem(w http.ResponseWriter, r *http.Request, typ, detail string) {
	title, status := problemTitle(typ)
	if status == http.StatusConflict || status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", retryAfter)
	}
	m.cfg.problems(w, r, Problem{Type: typ, Title: title, Status: status, Detail: detail})
}
