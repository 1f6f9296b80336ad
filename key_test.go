package idem_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/idemkit/idem"
)

func TestScopedKey(t *testing.T) {
	if got := idem.ScopedKey("acct_1", "k"); got != "6:acct_1:k" {
		t.Errorf(`ScopedKey("acct_1", "k") = %q, want "6:acct_1:k"`, got)
	}
	// The length prefix keeps scopes apart even when scope and key could
	// be split differently.
	if idem.ScopedKey("a:b", "c") == idem.ScopedKey("a", "b:c") {
		t.Error("scopes a:b and a share a key")
	}
	long := idem.ScopedKey("tenant", strings.Repeat("k", idem.MaxKeyLen))
	nonASCII := idem.ScopedKey("tenänt", "k")
	for _, k := range []string{long, nonASCII} {
		if !strings.HasPrefix(k, "sha256:") || idem.ValidateKey(k) != nil {
			t.Errorf("ScopedKey = %q, want a valid sha256: key", k)
		}
	}
	if long == idem.ScopedKey("tenant2", strings.Repeat("k", idem.MaxKeyLen)) {
		t.Error("hashed keys of two scopes collide")
	}
}

func TestValidateKey(t *testing.T) {
	if err := idem.ValidateKey("ok key"); err != nil {
		t.Errorf("ValidateKey(ok key) = %v", err)
	}
	if err := idem.ValidateKey("bad\x00key"); !errors.Is(err, idem.ErrInvalidKey) {
		t.Errorf("ValidateKey with NUL = %v, want ErrInvalidKey", err)
	}
}
