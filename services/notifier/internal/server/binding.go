package server

import (
	"context"
	"slices"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"storagecp.dev/platform/mtls"
)

// upstairsIdentity is the verified SPIFFE ID of the Upstairs server at the
// other end of a call made with grpc.Peer(p), or "" when there is none to
// record (a plaintext deployment).
func upstairsIdentity(p *peer.Peer) string {
	id, ok := mtls.PeerID(p)
	if !ok || id == mtls.Anonymous {
		return ""
	}
	return id
}

// authorizeReport is the check every Upstairs report (RepairStart,
// RepairFinish, RepairProgress, DownstairsStopRequest, DownstairsStopped)
// makes before recording anything. The authorization policy is per method:
// it lets any upstairs/* identity call these, whatever upstairs_id the
// request names. Without this check one Upstairs could report for another,
// e.g. claim that another's repair finished, which the replacement
// orchestrator would act on. So an upstairs_id is bound to the identity of
// the Upstairs server that accepted its activation (recorded by
// ConstructVolume), and only that identity may report for it.
func (s *Server) authorizeReport(ctx context.Context, upstairsID uuid.UUID) error {
	caller, ok := mtls.Caller(ctx)
	if !ok {
		// The handshake already refuses a TLS peer without an SVID.
		return status.Error(codes.PermissionDenied, "the caller presented no verified identity")
	}
	return s.reporterMayReportFor(ctx, caller, upstairsID)
}

// reporterMayReportFor is authorizeReport's rule for a known caller:
//   - Anonymous (a plaintext --insecure deployment, where nobody has an
//     identity to check) may report for anyone;
//   - an upstairs_id with no attachment, or none with a recorded identity,
//     is accepted: upstairs ids are random UUIDs handed out at activation,
//     so an unknown one names no one else's Upstairs, and a report racing
//     its own construction (before the activation is recorded) is kept;
//   - otherwise the caller must be one of the identities recorded for the
//     upstairs_id (one, unless the same id was given to constructions on
//     Upstairs of different identities), else PermissionDenied naming
//     both, and nothing is recorded.
func (s *Server) reporterMayReportFor(ctx context.Context, caller string, upstairsID uuid.UUID) error {
	if caller == mtls.Anonymous {
		return nil
	}
	runsAs, err := s.store.UpstairsIdentities(ctx, upstairsID)
	if err != nil {
		return s.storeError(ctx, "upstairs identities", err)
	}
	if len(runsAs) == 0 || slices.Contains(runsAs, caller) {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "%s may not report for Upstairs %s, which runs as %s",
		caller, upstairsID, strings.Join(runsAs, " and "))
}
