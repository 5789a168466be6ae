package server

import (
	"context"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/mtls"
)

// holdTarget checks a pause or resume request's subject: exactly one of a
// request id and the rack. uuid.Nil names the rack.
func holdTarget(id string, rack bool) (uuid.UUID, error) {
	switch {
	case id == "" && !rack:
		return uuid.Nil, status.Error(codes.InvalidArgument, "replacement_id: name a request, or set rack to hold every request")
	case id != "" && rack:
		return uuid.Nil, status.Error(codes.InvalidArgument, "rack: give either replacement_id or rack, not both")
	case rack:
		return uuid.Nil, nil
	}
	return ids.Parse("replacement_id", id)
}

// PauseReplacement implements ReplacementService (package pause holds the
// contract). The leader serves it: the hold and the tasks' saga starts go
// through the same gate.
func (r *replacement) PauseReplacement(ctx context.Context, req *orchestratorv1.PauseReplacementRequest) (*orchestratorv1.PauseReplacementResponse, error) {
	id, err := holdTarget(req.ReplacementId, req.Rack)
	if err != nil {
		return nil, err
	}
	reason := strings.TrimSpace(req.Reason)
	if reason == "" {
		return nil, status.Error(codes.InvalidArgument, "reason: required (it is shown with the pause)")
	}
	if len(reason) > 1000 {
		return nil, status.Error(codes.InvalidArgument, "reason: longer than 1000 bytes")
	}
	if _, err := r.s.currentSEC(); err != nil {
		return nil, err
	}
	by, ok := mtls.Caller(ctx)
	if !ok || by == "" {
		by = "unverified"
	}
	p, withdrawn, err := r.s.app.Pauses().Pause(ctx, id, by, reason)
	if err != nil {
		return nil, r.s.status(ctx, err)
	}
	r.s.logger.InfoContext(ctx, "replacement paused", "replacement_id", idOrRack(id), "by", by, "reason", reason, "steps_withdrawn", withdrawn)
	out := &orchestratorv1.PauseReplacementResponse{StepsWithdrawn: withdrawn}
	if id == uuid.Nil {
		out.RackPause = pauseProto(&p)
		return out, nil
	}
	got, err := r.GetReplacement(ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: id.String()})
	if err != nil {
		return nil, err
	}
	out.Replacement = got.Replacement
	return out, nil
}

// ResumeReplacement implements ReplacementService.
func (r *replacement) ResumeReplacement(ctx context.Context, req *orchestratorv1.ResumeReplacementRequest) (*orchestratorv1.ResumeReplacementResponse, error) {
	id, err := holdTarget(req.ReplacementId, req.Rack)
	if err != nil {
		return nil, err
	}
	if _, err := r.s.currentSEC(); err != nil {
		return nil, err
	}
	gate := r.s.app.Pauses()
	if err := gate.Resume(ctx, id); err != nil {
		return nil, r.s.status(ctx, err)
	}
	by, _ := mtls.Caller(ctx)
	r.s.logger.InfoContext(ctx, "replacement resumed", "replacement_id", idOrRack(id), "by", by)
	// Every task may have work the hold kept back.
	sagadef.Wakeup(r.s.deps.Wake.All)
	rack, _ := gate.Of(uuid.Nil)
	out := &orchestratorv1.ResumeReplacementResponse{RackPaused: rack != nil}
	if id == uuid.Nil {
		return out, nil
	}
	got, err := r.GetReplacement(ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: id.String()})
	if err != nil {
		return nil, err
	}
	out.Replacement = got.Replacement
	return out, nil
}

func idOrRack(id uuid.UUID) string {
	if id == uuid.Nil {
		return "rack"
	}
	return id.String()
}
