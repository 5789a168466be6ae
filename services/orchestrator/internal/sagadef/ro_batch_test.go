package sagadef_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/background/tasks"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/saga/sagatest"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/orchestrator/internal/testenv"
)

// clones makes n more clones of P (before the request's start saga swaps
// A for B in P, so they name A).
func (h *roHarness) clones(t testing.TB, n int) []uuid.UUID {
	t.Helper()
	out := make([]uuid.UUID, n)
	for i := range out {
		out[i] = uuid.New()
		h.e.MustSucceed(t, sagadef.VolumeClone, sagadef.RegionSetParams{VolumeID: out[i], SnapshotID: &h.snap})
	}
	return out
}

// batchOf inserts a step of r for each volume and returns the batch.
func (h *roHarness) batchOf(t testing.TB, r store.ROReplacement, vols []uuid.UUID) (sagadef.StepBatchParams, []store.Step) {
	t.Helper()
	p := sagadef.StepBatchParams{RequestID: r.ID}
	var steps []store.Step
	for _, v := range vols {
		s := h.step(t, r, v)
		steps = append(steps, s)
		p.Steps = append(p.Steps, sagadef.BatchStep{StepID: s.ID, VolumeID: v})
	}
	return p, steps
}

func targetIDsOf(t testing.TB, e *testenv.Env, v uuid.UUID) []string {
	t.Helper()
	var ids []string
	for _, tg := range volumeTargets(t, e, v, commonv1.TargetKind_TARGET_KIND_UNSPECIFIED) {
		ids = append(ids, tg.TargetId)
	}
	return ids
}

// checkBatchDone: every step Complete with a stash of its own that names
// A, its volume naming B and not A, its lock released — what
// ro-replacement-step leaves for each.
func checkBatchDone(t testing.TB, e *testenv.Env, r store.ROReplacement, steps []store.Step) {
	t.Helper()
	r = getRequest(t, e, r.ID)
	stashes := map[uuid.UUID]bool{}
	for _, s := range steps {
		got, err := e.Store.GetStep(context.Background(), s.ID)
		if err != nil || got.State != store.StepComplete || got.OperatingSagaID != nil || got.OldSnapshotVolumeID == nil {
			t.Fatalf("step %+v %v", got, err)
		}
		if stashes[*got.OldSnapshotVolumeID] {
			t.Fatalf("stash %s shared", *got.OldSnapshotVolumeID)
		}
		stashes[*got.OldSnapshotVolumeID] = true
		if ids := targetIDsOf(t, e, s.VolumeID); contains(ids, r.OldTargetID.String()) || !contains(ids, r.NewRegionID.String()) {
			t.Fatalf("volume %s targets %v", s.VolumeID, ids)
		}
		if ids := targetIDsOf(t, e, *got.OldSnapshotVolumeID); len(ids) != 1 || ids[0] != r.OldTargetID.String() {
			vs, _ := e.Volumes.ListVolumes(context.Background(), &volumev1.ListVolumesRequest{PageSize: 1000})
			for _, v := range vs.GetVolumes() {
				t.Logf("%s %s %v", v.VolumeId, v.Purpose, targetIDsOf(t, e, uuid.MustParse(v.VolumeId)))
			}
			t.Fatalf("stash %s of %s names %v", got.OldSnapshotVolumeID, s.VolumeID, ids)
		}
		if _, err := e.Store.GetLock(context.Background(), s.VolumeID); err == nil {
			t.Fatalf("volume %s still locked", s.VolumeID)
		}
	}
}

