package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	"storagecp.dev/orchestrator/internal/app"
	"storagecp.dev/orchestrator/internal/background"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/orchestrator/internal/validate"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/paging"
)

type admin struct {
	orchestratorv1.UnimplementedAdminServiceServer
	s *Server
}

// ListBackgroundTasks pages through the tasks by name; the token is the
// last name served, which must be a task's.
func (a *admin) ListBackgroundTasks(ctx context.Context, req *orchestratorv1.ListBackgroundTasksRequest) (*orchestratorv1.ListBackgroundTasksResponse, error) {
	limit, err := paging.Size(req.PageSize)
	if err != nil {
		return nil, err
	}
	all := a.s.driver.Statuses() // sorted by name
	start := 0
	if tok := req.PageToken; tok != "" {
		i, found := slices.BinarySearchFunc(all, tok, func(s background.Status, name string) int { return strings.Compare(s.Name, name) })
		if !found {
			return nil, paging.BadToken(tok)
		}
		start = i + 1
	}
	page := all[start:]
	out := &orchestratorv1.ListBackgroundTasksResponse{}
	if len(page) > limit {
		page = page[:limit]
		out.NextPageToken = page[limit-1].Name
	}
	for _, st := range page {
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
	if err := a.s.driver.ActivateByOperator(req.Name); errors.Is(err, background.ErrUnknownTask) {
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
		UnwindComment: v.UnwindComment,
	}
	if v.UnwindTime != nil {
		out.UnwindTime = timestamppb.New(*v.UnwindTime)
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

// sagaNames are the names of the sagas this orchestrator runs, sorted.
func sagaNames() []string {
	var out []string
	for _, t := range sagadef.Templates() {
		out = append(out, t.Name())
	}
	slices.Sort(out)
	return out
}

func (a *admin) ListSagas(ctx context.Context, req *orchestratorv1.ListSagasRequest) (*orchestratorv1.ListSagasResponse, error) {
	limit, after, err := paging.UUIDRequest(req)
	if err != nil {
		return nil, err
	}
	f := saga.ListFilter{Limit: limit, After: after, Name: req.Name}
	if req.State != orchestratorv1.SagaState_SAGA_STATE_UNSPECIFIED {
		st, ok := sagaStates[req.State]
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "state: unknown saga state %d", int32(req.State))
		}
		f.States = []string{st}
	}
	if req.Name != "" && !slices.Contains(sagaNames(), req.Name) {
		return nil, status.Errorf(codes.InvalidArgument, "name: no saga is named %q (one of: %s)", req.Name, strings.Join(sagaNames(), ", "))
	}
	if req.SubjectId != "" {
		// Subjects are ids (requests, steps, volumes): one spelling, so a
		// filter in upper case finds what the saga recorded.
		id, err := ids.Parse("subject_id", req.SubjectId)
		if err != nil {
			return nil, err
		}
		f.SubjectID = id.String()
	}
	if req.ReplacementId != "" {
		id, err := ids.Parse("replacement_id", req.ReplacementId)
		if err != nil {
			return nil, err
		}
		f.SubjectOrParent = id.String()
	}
	views, err := a.s.viewer.List(ctx, f)
	if err != nil {
		return nil, a.s.status(ctx, err)
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
	id, err := ids.Parse("saga_id", req.SagaId)
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
		return nil, a.s.status(ctx, err)
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
	id, err := ids.Parse("saga_id", req.SagaId)
	if err != nil {
		return nil, err
	}
	wait := 30 * time.Second
	if req.Wait != nil {
		if wait = req.Wait.AsDuration(); wait < 0 || wait > 5*time.Minute {
			return nil, status.Errorf(codes.InvalidArgument, "wait: %s is outside [0, 5m]", wait)
		}
	}
	v, err := a.s.viewer.Get(ctx, id)
	if err != nil {
		return nil, a.s.status(ctx, err)
	}
	comment := strings.TrimSpace(req.Comment)
	if comment == "" {
		comment = "no comment given"
	}
	note := fmt.Sprintf("saga %s (%s) abandoned by an operator: %s", id, v.Name, comment)
	held, err := a.s.store.HeldBy(ctx, id)
	if err != nil {
		return nil, a.s.status(ctx, err)
	}
	var out *orchestratorv1.AbandonSagaResponse
	if req.KeepEffects {
		out, err = a.abandonKeepingEffects(ctx, v, req.Force, comment)
	} else {
		out, err = a.abandonByUnwinding(ctx, v, comment, wait)
	}
	if err != nil {
		return nil, err
	}
	// Whatever still names the saga once it is done (or abandoned) goes back
	// where its task retries it: never a half-record waiting on a saga that
	// will not move again. After a full unwind the undos did that already.
	if v, err = a.s.viewer.Get(ctx, id); err != nil {
		return nil, a.s.status(ctx, err)
	}
	if v.State == "abandoned" || (v.State == "done" && !v.Stuck) {
		if _, err := a.s.store.ReconcileAbandoned(ctx, id, note); err != nil {
			return nil, a.s.status(ctx, err)
		}
		// A lock the saga took for itself (snapshot-create's, under its
		// subject) has no holder left; a record's lock stays with the record.
		if err := a.releaseSagaOwnLock(ctx, v, out); err != nil {
			return nil, err
		}
	}
	if err := a.s.store.WhereNow(ctx, held); err != nil {
		return nil, a.s.status(ctx, err)
	}
	for _, r := range held {
		out.Reconciled = append(out.Reconciled, &orchestratorv1.ReconciledRecord{What: r.What, Id: r.ID.String(), FromState: r.From, ToState: r.To})
	}
	sagadef.Wakeup(a.s.deps.Wake.All)
	out.Saga = sagaProto(v)
	return out, nil
}

// abandonByUnwinding asks the leader's SEC to unwind saga v (SEC.Unwind)
// and waits up to wait for the unwind to finish.
func (a *admin) abandonByUnwinding(ctx context.Context, v saga.SagaView, comment string, wait time.Duration) (*orchestratorv1.AbandonSagaResponse, error) {
	sec, err := a.s.currentSEC()
	if err != nil {
		return nil, err
	}
	res, err := sec.Unwind(ctx, v.ID, comment)
	var owned *saga.OwnedElsewhereError
	switch {
	case errors.As(err, &owned):
		return nil, status.Errorf(codes.FailedPrecondition,
			"saga %s is owned by %q, not by the leader (%s), which adopts it once that owner's lease is gone; retry then, or abandon with keep_effects and force", v.ID, owned.Owner, owned.Self)
	case errors.Is(err, saga.ErrFinished), errors.Is(err, saga.ErrAbandoned):
		return nil, status.Errorf(codes.FailedPrecondition, "abandon %s: %v", v.ID, err)
	case err != nil:
		return nil, a.s.status(ctx, err)
	}
	out := &orchestratorv1.AbandonSagaResponse{Unwound: true, SkippedUndos: res.Skipped}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if o, err := sec.Wait(wctx, v.ID); err == nil {
		out.Finished = true
		// An unwind that came after every action succeeded is too late:
		// the saga finished instead (saga.SEC.Unwind).
		out.Unwound = o.Kind != saga.Succeeded
	} else if ctx.Err() != nil {
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return out, nil
}

// abandonKeepingEffects marks saga v abandoned without unwinding it.
func (a *admin) abandonKeepingEffects(ctx context.Context, v saga.SagaView, force bool, comment string) (*orchestratorv1.AbandonSagaResponse, error) {
	if !force {
		info, err := a.s.lease.Read(ctx)
		if err != nil {
			return nil, a.s.status(ctx, err)
		}
		if info.Holder == v.CurrentSEC && info.ExpiresAt.After(time.Now()) {
			return nil, status.Errorf(codes.FailedPrecondition,
				"saga %s is owned by %s, which holds a live lease: abandoning it without unwinding would race its owner (force to override, or abandon without keep_effects to unwind it)", v.ID, v.CurrentSEC)
		}
	}
	sec := a.s.viewer
	if cur, err := a.s.currentSEC(); err == nil {
		sec = cur
	}
	if err := sec.Abandon(ctx, v.ID, saga.AbandonOperator, comment); err != nil {
		if errors.Is(err, saga.ErrNotFound) {
			return nil, a.s.status(ctx, err)
		}
		return nil, status.Errorf(codes.FailedPrecondition, "abandon %s: %v", v.ID, err)
	}
	return &orchestratorv1.AbandonSagaResponse{Finished: true}, nil
}

// releaseSagaOwnLock releases the locks held under saga v's subject when
// that subject is not a request or step (whose lock belongs to the record).
func (a *admin) releaseSagaOwnLock(ctx context.Context, v saga.SagaView, out *orchestratorv1.AbandonSagaResponse) error {
	repair, err := uuid.Parse(v.SubjectID)
	if err != nil {
		return nil
	}
	isRecord, err := a.s.store.IsRecord(ctx, repair)
	if err != nil || isRecord {
		return a.s.status(ctx, err)
	}
	vols, err := a.s.store.ReleaseLocksOf(ctx, repair)
	if err != nil {
		return a.s.status(ctx, err)
	}
	for _, vol := range vols {
		out.ReleasedLockVolumeIds = append(out.ReleasedLockVolumeIds, vol.String())
	}
	return nil
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
		return nil, a.s.status(ctx, err)
	}
	return &orchestratorv1.GetLeadershipResponse{
		Holder: info.Holder, Epoch: info.Epoch, LeaseExpiry: timestamppb.New(info.ExpiresAt),
		// Leading and ready: fences raised, sagas adopted and recovered.
		IsLeader: ready(a.s), Self: a.s.lease.Holder(),
	}, nil
}

// GetDatabaseFormation never fails for a source that does not answer: the
// view is wanted most while the database fails over, and each source's
// error says what could not be read.
func (a *admin) GetDatabaseFormation(ctx context.Context, _ *orchestratorv1.GetDatabaseFormationRequest) (*orchestratorv1.GetDatabaseFormationResponse, error) {
	out := a.s.app.Formation().Read(ctx)
	out.Orchestrator = a.s.lease.Holder()
	return out, nil
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
		return nil, a.s.status(ctx, err)
	}
	return &orchestratorv1.ValidateSystemResponse{Violations: vs}, nil
}

func budgetsProto(views []app.BudgetView) []*orchestratorv1.RebuildBudget {
	out := make([]*orchestratorv1.RebuildBudget, 0, len(views))
	for _, v := range views {
		b := &orchestratorv1.RebuildBudget{Name: v.Name, Limit: int32(v.Limit), InUse: int32(v.InUse), Waiting: int32(v.Waiting), Source: "config"}
		if v.Runtime {
			b.Source = "runtime"
		}
		if len(v.BySled) > 0 {
			b.InUseBySled = map[string]int32{}
			for k, n := range v.BySled {
				b.InUseBySled[k] = int32(n)
			}
		}
		out = append(out, b)
	}
	return out
}

// GetRebuildBudgets implements AdminService.
func (a *admin) GetRebuildBudgets(ctx context.Context, _ *orchestratorv1.GetRebuildBudgetsRequest) (*orchestratorv1.GetRebuildBudgetsResponse, error) {
	views, err := a.s.app.RebuildBudgets(ctx)
	if err != nil {
		return nil, a.s.status(ctx, err)
	}
	return &orchestratorv1.GetRebuildBudgetsResponse{Budgets: budgetsProto(views)}, nil
}

// SetRebuildBudgets implements AdminService: every field is checked before
// anything is written, and all are written in one transaction.
func (a *admin) SetRebuildBudgets(ctx context.Context, req *orchestratorv1.SetRebuildBudgetsRequest) (*orchestratorv1.SetRebuildBudgetsResponse, error) {
	set := map[string]int{}
	for _, f := range []struct {
		name string
		v    *int32
	}{
		{store.BudgetRackRebuilds, req.RackRebuilds}, {store.BudgetSourceSledRebuilds, req.SourceSledRebuilds},
		{store.BudgetDestSledRebuilds, req.DestSledRebuilds}, {store.BudgetRackSteps, req.RackSteps},
	} {
		if f.v == nil {
			continue
		}
		if *f.v < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "%s: must be 0 (unlimited) or more, got %d", f.name, *f.v)
		}
		set[f.name] = int(*f.v)
	}
	if len(set) == 0 && !req.Reset_ {
		return nil, status.Error(codes.InvalidArgument, "rack_rebuilds: set at least one limit, or reset")
	}
	if err := a.s.store.SetRebuildLimits(ctx, set, req.Reset_); err != nil {
		return nil, a.s.status(ctx, err)
	}
	// A raised limit admits waiting work now.
	sagadef.Wakeup(a.s.deps.Wake.ROStart, a.s.deps.Wake.RWDetector, a.s.deps.Wake.ROStep)
	views, err := a.s.app.RebuildBudgets(ctx)
	if err != nil {
		return nil, a.s.status(ctx, err)
	}
	return &orchestratorv1.SetRebuildBudgetsResponse{Budgets: budgetsProto(views)}, nil
}
