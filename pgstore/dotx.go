package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/idemkit/idem"
)

// rollbackTimeout bounds the rollback DoTx makes after Do returned.
const rollbackTimeout = 5 * time.Second

// callKey marks the context of a DoTx call, whose value is the *call.
type callKey struct{}

// call is one DoTx call. Acquire, given its context, records the lease it
// grants, so that fn can attach its transaction to that lease.
type call struct {
	s     *Store
	lease *lease // the latest lease granted to the call
}

// DoTx is op.Do, with fn run in a PostgreSQL transaction whose record is
// written in that same transaction: fn's writes and the stored result
// commit together, or neither does. op must have been built on a *Store
// (idem.New(store, ...)); otherwise DoTx returns an error wrapping
// idem.ErrInvalidOption and fn does not run.
//
// A call that finds the result stored, or another call in flight, behaves as
// Do does, and a result stored by DoTx is replayed by Do as well. When the
// call leases the key, DoTx begins a READ COMMITTED transaction on the
// Store's pool and runs fn with it; fn must not commit or roll it back.
// Then, by what fn returned:
//
//   - A value: the record is written in the transaction (an UPDATE that
//     finds the row only while it still holds this call's live lease), and
//     the transaction commits. Statements: BEGIN, fn's, the UPDATE, COMMIT.
//   - An error that is not final (the default disposition, idem.Release):
//     the transaction rolls back, nothing is stored, and the key is
//     released, so a retry runs fn again.
//   - A final error (idem.Final, or the disposition idem.Record): the error
//     record is written and the transaction commits, fn's writes with it.
//     A final error is the settled outcome of the request, and what fn
//     wrote on the way to it (a declined payment's row, say) is part of
//     that outcome. To keep none of fn's writes, return the error before
//     writing, or undo the writes in a savepoint. When a statement of fn's
//     failed before it (a unique violation, say), the transaction can keep
//     nothing, and the error record is stored on its own.
//   - An error held (idem.Hold), or a value the codec cannot store: the
//     transaction rolls back, and the key stays refused until its lease
//     expires, as with Do; a value not stored is reported with
//     ErrRolledBack besides idem.ErrNotStored.
//   - A panic: the transaction rolls back, the key is released, and the
//     panic continues.
//
// When the lease was lost while fn ran (it expired, and another caller may
// hold the key), the UPDATE finds no lease, the transaction rolls back, and
// DoTx returns an error wrapping idem.ErrNotStored, idem.ErrLeaseLost and
// ErrRolledBack: fn's writes were not kept. When COMMIT itself fails
// without the server saying that it rolled back (the connection broke, or
// the deadline, a lock TTL after fn returned, passed), whether fn's writes
// and the record committed is unknown, and DoTx returns an error wrapping
// idem.ErrNotStored only, as Do does when it cannot store a result. When
// the process dies before COMMIT, the database rolls the transaction back,
// and the key's lease expires: the next call after the lease TTL runs fn
// once.
//
// The transaction belongs to DoTx: its Commit and Rollback return
// ErrTxOwned. A fn that ends it anyway, with SQL (tx.Exec(ctx, "COMMIT")),
// leaves it unknown whether its writes committed: when DoTx can tell (the
// connection is no longer in a transaction, or a statement's result was
// left unread), it writes no record, returns idem.ErrNotStored, and keeps
// the key held until the lease expires, also when fn then returns an
// error. It cannot tell a fn that began a new transaction after ending
// its own ("COMMIT; BEGIN"): do not. A fn that swallows the error of a failed statement returns from
// an aborted transaction, which can only roll back (ErrRolledBack). fn must
// not raise the isolation level either: the record's UPDATE must see the
// lease as the keeper last refreshed it, which only READ COMMITTED does; at
// a stricter level a long fn fails with ErrRolledBack. When BEGIN fails, fn
// does not run, nothing is stored whatever the Operation's disposition, the
// key is released, and DoTx returns an error wrapping idem.ErrStore.
//
// DoTx returns what Do returns: fn's result whenever fn ran.
func DoTx[Req, Resp any](ctx context.Context, op *idem.Operation[Req, Resp], key string, req Req, fn func(ctx context.Context, tx pgx.Tx, req Req) (Resp, error)) (resp Resp, err error) {
	s, ok := op.Store().(*Store)
	if !ok {
		var zero Resp
		return zero, fmt.Errorf("%w: pgstore.DoTx needs an Operation built on a *pgstore.Store, not %T", idem.ErrInvalidOption, op.Store())
	}
	c := &call{s: s}
	defer func() {
		l := c.lease
		switch {
		case l == nil:
		case l.tx != nil:
			// Commit and Release end the transaction; when neither did
			// (the result was held, or could not be encoded), it rolls
			// back here, and what Do reported as not stored is known
			// not to have happened. The key stays held, as Do left it:
			// fn may have done more than its writes.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
			rerr := l.rollback(rctx)
			cancel()
			if rerr == nil && errors.Is(err, idem.ErrNotStored) && !errors.Is(err, ErrRolledBack) {
				err = fmt.Errorf("%w: %w", ErrRolledBack, err)
			}
		case l.fnEnded && !errors.Is(err, idem.ErrNotStored):
			// fn ended the transaction with SQL and then failed: its
			// writes may have committed, and the key was not released.
			err = fmt.Errorf("%w: pgstore: fn ended DoTx's transaction itself (an SQL COMMIT or ROLLBACK), so whether its writes committed is unknown; the key is held until its lease expires: %w", idem.ErrNotStored, err)
		}
	}()
	return op.Do(context.WithValue(ctx, callKey{}, c), key, req, func(ctx context.Context, req Req) (Resp, error) {
		var zero Resp
		l := c.lease
		if l == nil {
			return zero, idem.Dispose(fmt.Errorf("%w: pgstore: DoTx's lease was not granted by its Store", idem.ErrStore), idem.Release)
		}
		tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
		if err != nil {
			// fn did not run: whatever the Operation's disposition,
			// nothing is stored and the key is given back.
			return zero, idem.Dispose(fmt.Errorf("%w: pgstore: beginning fn's transaction: %w", idem.ErrStore, err), idem.Release)
		}
		l.tx, l.inTx = tx, true
		// Calls made inside fn (another Do on this store) are not part of
		// this call.
		resp, err := fn(context.WithValue(ctx, callKey{}, (*call)(nil)), ownedTx{tx}, req)
		l.fnFailed = err != nil
		return resp, err
	})
}

