package idem_test

import (
	"context"
	"errors"
	"strconv"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// FuzzStoredRecord stores arbitrary bytes as a record and replays them: Do
// must return a clean error (or, for a valid record, a value), never panic
// or run fn. Run longer with go test -fuzz FuzzStoredRecord .
func FuzzStoredRecord(f *testing.F) {
	s := memstore.New(memstore.WithMaxEntries(1000))
	op := idem.New[string, map[string][]int](s)
	valid := idem.New[string, map[string][]int](s)
	if _, err := valid.Do(context.Background(), "seed", "r", func(context.Context, string) (map[string][]int, error) {
		return map[string][]int{"a": {1, 2}}, nil
	}); err != nil {
		f.Fatal(err)
	}
	a, _ := s.Acquire(context.Background(), ":seed", "", 0)
	f.Add(a.Record)
	f.Add([]byte("idm\x01e\x00\x07msgpackboom"))
	f.Add([]byte{})
	n := 0
	f.Fuzz(func(t *testing.T, rec []byte) {
		n++
		key := strconv.Itoa(n)
		commitRaw(t, s, key, rec)
		_, err := op.Do(context.Background(), key, "r", mustNotRun[string, map[string][]int](t))
		switch {
		case err == nil, errors.Is(err, idem.ErrCorruptRecord), errors.Is(err, idem.ErrKeyReused), errors.Is(err, idem.ErrReplayed):
		default:
			t.Fatalf("unexpected error %v", err)
		}
	})
}
