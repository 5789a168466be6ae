package replacement

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// With --step-batch, the expunge of a snapshot's region snapshot A swaps A
// for B in a fan-out of clones: the clones no Upstairs runs in
// ro-replacement-step-batch sagas, the three an Upstairs runs each in its
// own ro-replacement-step (which tells its Upstairs); the stashes are
// collected by ro-replacement-step-garbage-collect-batch sagas. Two clones deleted
// before the expunge and one deleted while the replacement runs change
// nothing of that: every surviving clone names B and not A, every running
// Upstairs serves its volume's current VCR, and no lock is left.
func TestBatchSwapOfAFanOut(t *testing.T) {
	t.Parallel()
	r := rack.Start(t, 4, 2, stack.Config{ExtraArgs: map[string][]string{stack.Orchestrator: {"--step-batch", "8"}}})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	clones := r.CloneFanOut(t, snap, 24)
	attached := clones[:3]
	for i, c := range attached {
		r.Construct(t, c, i%len(r.Sims))
	}
	deleted := map[string]bool{}
	for _, c := range clones[3:5] {
		r.DeleteVolume(t, c)
		deleted[c] = true
	}

	old := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	start := time.Now()
	r.Expunge(t, r.DiskOf(t, old.DatasetId))
	// The user deletes one more clone once the request has made its step.
	// Where the deletion lands (before the step's swap or after it, while
	// the request finishes) is not forced: each is a case the batch path
	// handles, and every one ends in the checks below.
	late := clones[5]
	var lateStep *orchestratorv1.Step
	harness.Eventually(t, 30*time.Second, "a step for clone "+late, func() error {
		resp, err := r.Replacement.ListSteps(ctx, &orchestratorv1.ListStepsRequest{PageSize: 100, VolumeId: late})
		if err != nil {
			return err
		}
		if len(resp.Steps) == 0 {
			return fmt.Errorf("no step yet")
		}
		lateStep = resp.Steps[0]
		return nil
	})
	t.Logf("deleting clone %s; its step is %v", late, lateStep.State)
	if err := rack.RetryUnavailable(ctx, func() error {
		resp, err := r.Lifecycle.DeleteVolume(ctx, &orchestratorv1.DeleteVolumeRequest{VolumeId: late, Wait: true})
		return rack.SagaOutcome(t, "delete "+late, resp.GetSaga(), err)
	}); err != nil {
		t.Fatalf("delete %s: %v", late, err)
	}
	deleted[late] = true

	reqs := r.WaitRequests(t, 60*time.Second)
	t.Logf("expunge to every request terminal: %s", time.Since(start))
	var req *orchestratorv1.Replacement
	for _, q := range reqs {
		if q.OldTargetId == old.TargetId {
			req = q
		}
	}
	if req == nil || req.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE {
		t.Fatalf("request for %s: %+v", old.TargetId, req)
	}

	// Every surviving clone names B and no longer A.
	for _, c := range clones {
		if deleted[c] {
			continue
		}
		resp, err := r.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: c})
		if err != nil {
			t.Fatalf("clone %s: %v", c, err)
		}
		var ids []string
		for _, tg := range resp.Volume.Targets {
			ids = append(ids, tg.TargetId)
		}
		if slices.Contains(ids, old.TargetId) || !slices.Contains(ids, req.NewRegionId) {
			t.Errorf("clone %s targets %v: want %s instead of %s", c, ids, req.NewRegionId, old.TargetId)
		}
	}
	// The running Upstairs were told: each serves its volume's VCR now.
	r.UpstairsCurrent(t)

	// The batch path ran: at least one batch saga succeeded, and the
	// stashes were collected in batches too.
	for _, name := range []string{batchTemplate, gcBatchTemplate} {
		batches := sagas(t, r, &orchestratorv1.ListSagasRequest{Name: name})
		if batches["succeeded"] == 0 {
			t.Errorf("no %s saga succeeded: %v", name, batches)
		}
	}
	// And every attached clone's step went through ro-replacement-step,
	// which notifies its Upstairs.
	for _, c := range attached {
		steps, err := r.Replacement.ListSteps(ctx, &orchestratorv1.ListStepsRequest{PageSize: 100, VolumeId: c, ReplacementId: req.ReplacementId})
		if err != nil {
			t.Fatal(err)
		}
		if len(steps.Steps) != 1 {
			t.Errorf("attached clone %s has %d steps of request %s, want 1", c, len(steps.Steps), req.ReplacementId)
			continue
		}
		own := sagas(t, r, &orchestratorv1.ListSagasRequest{Name: "ro-replacement-step", SubjectId: steps.Steps[0].StepId})
		if own["succeeded"] != 1 {
			t.Errorf("attached clone %s: its step %s has ro-replacement-step sagas %v, want one succeeded", c, steps.Steps[0].StepId, own)
		}
	}

	locks, err := r.Replacement.ListLocks(ctx, &orchestratorv1.ListLocksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(locks.Locks) != 0 {
		t.Errorf("locks left: %v", locks.Locks)
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
}

// sagas counts the sagas ListSagas returns for a filter, by outcome.
func sagas(t *testing.T, r *rack.Rack, filter *orchestratorv1.ListSagasRequest) map[string]int {
	t.Helper()
	out := map[string]int{}
	filter.PageSize = 1000
	for {
		resp, err := r.Admin.ListSagas(context.Background(), filter)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range resp.Sagas {
			out[s.Outcome]++
		}
		if filter.PageToken = resp.NextPageToken; filter.PageToken == "" {
			return out
		}
	}
}
