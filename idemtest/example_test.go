package idemtest_test

import (
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemtest"
	"github.com/idemkit/idem/memstore"
)

// A Store's conformance test: put a function like this one, named TestStore
// or TestConformance, in the backend's _test.go files. newStore is called
// once per subtest and may return the same store each time. The example is
// compiled but not run, as it needs the *testing.T of a real test.
func ExampleTestStore() {
	testConformance := func(t *testing.T) {
		idemtest.TestStore(t, func(t *testing.T) idem.Store { return memstore.New() })
	}
	_ = testConformance
}
