package grpcadapter_test

import (
	"errors"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/grpcadapter"
	"github.com/idemkit/idem/memstore"
)

// TestFingerprintOptionRefused: idem.WithFingerprint through WithOptions
// cannot apply (the interceptor fingerprints requests itself), and is
// refused instead of silently ignored.
func TestFingerprintOptionRefused(t *testing.T) {
	_, err := grpcadapter.NewUnaryServerInterceptor(memstore.New(), grpcadapter.WithOptions(idem.WithFingerprint(func(b []byte) ([]byte, error) { return b, nil })))
	if !errors.Is(err, idem.ErrInvalidOption) {
		t.Errorf("NewUnaryServerInterceptor with idem.WithFingerprint = %v, want ErrInvalidOption", err)
	}
	if _, err := grpcadapter.NewUnaryServerInterceptor(memstore.New(), grpcadapter.WithOptions(idem.WithNamespace("ok"))); err != nil {
		t.Errorf("with a namespace = %v", err)
	}
}
