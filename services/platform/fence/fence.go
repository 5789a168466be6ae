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
package fence

import (
	"context"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	"storagecp.dev/platform/db"
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

// UnaryServerInterceptor moves the epoch from metadata into the context.
func UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := fromMetadata(ctx)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor moves the epoch from metadata into the context.
func StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := fromMetadata(ss.Context())
		if err != nil {
			return err
		}
		return handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
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
	if err := tx.QueryRow(ctx, advanceSQL, e).Scan(&newest); err != nil {
		return err
	}
	if e < newest {
		return errStale(e, newest)
	}
	return nil
}

// advanceSQL raises the fence to $1 if it is lower and returns the epoch
// it found (the statement's snapshot: the value before its own update).
const advanceSQL = `WITH advance AS (UPDATE fence SET epoch = $1 WHERE id = 1 AND epoch < $1)
SELECT epoch FROM fence WHERE id = 1`

// Prelude is Check as a db.TxOptions.Prelude, so that the fence travels in
// the transaction's first pipeline instead of costing a round trip of its
// own; its check refuses a stale epoch before the transaction's first
// statement returns (that statement ran, but in a transaction that then
// rolls back). Nil without an epoch in ctx, as Check does nothing then.
func Prelude(ctx context.Context) db.Prelude {
	e, ok := FromContext(ctx)
	if !ok {
		return nil
	}
	return func(b *pgx.Batch) func() error {
		var newest int64
		b.Queue(advanceSQL, e).QueryRow(func(row pgx.Row) error { return row.Scan(&newest) })
		return func() error {
			if e < newest {
				return errStale(e, newest)
			}
			return nil
		}
	}
}

// InTx runs fn in a mutating transaction (db.InTx) fenced by the epoch in
// ctx, the fence going out with the transaction's first statement.
func InTx(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
	return db.InTxOpts(ctx, pool, db.TxOptions{Prelude: Prelude(ctx)}, fn)
}

// Server serves storage.common.v1.FenceService over a service's database.
type Server struct {
	commonv1.UnimplementedFenceServiceServer
	pool *pgxpool.Pool
}

// NewServer returns the FenceService of a service's database.
func NewServer(pool *pgxpool.Pool) *Server { return &Server{pool: pool} }

// AdvanceEpoch raises the fence to the request's epoch.
func (s *Server) AdvanceEpoch(ctx context.Context, req *commonv1.AdvanceEpochRequest) (*commonv1.AdvanceEpochResponse, error) {
	if req.Epoch < 0 {
		return nil, status.Error(codes.InvalidArgument, "epoch: must not be negative")
	}
	ctx = NewContext(ctx, req.Epoch)
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
