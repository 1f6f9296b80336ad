package idem

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf8"
)

// MaxKeyLen is the longest idempotency key accepted, in bytes.
const MaxKeyLen = 255

// ValidateKey returns an error wrapping ErrInvalidKey unless key is a valid
// idempotency key: 1 to MaxKeyLen bytes of UTF-8 with no control characters.
// Do calls it first; adapters call it before composing a key (ScopedKey).
func ValidateKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("%w: %d bytes, longer than %d", ErrInvalidKey, len(key), MaxKeyLen)
	case !utf8.ValidString(key):
		return fmt.Errorf("%w: not valid UTF-8", ErrInvalidKey)
	}
	for _, r := range key {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: control character %U", ErrInvalidKey, r)
		}
	}
	return nil
}

// ScopedKey composes a scope (a tenant or account the server knows the
// caller by) and the caller's valid idempotency key into the key given to
// Do, so that two scopes that pick the same key never share a record.
//
// The result is len(scope) ":" scope ":" key, whose length prefix makes it
// unambiguous, or, when that would be longer than MaxKeyLen or the scope
// holds other than printable ASCII, "sha256:" and the hex SHA-256 of it. The
// two forms cannot meet: one starts with a digit, the other with 's'.
func ScopedKey(scope, key string) string {
	k := strconv.Itoa(len(scope)) + ":" + scope + ":" + key
	if len(k) <= MaxKeyLen && printableASCII(scope) {
		return k
	}
	sum := sha256.Sum256([]byte(k))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// printableASCII reports whether s holds only the bytes 0x20 to 0x7E.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
