package tasks

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/pause"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
)

// skippedFor reports whether a pass's skips name the hold.
func skippedFor(s Skips, by string) bool {
	for _, it := range s.Items {
		if strings.Contains(it, "paused by "+by) {
			return true
		}
	}
	return false
}

// A held request's tasks start nothing for it: not its start saga, not its
// steps (none is made, so no lock is taken), and its Requested steps give
// up their volume locks, so a user can snapshot a clone meanwhile. Resumed,
// it fans out and its steps run.
func TestHeldRequestStartsNothingAndHoldsNoStepLocks(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	ctx := context.Background()
	gate := pause.New(f.e.Store)
	if err := gate.Load(ctx); err != nil {
		t.Fatal(err)
	}
	f.env.Pauses = gate

	snap := f.snapshot(f.disk())
	clones := []uuid.UUID{f.clone(snap), f.clone(snap), f.clone(snap)}
	r := f.request(snap, f.regionSnapshots(snap)[0])
	if _, _, err := gate.Pause(ctx, r.ID, "alice", "inspect"); err != nil {
		t.Fatal(err)
	}
	st := f.start().Activate(ctx).(*StartStatus)
	noErrors(t, st.Errors)
	if len(st.StartInvokedOK) != 0 || f.rec.count("ro-replacement-start") != 0 || !skippedFor(st.Skipped, "alice") {
		t.Fatalf("start task on a held request: %+v", st)
	}

	// Running, with Requested steps holding their clones' locks (as a pass
	// just before the pause would leave them).
	if err := gate.Resume(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	r = f.toRunning(r)
	var steps []store.Step
	for _, c := range clones {
		steps = append(steps, store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: c})
	}
	if _, err := f.e.Store.InsertSteps(ctx, r.ID, steps); err != nil {
		t.Fatal(err)
	}
	_, withdrawn, err := gate.Pause(ctx, r.ID, "alice", "inspect")
	if err != nil || withdrawn != int64(len(clones)) {
		t.Fatalf("pause withdrew %d steps (%v), want %d", withdrawn, err, len(clones))
	}
	for _, c := range clones {
		if _, err := f.e.Store.GetLock(ctx, c); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("clone %s still locked: %v", c, err)
		}
	}
	// A user's snapshot of a clone of the held fan-out goes through.
	f.e.MustSucceed(t, sagadef.SnapshotCreate, sagadef.SnapshotParams{DiskVolumeID: clones[0], SnapshotID: uuid.New()})

	ss := f.step().Activate(ctx).(*StepStatus)
	noErrors(t, ss.Errors)
	if len(ss.StepRecordsCreatedOK)+len(ss.StepInvokedOK) != 0 || f.rec.count("ro-replacement-step") != 0 || !skippedFor(ss.Skipped, "alice") {
		t.Fatalf("step task on a held request: %+v", ss)
	}
	if n, err := f.e.Store.InProgressSteps(ctx, r.ID); err != nil || n != 0 {
		t.Fatalf("steps of the held request: %d %v", n, err)
	}
	fs := f.finish().Activate(ctx).(*FinishStatus)
	if len(fs.FinishInvokedOK) != 0 || !skippedFor(fs.Skipped, "alice") {
		t.Fatalf("finish task on a held request: %+v", fs)
	}

	// The rack's hold does the same for every request.
	if err := gate.Resume(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := gate.Pause(ctx, uuid.Nil, "bob", "maintenance"); err != nil {
		t.Fatal(err)
	}
	ss = f.step().Activate(ctx).(*StepStatus)
	if len(ss.StepRecordsCreatedOK)+len(ss.StepInvokedOK) != 0 || !skippedFor(ss.Skipped, "bob") {
		t.Fatalf("step task with the rack held: %+v", ss)
	}
	if err := gate.Resume(ctx, uuid.Nil); err != nil {
		t.Fatal(err)
	}
	ss = f.step().Activate(ctx).(*StepStatus)
	noErrors(t, ss.Errors)
	// The clones, and the user's snapshot of one (it names the old target
	// through the clone's read-only parent).
	if len(ss.StepInvokedOK) != len(clones)+1 {
		t.Fatalf("after resume: %+v", ss)
	}
	for _, o := range f.rec.settle(t) {
		if o.Error() != nil {
			t.Fatalf("saga %s: %v", o.SagaID, o.Error())
		}
	}
}