// ownedTx is the transaction fn gets: fn's writes go through it, and its
// Commit and Rollback are refused. Savepoints (Begin) work as usual.
type ownedTx struct{ pgx.Tx }

// Commit refuses: DoTx commits the transaction once the record is in it.
func (ownedTx) Commit(context.Context) error { return ErrTxOwned }

// Rollback refuses: fn returns an error to have the transaction rolled back.
func (ownedTx) Rollback(context.Context) error { return ErrTxOwned }

// commitTx writes record in fn's transaction and commits it.
func (l *lease) commitTx(ctx context.Context, record []byte, ttl time.Duration) error {
	tx := l.tx
	if tx == nil {
		return fmt.Errorf("%w: pgstore: fn's transaction is over", idem.ErrNotStored)
	}
	l.tx = nil
	pc := tx.Conn().PgConn()
	if pc.IsBusy() {
		// fn left a statement's result unread (a COMMIT, for all DoTx
		// knows): the connection cannot be trusted, nor what it did.
		_ = pc.Close(ctx)
		l.fnEnded = true
		return fmt.Errorf("%w: pgstore: fn left a statement on its transaction's connection unfinished, so whether its writes committed is unknown; no record was written", idem.ErrNotStored)
	}
	switch pc.TxStatus() {
	case 'T': // in the transaction, as it should be
	case 'E':
		// A statement of fn's failed: the transaction can only roll
		// back. A final error fn returned after it is still the
		// request's outcome, and is stored on its own.
		if l.fnFailed {
			_ = tx.Rollback(ctx)
			l.inTx = false
			if err := l.Commit(ctx, record, ttl); err != nil {
				return fmt.Errorf("%w: %w, none of fn's writes were kept (a statement had failed), and storing the final error failed: %w", idem.ErrNotStored, ErrRolledBack, err)
			}
			return nil
		}
		return l.rolledBack(ctx, tx, errors.New("a statement in fn's transaction failed, and fn returned a result anyway"))
	default:
		// fn ended the transaction itself, with SQL (pgx's own Commit
		// and Rollback are refused): its writes may have committed or
		// not, and the record must not be written outside it.
		_ = tx.Rollback(ctx)
		l.fnEnded = true
		return fmt.Errorf("%w: pgstore: fn ended DoTx's transaction itself (an SQL COMMIT or ROLLBACK), so whether its writes committed is unknown; no record was written", idem.ErrNotStored)
	}
	tag, err := tx.Exec(ctx, l.s.sql.commit, l.key, l.token, record, millis(ttl))
	switch {
	case err != nil:
		// COMMIT was not sent: nothing can have committed.
		return l.rolledBack(ctx, tx, fmt.Errorf("writing the record in fn's transaction: %w", l.s.wrap("commit", err)))
	case tag.RowsAffected() == 0:
		return l.rolledBack(ctx, tx, nil)
	}
	if err := tx.Commit(ctx); err != nil {
		var pe *pgconn.PgError
		if errors.Is(err, pgx.ErrTxCommitRollback) || errors.As(err, &pe) && pe.SeverityUnlocalized == "ERROR" || pgconn.SafeToRetry(err) {
			// The server answered that it rolled back (a deferred
			// constraint, a serialization failure), or COMMIT was
			// never sent. A FATAL error, or none, leaves the outcome
			// unknown.
			return l.rolledBack(ctx, tx, fmt.Errorf("COMMIT rolled back: %w", err))
		}
		return fmt.Errorf("%w: pgstore: COMMIT failed, so whether fn's writes and the record committed is unknown: %w", idem.ErrNotStored, err)
	}
	return nil
}

