package memstore_test

import (
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemtest"
	"github.com/idemkit/idem/memstore"
)

func TestConformance(t *testing.T) {
	idemtest.TestStore(t, func(*testing.T) idem.Store { return memstore.New() })
}

func TestConformanceShared(t *testing.T) {
	s := memstore.New()
	idemtest.TestStore(t, func(*testing.T) idem.Store { return s })
}
