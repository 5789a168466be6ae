package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/tasks"
	"storagecp.dev/orchestrator/internal/validate"
)

type admin struct {
	orchestratorv1.UnimplementedAdminServiceServer
	s *Server
}

func (a *admin) ListBackgroundTasks(ctx context.Context, _ *orchestratorv1.ListBackgroundTasksRequest) (*orchestratorv1.ListBackgroundTasksResponse, error) {
	out := &orchestratorv1.ListBackgroundTasksResponse{}
	for _, st := range a.s.driver.Statuses() {
		t := &orchestratorv1.BackgroundTask{
			Name: st.Name, Description: st.Description, Period: durationpb.New(st.Period),
			LastStatusJson: string(st.LastStatus), Activations: st.Activations, SagasInFlight: st.SagasInFlight,
		}
		if !st.LastStarted.IsZero() {
			t.LastStarted = timestamppb.New(st.LastStarted)
		}
		if !st.LastFinished.IsZero() {
			t.LastFinished = timestamppb.New(st.LastFinished)
		}
		out.Tasks = append(out.Tasks, t)
	}
	return out, nil
}

func (a *admin) ActivateBackgroundTask(ctx context.Context, req *orchestratorv1.ActivateBackgroundTaskRequest) (*orchestratorv1.ActivateBackgroundTaskResponse, error) {
	if err := a.s.driver.Activate(req.Name); errors.Is(err, tasks.ErrUnknownTask) {
		return nil, status.Errorf(codes.NotFound, "name: no background task %q", req.Name)
	}
	return &orchestratorv1.ActivateBackgroundTaskResponse{}, nil
}

var sagaStates = map[orchestratorv1.SagaState]string{
	orchestratorv1.SagaState_SAGA_STATE_RUNNING:   "running",
	orchestratorv1.SagaState_SAGA_STATE_UNWINDING: "unwinding",
	orchestratorv1.SagaState_SAGA_STATE_DONE:      "done",
	orchestratorv1.SagaState_SAGA_STATE_ABANDONED: "abandoned",
}

func sagaStateOf(s string) orchestratorv1.SagaState {
	for k, v := range sagaStates {
		if v == s {
			return k
		}
	}
	return orchestratorv1.SagaState_SAGA_STATE_UNSPECIFIED
}

func sagaProto(v saga.SagaView) *orchestratorv1.Saga {
	out := &orchestratorv1.Saga{
		SagaId: v.ID.String(), Name: v.Name, State: sagaStateOf(v.State), CurrentSec: v.CurrentSEC,
		AdoptGeneration: v.AdoptGeneration, TimeCreated: timestamppb.New(v.TimeCreated), SubjectId: v.SubjectID,
	}
	switch {
	case v.Stuck:
		out.Outcome = "stuck"
	case v.Outcome != nil:
		out.Outcome = v.Outcome.Kind.String()
	case v.State == "abandoned":
		out.Outcome = "abandoned"
	default:
		out.Outcome = "running"
	}
	return out
}

func (a *admin) ListSagas(ctx context.Context, req *orchestratorv1.ListSagasRequest) (*orchestratorv1.ListSagasResponse, error) {
	f := saga.ListFilter{Limit: int(req.PageSize)}
	if f.Limit <= 0 || f.Limit > 1000 {
		f.Limit = 100
	}
	if req.State != orchestratorv1.SagaState_SAGA_STATE_UNSPECIFIED {
		st, ok := sagaStates[req.State]
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "state: unknown saga state %d", int32(req.State))
		}
		f.States = []string{st}
	}
	if req.PageToken != "" {
		after, err := parseUUID("page_token", req.PageToken)
		if err != nil {
			return nil, err
		}
		f.After = after
	}
	views, err := a.s.viewer.List(ctx, f)
	if err != nil {
		return nil, grpcError(err)
	}
	out := &orchestratorv1.ListSagasResponse{}
	for _, v := range views {
		out.Sagas = append(out.Sagas, sagaProto(v))
	}
	if len(views) == f.Limit {
		out.NextPageToken = views[len(views)-1].ID.String()
	}
	return out, nil
}

func (a *admin) GetSaga(ctx context.Context, req *orchestratorv1.GetSagaRequest) (*orchestratorv1.GetSagaResponse, error) {
	id, err := parseUUID("saga_id", req.SagaId)
	if err != nil {
		return nil, err
	}
	// The term's SEC, on the leader, also shows the tasks it is retrying
	// right now (the log records no single try); a standby's viewer shows
	// the log alone.
	sec := a.s.viewer
	if cur, err := a.s.currentSEC(); err == nil {
		sec = cur
	}
	v, err := sec.Get(ctx, id)
	if err != nil {
		return nil, grpcError(err)
	}
	out := &orchestratorv1.GetSagaResponse{Saga: sagaProto(v), ParamsJson: string(v.Params)}
	for _, n := range v.Nodes {
		node := &orchestratorv1.SagaNode{NodeIndex: int32(n.ID), Name: n.Name, Kind: n.Kind, Status: n.Status, DataJson: string(n.Output), HasUndo: n.HasUndo,
			Attempts: int32(n.Attempts), RetryError: n.RetryError}
		if n.Error != nil {
			b, _ := json.Marshal(n.Error)
			node.DataJson = string(b)
			node.ErrorReason = n.Error.Reason
		}
		if !n.RetryAt.IsZero() {
			node.RetryTime = timestamppb.New(n.RetryAt)
		}
		if i := lastDot(n.Name); i > 0 {
			node.Subsaga = n.Name[:i]
		}
		out.Nodes = append(out.Nodes, node)
		for _, e := range n.Events {
			out.Events = append(out.Events, &orchestratorv1.SagaEvent{
				NodeIndex: int32(n.ID), NodeName: n.Name, EventType: e.Type, DataJson: string(e.Data),
				Time: timestamppb.New(e.Time), Creator: e.Creator,
			})
		}
	}
	return out, nil
}

