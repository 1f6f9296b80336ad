package pgstore_test

// Adversarial tests of what the store reads and names: hostile rows,
// tables made by hand, table names, keys and query modes. Each must give a
// clear error or work, never panic or run fn twice untold.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/pgtest"
	"github.com/idemkit/idem/pgstore"
)

// TestAttackHostileRows: rows written by hand or by something else must
// give clear errors, never a panic, a lease, or fn run.
func TestAttackHostileRows(t *testing.T) {
	s := newStore(t, 4)
	ctx := ctxFor(t)
	op := idem.New[string, string](s, idem.WithLocalCache(16))
	for _, tc := range []struct {
		name, fp, expires string
		record            []byte
		want              error
	}{
		{"record infinity", "fp", "'infinity'", []byte("x"), idem.ErrStore},
		{"lease infinity", "fp", "'infinity'", nil, idem.ErrStore},
		{"record year 200000", "fp", "'200000-01-01'", []byte("x"), idem.ErrCorruptRecord},
		{"lease year 200000, other fingerprint", "other", "'200000-01-01'", nil, idem.ErrKeyReused},
		{"lease empty fingerprint", "", "now() + interval '1 hour'", nil, idem.ErrKeyReused},
		{"record huge", "fp", "now() + interval '1 hour'", make([]byte, 1<<20), idem.ErrCorruptRecord},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "hostile-" + tc.name
			if _, err := s.Pool().Exec(ctx, `INSERT INTO idem_records VALUES ($1, 'tok', $2, $3, `+tc.expires+`)`, ":"+key, tc.fp, tc.record); err != nil {
				t.Fatal(err)
			}
			ran := false
			_, err := op.Do(ctx, key, "req", func(context.Context, string) (string, error) { ran = true; return "", nil })
			if ran || !errors.Is(err, tc.want) {
				t.Errorf("Do = %v (ran %v), want %v", err, ran, tc.want)
			}
			t.Logf("Do = %v", err)
		})
	}
	// A valid record whose expiry is beyond what a time.Duration holds:
	// its TTL overflows on the way to the local cache, which must still
	// replay it, and never run fn.
	if _, err := op.Do(ctx, "far", "req", func(context.Context, string) (string, error) { return "kept", nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pool().Exec(ctx, `UPDATE idem_records SET expires_at = '200000-01-01' WHERE key = ':far'`); err != nil {
		t.Fatal(err)
	}
	op.Forget("far")
	for range 2 {
		got, err := op.Do(ctx, "far", "req", func(context.Context, string) (string, error) { return "ran again", nil })
		if err != nil || got != "kept" {
			t.Errorf("replay of a record expiring in year 200000 = %q, %v", got, err)
		}
	}
}

// TestAttackAlteredTable: a table made by hand unlike DDL's must fail
// clearly, never panic or run fn without telling.
func TestAttackAlteredTable(t *testing.T) {
	pool := pgtest.Pool(t, 4)
	ctx := ctxFor(t)
	for _, tc := range []struct{ name, columns string }{
		{"no fingerprint", `key text PRIMARY KEY, token text NOT NULL, record bytea, expires_at timestamptz NOT NULL`},
		{"record text", `key text PRIMARY KEY, token text NOT NULL, fingerprint text NOT NULL, record text, expires_at timestamptz NOT NULL`},
		{"token uuid", `key text PRIMARY KEY, token uuid NOT NULL, fingerprint text NOT NULL, record bytea, expires_at timestamptz NOT NULL`},
		{"key not unique", `key text, token text NOT NULL, fingerprint text NOT NULL, record bytea, expires_at timestamptz NOT NULL`},
		{"expires_at bigint", `key text PRIMARY KEY, token text NOT NULL, fingerprint text NOT NULL, record bytea, expires_at bigint NOT NULL`},
		{"key varchar(8)", `key varchar(8) PRIMARY KEY, token text NOT NULL, fingerprint text NOT NULL, record bytea, expires_at timestamptz NOT NULL`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := pool.Exec(ctx, `CREATE TABLE "`+tc.name+`" (`+tc.columns+`)`); err != nil {
				t.Fatal(err)
			}
			s := pgstore.New(pool, pgstore.WithTable(tc.name))
			// IF NOT EXISTS leaves the table as it is; the check after
			// it finds the difference, but for a missing unique key,
			// which the statements themselves refuse.
			err := s.Migrate(ctx)
			t.Logf("Migrate: %v", err)
			if tc.name != "key not unique" && !errors.Is(err, pgstore.ErrSchema) {
				t.Errorf("Migrate = %v, want ErrSchema", err)
			}
			op := idem.New[string, string](s)
			for i := range 2 {
				ran := false
				_, info, err := op.DoInfo(ctx, "a-longer-key", "req", func(context.Context, string) (string, error) { ran = true; return "ok", nil })
				t.Logf("call %d: %v, %v (ran %v)", i, info.Outcome, err, ran)
				if err == nil {
					t.Errorf("call %d on a table unlike DDL's succeeded (ran %v)", i, ran)
				} else if ran && !errors.Is(err, idem.ErrNotStored) || !ran && !errors.Is(err, idem.ErrStore) {
					t.Errorf("call %d = %v (ran %v): want ErrStore before fn, ErrNotStored after", i, err, ran)
				}
			}
		})
	}
}