// The batch saga swaps A for B in three clones at once; the helpers on it
// (every action twice, an error at every node, every undo twice, a
// transient undo fault, lost answers).
func TestROStepBatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	h := newROHarness(t, e)
	more := h.clones(t, 2)
	r := h.runToRunning(t, 0)
	p, steps := h.batchOf(t, r, append([]uuid.UUID{h.f}, more...))
	sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.ROStepBatch, p)
	checkBatchDone(t, e, r, steps)
	invariantsHold(t, e)

	var cur []store.Step
	before := map[uuid.UUID][]string{}
	setup := func() any {
		hh := newROHarness(t, e)
		var p sagadef.StepBatchParams
		more := hh.clones(t, 1)
		p, cur = hh.batchOf(t, hh.runToRunning(t, 0), append([]uuid.UUID{hh.f}, more...))
		for _, s := range cur {
			before[s.VolumeID] = targetIDsOf(t, e, s.VolumeID)
		}
		return p
	}
	check := func(t testing.TB) {
		for _, s := range cur {
			got, err := e.Store.GetStep(context.Background(), s.ID)
			if err != nil || got.State != store.StepRequested || got.OperatingSagaID != nil {
				t.Fatalf("step after unwind %+v %v", got, err)
			}
			after := targetIDsOf(t, e, s.VolumeID)
			for i := range after {
				if after[i] != before[s.VolumeID][i] {
					t.Fatalf("volume %s changed by an unwound batch: %v → %v", s.VolumeID, before[s.VolumeID], after)
				}
			}
			if _, err := e.Store.GetLock(context.Background(), s.VolumeID); err != nil {
				t.Fatalf("volume %s lost its step's lock in the unwind: %v", s.VolumeID, err)
			}
		}
		invariantsHold(t, e)
	}
	sagatest.ActionFailureCanUnwind(t, e.SEC, sagadef.ROStepBatch, setup, check)
	sagatest.ActionFailureCanUnwindIdempotently(t, e.SEC, sagadef.ROStepBatch, setup, check)
	sagatest.UndoTransientFaultRecovers(t, e.SEC, sagadef.ROStepBatch, setup, check)
	lostAnswersUnwind(t, e, sagadef.ROStepBatch, setup, check)
	sagatest.NoUndoFailed(t, e.Pool)
}

// The claim takes no more steps than the rack_steps budget admits: the
// rest stay Requested, untouched, for a later pass.
func TestROStepBatchClaimsWithinTheBudget(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	h := newROHarness(t, e)
	more := h.clones(t, 2)
	r := h.runToRunning(t, 0)
	p, steps := h.batchOf(t, r, append([]uuid.UUID{h.f}, more...))
	if err := e.Store.SetRebuildLimits(context.Background(), map[string]int{store.BudgetRackSteps: 2}, false); err != nil {
		t.Fatal(err)
	}
	e.MustSucceed(t, sagadef.ROStepBatch, p)
	checkBatchDone(t, e, r, steps[:2])
	got, err := e.Store.GetStep(context.Background(), steps[2].ID)
	if err != nil || got.State != store.StepRequested || got.OperatingSagaID != nil {
		t.Fatalf("step beyond the budget %+v %v", got, err)
	}
	if ids := targetIDsOf(t, e, steps[2].VolumeID); !contains(ids, r.OldTargetID.String()) {
		t.Fatalf("volume beyond the budget swapped: %v", ids)
	}
	// A full budget refuses the whole batch, as it refuses one step.
	if err := e.Store.SetRebuildLimits(context.Background(), map[string]int{store.BudgetRackSteps: 1}, false); err != nil {
		t.Fatal(err)
	}
	blocker := h.step(t, r, h.disk)
	if err := e.Store.SetStepRunning(context.Background(), blocker.ID, uuid.New()); err != nil {
		t.Fatal(err)
	}
	o := e.Run(t, sagadef.ROStepBatch, sagadef.StepBatchParams{RequestID: r.ID, Steps: []sagadef.BatchStep{{StepID: steps[2].ID, VolumeID: steps[2].VolumeID}}})
	if o.Kind != saga.Failed || o.FailedNode != "set_saga_id" {
		t.Fatalf("batch over a full budget: %v at %q (%v)", o.Kind, o.FailedNode, o.Error())
	}
	invariantsHold(t, e)
}

