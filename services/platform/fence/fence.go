// Package fence carries the orchestrator leader's epoch on every mutating
// RPC and rejects mutations from a stale leader.
//
// The leader lease (held by the orchestrator) has an epoch that rises at every
// change of leader. The leader attaches it to outgoing calls (WithEpoch); each
// service's interceptor puts it into the request context; each mutating
// transaction calls Check, which compares it with the newest epoch this
// service's database has seen and either records the newer one or refuses.
// A paused leader that wakes up therefore cannot change anything once any
// call from its successor has landed.
//
// # Log lines
//
// Every change of the fence, and every refusal, leaves one line in the
// service's log (the logger given to UnaryServerInterceptor,
// StreamServerInterceptor and NewServer), so that the logs of a deployment
// show which leader acted when (testsupport/fencelog checks them):
//
//   - Info "fence raised", attributes from (the epoch the transaction
//     found), to (the call's epoch), method (the gRPC full method) and
//     caller (the SPIFFE ID of the caller's certificate, else the peer
//     address). Logged when the transaction that raised the fence has
//     committed, by AdvanceEpoch or by any fenced mutation carrying a newer
//     epoch; a raise in a transaction that rolled back (or an attempt that
//     was retried) logs nothing. At most one per call, since a call carries
//     one epoch.
//   - Warn "fence refused stale epoch", attributes epoch (the call's),
//     newest (the fence's), method and caller. At most one per call.
//
// # Metric
//
// Every refusal the log shows is also counted in the counter
// storagecp.fence.refused (Prometheus: storagecp_fence_refused_total) of
// the process's meter provider, with one attribute, method: the gRPC full
// method, or "internal" for a fenced transaction of the service's own that
// no call brought (the orchestrator's, in its own database). Like the log
// line, at most one per call. Nothing else about the call goes in (not
// the caller, not the epochs): a label's values must stay few, and a
// refusal's detail is in the log. Any increase means a process went on
// acting after it lost the leader lease and the fence stopped it.
//
// Accepted writes at the current epoch log nothing: raises happen once per
// change of leader and refusals only for a stale leader, so this is cheap.
// Only calls that came through the interceptors (or AdvanceEpoch) are
// logged: a fenced transaction of the orchestrator's own term, whose epoch
// the lease itself recorded, is not.
//
// A raise is seen to commit through db.AfterCommit, which needs the
// transaction InTx (or db.InTx) made. For any other transaction given to
// Check, and for Prelude used outside InTx, the raise of the last fenced
// statement of the call is logged when the handler returns without error
// instead: a handler that fails after its fenced transaction committed
// then leaves no line. No service does that today.
package fence

import (
	"context"
	"log/slog"
	"strconv"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/mtls"
)

// MetadataKey is the gRPC metadata key of the epoch.
const MetadataKey = "storagecp-epoch"

type ctxKey struct{}

// WithEpoch returns a context whose outgoing calls carry epoch.
func WithEpoch(ctx context.Context, epoch int64) context.Context {
	return metadata.AppendToOutgoingContext(ctx, MetadataKey, strconv.FormatInt(epoch, 10))
}

// FromContext returns the epoch a request carried, if any.
func FromContext(ctx context.Context) (int64, bool) {
	e, ok := ctx.Value(ctxKey{}).(int64)
	return e, ok
}

// NewContext returns ctx carrying epoch as if a request had brought it.
func NewContext(ctx context.Context, epoch int64) context.Context {
	return context.WithValue(ctx, ctxKey{}, epoch)
}

func fromMetadata(ctx context.Context) (context.Context, error) {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return ctx, nil
	}
	vals := md.Get(MetadataKey)
	if len(vals) == 0 {
		return ctx, nil
	}
	e, err := strconv.ParseInt(vals[len(vals)-1], 10, 64)
	if err != nil || e < 0 {
		return ctx, status.Errorf(codes.InvalidArgument, "metadata %s: not a non-negative integer", MetadataKey)
	}
	return NewContext(ctx, e), nil
}

// UnaryServerInterceptor moves the epoch from metadata into the context and
// logs what the fence did in the call (see the package comment) on logger
// (nil: nowhere).
func UnaryServerInterceptor(logger *slog.Logger) grpc.UnaryServerInterceptor {
	logger = orDiscard(logger)
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := fromMetadata(ctx)
		if err != nil {
			return nil, err
		}
		ctx, c := withCall(ctx, logger, info.FullMethod)
		resp, err := handler(ctx, req)
		c.done(ctx, err)
		return resp, err
	}
}