// TestAttackTimestampWithoutTimeZone: a table made by hand with expires_at
// as timestamp (without time zone) reads expiries in each session's
// TimeZone, so a process whose TimeZone is ahead of the writer's would see
// a fresh record as long expired. Migrate refuses such a table (ErrSchema);
// once corrected, sessions in two time zones agree.
func TestAttackTimestampWithoutTimeZone(t *testing.T) {
	dsn := pgtest.ConnString(t)
	poolIn := func(tz string) *pgxpool.Pool {
		cfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		cfg.ConnConfig.RuntimeParams["timezone"] = tz
		p, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		return p
	}
	london, tokyo := poolIn("UTC"), poolIn("Asia/Tokyo")
	ctx := ctxFor(t)
	if _, err := london.Exec(ctx, strings.Replace(pgstore.DDL(""), "timestamptz", "timestamp", 1)); err != nil {
		t.Fatal(err)
	}
	// Migrate refuses the table, and once the column is corrected, two
	// sessions in different time zones agree on a record's expiry.
	if err := pgstore.New(london).Migrate(ctx); !errors.Is(err, pgstore.ErrSchema) {
		t.Fatalf("Migrate on expires_at timestamp = %v, want ErrSchema", err)
	}
	if _, err := london.Exec(ctx, `ALTER TABLE idem_records ALTER expires_at TYPE timestamptz`); err != nil {
		t.Fatal(err)
	}
	var runs int
	fn := func(context.Context, string) (string, error) { runs++; return "charged", nil }
	for _, p := range []*pgxpool.Pool{london, tokyo} {
		s := pgstore.New(p)
		if err := s.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		op := idem.New[string, string](s, idem.WithTTL(time.Hour))
		if _, err := op.Do(ctx, "k", "req", fn); err != nil {
			t.Fatal(err)
		}
	}
	if runs != 1 {
		t.Errorf("fn ran %d times for one key from sessions in two time zones, with no error", runs)
	}
}