func lastDot(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '.' {
			return i
		}
	}
	return -1
}

func (a *admin) AbandonSaga(ctx context.Context, req *orchestratorv1.AbandonSagaRequest) (*orchestratorv1.AbandonSagaResponse, error) {
	id, err := parseUUID("saga_id", req.SagaId)
	if err != nil {
		return nil, err
	}
	v, err := a.s.viewer.Get(ctx, id)
	if err != nil {
		return nil, grpcError(err)
	}
	if !req.Force {
		info, err := a.s.lease.Read(ctx)
		if err != nil {
			return nil, grpcError(err)
		}
		if info.Holder == v.CurrentSEC && info.ExpiresAt.After(time.Now()) {
			return nil, status.Errorf(codes.FailedPrecondition,
				"saga %s is owned by %s, which holds a live lease: abandoning it would race its owner (force to override)", id, v.CurrentSEC)
		}
	}
	sec := a.s.viewer
	if cur, err := a.s.currentSEC(); err == nil {
		sec = cur
	}
	if err := sec.Abandon(ctx, id, saga.AbandonOperator, req.Comment); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "abandon %s: %v", id, err)
	}
	out := &orchestratorv1.AbandonSagaResponse{}
	// The records the saga held go back where their tasks retry them (never
	// a half-record waiting on a saga that will not move again), keeping
	// their locks: those have a live holder again.
	note := fmt.Sprintf("saga %s (%s) abandoned by an operator: %s", id, v.Name, req.Comment)
	reconciled, err := a.s.store.ReconcileAbandoned(ctx, id, note)
	if err != nil {
		return nil, grpcError(err)
	}
	for _, r := range reconciled {
		out.Reconciled = append(out.Reconciled, &orchestratorv1.ReconciledRecord{What: r.What, Id: r.ID.String(), FromState: r.From, ToState: r.To})
	}
	if len(reconciled) > 0 {
		a.s.kick()
	}
	// A lock the saga took for itself (snapshot-create's, under its
	// subject) has no holder left once the saga is abandoned; a record's
	// lock stays with the record.
	if repair, err := uuid.Parse(v.SubjectID); err == nil {
		isRecord, err := a.s.store.IsRecord(ctx, repair)
		if err != nil {
			return nil, grpcError(err)
		}
		if !isRecord {
			vols, err := a.s.store.ReleaseLocksOf(ctx, repair)
			if err != nil {
				return nil, grpcError(err)
			}
			for _, vol := range vols {
				out.ReleasedLockVolumeIds = append(out.ReleasedLockVolumeIds, vol.String())
			}
		}
	}
	if v, err = a.s.viewer.Get(ctx, id); err == nil {
		out.Saga = sagaProto(v)
	}
	return out, nil
}

func (a *admin) WaitIdle(ctx context.Context, req *orchestratorv1.WaitIdleRequest) (*orchestratorv1.WaitIdleResponse, error) {
	timeout := 60 * time.Second
	if req.Timeout != nil {
		timeout = req.Timeout.AsDuration()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		var n int
		if err := a.s.pool.QueryRow(ctx, `SELECT count(*) FROM saga WHERE saga_state IN ('running', 'unwinding')`).Scan(&n); err != nil {
			return nil, status.FromContextError(err).Err()
		}
		if n == 0 {
			return &orchestratorv1.WaitIdleResponse{}, nil
		}
		select {
		case <-ctx.Done():
			return nil, status.Errorf(codes.DeadlineExceeded, "%d sagas still running after %s", n, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (a *admin) GetLeadership(ctx context.Context, _ *orchestratorv1.GetLeadershipRequest) (*orchestratorv1.GetLeadershipResponse, error) {
	info, err := a.s.lease.Read(ctx)
	if err != nil {
		return nil, grpcError(err)
	}
	return &orchestratorv1.GetLeadershipResponse{
		Holder: info.Holder, Epoch: info.Epoch, LeaseExpiry: timestamppb.New(info.ExpiresAt),
		// Leading and ready: fences raised, sagas adopted and recovered.
		IsLeader: ready(a.s), Self: a.s.lease.Holder(),
	}, nil
}

func ready(s *Server) bool {
	_, err := s.currentSEC()
	return err == nil
}

// ValidateSystem implements AdminService (package validate holds the checks
// and their violation codes).
func (a *admin) ValidateSystem(ctx context.Context, _ *orchestratorv1.ValidateSystemRequest) (*orchestratorv1.ValidateSystemResponse, error) {
	vs, err := validate.Run(ctx, a.s.deps, a.s.store)
	if err != nil {
		return nil, grpcError(err)
	}
	return &orchestratorv1.ValidateSystemResponse{Violations: vs}, nil
}