// StreamServerInterceptor moves the epoch from metadata into the context and
// logs what the fence did in the call on logger (nil: nowhere).
func StreamServerInterceptor(logger *slog.Logger) grpc.StreamServerInterceptor {
	logger = orDiscard(logger)
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := fromMetadata(ss.Context())
		if err != nil {
			return err
		}
		ctx, c := withCall(ctx, logger, info.FullMethod)
		err = handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
		c.done(ctx, err)
		return err
	}
}

func orDiscard(logger *slog.Logger) *slog.Logger {
	if logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return logger
}

// call is what one call's fence did, for its log lines. It lives in the
// call's context; Check and Prelude find it there.
type call struct {
	logger *slog.Logger
	method string

	mu      sync.Mutex
	refused bool
	raised  bool
	// pending is a raise whose commit this package cannot see (a
	// transaction not made by InTx): logged if the handler succeeds.
	pending *[2]int64
}

type callKey struct{}

// withCall gives a call its record: every call, as one without an epoch in
// its metadata may still carry one in its request (AdvanceEpoch).
func withCall(ctx context.Context, logger *slog.Logger, method string) (context.Context, *call) {
	c := &call{logger: logger, method: method}
	return context.WithValue(ctx, callKey{}, c), c
}

func callFrom(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	return c
}

// caller is the identity of the call's peer: the SPIFFE ID of its
// certificate, else its address.
func caller(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "unknown"
	}
	if id, ok := mtls.PeerID(p); ok && id != mtls.Anonymous {
		return id
	}
	if p.Addr == nil {
		return "unknown"
	}
	return p.Addr.String()
}

func (c *call) logRaise(ctx context.Context, from, to int64) {
	c.mu.Lock()
	dup := c.raised
	c.raised = true
	c.mu.Unlock()
	if dup {
		return
	}
	c.logger.LogAttrs(ctx, slog.LevelInfo, "fence raised",
		slog.Int64("from", from), slog.Int64("to", to),
		slog.String("method", c.method), slog.String("caller", caller(ctx)))
}

// noteRefusal logs and counts the call's first refusal; a refusal outside
// any call is only counted.
func noteRefusal(ctx context.Context, epoch, newest int64) {
	c := callFrom(ctx)
	if c == nil {
		countRefusal(ctx, "internal")
		return
	}
	c.mu.Lock()
	dup := c.refused
	c.refused = true
	c.mu.Unlock()
	if dup {
		return
	}
	countRefusal(ctx, c.method)
	c.logger.LogAttrs(ctx, slog.LevelWarn, "fence refused stale epoch",
		slog.Int64("epoch", epoch), slog.Int64("newest", newest),
		slog.String("method", c.method), slog.String("caller", caller(ctx)))
}

// countRefusal adds one to storagecp.fence.refused. The instrument is
// looked up at each refusal rather than kept: refusals are rare, the meter
// provider returns the same instrument for the same name, and so the
// package keeps no state and always counts on the provider the process
// installed.
func countRefusal(ctx context.Context, method string) {
	c, err := otel.Meter("storagecp.dev/platform/fence").Int64Counter("storagecp.fence.refused",
		metric.WithDescription("fenced mutations refused because they carried a stale leader epoch, by gRPC method (\"internal\": a transaction no call brought); at most one per call"))
	if err != nil {
		return
	}
	c.Add(ctx, 1, metric.WithAttributes(attribute.String("method", method)))
}

// noteOutcome records what a fenced statement that was not refused did:
// raised the fence (from → to) or not. tx is the statement's transaction,
// nil when unknown.
func noteOutcome(ctx context.Context, tx pgx.Tx, raised bool, from, to int64) {
	c := callFrom(ctx)
	if c == nil {
		return
	}
	if tx != nil && db.AfterCommit(tx, nil) {
		if raised {
			db.AfterCommit(tx, func() { c.logRaise(ctx, from, to) })
		}
		return
	}
	// The commit is out of sight: the last fenced statement of the call
	// says what its transaction will have done if the handler succeeds
	// (an attempt that is retried is overwritten by the next one).
	c.mu.Lock()
	defer c.mu.Unlock()
	if raised {
		c.pending = &[2]int64{from, to}
	} else {
		c.pending = nil
	}
}

