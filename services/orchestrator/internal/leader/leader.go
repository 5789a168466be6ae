// Package leader holds the orchestrator's fenced leader lease.
//
// One row holds (holder, epoch, expiry). The holder renews it; anyone may
// take it once expired, raising the epoch. A term's context carries the
// epoch both as the value platform/fence checks inside the orchestrator's
// own transactions and as outgoing gRPC metadata, so everything a term does
// is fenced: once a successor has written anything, a paused old leader
// that wakes up is refused everywhere. Expiry is judged on the database's
// clock; the holder's own view of its remaining lease is measured on its
// monotonic clock from before the renewal it last committed, so it is never
// longer than the database's.
package leader

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/platform/db"
	"storagecp.dev/platform/fence"
)

// Config tunes the lease.
type Config struct {
	// TTL is how long a renewal keeps the lease (default 6 s).
	TTL time.Duration
	// RenewEvery is the renewal period (default TTL/3).
	RenewEvery time.Duration
	// MinRemaining: a term stops issuing work (Valid reports false) when its
	// remaining lease is shorter than this — at least a call deadline
	// (default TTL/3).
	MinRemaining time.Duration
}

func (c *Config) defaults() {
	if c.TTL == 0 {
		c.TTL = 6 * time.Second
	}
	if c.RenewEvery == 0 {
		c.RenewEvery = c.TTL / 3
	}
	if c.MinRemaining == 0 {
		c.MinRemaining = c.TTL / 3
	}
}

// Lease campaigns for and holds the lease for one process.
type Lease struct {
	pool   *pgxpool.Pool
	holder string
	cfg    Config
	logger *slog.Logger

	mu   sync.Mutex
	term *Term
}

// New returns a lease campaigner for holder (a unique id of this process).
func New(pool *pgxpool.Pool, holder string, cfg Config, logger *slog.Logger) *Lease {
	cfg.defaults()
	return &Lease{pool: pool, holder: holder, cfg: cfg, logger: logger}
}

// Holder is this process's id.
func (l *Lease) Holder() string { return l.holder }

// Term is one tenure as leader.
type Term struct {
	Epoch int64
	// Ctx is cancelled when the term ends; it carries the epoch for
	// fence.Check and for outgoing RPCs.
	Ctx    context.Context
	cancel context.CancelFunc

	mu         sync.Mutex
	validUntil time.Time // monotonic
	minRemain  time.Duration
}

// Valid reports whether the term may still issue work: its remaining lease
// is at least MinRemaining.
func (t *Term) Valid() bool {
	if t == nil || t.Ctx.Err() != nil {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return time.Until(t.validUntil) >= t.minRemain
}

// Remaining is the term's remaining lease by its own clock.
func (t *Term) Remaining() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return time.Until(t.validUntil)
}

func (t *Term) extend(until time.Time) {
	t.mu.Lock()
	t.validUntil = until
	t.mu.Unlock()
}

type termKey struct{}

// FromContext returns the term a context belongs to, if any.
func FromContext(ctx context.Context) *Term {
	t, _ := ctx.Value(termKey{}).(*Term)
	return t
}

// Current returns the live term, or nil when not leading.
func (l *Lease) Current() *Term {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term != nil && l.term.Ctx.Err() == nil {
		return l.term
	}
	return nil
}

// Info is the lease row as last read.
type Info struct {
	Holder    string
	Epoch     int64
	ExpiresAt time.Time
}

// Read returns the lease row.
func (l *Lease) Read(ctx context.Context) (Info, error) {
	var i Info
	err := l.pool.QueryRow(ctx, `SELECT holder, epoch, expires_at FROM leader_lease WHERE id = 1`).Scan(&i.Holder, &i.Epoch, &i.ExpiresAt)
	return i, err
}

