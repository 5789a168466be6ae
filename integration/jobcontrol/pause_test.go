// Package jobcontrol tests an operator's control of replacements over real
// processes: holding a request or the whole rack (PauseReplacement and
// ResumeReplacement), across a change of leader.
package jobcontrol

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

func get(t *testing.T, r *rack.Rack, id string) *orchestratorv1.Replacement {
	t.Helper()
	resp, err := r.Replacement.GetReplacement(context.Background(), &orchestratorv1.GetReplacementRequest{ReplacementId: id})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Replacement
}

// sagasOf lists the sagas whose subject is id.
func sagasOf(t *testing.T, r *rack.Rack, id string) []string {
	t.Helper()
	resp, err := r.Admin.ListSagas(context.Background(), &orchestratorv1.ListSagasRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range resp.Sagas {
		if s.SubjectId == id {
			out = append(out, s.Name+" "+s.SagaId)
		}
	}
	return out
}

// passedHeld waits for a task to finish a pass after since whose status
// says it left something alone because of a hold.
func passedHeld(t *testing.T, r *rack.Rack, task string, since time.Time) {
	t.Helper()
	ctx := context.Background()
	if _, err := r.Admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: task}); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, task+" passes over a held request", func() error {
		resp, err := r.Admin.ListBackgroundTasks(ctx, &orchestratorv1.ListBackgroundTasksRequest{})
		if err != nil {
			return err
		}
		for _, bt := range resp.Tasks {
			if bt.Name != task {
				continue
			}
			if bt.LastFinished == nil || bt.LastFinished.AsTime().Before(since) {
				return fmt.Errorf("no pass finished since %s", since)
			}
			if !strings.Contains(bt.LastStatusJson, "paused by") {
				return fmt.Errorf("last status says nothing of a pause: %s", bt.LastStatusJson)
			}
			return nil
		}
		return fmt.Errorf("no task %s", task)
	})
}

func wantCode(t *testing.T, what string, err error, code codes.Code, mention string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), mention) {
		t.Fatalf("%s: %v, want %v naming %q", what, err, code, mention)
	}
}

