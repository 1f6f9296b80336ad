package connectadapter_test

import (
	"errors"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/connectadapter"
	"github.com/idemkit/idem/memstore"
)

// TestFingerprintOptionRefused: idem.WithFingerprint through WithOptions
// cannot apply (the interceptor fingerprints requests itself), and is
// refused instead of silently ignored.
func TestFingerprintOptionRefused(t *testing.T) {
	err := connectadapter.CheckOptions(memstore.New(), connectadapter.WithOptions(idem.WithFingerprint(func(b []byte) ([]byte, error) { return b, nil })))
	if !errors.Is(err, idem.ErrInvalidOption) {
		t.Errorf("CheckOptions with idem.WithFingerprint = %v, want ErrInvalidOption", err)
	}
	if err := connectadapter.CheckOptions(memstore.New(), connectadapter.WithOptions(idem.WithNamespace("ok"))); err != nil {
		t.Errorf("with a namespace = %v", err)
	}
}
