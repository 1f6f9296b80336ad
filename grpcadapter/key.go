package grpcadapter

import (
	"fmt"

	"github.com/idemkit/idem"
)

// checkCallKey checks a key the client interceptor sends: valid for idem
// (idem.ValidateKey), and printable ASCII, as a metadata value must be.
func checkCallKey(key string) error {
	if err := idem.ValidateKey(key); err != nil {
		return err
	}
	if !printableASCII(key) {
		return fmt.Errorf("%w: not printable ASCII, as metadata values must be", idem.ErrInvalidKey)
	}
	return nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