// TestAttackTableNames: odd table names work through Migrate, Do, DoTx and
// Sweep, and two names never share a table.
func TestAttackTableNames(t *testing.T) {
	pool := pgtest.Pool(t, 4)
	ctx := ctxFor(t)
	if _, err := pool.Exec(ctx, `CREATE SCHEMA "Billing Dept"; CREATE TABLE orders (id text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	names := []string{
		"MixedCase", "mixedcase", "with space", `with"quote`, `it's`, "Billing Dept.Idem", "Billing Dept.Idem.v2",
		"drop table orders; --", "ünïcödé", strings.Repeat("a", 63),
	}
	for i, name := range names {
		s := pgstore.New(pool, pgstore.WithTable(name))
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("%q: Migrate: %v", name, err)
		}
		op := idem.New[string, int](s, idem.WithTTL(time.Hour))
		got, err := op.Do(ctx, "k", "req", func(context.Context, string) (int, error) { return i, nil })
		if err != nil || got != i {
			t.Errorf("%q: Do = %d, %v; want %d (another name's record?)", name, got, err, i)
		}
		got, err = pgstore.DoTx(ctx, op, "tx", "req", func(ctx context.Context, tx pgx.Tx, _ string) (int, error) {
			_, err := tx.Exec(ctx, `INSERT INTO orders VALUES ($1)`, name)
			return i, err
		})
		if err != nil || got != i {
			t.Errorf("%q: DoTx = %d, %v; want %d", name, got, err, i)
		}
		if _, err := s.Sweep(ctx, 10); err != nil {
			t.Errorf("%q: Sweep: %v", name, err)
		}
	}
	var tables int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename <> 'orders' AND schemaname IN ('public', 'Billing Dept')`).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if tables != len(names) {
		t.Errorf("%d tables for %d names", tables, len(names))
	}
}

// TestAttackLongTableNames: PostgreSQL truncates identifiers to 63 bytes,
// so two table names that differ only past that would name one table, and
// two Stores meant to be apart would share their rows. New refuses such
// names (and empty parts); names of 63 bytes work, each with its own index.
func TestAttackLongTableNames(t *testing.T) {
	pool := pgtest.Pool(t, 4)
	ctx := ctxFor(t)
	prefix := strings.Repeat("idem_records_of_the_billing_service_", 2)[:63]
	for _, name := range []string{prefix + "_eu", "public." + prefix + "_us", strings.Repeat("é", 32), "", ".x", "x."} {
		s := pgstore.New(pool, pgstore.WithTable(name))
		if name == "" {
			if s.Err() != nil {
				t.Errorf("WithTable(\"\") = %v, want the default table", s.Err())
			}
			continue
		}
		if !errors.Is(s.Err(), idem.ErrInvalidOption) || !errors.Is(s.Migrate(ctx), idem.ErrInvalidOption) {
			t.Errorf("WithTable(%q): Err = %v, want ErrInvalidOption", name, s.Err())
		}
		if _, err := s.Acquire(ctx, "k", "fp", time.Second); !errors.Is(err, idem.ErrInvalidOption) {
			t.Errorf("WithTable(%q): Acquire = %v, want ErrInvalidOption", name, err)
		}
	}
	// Names of 63 bytes are whole, and their indexes told apart.
	var runs int
	for _, name := range []string{prefix[:62] + "a", prefix[:62] + "b"} {
		s := pgstore.New(pool, pgstore.WithTable(name))
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("Migrate %s: %v", name, err)
		}
		op := idem.New[string, string](s)
		if _, err := op.Do(ctx, "order-1", "req", func(context.Context, string) (string, error) { runs++; return name, nil }); err != nil {
			t.Fatal(err)
		}
	}
	if runs != 2 {
		t.Errorf("fn ran %d times for one key in two Stores on two tables: the tables are one (names longer than 63 bytes are truncated, silently)", runs)
	}
	for _, name := range []string{prefix[:62] + "a", prefix[:62] + "b"} {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_indexes WHERE tablename = $1`, name).Scan(&n); err != nil || n != 2 {
			t.Errorf("table %s has %d indexes (err %v), want the primary key and its own expiry index", name, n, err)
		}
	}
}

// TestAttackKeys: keys of every shape name one row each, whatever SQL or
// pattern characters they hold, up to the longest key in the longest
// namespace.
func TestAttackKeys(t *testing.T) {
	s := newStore(t, 4)
	ctx := ctxFor(t)
	long := strings.Repeat("n", idem.MaxKeyLen)
	keys := []string{
		"a", "A", "a ", " a", "%", "_", "a%", "a_", `\`, `\%`, "'", "''", `"`, "'; DROP TABLE idem_records; --",
		"ключ", "键", "🔑", "e\u0301", "\u00e9", strings.Repeat("x", idem.MaxKeyLen), strings.Repeat("é", idem.MaxKeyLen/2),
	}
	for _, ns := range []string{"", long} {
		op := idem.New[string, int](s, idem.WithNamespace(ns))
		for i, k := range keys {
			got, err := op.Do(ctx, k, "req", func(context.Context, string) (int, error) { return i, nil })
			if err != nil || got != i {
				t.Errorf("ns %d bytes, key %q: Do = %d, %v; want %d", len(ns), k, got, err, i)
			}
		}
		for i, k := range keys {
			got, err := op.Do(ctx, k, "req", func(context.Context, string) (int, error) { return -1, nil })
			if err != nil || got != i {
				t.Errorf("ns %d bytes, key %q: replay = %d, %v; want %d", len(ns), k, got, err, i)
			}
		}
	}
	if n := records(t, s); n != 2*len(keys) {
		t.Errorf("%d records for %d keys", n, 2*len(keys))
	}
	// Straight to the store, a key PostgreSQL cannot hold is an error, not
	// a lease.
	for _, k := range []string{"nul\x00key", "bad\xffutf8"} {
		if acq, err := s.Acquire(ctx, k, "fp", time.Minute); err == nil {
			t.Errorf("Acquire(%q) = %+v, want an error", k, acq)
		}
	}
}

