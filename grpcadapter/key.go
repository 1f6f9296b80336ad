package grpcadapter

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf8"

	"github.com/idemkit/idem"
)

// checkKey returns the error idem gives for an invalid idempotency key, or
// nil. The interceptors check a key themselves where idem cannot: before
// the server composes it with a scope (see storeKey), and on the client for
// CallKey (see checkCallKey).
func checkKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty", idem.ErrInvalidKey)
	case len(key) > idem.MaxKeyLen:
		return fmt.Errorf("%w: %d bytes, longer than %d", idem.ErrInvalidKey, len(key), idem.MaxKeyLen)
	case !utf8.ValidString(key):
		return fmt.Errorf("%w: not valid UTF-8", idem.ErrInvalidKey)
	}
	for _, r := range key {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: control character %U", idem.ErrInvalidKey, r)
		}
	}
	return nil
}

// checkCallKey is checkKey for a key the client interceptor sends, which
// must also be printable ASCII, as a metadata value.
func checkCallKey(key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if !printableASCII(key) {
		return fmt.Errorf("%w: not printable ASCII, as metadata values must be", idem.ErrInvalidKey)
	}
	return nil
}

// storeKey composes the key given to idem from a call's scope and its valid
// idempotency key, as httpadapter does: len(scope) ":" scope ":" key, whose
// length prefix makes it unambiguous. When that is too long for idem, or
// the scope holds other than printable ASCII, it is "sha256:" and the hex
// SHA-256 of the composition. The two forms cannot meet: one starts with a
// digit, the other with 's'.
func storeKey(scope, key string) string {
	k := strconv.Itoa(len(scope)) + ":" + scope + ":" + key
	if len(k) <= idem.MaxKeyLen && printableASCII(scope) {
		return k
	}
	sum := sha256.Sum256([]byte(k))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
