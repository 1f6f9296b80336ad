// Package pgstore is an idem.Store on PostgreSQL, through a pgx v5
// connection pool, shared by every process that uses the same database.
//
// Beyond what any store offers, DoTx runs fn in a database transaction and
// writes the record in that same transaction before it commits: fn's writes
// and the record commit together, or neither does. With a store outside
// the database (redisstore), a crash between fn's commit and the record's
// leaves an effect without a record, and a retry runs fn again; with DoTx
// there is no such window for the effects fn writes to PostgreSQL.
//
// # Layout
//
// All keys live in one table (WithTable, "idem_records" by default), one
// row per key; DDL returns its definition and Migrate creates it:
//
//	key          text PRIMARY KEY   the namespaced idempotency key
//	token        text               the lease's random token; kept after Commit
//	fingerprint  text               the request fingerprint of the lease
//	record       bytea              NULL while leased, the record once completed
//	expires_at   timestamptz        when the lease or the record ends
//
// A row whose expires_at has passed counts as absent: the next Acquire
// takes it over in place. Expiry is always decided by the database clock
// (clock_timestamp()), never by the application's, so TTLs below a second
// work and clock skew between processes does not matter. Expired rows stay
// until taken over or swept; run Sweep periodically to delete them.
//
// # Statements
//
// Each Store method is one statement, autocommitted, so that every other
// caller sees its effect at once: Acquire (a replay hit, or the lease of a
// first execution), then Commit. A replay costs one statement and a first
// execution through Do two besides fn. Refresh, Commit and Release act only
// while the row holds the caller's token and an unexpired lease (or, for a
// repeated Commit, the record it wrote), so a caller whose lease expired
// changes nothing and gets idem.ErrLeaseLost. A waiting duplicate polls
// the row with backoff (from 2 ms up to 100 ms, or the lease's remaining
// time when shorter) and holds no connection and no lock between polls.
//
// # Deployment
//
// Size the pool above the number of DoTx calls that run at once (plus any
// Do calls made inside their fn): each DoTx holds a connection for its
// transaction while its lease is refreshed on another. When every
// connection is held by a transaction for longer than the lock TTL, the
// refreshes cannot run, the leases expire, and the calls fail with
// ErrRolledBack and idem.ErrLeaseLost (nothing kept, callers told). Waiting
// duplicates hold no connection: a pool of 4 serves dozens of concurrent
// duplicates of one key. Statements use the pool's
// query mode; the default caches prepared statements per connection.
package pgstore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
)

// DefaultTable is the table a Store uses unless WithTable says otherwise.
const DefaultTable = "idem_records"

// Errors of this package, besides the idem errors it returns. Test for them
// with errors.Is.
var (
	// ErrNoTable reports that the store's table does not exist: run
	// Migrate, or apply DDL with your migration tool. Do wraps it in
	// idem.ErrStore.
	ErrNoTable = errors.New("idem: pgstore table does not exist (run Migrate)")

	// ErrRolledBack reports that DoTx rolled back fn's transaction: none of
	// fn's writes were kept, and no record was stored. It comes together
	// with idem.ErrNotStored (and idem.ErrLeaseLost when the lease was lost
	// while fn ran), but unlike other ErrNotStored errors the outcome is
	// known: fn's database writes did not happen.
	ErrRolledBack = errors.New("idem: pgstore transaction rolled back")

	// ErrTxOwned is what the transaction DoTx gives fn returns from
	// Commit and Rollback: DoTx ends the transaction itself, after fn,
	// with the record written in it. To keep none of fn's writes, fn
	// returns an error.
	ErrTxOwned = errors.New("idem: pgstore.DoTx commits or rolls back fn's transaction itself")

	// ErrSchema reports a table whose columns differ from what DDL
	// creates; Migrate checks it.
	ErrSchema = errors.New("idem: pgstore table does not match its DDL")
)

// Store is an idem.Store on a PostgreSQL table. Build it with New; it is
// safe for concurrent use.
type Store struct {
	pool  *pgxpool.Pool
	table string // the table's name as given, for messages
	sql   statements
	err   error // New's options cannot be honoured
}