// rolledBack rolls tx back, gives the key back when the lease is still
// this call's, and returns the error saying why: cause, or, when cause is
// nil, that the record's UPDATE found no lease.
func (l *lease) rolledBack(ctx context.Context, tx pgx.Tx, cause error) error {
	_ = tx.Rollback(ctx)
	released, err := l.releaseRow(ctx)
	switch {
	case cause != nil:
	case released:
		// The lease was live and this call's, yet the UPDATE did not
		// see it: it read an older snapshot than READ COMMITTED gives.
		cause = errors.New("the record's UPDATE did not see this call's live lease: fn's transaction reads an older snapshot (did fn raise its isolation level above READ COMMITTED?)")
	case err == nil:
		cause = fmt.Errorf("the lease was lost before the record was written: %w", idem.ErrLeaseLost)
	default:
		cause = fmt.Errorf("the record's UPDATE found no lease, and checking the lease failed: %w", err)
	}
	return rolledBack(cause)
}

// rolledBack wraps err, the reason a DoTx transaction was rolled back.
func rolledBack(err error) error {
	return fmt.Errorf("%w: %w, none of fn's writes were kept: pgstore: %w", idem.ErrNotStored, ErrRolledBack, err)
}

// rollback ends fn's transaction, if one is open, without keeping it.
func (l *lease) rollback(ctx context.Context) error {
	tx := l.tx
	if tx == nil {
		return nil
	}
	l.tx = nil
	return tx.Rollback(ctx)
}