// Run campaigns until ctx ends. Each time this process becomes leader it
// calls onElected with the new term (in its own goroutine); the term's
// context is cancelled when the lease is lost or ctx ends.
func (l *Lease) Run(ctx context.Context, onElected func(*Term)) {
	t := time.NewTicker(l.cfg.RenewEvery)
	defer t.Stop()
	defer l.release()
	for {
		l.tick(ctx, onElected)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (l *Lease) tick(ctx context.Context, onElected func(*Term)) {
	started := time.Now()
	cur := l.Current()
	var epoch int64
	var won bool
	err := db.InTxOpts(ctx, l.pool, db.TxOptions{MaxElapsed: l.cfg.RenewEvery}, func(tx pgx.Tx) error {
		var holder string
		var e int64
		var expired bool
		if err := tx.QueryRow(ctx, `SELECT holder, epoch, expires_at <= now() FROM leader_lease WHERE id = 1 FOR UPDATE`).
			Scan(&holder, &e, &expired); err != nil {
			return err
		}
		won = false
		switch {
		case holder == l.holder && cur != nil && cur.Epoch == e && !expired:
			epoch = e
			_, err := tx.Exec(ctx, `UPDATE leader_lease SET expires_at = now() + $1::interval WHERE id = 1`, l.cfg.TTL.String())
			return err
		case expired || holder == "" || (holder == l.holder && (cur == nil || cur.Epoch != e)):
			// Take it (also when we held it in a term we already gave up:
			// a new term needs a new epoch).
			epoch, won = e+1, true
			if _, err := tx.Exec(ctx, `UPDATE leader_lease SET holder = $1, epoch = $2, expires_at = now() + $3::interval WHERE id = 1`,
				l.holder, epoch, l.cfg.TTL.String()); err != nil {
				return err
			}
			// Raise our own database's fence in the same transaction.
			_, err := tx.Exec(ctx, `UPDATE fence SET epoch = $1 WHERE id = 1 AND epoch < $1`, epoch)
			return err
		default:
			epoch = -1 // someone else holds a live lease
			return nil
		}
	})
	switch {
	case err != nil:
		if cur != nil && !cur.Valid() {
			l.endTerm("renewal failing and lease running out: " + err.Error())
		} else if ctx.Err() == nil {
			l.logger.Warn("lease renewal failed", "err", err)
		}
		if ctx.Err() == nil && db.IsUnreachable(err) {
			// A renewal that fails on a broken connection tick after tick
			// (seen under lost COMMIT answers: "conn closed" every 6 s for
			// minutes, the request waiting on a leader that never came
			// back) must not depend on the pool noticing: every pooled
			// connection is dropped, in-use ones when released, and the
			// next tick dials afresh. Work in flight keeps its connection.
			l.logger.Warn("lease renewal failed on a broken connection: reconnecting the pool")
			l.pool.Reset()
		}
	case epoch == -1:
		if cur != nil {
			l.endTerm("another process holds the lease")
		}
	case won:
		if cur != nil {
			l.endTerm("re-elected with a new epoch")
		}
		term := l.newTerm(ctx, epoch, started.Add(l.cfg.TTL))
		l.logger.Info("elected leader", "epoch", epoch)
		go onElected(term)
	default:
		cur.extend(started.Add(l.cfg.TTL))
	}
}

// release ends the term and, on a clean shutdown, gives the lease up at
// once so a standby need not wait for it to expire.
func (l *Lease) release() {
	t := l.Current()
	l.endTerm("shutting down")
	if t == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := l.pool.Exec(ctx, `UPDATE leader_lease SET expires_at = now() WHERE id = 1 AND holder = $1 AND epoch = $2`, l.holder, t.Epoch)
	if err != nil {
		l.logger.Warn("releasing the lease", "err", err)
	}
}

func (l *Lease) newTerm(ctx context.Context, epoch int64, until time.Time) *Term {
	t := &Term{Epoch: epoch, validUntil: until, minRemain: l.cfg.MinRemaining}
	c := fence.NewContext(ctx, epoch)
	c = fence.WithEpoch(c, epoch)
	c = context.WithValue(c, termKey{}, t)
	t.Ctx, t.cancel = context.WithCancel(c)
	l.mu.Lock()
	l.term = t
	l.mu.Unlock()
	return t
}

func (l *Lease) endTerm(why string) {
	l.mu.Lock()
	t := l.term
	l.term = nil
	l.mu.Unlock()
	if t != nil && t.Ctx.Err() == nil {
		l.logger.Warn("leadership ended", "epoch", t.Epoch, "why", why)
		t.cancel()
	}
}

// ErrNotLeader is returned for work attempted outside a valid term.
var ErrNotLeader = errors.New("not the leader, or the lease is too short to start a call")

// UnaryClientInterceptor refuses outgoing calls made in a term that may no
// longer issue work (remaining lease shorter than MinRemaining), so a
// leader about to lose its lease stops before its successor starts.
func UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if t := FromContext(ctx); t != nil && !t.Valid() {
			return status.Error(codes.Unavailable, ErrNotLeader.Error())
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}
