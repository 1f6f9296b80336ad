package connectadapter_test

import (
	"os"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/redisstore"
)

func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }

// TestRedis runs every interceptor test on a real Redis.
func TestRedis(t *testing.T) {
	t.Parallel()
	s := redisstore.New(redistest.Single(t))
	testServer(t, func(*testing.T) idem.Store { return s })
}
