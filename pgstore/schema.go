package pgstore

import (
	"context"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem"
)

// DDL returns the statements that create the table named table (as given
// to WithTable; "" means DefaultTable) and its index, if they are missing,
// for use in your own migration tool. Migrate runs them.
//
// The index is named after the table, "<table>_expires_at_idx", cut short
// and told apart by a hash of the table's name when that would pass 63
// bytes. A name New refuses (see New) gives DDL that must not be used.
func DDL(table string) string {
	if table == "" {
		table = DefaultTable
	}
	name := strings.SplitN(table, ".", 2)
	index := pgx.Identifier{indexName(name[len(name)-1])}.Sanitize()
	return fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %[1]s (
	key         text COLLATE "C" PRIMARY KEY,
	token       text        NOT NULL,
	fingerprint text        NOT NULL,
	record      bytea,
	expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS %[2]s ON %[1]s (expires_at);
`, quoteTable(table), index)
}

// Migrate creates the Store's table and index when they are missing (see
// DDL). It is safe to run at every start, from several processes at once:
// it takes a transaction-scoped advisory lock, so that concurrent runs
// create the table one after another rather than collide.
//
// Migrate then checks that the table, whoever made it, has the columns and
// types DDL gives, and a key column whose collation compares bytes
// exactly: a table made by hand with expires_at as a timestamp without
// time zone, say, would let sessions in different time zones see a record
// as expired, and run fn again. A mismatch is an error wrapping ErrSchema.
func (s *Store) Migrate(ctx context.Context) error {
	if s.err != nil {
		return s.err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrateLock); err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	if _, err := tx.Exec(ctx, DDL(s.table)); err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	return s.checkSchema(ctx)
}

// columns are the columns DDL gives, with their types as format_type
// prints them.
var columns = map[string]string{
	"key":         "text",
	"token":       "text",
	"fingerprint": "text",
	"record":      "bytea",
	"expires_at":  "timestamp with time zone",
}

// checkSchema checks the table's columns against columns. Other columns
// are allowed.
func (s *Store) checkSchema(ctx context.Context) error {
	rows, err := s.pool.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod),
	coalesce((SELECT c.collisdeterministic FROM pg_collation c WHERE c.oid = a.attcollation), true)
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped`, quoteTable(s.table))
	if err != nil {
		return fmt.Errorf("pgstore: migrate: checking the table: %w", err)
	}
	found := make(map[string]string)
	var name, typ string
	var deterministic bool
	_, err = pgx.ForEachRow(rows, []any{&name, &typ, &deterministic}, func() error {
		found[name] = typ
		if name == "key" && !deterministic {
			return fmt.Errorf("%w: table %q: column key has a nondeterministic collation, under which two keys could name one row", ErrSchema, s.table)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	for _, col := range slices.Sorted(maps.Keys(columns)) {
		switch got, ok := found[col]; {
		case !ok:
			return fmt.Errorf("%w: table %q has no column %s", ErrSchema, s.table, col)
		case got != columns[col]:
			return fmt.Errorf("%w: table %q: column %s is %s, want %s", ErrSchema, s.table, col, got, columns[col])
		}
	}
	return nil
}

// indexName names the expiry index of the table named table (without
// its schema), in at most maxIdentifier bytes.
func indexName(table string) string {
	const suffix = "_expires_at_idx"
	if len(table)+len(suffix) <= maxIdentifier {
		return table + suffix
	}
	h := fnv.New32a()
	h.Write([]byte(table))
	tag := fmt.Sprintf("_%08x%s", h.Sum32(), suffix)
	cut := maxIdentifier - len(tag)
	for cut > 0 && !utf8.RuneStart(table[cut]) {
		cut--
	}
	return table[:cut] + tag
}

// migrateLock is the advisory lock Migrate takes, one for every table:
// migrations are rare, and one lock serves every spelling of a table's
// name ("idem_records", "public.idem_records"). It is the FNV-1a 64 hash of
// "idem/pgstore migrate", as an int64.
const migrateLock int64 = 3618564177521568890

// Sweep deletes up to limit rows whose lease or record has expired, and
// returns how many it deleted. Expired rows already count as absent, so
// sweeping only reclaims space: run it periodically (every few minutes, or
// as often as the table gains a limit's worth of expired rows), and again
// while it returns limit. Rows being taken over are skipped, never waited
// for. A limit below 1 is an error wrapping idem.ErrInvalidOption.
func (s *Store) Sweep(ctx context.Context, limit int) (int64, error) {
	if s.err != nil {
		return 0, s.err
	}
	if limit < 1 {
		return 0, fmt.Errorf("%w: pgstore: Sweep limit %d, want at least 1", idem.ErrInvalidOption, limit)
	}
	tag, err := s.pool.Exec(ctx, s.sql.sweep, limit)
	if err != nil {
		return 0, s.wrap("sweep", err)
	}
	return tag.RowsAffected(), nil
}