// Option configures a Store.
type Option func(*Store)

// WithTable sets the table the Store keeps its rows in, DefaultTable by
// default. The name may be qualified with a schema ("billing.idem"); it is
// quoted as given, so it is case-sensitive. An empty name keeps the default.
func WithTable(name string) Option {
	return func(s *Store) {
		if name != "" {
			s.table = name
		}
	}
}

// New returns a Store on the table (DefaultTable unless WithTable says
// otherwise) reached through pool. It does not touch the database: call
// Migrate, or apply DDL, before the first call.
//
// A nil pool, or a table name whose parts are empty or longer than
// PostgreSQL's 63-byte identifiers (which it would truncate silently, so
// that two long names could share one table), makes every method return an
// error wrapping idem.ErrInvalidOption; Err reports it at once.
func New(pool *pgxpool.Pool, opts ...Option) *Store {
	s := &Store{pool: pool, table: DefaultTable}
	for _, o := range opts {
		o(s)
	}
	switch {
	case pool == nil:
		s.err = fmt.Errorf("%w: pgstore: nil pool", idem.ErrInvalidOption)
	default:
		if err := checkTableName(s.table); err != nil {
			s.err = fmt.Errorf("%w: pgstore: table %q: %v", idem.ErrInvalidOption, s.table, err)
		}
	}
	s.sql = newStatements(s.table)
	return s
}

// Err returns the error every method of s returns because New was given
// options it cannot honour, or nil.
func (s *Store) Err() error { return s.err }

// Pool returns the pool the Store was built on.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// maxAcquireTries bounds how often Acquire asks again when its statement
// found neither a live row nor a row to take: another caller's row became
// visible between the statement's read and its write.
const maxAcquireTries = 16

// Acquire implements idem.Store. It runs one statement: a read of the key's
// live row and, when there is none, an insert of the lease that takes over
// an expired row in place.
func (s *Store) Acquire(ctx context.Context, key, fingerprint string, ttl time.Duration) (idem.Acquisition, error) {
	if s.err != nil {
		return idem.Acquisition{}, s.err
	}
	token := rand.Text()
	for range maxAcquireTries {
		var (
			leased bool
			record []byte
			holder *string
			ttlMs  int64
		)
		err := s.pool.QueryRow(ctx, s.sql.acquire, key, token, fingerprint, millis(ttl)).Scan(&leased, &record, &holder, &ttlMs)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			// The read saw no live row, and the insert met one committed
			// after the read began: look again.
			continue
		case err != nil:
			s.abandon(ctx, key, token, err)
			return idem.Acquisition{}, s.wrap("acquire", err)
		case leased:
			l := &lease{s: s, key: key, token: token}
			if c, ok := ctx.Value(callKey{}).(*call); ok && c != nil && c.s == s {
				c.lease = l
			}
			return idem.Acquisition{Lease: l}, nil
		case record != nil:
			return idem.Acquisition{Record: record, TTL: time.Duration(ttlMs) * time.Millisecond}, nil
		case holder != nil:
			return idem.Acquisition{Holder: *holder}, nil
		default:
			return idem.Acquisition{}, fmt.Errorf("%w: pgstore: row of key %q holds neither a lease nor a record", idem.ErrCorruptRecord, key)
		}
	}
	return idem.Acquisition{}, fmt.Errorf("pgstore: acquire: key %q changed under %d attempts in a row", key, maxAcquireTries)
}

// abandonTimeout bounds the delete of a lease whose grant was lost.
const abandonTimeout = 2 * time.Second

// abandon deletes the lease token may have been granted on key, when the
// Acquire that asked for it failed without the server saying that its
// statement failed (the connection broke, or ctx ended while the statement
// ran): otherwise a lease nobody holds would refuse the key for a lease TTL.
func (s *Store) abandon(ctx context.Context, key, token string, err error) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.SeverityUnlocalized == "ERROR" {
		return // the statement failed, and wrote nothing
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abandonTimeout)
	defer cancel()
	_, _ = s.pool.Exec(ctx, s.sql.release, key, token)
}