// TestAttackQueryExecModes: the statements work in every query mode of
// pgx, among them the simple protocol that PgBouncer's transaction mode
// needs, with a record of every byte.
func TestAttackQueryExecModes(t *testing.T) {
	dsn := pgtest.ConnString(t)
	for _, mode := range []pgx.QueryExecMode{
		pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec,
		pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol,
	} {
		t.Run(mode.String(), func(t *testing.T) {
			cfg, err := pgxpool.ParseConfig(dsn)
			if err != nil {
				t.Fatal(err)
			}
			cfg.ConnConfig.DefaultQueryExecMode = mode
			cfg.MaxConns = 4
			pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			ctx := ctxFor(t)
			s := pgstore.New(pool, pgstore.WithTable(mode.String()))
			if err := s.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
			all := make([]byte, 256)
			for i := range all {
				all[i] = byte(i)
			}
			// fn runs until its lease has been refreshed, so that the
			// refresh's statement runs in each mode too; one that fails
			// leaves the lease to expire, which cancels fn and fails Do.
			// The TTL gives each refresh a third of it, enough on a
			// loaded machine.
			refreshed := map[string]chan struct{}{"do": make(chan struct{}, 1), "tx": make(chan struct{}, 1)}
			op := idem.New[string, []byte](s, idem.WithLockTTL(600*time.Millisecond), idem.WithObserver(&idem.Observer{
				LeaseRefresh: func(_ context.Context, c idem.Call, err error) {
					if err == nil {
						select {
						case refreshed[c.Key] <- struct{}{}:
						default:
						}
					}
				},
			}))
			var runs int
			fn := func(ctx context.Context, key string) ([]byte, error) {
				runs++
				select {
				case <-refreshed[key]:
					return all, nil
				case <-ctx.Done():
					return nil, context.Cause(ctx)
				case <-time.After(10 * time.Second):
					return nil, errors.New("the lease was not refreshed")
				}
			}
			for _, key := range []string{"do", "tx"} {
				for range 2 {
					var got []byte
					var err error
					if key == "do" {
						got, err = op.Do(ctx, key, "r", func(ctx context.Context, _ string) ([]byte, error) { return fn(ctx, key) })
					} else {
						got, err = pgstore.DoTx(ctx, op, key, "r", func(ctx context.Context, _ pgx.Tx, _ string) ([]byte, error) { return fn(ctx, key) })
					}
					if err != nil || string(got) != string(all) {
						t.Fatalf("%s: %x, %v", key, got, err)
					}
				}
			}
			if runs != 2 {
				t.Errorf("fn ran %d times for 2 keys", runs)
			}
			l, err := s.Acquire(ctx, "lease", "fp", time.Minute)
			if err != nil || l.Lease == nil {
				t.Fatalf("Acquire = %+v, %v", l, err)
			}
			if err := l.Lease.Commit(ctx, nil, time.Minute); err != nil {
				t.Fatal(err)
			}
			if err := l.Lease.Commit(ctx, nil, time.Minute); err != nil {
				t.Errorf("Commit repeated = %v", err)
			}
			if a, err := s.Acquire(ctx, "lease", "fp", time.Minute); err != nil || a.Record == nil || len(a.Record) != 0 {
				t.Errorf("the empty record: %+v, %v", a, err)
			}
		})
	}
}