// An operator holds the rack for maintenance: an expunge during it opens no
// request (the detectors pass over it, saying why). A request asked for by
// hand is recorded and held. Given a hold of its own, it stays held when
// the rack is resumed, while everything else completes; it stays held
// across a change of leader, with no saga ever started for it; resumed, it
// completes. Bad input is refused naming the field, and changes nothing.
func TestPauseHoldsAcrossALeaderChange(t *testing.T) {
	r := rack.Start(t, 4, 2, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	clones := r.CloneFanOut(t, snap, 12)
	target := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]

	_, err := r.Replacement.PauseReplacement(ctx, &orchestratorv1.PauseReplacementRequest{Reason: "x"})
	wantCode(t, "pause naming nothing", err, codes.InvalidArgument, "replacement_id")
	_, err = r.Replacement.PauseReplacement(ctx, &orchestratorv1.PauseReplacementRequest{ReplacementId: uuid.NewString(), Rack: true, Reason: "x"})
	wantCode(t, "pause naming both", err, codes.InvalidArgument, "rack")
	_, err = r.Replacement.PauseReplacement(ctx, &orchestratorv1.PauseReplacementRequest{Rack: true, Reason: "  "})
	wantCode(t, "pause without a reason", err, codes.InvalidArgument, "reason")
	_, err = r.Replacement.PauseReplacement(ctx, &orchestratorv1.PauseReplacementRequest{ReplacementId: "not-an-id", Reason: "x"})
	wantCode(t, "pause of a malformed id", err, codes.InvalidArgument, "replacement_id")
	_, err = r.Replacement.PauseReplacement(ctx, &orchestratorv1.PauseReplacementRequest{ReplacementId: uuid.NewString(), Reason: "x"})
	wantCode(t, "pause of an unknown request", err, codes.NotFound, "")
	_, err = r.Replacement.ResumeReplacement(ctx, &orchestratorv1.ResumeReplacementRequest{})
	wantCode(t, "resume naming nothing", err, codes.InvalidArgument, "replacement_id")
	if l, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 10}); err != nil || l.RackPause != nil {
		t.Fatalf("after refused pauses: rack pause %v, %v", l.GetRackPause(), err)
	}

	before := time.Now()
	held, err := r.Replacement.PauseReplacement(ctx, &orchestratorv1.PauseReplacementRequest{Rack: true, Reason: "maintenance window"})
	if err != nil {
		t.Fatal(err)
	}
	if p := held.RackPause; p == nil || !p.Rack || p.Reason != "maintenance window" || p.PausedBy == "" {
		t.Fatalf("rack pause %v", held.RackPause)
	}
	r.Expunge(t, r.DiskOf(t, target.DatasetId))
	passedHeld(t, r, "ro_replacement_detector", before)
	passedHeld(t, r, "rw_replacement_detector", before)
	list, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Replacements) != 0 || list.RackPause == nil {
		t.Fatalf("while the rack is held: %d requests, rack pause %v", len(list.Replacements), list.RackPause)
	}

	// Asked for by hand, the request is recorded, and held by the rack.
	asked, err := r.Replacement.RequestReplacement(ctx, &orchestratorv1.RequestReplacementRequest{TargetId: target.TargetId})
	if err != nil {
		t.Fatal(err)
	}
	id := asked.Replacement.ReplacementId
	harness.Eventually(t, 10*time.Second, "the request waits on the rack's pause", func() error {
		rep := get(t, r, id)
		if rep.Wait.GetKind() != orchestratorv1.WaitKind_WAIT_KIND_PAUSED || !rep.Pause.GetRack() || rep.Wait.GetSubject() != "rack" {
			return fmt.Errorf("waits on %v, pause %v", rep.Wait, rep.Pause)
		}
		return nil
	})
	mine, err := r.Replacement.PauseReplacement(ctx, &orchestratorv1.PauseReplacementRequest{ReplacementId: id, Reason: "hold for inspection"})
	if err != nil {
		t.Fatal(err)
	}
	if p := mine.Replacement.GetPause(); p == nil || p.Rack || p.Reason != "hold for inspection" {
		t.Fatalf("the request's own pause: %v", p)
	}
	if _, err := r.Replacement.ResumeReplacement(ctx, &orchestratorv1.ResumeReplacementRequest{Rack: true}); err != nil {
		t.Fatal(err)
	}

	// Everything else (the rw regions the expunge took) completes; the held
	// request does not move and no saga is started for it.
	harness.Eventually(t, 60*time.Second, "every request but the held one completes", func() error {
		resp, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		for _, rep := range resp.Replacements {
			if rep.ReplacementId != id && !rack.Terminal(rep) {
				return fmt.Errorf("%v request %s is %v%v", rep.Kind, rep.ReplacementId, rep.ReadOnlyState, rep.RegionState)
			}
		}
		return nil
	})
	stillHeld := func(when string) {
		t.Helper()
		rep := get(t, r, id)
		if rep.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_REQUESTED ||
			rep.Wait.GetKind() != orchestratorv1.WaitKind_WAIT_KIND_PAUSED || rep.Pause.GetRack() ||
			rep.Pause.GetReason() != "hold for inspection" || rep.Estimate.GetKnown() {
			t.Fatalf("%s: %v, waits on %v, pause %v, estimate %v", when, rep.ReadOnlyState, rep.Wait, rep.Pause, rep.Estimate)
		}
		if s := sagasOf(t, r, id); len(s) != 0 {
			t.Fatalf("%s: sagas started for the held request: %v", when, s)
		}
		paused, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000, Paused: true})
		if err != nil || len(paused.Replacements) != 1 || paused.Replacements[0].ReplacementId != id {
			t.Fatalf("%s: paused requests %v, %v", when, paused.GetReplacements(), err)
		}
	}
	afterRack := time.Now()
	passedHeld(t, r, "ro_replacement_start", afterRack)
	stillHeld("after the rack's resume")

	r.RestartOrchestrator(t)
	afterRestart := time.Now()
	passedHeld(t, r, "ro_replacement_start", afterRestart)
	stillHeld("after a change of leader")

	resumed, err := r.Replacement.ResumeReplacement(ctx, &orchestratorv1.ResumeReplacementRequest{ReplacementId: id})
	if err != nil {
		t.Fatal(err)
	}
	if resumed.RackPaused || resumed.Replacement.Pause != nil {
		t.Fatalf("resumed: rack paused %v, pause %v", resumed.RackPaused, resumed.Replacement.Pause)
	}
	reqs := r.WaitRequests(t, 90*time.Second)
	for _, rep := range reqs {
		if rep.ReadOnlyState == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DATA_LOST {
			t.Fatalf("request %s lost data", rep.ReplacementId)
		}
	}
	done := get(t, r, id)
	if done.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE ||
		done.StepCounts.GetVolumeDeleted() != int64(len(clones)) || !done.Estimate.GetKnown() || done.Estimate.Remaining.AsDuration() != 0 {
		t.Fatalf("resumed request ended %v with steps %v, estimate %v", done.ReadOnlyState, done.StepCounts, done.Estimate)
	}
	_, err = r.Replacement.PauseReplacement(ctx, &orchestratorv1.PauseReplacementRequest{ReplacementId: id, Reason: "too late"})
	wantCode(t, "pause of an ended request", err, codes.FailedPrecondition, "already ended")

	if _, err := r.Admin.WaitIdle(ctx, &orchestratorv1.WaitIdleRequest{}); err != nil {
		t.Fatal(err)
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
	for _, v := range append(clones, snap, disk) {
		r.DeleteVolume(t, v)
	}
	r.ExpectEmpty(t)
}