// Wait implements idem.Store: it polls the key's row, with backoff, until
// the row holds no live lease, or ctx ends. Between polls it holds no
// connection.
func (s *Store) Wait(ctx context.Context, key string) error {
	if s.err != nil {
		return s.err
	}
	backoff := 2 * time.Millisecond
	t := time.NewTimer(jitter(backoff))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		var leftMs int64
		err := s.pool.QueryRow(ctx, s.sql.wait, key).Scan(&leftMs)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return nil // no live lease: released, expired or committed
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return s.wrap("wait", err)
		}
		backoff = min(2*backoff, 100*time.Millisecond)
		// Look again at the latest when the lease would expire.
		t.Reset(jitter(min(backoff, time.Duration(leftMs+1)*time.Millisecond)))
	}
}

// jitter returns a duration between d/2 and d, so that waiters that began
// together do not poll together.
func jitter(d time.Duration) time.Duration {
	return d/2 + mathrand.N(d/2+1)
}

// millis returns d in whole milliseconds, rounded up, and at least 1: a
// lease or record must not end before the TTL it was given. It does not
// overflow near the largest Duration ("forever").
func millis(d time.Duration) int64 {
	ms := int64(d / time.Millisecond)
	if d%time.Millisecond > 0 {
		ms++
	}
	return max(ms, 1)
}

// wrap describes err from the statement named op, telling a missing table
// apart.
func (s *Store) wrap(op string, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P01" { // undefined_table
		return fmt.Errorf("pgstore: %s: table %q: %w: %w", op, s.table, ErrNoTable, err)
	}
	return fmt.Errorf("pgstore: %s: %w", op, err)
}

// lease is the Lease of one Acquire.
type lease struct {
	s     *Store
	key   string
	token string
	// tx is fn's transaction while DoTx runs fn and until Commit or
	// Release ends it; inTx is set with it, and stays set once it ended,
	// so that a Commit never writes the record outside fn's transaction.
	// Only the goroutine that called Do touches them.
	tx   pgx.Tx
	inTx bool
	// fnFailed is set when fn returned an error, fnEnded when fn ended
	// its transaction itself (with SQL), so that the key is not released.
	fnFailed, fnEnded bool
}

// Refresh implements idem.Lease.
func (l *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	tag, err := l.s.pool.Exec(ctx, l.s.sql.refresh, l.key, l.token, millis(ttl))
	if err != nil {
		return l.s.wrap("refresh", err)
	}
	if tag.RowsAffected() == 0 {
		return idem.ErrLeaseLost
	}
	return nil
}

// Commit implements idem.Lease. In a DoTx call it writes the record in fn's
// transaction and commits that transaction.
func (l *lease) Commit(ctx context.Context, record []byte, ttl time.Duration) error {
	if record == nil {
		record = []byte{} // NULL would read as a lease
	}
	if l.inTx {
		return l.commitTx(ctx, record, ttl)
	}
	tag, err := l.s.pool.Exec(ctx, l.s.sql.commit, l.key, l.token, record, millis(ttl))
	if err != nil {
		return l.s.wrap("commit", err)
	}
	if tag.RowsAffected() == 0 {
		return idem.ErrLeaseLost
	}
	return nil
}

// Release implements idem.Lease. In a DoTx call it first rolls fn's
// transaction back; when fn ended that transaction itself, with SQL, its
// writes may have committed, and the key is not released.
func (l *lease) Release(ctx context.Context) error {
	if l.tx != nil {
		if pc := l.tx.Conn().PgConn(); pc.IsBusy() || pc.TxStatus() != 'T' && pc.TxStatus() != 'E' {
			l.fnEnded = true
			_ = l.rollback(ctx)
			return nil // held until the lease expires
		}
	}
	_ = l.rollback(ctx)
	released, err := l.releaseRow(ctx)
	if err != nil {
		return err
	}
	if !released {
		return idem.ErrLeaseLost
	}
	return nil
}