// done logs a raise the call made in a transaction whose commit could not
// be seen, if the handler succeeded.
func (c *call) done(ctx context.Context, err error) {
	if c == nil || err != nil {
		return
	}
	c.mu.Lock()
	p := c.pending
	c.pending = nil
	c.mu.Unlock()
	if p != nil {
		c.logRaise(ctx, p[0], p[1])
	}
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

// ErrStale is the status a stale epoch gets.
func errStale(have, newest int64) error {
	return status.Errorf(codes.FailedPrecondition, "stale epoch: request carries %d, newest seen is %d", have, newest)
}

// Check runs inside a mutating transaction; the service's database must
// have the one-row `fence (id, epoch)` table (each service's 001
// migration). Without an epoch in ctx (an operator or a test calling
// directly) it does nothing. With one, it refuses an epoch older than the
// newest recorded, and records a newer one in the same transaction, so the
// mutation and the fence commit together.
func Check(ctx context.Context, tx pgx.Tx) error {
	e, ok := FromContext(ctx)
	if !ok {
		return nil
	}
	var newest int64
	var raised bool
	if err := tx.QueryRow(ctx, advanceSQL, e).Scan(&newest, &raised); err != nil {
		return err
	}
	return verdict(ctx, tx, e, newest, raised)
}

// verdict refuses a stale epoch, and records for the log what the fence
// statement did.
func verdict(ctx context.Context, tx pgx.Tx, e, newest int64, raised bool) error {
	if e < newest {
		noteRefusal(ctx, e, newest)
		return errStale(e, newest)
	}
	noteOutcome(ctx, tx, raised, newest, e)
	return nil
}

// advanceSQL raises the fence to $1 if it is lower and returns the epoch
// it found (the statement's snapshot: the value before its own update)
// and whether it raised it.
const advanceSQL = `WITH advance AS (UPDATE fence SET epoch = $1 WHERE id = 1 AND epoch < $1 RETURNING 1)
SELECT epoch, EXISTS (SELECT 1 FROM advance) FROM fence WHERE id = 1`

// Prelude is Check as a db.TxOptions.Prelude, so that the fence travels in
// the transaction's first pipeline instead of costing a round trip of its
// own; its check refuses a stale epoch before the transaction's first
// statement returns (that statement ran, but in a transaction that then
// rolls back). Nil without an epoch in ctx, as Check does nothing then.
// Prefer InTx: only there can a raise be logged as soon as it commits.
func Prelude(ctx context.Context) db.Prelude {
	return prelude(ctx, nil)
}

// prelude is Prelude; attempt, if set, returns the transaction of the
// attempt being made.
func prelude(ctx context.Context, attempt func() pgx.Tx) db.Prelude {
	e, ok := FromContext(ctx)
	if !ok {
		return nil
	}
	return func(b *pgx.Batch) func() error {
		var newest int64
		var raised bool
		b.Queue(advanceSQL, e).QueryRow(func(row pgx.Row) error { return row.Scan(&newest, &raised) })
		return func() error {
			var tx pgx.Tx
			if attempt != nil {
				tx = attempt()
			}
			return verdict(ctx, tx, e, newest, raised)
		}
	}
}

// InTx runs fn in a mutating transaction (db.InTx) fenced by the epoch in
// ctx, the fence going out with the transaction's first statement.
func InTx(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
	var tx pgx.Tx // the current attempt's: its prelude runs inside fn
	p := prelude(ctx, func() pgx.Tx { return tx })
	return db.InTxOpts(ctx, pool, db.TxOptions{Prelude: p}, func(t pgx.Tx) error {
		tx = t
		return fn(t)
	})
}

// Server serves storage.common.v1.FenceService over a service's database.
type Server struct {
	commonv1.UnimplementedFenceServiceServer
	pool   *pgxpool.Pool
	logger *slog.Logger
}

// NewServer returns the FenceService of a service's database. Its raises
// and refusals are logged by the interceptors, or on logger (nil: nowhere)
// when it is called without them.
func NewServer(pool *pgxpool.Pool, logger *slog.Logger) *Server {
	return &Server{pool: pool, logger: orDiscard(logger)}
}

// AdvanceEpoch raises the fence to the request's epoch.
func (s *Server) AdvanceEpoch(ctx context.Context, req *commonv1.AdvanceEpochRequest) (*commonv1.AdvanceEpochResponse, error) {
	if req.Epoch < 0 {
		return nil, status.Error(codes.InvalidArgument, "epoch: must not be negative")
	}
	ctx = NewContext(ctx, req.Epoch)
	if callFrom(ctx) == nil {
		// Called without the interceptors: this call's log lines are the
		// server's own. Its transaction is db.InTx's, so a raise is logged
		// at its commit and needs no call.done.
		ctx, _ = withCall(ctx, s.logger, commonv1.FenceService_AdvanceEpoch_FullMethodName)
	}
	var newest int64
	err := db.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		if err := Check(ctx, tx); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT epoch FROM fence WHERE id = 1`).Scan(&newest)
	})
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &commonv1.AdvanceEpochResponse{Epoch: newest}, nil
}
