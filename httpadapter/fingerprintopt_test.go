package httpadapter_test

import (
	"errors"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/httpadapter"
	"github.com/idemkit/idem/memstore"
)

// TestFingerprintOptionRefused: idem.WithFingerprint through WithOptions
// cannot apply (the middleware fingerprints requests itself), and is
// refused at New instead of silently ignored.
func TestFingerprintOptionRefused(t *testing.T) {
	_, err := httpadapter.New(memstore.New(), httpadapter.WithOptions(idem.WithFingerprint(func(b []byte) ([]byte, error) { return b, nil })))
	if !errors.Is(err, idem.ErrInvalidOption) {
		t.Errorf("New with idem.WithFingerprint = %v, want ErrInvalidOption", err)
	}
	if _, err := httpadapter.New(memstore.New(), httpadapter.WithOptions(idem.WithNamespace("ok"))); err != nil {
		t.Errorf("New with a namespace = %v", err)
	}
}
