package idem_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// goldenReq and goldenResp are the request and result of the golden record.
// Their names and fields are part of the golden bytes (the record carries the
// Operation's type names and the msgpack encoding of the result): renaming
// them changes the record, as it would in a real deployment.
type goldenReq struct {
	Account string
	Amount  int
}

type goldenResp struct {
	ID     string
	Amount int
}

var (
	goldenRequest = goldenReq{Account: "acct_1", Amount: 1999}
	goldenResult  = goldenResp{ID: "ch_1", Amount: 1999}
)

// goldenRecordHex is a record of goldenResult as this module writes it
// today: header "idm" | format version 2 | kind 'v' | fingerprint | codec
// "msgpack" | type names, then the msgpack payload. If this test fails, the
// record format changed: records already stored would no longer replay.
// Bump the format version in record.go (and say so in CHANGELOG.md)
// rather than updating these bytes.
const goldenRecordHex = "69646d02764037383037313264323634626165306437353536396234633963626265316636353361303035643530666532353031333562663062363065386539623639333139076d73677061636b2b6964656d5f746573742e676f6c64656e526571202d3e206964656d5f746573742e676f6c64656e5265737082a24944a463685f31a6416d6f756e74cd07cf"

// commitCapture wraps a Store and keeps the last record committed through it.
type commitCapture struct {
	idem.Store
	record []byte
}

func (c *commitCapture) Acquire(ctx context.Context, key, fp string, ttl time.Duration) (idem.Acquisition, error) {
	acq, err := c.Store.Acquire(ctx, key, fp, ttl)
	if acq.Lease != nil {
		acq.Lease = &captureLease{Lease: acq.Lease, c: c}
	}
	return acq, err
}

type captureLease struct {
	idem.Lease
	c *commitCapture
}

func (l *captureLease) Commit(ctx context.Context, record []byte, ttl time.Duration) error {
	l.c.record = bytes.Clone(record)
	return l.Lease.Commit(ctx, record, ttl)
}

// fixedRecord wraps a Store and answers every Acquire with one stored record.
type fixedRecord struct {
	idem.Store
	record []byte
}

func (f fixedRecord) Acquire(context.Context, string, string, time.Duration) (idem.Acquisition, error) {
	return idem.Acquisition{Record: f.record, TTL: time.Hour}, nil
}

func TestGoldenRecordReplays(t *testing.T) {
	golden, err := hex.DecodeString(goldenRecordHex)
	if err != nil {
		t.Fatal(err)
	}
	op := idem.New[goldenReq, goldenResp](fixedRecord{Store: memstore.New(), record: golden})
	if err := op.Err(); err != nil {
		t.Fatal(err)
	}
	got, info, err := op.DoInfo(context.Background(), "golden-key", goldenRequest, func(context.Context, goldenReq) (goldenResp, error) {
		t.Fatal("fn ran: the golden record was not replayed")
		return goldenResp{}, nil
	})
	if err != nil {
		t.Fatalf("replaying the golden record: %v", err)
	}
	if got != goldenResult || info.Outcome != idem.OutcomeReplayed {
		t.Fatalf("golden record replayed %+v (outcome %v), want %+v (replayed)", got, info.Outcome, goldenResult)
	}
}

func TestGoldenRecordEncoding(t *testing.T) {
	store := &commitCapture{Store: memstore.New()}
	op := idem.New[goldenReq, goldenResp](store)
	if err := op.Err(); err != nil {
		t.Fatal(err)
	}
	_, err := op.Do(context.Background(), "golden-key", goldenRequest, func(context.Context, goldenReq) (goldenResp, error) {
		return goldenResult, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(store.record); got != goldenRecordHex {
		t.Fatalf("record format changed:\n got %s\nwant %s", got, goldenRecordHex)
	}
}

// A record whose format version this release does not know is reported as
// corrupt, and fn does not run.
func TestGoldenRecordUnknownVersion(t *testing.T) {
	golden, err := hex.DecodeString(goldenRecordHex)
	if err != nil {
		t.Fatal(err)
	}
	golden[3]++ // "idm" then the format version
	op := idem.New[goldenReq, goldenResp](fixedRecord{Store: memstore.New(), record: golden})
	_, info, err := op.DoInfo(context.Background(), "golden-key", goldenRequest, func(context.Context, goldenReq) (goldenResp, error) {
		t.Fatal("fn ran on a key holding a record")
		return goldenResp{}, nil
	})
	if !errors.Is(err, idem.ErrCorruptRecord) || info.Outcome != idem.OutcomeCorruptRecord {
		t.Fatalf("got %v (outcome %v), want ErrCorruptRecord (corrupt record)", err, info.Outcome)
	}
}