// releaseRow deletes the lease's row while it holds the lease, and reports
// whether it did.
func (l *lease) releaseRow(ctx context.Context) (bool, error) {
	tag, err := l.s.pool.Exec(ctx, l.s.sql.release, l.key, l.token)
	if err != nil {
		return false, l.s.wrap("release", err)
	}
	return tag.RowsAffected() > 0, nil
}

// statements holds the SQL of a Store, written once for its table.
type statements struct {
	acquire, wait, refresh, commit, release, sweep string
}

func newStatements(table string) statements {
	t := quoteTable(table)
	r := strings.NewReplacer("{t}", t)
	return statements{
		// cur is the live row, if any, as of the statement's start. Only
		// when there is none does ins write: a new row, or the takeover
		// of an expired one, whose expiry is checked again on the latest
		// row version (ON CONFLICT locks it). When ins finds a live row
		// that cur could not see yet, both are empty and Acquire asks
		// again.
		acquire: r.Replace(`WITH cur AS (
	SELECT record, fingerprint, expires_at FROM {t}
	WHERE key = $1 AND expires_at > clock_timestamp()
), ins AS (
	INSERT INTO {t} AS r (key, token, fingerprint, record, expires_at)
	SELECT $1, $2, $3, NULL, clock_timestamp() + $4::bigint * interval '1 millisecond'
	WHERE NOT EXISTS (SELECT FROM cur)
	ON CONFLICT (key) DO UPDATE
	SET token = excluded.token, fingerprint = excluded.fingerprint, record = NULL, expires_at = excluded.expires_at
	WHERE r.expires_at <= clock_timestamp()
	RETURNING 1
)
SELECT true, NULL::bytea, NULL::text, 0::bigint FROM ins
UNION ALL
SELECT false, record, fingerprint,
	greatest(0, floor(extract(epoch FROM expires_at - clock_timestamp()) * 1000))::bigint
FROM cur`),
		wait: r.Replace(`SELECT greatest(0, floor(extract(epoch FROM expires_at - clock_timestamp()) * 1000))::bigint
FROM {t} WHERE key = $1 AND record IS NULL AND expires_at > clock_timestamp()`),
		refresh: r.Replace(`UPDATE {t} SET expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond'
WHERE key = $1 AND token = $2 AND record IS NULL AND expires_at > clock_timestamp()`),
		// A live lease becomes the record; a record this token committed
		// already stays as it is (a Commit repeated after a lost reply).
		commit: r.Replace(`UPDATE {t} SET record = $3,
	expires_at = CASE WHEN record IS NULL THEN clock_timestamp() + $4::bigint * interval '1 millisecond' ELSE expires_at END
WHERE key = $1 AND token = $2 AND expires_at > clock_timestamp() AND (record IS NULL OR record = $3)`),
		release: r.Replace(`DELETE FROM {t} WHERE key = $1 AND token = $2 AND record IS NULL AND expires_at > clock_timestamp()`),
		sweep: r.Replace(`DELETE FROM {t} WHERE key IN (
	SELECT key FROM {t} WHERE expires_at <= clock_timestamp()
	ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
) AND expires_at <= clock_timestamp()`),
	}
}

// quoteTable quotes a table name, qualified with a schema or not, as an SQL
// identifier.
func quoteTable(name string) string {
	return pgx.Identifier(strings.SplitN(name, ".", 2)).Sanitize()
}

// maxIdentifier is the longest identifier PostgreSQL keeps whole (its
// NAMEDATALEN - 1); it truncates longer ones.
const maxIdentifier = 63

// checkTableName reports why name cannot name a table, or nil.
func checkTableName(name string) error {
	for _, part := range strings.SplitN(name, ".", 2) {
		switch {
		case part == "":
			return errors.New("empty name or schema")
		case len(part) > maxIdentifier:
			return fmt.Errorf("%q is %d bytes, PostgreSQL keeps %d", part, len(part), maxIdentifier)
		case strings.ContainsRune(part, 0):
			return errors.New("holds a NUL byte")
		}
	}
	return nil
}
