package kafkaadapter_test

import (
	"os"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/redistest"
	"github.com/idemkit/idem/redisstore"
)

func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }

// TestRedis runs the poll-loop scenarios with the records on a real Redis,
// shared by every scenario (they keep apart by their group names).
func TestRedis(t *testing.T) {
	t.Parallel()
	s := redisstore.New(redistest.Single(t))
	testKafka(t, func(*testing.T) idem.Store { return s })
}