// "No Upstairs" at launch is only a hint: a volume whose Upstairs
// registered before the swap (here: launched with one attached) is found
// after it and told, exactly as ro-replacement-step tells it; a volume
// deleted before the swap completes its step as the per-volume path does.
func TestROStepBatchNotifiesUpstairsFoundAfterTheSwap(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t, testenv.Options{SimUpstairs: 1})
	e.SeedRack(t, 4, 2, 100*gib)
	h := newROHarness(t, e)
	more := h.clones(t, 2)
	r := h.runToRunning(t, 0)
	running, deleted := more[0], more[1]
	p, steps := h.batchOf(t, r, []uuid.UUID{h.f, running, deleted})
	rwConstruct(t, e, running, notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, 0)
	e.MustSucceed(t, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: deleted})
	e.MustSucceed(t, sagadef.ROStepBatch, p)
	checkBatchDone(t, e, r, steps[:2])
	got, err := e.Store.GetStep(context.Background(), steps[2].ID)
	if err != nil || got.State != store.StepComplete || got.OldSnapshotVolumeID == nil || !volumeExists(t, e, *got.OldSnapshotVolumeID) {
		t.Fatalf("deleted volume's step %+v %v", got, err)
	}
	ns, err := e.Notifier.ListNotifications(context.Background(), &notifierv1.ListNotificationsRequest{VolumeId: running.String()})
	if err != nil {
		t.Fatal(err)
	}
	var told bool
	for _, n := range ns.Notifications {
		told = told || n.StepKey == steps[1].ID.String()
	}
	if !told {
		t.Fatalf("the running volume's Upstairs was not told: %v", ns.Notifications)
	}
	for _, v := range []uuid.UUID{h.f, deleted} {
		ns, err := e.Notifier.ListNotifications(context.Background(), &notifierv1.ListNotificationsRequest{VolumeId: v.String()})
		if err != nil || len(ns.Notifications) != 0 {
			t.Fatalf("volume %s with no Upstairs: notifications %v %v", v, ns.GetNotifications(), err)
		}
	}
	invariantsHold(t, e)
}

// sagaCounts counts the sagas of each name in the log.
func sagaCounts(t testing.TB, e *testenv.Env) map[string]int {
	t.Helper()
	rows, err := e.Pool.Query(context.Background(), `SELECT name, count(*) FROM saga GROUP BY name`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var name string
		var n int
		if err := rows.Scan(&name, &n); err != nil {
			t.Fatal(err)
		}
		out[name] = n
	}
	return out
}

// The step task with --step-batch: the volume an Upstairs runs keeps its
// own ro-replacement-step, the others take one batch. A batch that unwinds
// (here its commit fails once) sends its steps the per-volume way, and
// the request still completes with the world consistent.
func TestStepTaskRoutesUnattachedVolumesToTheBatch(t *testing.T) {
	t.Parallel()
	for _, fail := range []bool{false, true} {
		t.Run(fmt.Sprintf("batch_fails=%v", fail), func(t *testing.T) {
			e := testenv.Start(t, testenv.Options{SimUpstairs: 1})
			e.SeedRack(t, 4, 2, 100*gib)
			d := newDrainer(t, e, func(env *tasks.Env) { env.StepBatch = 8 })
			h := newROHarness(t, e)
			more := h.clones(t, 3)
			rwConstruct(t, e, h.f, notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, 0)
			var failed atomic.Bool
			if fail {
				d.arm(sagadef.ROStepBatch.Name(), func() *saga.Hooks {
					if failed.Swap(true) {
						return &saga.Hooks{}
					}
					return (&saga.Hooks{}).InjectError("update_request")
				})
			}
			r := h.request(t, 0)
			d.drain(t, r.ID)
			got := sagaCounts(t, e)
			wantStep := 1 // F's
			if fail {
				wantStep += len(more) // the unwound batch's steps, one by one
			}
			if got[sagadef.ROStepBatch.Name()] < 1 || got[sagadef.ROStep.Name()] != wantStep {
				t.Fatalf("sagas %v: want a batch and %d ro-replacement-step", got, wantStep)
			}
			for _, v := range append(more, h.f) {
				if ids := targetIDsOf(t, e, v); contains(ids, r.OldTargetID.String()) {
					t.Fatalf("volume %s still names A: %v", v, ids)
				}
			}
			invariantsHold(t, e)
			validateHolds(t, e)
		})
	}
}

// With batches of two, the stashes of four unattached clones are collected
// in batches: at most the one holding A's last reference is collected
// alone. A pass that runs before a batch has claimed its steps leaves them
// to it (it once collected them one by one as well, and the sagas raced).
func TestStepTaskCollectsStashesInBatches(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	d := newDrainer(t, e, func(env *tasks.Env) { env.StepBatch = 2 })
	h := newROHarness(t, e)
	h.clones(t, 3)
	r := h.request(t, 0)
	d.drain(t, r.ID)
	got := sagaCounts(t, e)
	if got[sagadef.ROStepGCBatch.Name()] < 1 || got[sagadef.ROStepGarbageCollect.Name()] > 1 {
		t.Fatalf("sagas %v: want a collect batch and at most one ro-replacement-step-garbage-collect", got)
	}
	invariantsHold(t, e)
	validateHolds(t, e)
}
