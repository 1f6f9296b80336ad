package redisstore_test

import (
	"os"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemtest"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/redisstore"
)

func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }

func TestConformanceSingle(t *testing.T) {
	s := redisstore.New(redistest.Single(t))
	idemtest.TestStore(t, func(*testing.T) idem.Store { return s })
}

func TestConformanceCluster(t *testing.T) {
	s := redisstore.New(redistest.Cluster(t))
	idemtest.TestStore(t, func(*testing.T) idem.Store { return s })
}

func TestConformanceSentinel(t *testing.T) {
	s := redisstore.New(redistest.Sentinel(t))
	idemtest.TestStore(t, func(*testing.T) idem.Store { return s })
}
