package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

// actionHeader must accompany every action: a page of another origin
// cannot add it without a CORS preflight, which this server never grants.
const actionHeader = "X-Storagecp-Console"

// actionRequest is an action's body.
type actionRequest struct {
	// ID names the disk, request or saga.
	ID string `json:"id"`
	// Reason is the operator's comment (cancel, pause, abandon).
	Reason string `json:"reason"`
}

type actionResponse struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  *errorEnvelope  `json:"error,omitempty"`
	// Identity is who the call was made as.
	Identity string `json:"identity"`
}

// action runs one operator action. The confirmation step is the page's
// (preview-expunge shows what an expunge would do before the page offers
// it); the server checks only what the RPCs check, and passes their
// answer, refusal included, back to the page.
func (s *Server) action(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get(actionHeader) != "1" {
		writeJSON(w, http.StatusForbidden, actionResponse{Error: &errorEnvelope{Code: "PermissionDenied", Message: "actions need the " + actionHeader + " header"}})
		return
	}
	if o := r.Header.Get("Origin"); o != "" {
		if u, err := url.Parse(o); err != nil || u.Host != r.Host {
			writeJSON(w, http.StatusForbidden, actionResponse{Error: &errorEnvelope{Code: "PermissionDenied", Message: "cross-origin action refused"}})
			return
		}
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		writeJSON(w, http.StatusUnsupportedMediaType, actionResponse{Error: &errorEnvelope{Code: "InvalidArgument", Message: "body must be application/json"}})
		return
	}
	var req actionRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, actionResponse{Error: &errorEnvelope{Code: "InvalidArgument", Message: "body: " + err.Error()}})
		return
	}
	name := r.PathValue("name")
	ctx, cancel := context.WithTimeout(r.Context(), s.o.CallTimeout)
	defer cancel()
	identity := s.o.ActionsIdentity
	if name == "preview-expunge" {
		identity = s.o.Identity
	}
	res, err := s.run(ctx, name, req)
	if err != nil {
		e := errorOf(err)
		s.o.Logger.Warn("console: action failed", "action", name, "id", req.ID, "code", e.Code, "err", err)
		writeJSON(w, httpStatus(err), actionResponse{Error: e, Identity: identity})
		return
	}
	writeJSON(w, http.StatusOK, actionResponse{Result: pbJSON(res), Identity: identity})
}

func (s *Server) run(ctx context.Context, name string, req actionRequest) (proto.Message, error) {
	if req.ID == "" {
		return nil, status.Error(codes.InvalidArgument, "id: required")
	}
	a := s.o.Actions
	switch name {
	case "preview-expunge":
		// A read: the page shows it before it offers the expunge.
		return s.o.Reads.Replacement.PreviewExpunge(ctx, &orchestratorv1.PreviewExpungeRequest{DiskId: req.ID})
	case "expunge":
		resp, err := a.Allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: req.ID})
		if err != nil {
			return nil, err
		}
		// As `storctl disks expunge`: the detectors run now rather than
		// on their period.
		for _, t := range s.o.Detectors {
			if _, err := a.Admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: t}); err != nil {
				return nil, fmt.Errorf("expunged, but activating %s failed (it runs on its period anyway): %w", t, err)
			}
		}
		return resp, nil
	case "pause":
		return a.Replacement.PauseReplacement(ctx, &orchestratorv1.PauseReplacementRequest{ReplacementId: req.ID, Reason: req.Reason})
	case "resume":
		return a.Replacement.ResumeReplacement(ctx, &orchestratorv1.ResumeReplacementRequest{ReplacementId: req.ID})
	case "cancel":
		return a.Replacement.CancelReplacement(ctx, &orchestratorv1.CancelReplacementRequest{ReplacementId: req.ID, Reason: req.Reason})
	case "abandon":
		return a.Admin.AbandonSaga(ctx, &orchestratorv1.AbandonSagaRequest{SagaId: req.ID, Comment: req.Reason})
	}
	return nil, status.Errorf(codes.NotFound, "action %q: no such action (preview-expunge, expunge, pause, resume, cancel, abandon)", name)
}

// httpStatus maps a refusal to its HTTP status; the body carries the gRPC
// code and message either way.
func httpStatus(err error) int {
	var code codes.Code
	if st, ok := status.FromError(unwrapStatus(err)); ok {
		code = st.Code()
	} else if errors.Is(err, context.DeadlineExceeded) {
		code = codes.DeadlineExceeded
	} else {
		code = codes.Unknown
	}
	switch code {
	case codes.PermissionDenied, codes.Unauthenticated:
		return http.StatusForbidden
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.Unavailable, codes.DeadlineExceeded:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
