// Package authz decides, per RPC, whether the caller may call the method,
// and leaves an audit line for every call that changes something or is
// refused.
//
// Who may call what is declared in one policy file (deploy/authz/policy.json
// in the repository), in grpc-go's authorization-policy format: rules of
// SPIFFE IDs (the callers' certificate identities, platform/mtls) and
// method paths. grpc-go's authz package evaluates it and re-reads the file
// when it changes, so a policy change needs no restart. Everything not
// allowed is refused: a method missing from the policy is callable by
// nobody.
//
// Around that evaluation this package adds what an operator needs:
//   - a refusal says which caller was refused which method
//     (PermissionDenied "spiffe://…/viewer/bob may not call /…/AbandonSaga"),
//     where grpc-go's says only "unauthorized";
//   - every call of a mutating method, allowed or refused, and every refusal
//     logs one line "audit" with the caller, the method, the ids in the
//     request, the outcome and the trace id; never a key, because only
//     identifier fields are copied (see ids);
//   - refusals are counted in storagecp_authz_denied_total{method,identity}.
//
// A plaintext server (--insecure) has no identities to check: every call is
// allowed and audited as Anonymous.
package authz

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	grpcauthz "google.golang.org/grpc/authz"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"storagecp.dev/platform/mtls"
)

// RefreshInterval is how often the policy file is re-read.
const RefreshInterval = 2 * time.Second

// Guard holds the policy and the audit log.
type Guard struct {
	policy *grpcauthz.FileWatcherInterceptor // nil: allow everything (plaintext)
	logger *slog.Logger
	denied metric.Int64Counter
}

// New loads the policy file (failing if it is missing or invalid) and keeps
// it fresh until Close. An empty path means no authorization, which only a
// plaintext server may ask for.
func New(policyPath string, logger *slog.Logger) (*Guard, error) {
	g := &Guard{logger: logger}
	if policyPath != "" {
		fw, err := grpcauthz.NewFileWatcher(policyPath, RefreshInterval)
		if err != nil {
			return nil, fmt.Errorf("authorization policy %s: %w", policyPath, err)
		}
		g.policy = fw
	}
	denied, err := otel.Meter("storagecp.dev/platform/authz").Int64Counter("storagecp_authz_denied",
		metric.WithDescription("Calls refused by the authorization policy, by method and caller identity."))
	if err != nil {
		return nil, err
	}
	g.denied = denied
	return g, nil
}

// Close stops re-reading the policy.
func (g *Guard) Close() {
	if g.policy != nil {
		g.policy.Close()
	}
}

// Unary is the server interceptor for unary calls.
func (g *Guard) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		reached := false
		inner := func(ctx context.Context, req any) (any, error) {
			reached = true
			return handler(ctx, req)
		}
		var resp any
		var err error
		if g.policy != nil {
			resp, err = g.policy.UnaryInterceptor(ctx, req, info, inner)
		} else {
			resp, err = inner(ctx, req)
		}
		err = g.after(ctx, info.FullMethod, req, reached, err)
		return resp, err
	}
}

// Stream is the server interceptor for streaming calls. A stream's request
// arrives after the decision, so its audit line names no ids.
func (g *Guard) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		reached := false
		inner := func(srv any, ss grpc.ServerStream) error {
			reached = true
			return handler(srv, ss)
		}
		var err error
		if g.policy != nil {
			err = g.policy.StreamInterceptor(srv, ss, info, inner)
		} else {
			err = inner(srv, ss)
		}
		return g.after(ss.Context(), info.FullMethod, nil, reached, err)
	}
}

// after turns a refusal into one that names the caller and the method,
// counts it, and writes the audit line.
func (g *Guard) after(ctx context.Context, method string, req any, reached bool, err error) error {
	caller, _ := mtls.Caller(ctx)
	if caller == "" {
		caller = "unverified"
	}
	refused := !reached && status.Code(err) == codes.PermissionDenied
	if refused {
		err = status.Errorf(codes.PermissionDenied, "%s may not call %s", caller, method)
		g.denied.Add(ctx, 1, metric.WithAttributes(attribute.String("method", method), attribute.String("identity", caller)))
	}
	if refused || !ReadOnly(method) {
		g.audit(ctx, caller, method, req, reached, err)
	}
	return err
}

func (g *Guard) audit(ctx context.Context, caller, method string, req any, reached bool, err error) {
	outcome := "allowed"
	if !reached {
		outcome = "denied"
	}
	attrs := []any{
		slog.String("caller", caller),
		slog.String("method", method),
		slog.String("outcome", outcome),
		slog.String("code", status.Code(err).String()),
	}
	if m, ok := req.(proto.Message); ok {
		if ids := IDs(m); len(ids) > 0 {
			attrs = append(attrs, slog.Any("ids", ids))
		}
	}
	// The trace id comes from ctx: the process's log handler adds it to
	// every line logged with a span's context (platform/telemetry).
	g.logger.LogAttrs(ctx, slog.LevelInfo, "audit", toAttrs(attrs)...)
}

func toAttrs(in []any) []slog.Attr {
	out := make([]slog.Attr, 0, len(in))
	for _, a := range in {
		out = append(out, a.(slog.Attr))
	}
	return out
}

// readOnlyPrefixes are the method-name prefixes of calls that change
// nothing. Everything else is mutating, so a new RPC is audited unless its
// name says it only reads.
var readOnlyPrefixes = []string{"Get", "List", "Watch", "Preview", "Validate", "CheckInvariants", "Find", "DryRun", "Resolve", "Probe", "WaitIdle", "VolumeReferences", "ServerReflectionInfo"}

// ReadOnly reports whether the method (a full gRPC method path,
// "/pkg.Service/Method") changes nothing: a read, a preview, a check.
func ReadOnly(fullMethod string) bool {
	if strings.HasPrefix(fullMethod, "/grpc.health.") || strings.HasPrefix(fullMethod, "/grpc.reflection.") {
		return true
	}
	name := fullMethod[strings.LastIndex(fullMethod, "/")+1:]
	for _, p := range readOnlyPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// IDs copies the identifier fields of a request into a map for the audit
// line: top-level string fields named id, *_id, *_ids, and addresses of
// targets. Nothing else is copied (a VCR, a key, a payload), so an audit
// line cannot carry a secret however the request grows.
func IDs(m proto.Message) map[string]any {
	out := map[string]any{}
	r := m.ProtoReflect()
	r.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.StringKind || fd.IsMap() || !identifying(string(fd.Name())) {
			return true
		}
		if fd.IsList() {
			l := v.List()
			vals := make([]string, 0, l.Len())
			for i := 0; i < l.Len() && i < 32; i++ {
				vals = append(vals, l.Get(i).String())
			}
			if l.Len() > 32 {
				vals = append(vals, fmt.Sprintf("… %d more", l.Len()-32))
			}
			out[string(fd.Name())] = vals
			return true
		}
		out[string(fd.Name())] = v.String()
		return true
	})
	return out
}

func identifying(name string) bool {
	if strings.Contains(name, "key") || strings.Contains(name, "secret") {
		return false
	}
	return name == "id" || strings.HasSuffix(name, "_id") || strings.HasSuffix(name, "_ids") ||
		strings.HasSuffix(name, "target") || strings.HasSuffix(name, "targets") || strings.HasSuffix(name, "address") || name == "disk" || name == "sled"
}
