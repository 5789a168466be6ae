package tasks

import (
	"cmp"
	"context"
	"maps"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"

	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/background"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
)

// roStep fans a Running request out into per-volume steps and drives them
// (docs/replacement.md, "How the background tasks chain"). Phases, in order:
//  1. collect: start ro-replacement-step-garbage-collect-batch (with
//     Env.StepBatch) or ro-replacement-step-garbage-collect for Complete
//     steps, so their stashes (which still name A) are on their way out
//     before scanning;
//  2. create: for each Running request, ask the volume→target index which
//     live data volumes still name A and insert a step for each (never a
//     stash or reference volume, nor one already handled; lock contention is
//     retried next pass);
//  3. launch: retire Requested steps whose volume is deleted, whose target
//     is gone or which no longer reference A; start ro-replacement-step for the rest,
//     round-robin across requests so one large fan-out cannot starve others.
type roStep struct {
	env     Env
	limiter *background.Limiter
	scans   pacer // create scans a request at most every rescanEvery
	// fresh holds the steps this process inserted and has not launched
	// yet: their volume was found naming the old target when the step
	// took its lock, and nothing but a delete (which the saga handles) can
	// change it since, so their first launch skips asking the
	// volume-service again (a call per volume of a fan-out). Nil is empty.
	fresh map[uuid.UUID]bool
	// lockWait holds, per request, the volumes whose repair lock another
	// repair held at the request's last scan. A pass between paced scans
	// retries just these, so a volume is stepped as soon as the lock is
	// released (the release wakes this task) and not a scan period later.
	lockWait map[uuid.UUID][]uuid.UUID
	// inflight holds the step sagas this process started and that have
	// not ended, by step, with their request (the rack_steps budget's use
	// before they claim their step). Guarded by mu: sagas end on their
	// own goroutines.
	mu       sync.Mutex
	inflight map[uuid.UUID]uuid.UUID
	// afterRequestedRead, when set, runs right after launch reads the
	// Requested steps: a test's way to end a saga at that moment.
	afterRequestedRead func()
	// lost: steps whose retirement ended in an error (the finish task is
	// owed a wakeup once they are seen retired).
	lost lostAnswers
	// batchCollected holds the steps a batch collect took, true once its
	// saga ended: one seen Complete while its batch runs is left to it;
	// one seen Complete after was kept by it (or its batch unwound) and
	// is collected alone. Cleared beyond maxFresh, which costs a step at
	// most one more batch. Guarded by mu.
	batchCollected map[uuid.UUID]bool
}

// maxFresh bounds fresh; beyond it the launch checks every step again.
const maxFresh = 100_000

// rescanEvery bounds how often create scans one request's referencing
// volumes. A scan reads every step and every referencing volume of the
// request — O(fan-out) — while the task runs after every finished saga; a
// request is scanned at once when first seen, and a skipped scan schedules
// an activation for when it is due.
const rescanEvery = 2 * time.Second

// StepStatus is the step task's status per activation.
type StepStatus struct {
	StepRecordsCreatedOK        []string `json:"step_records_created_ok"`
	StepGarbageCollectInvokedOK []string `json:"step_garbage_collect_invoked_ok"`
	StepInvokedOK               []string `json:"step_invoked_ok"`
	StepSetVolumeDeletedOK      []string `json:"step_set_volume_deleted_ok"`
	Skipped                     Skips    `json:"skipped"`
	Errors                      []string `json:"errors"`
	// Budgets: the rack_steps budget this pass, with the steps it (or the
	// task's saga bound) held back.
	Budgets *BudgetStatus `json:"budgets,omitempty"`
}

// ROStepName is the task's name (AdminService, metrics, logs).
const ROStepName = "ro_replacement_step"

func (t *roStep) Name() string { return ROStepName }
func (t *roStep) Description() string {
	return "creates, runs and collects the per-volume steps of running read-only replacements"
}

// batch bounds how many steps one pass looks at per phase.
const stepBatch = 4096

// stepInsertBatch bounds the steps one InsertSteps transaction creates:
// one statement for many volumes instead of a transaction each, small
// enough that a serialization retry repeats little.
const stepInsertBatch = 100

func (t *roStep) Activate(ctx context.Context) any {
	st := &StepStatus{
		StepRecordsCreatedOK: []string{}, StepGarbageCollectInvokedOK: []string{}, StepInvokedOK: []string{},
		StepSetVolumeDeletedOK: []string{}, Errors: []string{},
	}
	t.collect(ctx, st)
	t.create(ctx, st)
	t.launch(ctx, st)
	if len(st.StepSetVolumeDeletedOK) > 0 {
		sagadef.Wakeup(t.env.Deps.Wake.ROFinish)
	}
	return st
}

func (t *roStep) collect(ctx context.Context, st *StepStatus) {
	steps, err := t.env.Deps.Store.StepsIn(ctx, store.StepComplete, stepBatch)
	if err != nil {
		errf(&st.Errors, "listing complete steps: %v", err)
		return
	}
	traces := t.traces(ctx)
	// The batch collect (Env.StepBatch): the Complete steps of a request
	// with at least minCollectBatch of them waiting go to one batch; one
	// the batch kept (its stash frees something, or is not the batch's to
	// remove) is back at Complete and is collected alone, as is every step
	// of a request with fewer waiting.
	var order []uuid.UUID
	batches := map[uuid.UUID][]store.Step{}
	for _, s := range steps {
		if t.env.heldBy(s.RequestID, &st.Skipped, "step "+s.ID.String()) {
			continue
		}
		if s.OldSnapshotVolumeID == nil {
			errf(&st.Errors, "step %s: complete without a stash volume", s.ID)
			continue
		}
		if t.env.StepBatch > 0 {
			t.mu.Lock()
			ended, taken := t.batchCollected[s.ID]
			t.mu.Unlock()
			if taken && !ended {
				continue // its batch has not claimed it yet
			}
			if !taken {
				if _, ok := batches[s.RequestID]; !ok {
					order = append(order, s.RequestID)
				}
				batches[s.RequestID] = append(batches[s.RequestID], s)
				continue
			}
		}
		t.collectOne(ctx, st, s, traces[s.RequestID])
	}
	for _, req := range order {
		b := batches[req]
		if len(b) < min(minCollectBatch, t.env.StepBatch) {
			for _, s := range b {
				t.collectOne(ctx, st, s, traces[req])
			}
			continue
		}
		if len(b) > sagadef.MaxStepBatch {
			b = b[:sagadef.MaxStepBatch]
		}
		t.startCollectBatch(ctx, st, req, traces[req], b)
	}
}

// minCollectBatch is the fewest Complete steps of one request that the step
// task collects in a batch (or Env.StepBatch, if smaller). Below it the
// per-step collect costs about what a batch would, and a small request's
// sagas stay one per step.
const minCollectBatch = 16

// collectOne starts ro-replacement-step-garbage-collect on one Complete step.
func (t *roStep) collectOne(ctx context.Context, st *StepStatus, s store.Step, traceparent string) {
	// Its own key: the step's ro-replacement-step may still hold the step id's
	// slot for a moment after committing Complete.
	ok, err := startSaga(ctx, t.env, t.limiter, job{key: "collect/" + s.ID.String(), record: s.ID, request: s.RequestID, task: t.Name(), attempts: s.Attempts, skipped: &st.Skipped}, sagadef.ROStepGarbageCollect,
		sagadef.StepGCParams{StepID: s.ID, StashID: *s.OldSnapshotVolumeID},
		saga.WithTraceParent(traceparent), saga.WithSubject(s.ID.String()), saga.WithSubjectParent(s.RequestID.String()))
	switch {
	case err != nil:
		errf(&st.Errors, "step %s: start garbage collect: %v", s.ID, err)
	case ok:
		t.mu.Lock()
		delete(t.batchCollected, s.ID)
		t.mu.Unlock()
		st.StepGarbageCollectInvokedOK = append(st.StepGarbageCollectInvokedOK, "step "+s.ID.String())
	}
}

// startCollectBatch starts ro-replacement-step-garbage-collect-batch on
// Complete steps of request req. One runs per request at a time: every
// batch of a fan-out removes references to the same target, and two at
// once would only make the volume-service retry one of them. When it
// ends, the task runs again for the steps that completed meanwhile.
func (t *roStep) startCollectBatch(ctx context.Context, st *StepStatus, req uuid.UUID, traceparent string, steps []store.Step) {
	p := sagadef.StepGCBatchParams{RequestID: req, Steps: make([]sagadef.GCBatchStep, len(steps))}
	ids := make([]uuid.UUID, len(steps))
	for i, s := range steps {
		p.Steps[i] = sagadef.GCBatchStep{StepID: s.ID, StashID: *s.OldSnapshotVolumeID}
		ids[i] = s.ID
	}
	mark := func(ended bool) {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.batchCollected == nil || len(t.batchCollected) > maxFresh {
			t.batchCollected = map[uuid.UUID]bool{}
		}
		for _, id := range ids {
			t.batchCollected[id] = ended
		}
	}
	// Taken before the start: a pass that runs while the saga has not
	// claimed them yet leaves them alone.
	mark(false)
	ok, err := startSaga(ctx, t.env, t.limiter, job{key: "collect-batch/" + req.String(), record: ids[0], also: ids[1:], request: req, task: t.Name(), skipped: &st.Skipped, then: t.Name(),
		ended: func() { mark(true) }}, sagadef.ROStepGCBatch, p,
		saga.WithTraceParent(traceparent), saga.WithSubject(ids[0].String()), saga.WithSubjectParent(req.String()))
	if !ok {
		// Not started (its request's batch still runs, say): a later
		// pass batches them again.
		t.mu.Lock()
		for _, id := range ids {
			delete(t.batchCollected, id)
		}
		t.mu.Unlock()
	}
	switch {
	case err != nil:
		errf(&st.Errors, "request %s: start collecting a batch of %d steps: %v", req, len(ids), err)
	case ok:
		for _, id := range ids {
			st.StepGarbageCollectInvokedOK = append(st.StepGarbageCollectInvokedOK, "step "+id.String()+" (batch)")
		}
	}
}

// traces maps request ids to their traceparent (Running and recent ones).
func (t *roStep) traces(ctx context.Context) map[uuid.UUID]string {
	out := map[uuid.UUID]string{}
	reqs, err := t.env.Deps.Store.ROReplacementsIn(ctx, store.RORunning)
	if err == nil {
		for _, r := range reqs {
			out[r.ID] = r.Traceparent
		}
	}
	return out
}

func (t *roStep) create(ctx context.Context, st *StepStatus) {
	d := t.env.Deps
	reqs, err := d.Store.ROReplacementsIn(ctx, store.RORunning)
	if err != nil {
		errf(&st.Errors, "listing running requests: %v", err)
		return
	}
	ids := make([]uuid.UUID, len(reqs))
	for i, r := range reqs {
		ids[i] = r.ID
	}
	t.scans.keepOnly(ids)
	maps.DeleteFunc(t.lockWait, func(id uuid.UUID, _ []uuid.UUID) bool { return !slices.Contains(ids, id) })
	for _, r := range reqs {
		if t.env.heldBy(r.ID, &st.Skipped, "request "+r.ID.String()+": no steps made") {
			// Its lock-queue places were given up with the pause; the
			// first scan after the resume finds every volume again.
			delete(t.lockWait, r.ID)
			t.scans.forget(r.ID)
			continue
		}
		if ok, wait := t.scans.due(r.ID); !ok {
			if vols := t.lockWait[r.ID]; len(vols) > 0 {
				steps := make([]store.Step, len(vols))
				for i, v := range vols {
					steps[i] = store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: v}
				}
				t.lockWait[r.ID] = t.insertStepsUnlessHeld(ctx, st, r.ID, steps, false)
			}
			t.scans.kickAfter(wait, func() { sagadef.Wakeup(d.Wake.ROStep) })
			continue
		}
		var waiting []uuid.UUID
		// Volumes this request already has a live step for need no insert
		// attempt (each would be a transaction answering "already handled").
		existing, err := d.Store.StepsOfRequest(ctx, r.ID, "")
		if err != nil {
			errf(&st.Errors, "request %s: steps: %v", r.ID, err)
			continue
		}
		handled := map[uuid.UUID]bool{}
		for _, s := range existing {
			if s.State != store.StepVolumeDeleted {
				handled[s.VolumeID] = true
			}
			// A step's stash names A until it is collected; it never gets
			// a step (InsertStep would answer so, one transaction each).
			if s.OldSnapshotVolumeID != nil {
				handled[*s.OldSnapshotVolumeID] = true
			}
		}
		token := ""
		for {
			resp, err := d.Volumes.FindVolumesReferencingTarget(ctx, &volumev1.FindVolumesReferencingTargetRequest{
				TargetId: r.OldTargetID.String(), PageSize: 1000, PageToken: token,
			})
			if err != nil {
				errf(&st.Errors, "request %s: volumes referencing %s: %v", r.ID, r.OldTargetID, err)
				break
			}
			var batch []store.Step
			for _, v := range resp.Volumes {
				if v.SoftDeleted {
					continue // its reference is already dropped
				}
				if v.Purpose != volumev1.VolumePurpose_VOLUME_PURPOSE_DATA {
					// A stash names A from the moment its swap commits, long
					// before a step record names it: stepping it would
					// chase A from stash to stash, and an unwinding swap
					// could no longer put A back.
					continue
				}
				vid, err := uuid.Parse(v.VolumeId)
				if err != nil || handled[vid] {
					continue
				}
				batch = append(batch, store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: vid})
			}
			for chunk := range slices.Chunk(batch, stepInsertBatch) {
				waiting = append(waiting, t.insertStepsUnlessHeld(ctx, st, r.ID, chunk, true)...)
			}
			if token = resp.NextPageToken; token == "" {
				break
			}
		}
		if t.lockWait == nil {
			t.lockWait = map[uuid.UUID][]uuid.UUID{}
		}
		t.lockWait[r.ID] = waiting
	}
}

// insertStepsUnlessHeld inserts steps unless their request was held since
// the pass began: a step takes its volume's lock, and a held request takes
// none (package pause makes the check and the insert one step).
func (t *roStep) insertStepsUnlessHeld(ctx context.Context, st *StepStatus, request uuid.UUID, steps []store.Step, fresh bool) []uuid.UUID {
	var held []uuid.UUID
	hold, err := t.env.unlessHeld(ctx, request, func() error {
		held = t.insertSteps(ctx, st, request, steps, fresh)
		return nil
	})
	switch {
	case err != nil:
		errf(&st.Errors, "request %s: steps: %v", request, err)
	case hold != nil:
		st.Skipped.Add("request %s: %d steps not made: %s", request, len(steps), heldText(hold))
	}
	return held
}

// insertSteps inserts steps and returns the volumes whose lock another
// repair holds (they wait for a later pass). Steps found by a scan just now
// are fresh (see roStep.fresh); retried ones are checked again at launch,
// since time passed since their volume was seen naming the old target.
func (t *roStep) insertSteps(ctx context.Context, st *StepStatus, request uuid.UUID, steps []store.Step, fresh bool) []uuid.UUID {
	res, err := t.env.Deps.Store.InsertSteps(ctx, request, steps)
	if err != nil {
		errf(&st.Errors, "request %s: steps for %d volumes: %v", request, len(steps), err)
		return nil
	}
	var held []uuid.UUID
	for i, rs := range res {
		switch {
		case rs.LockHeld:
			held = append(held, steps[i].VolumeID)
			st.Skipped.Add("volume %s of request %s: its repair lock is held, or queued for by an older repair; waiting in the volume's lock queue", steps[i].VolumeID, request)
		case rs.Inserted && fresh:
			if t.fresh == nil || len(t.fresh) >= maxFresh {
				t.fresh = map[uuid.UUID]bool{}
			}
			t.fresh[steps[i].ID] = true
		}
		if rs.Inserted {
			st.StepRecordsCreatedOK = append(st.StepRecordsCreatedOK, "created step for volume "+steps[i].VolumeID.String())
		}
	}
	return held
}

func (t *roStep) launch(ctx context.Context, st *StepStatus) {
	d := t.env.Deps
	limits, _, err := d.Store.RebuildLimits(ctx)
	if err != nil {
		errf(&st.Errors, "rebuild budgets: %v", err)
		return
	}
	// In flight: the steps Running in the database (adopted sagas too)
	// and the step sagas this process started that have not claimed yet.
	// Read before the Requested steps: a saga that ends after this read
	// charged its unwind to its steps (afterUnwind runs before they leave
	// inflight) before the read below, so every step read is either in
	// flight here or read with its failed attempt — never an unwound
	// batch's step taken for a fresh one and batched again.
	running, err := d.Store.RunningStepRequests(ctx)
	if err != nil {
		errf(&st.Errors, "listing running steps: %v", err)
		return
	}
	t.mu.Lock()
	for id, req := range t.inflight {
		running[id] = req
	}
	t.mu.Unlock()
	steps, err := d.Store.RequestedStepsByRequest(ctx, stepsPerRequest)
	if err != nil {
		errf(&st.Errors, "listing requested steps: %v", err)
		return
	}
	if t.afterRequestedRead != nil {
		t.afterRequestedRead()
	}
	if advancedPast(&t.lost, steps, func(s store.Step) uuid.UUID { return s.ID }) > 0 {
		sagadef.Wakeup(d.Wake.ROFinish)
	}
	perRequest := map[uuid.UUID]int{}
	for _, req := range running {
		perRequest[req]++
	}
	used := len(running)
	budgets := newBudgetStatus(limits)
	budgets.InUse[store.BudgetRackSteps] = used
	st.Budgets = budgets
	held := map[uuid.UUID]string{}
	defer func() { t.env.Admission.stepsHeld(held) }()

	reqs := map[uuid.UUID]*store.ROReplacement{}
	gone := map[uuid.UUID]bool{}
	queues := map[uuid.UUID][]store.Step{}
	for _, s := range steps {
		queues[s.RequestID] = append(queues[s.RequestID], s)
	}
	for id := range queues {
		got, err := d.Store.GetROReplacement(ctx, id)
		if err != nil {
			errf(&st.Errors, "request %s: %v", id, err)
			delete(queues, id)
			continue
		}
		reqs[id] = &got
	}
	for id, q := range queues {
		if !t.env.heldBy(id, &st.Skipped, "request "+id.String()+": its requested steps") {
			continue
		}
		// Back at Requested after their sagas unwound during the hold:
		// they give up their locks like the steps the pause withdrew.
		for _, s := range q {
			if _, err := d.Store.WithdrawStep(ctx, s.ID); err != nil {
				errf(&st.Errors, "step %s: withdraw: %v", s.ID, err)
			}
		}
		delete(queues, id)
	}
	// The batch path (Env.StepBatch): which volumes have an Upstairs
	// attached now, asked once for the pass. Only a hint — the batch saga
	// asks again after its swap — so a failed question sends every step
	// the per-volume way.
	var attached map[uuid.UUID]bool
	batches := map[uuid.UUID][]store.Step{}
	if t.env.StepBatch > 0 {
		var vols []uuid.UUID
		for _, q := range queues {
			for _, s := range q {
				vols = append(vols, s.VolumeID)
			}
		}
		if attached, err = sagadef.AttachedVolumes(ctx, d, vols); err != nil {
			errf(&st.Errors, "attached volumes: %v (every step takes the per-volume path this pass)", err)
			attached = map[uuid.UUID]bool{}
			for _, v := range vols {
				attached[v] = true
			}
		}
		defer func() {
			for id, b := range batches {
				if len(b) > 0 {
					t.startBatch(ctx, st, reqs[id], b)
				}
			}
		}()
	}
	for {
		// The next step comes from the request first by: operator
		// priority, then fewest steps in flight (so a large fan-out
		// cannot starve a small request), then fewest live copies, then
		// age.
		var next uuid.UUID
		for id, q := range queues {
			if len(q) == 0 {
				continue
			}
			if next == uuid.Nil || stepBefore(reqs[id], perRequest[id], reqs[next], perRequest[next]) {
				next = id
			}
		}
		if next == uuid.Nil {
			break
		}
		s := queues[next][0]
		queues[next] = queues[next][1:]
		r := reqs[next]
		if _, busy := running[s.ID]; busy && t.env.StepBatch > 0 {
			// A saga this process started holds it (still Requested until
			// it claims): a batch keyed by another step would not be
			// stopped by the limiter, so it is left out here. Its claim
			// would refuse a second saga anyway; this saves the saga.
			continue
		}
		if full(limits.RackSteps, used) || t.limiter.InFlight() >= t.env.MaxSagas {
			// Everything left waits for a slot; the end of a step saga
			// wakes this task.
			why := "the task is at its bound of sagas in flight"
			budget := "task_bound"
			if full(limits.RackSteps, used) {
				budget = store.BudgetRackSteps
				why = (&store.BudgetError{Budget: store.BudgetRackSteps, Limit: limits.RackSteps, InUse: used}).Error()
			}
			rest := []store.Step{s}
			for _, q := range queues {
				rest = append(rest, q...)
			}
			for _, w := range rest {
				if budget == store.BudgetRackSteps {
					held[w.ID] = why
				}
				budgets.hold(budget, "step %s of request %s (priority %d, %d live copies): %s", w.ID, w.RequestID, reqs[w.RequestID].Priority, reqs[w.RequestID].LiveCopies, why)
			}
			break
		}
		if _, ok := gone[r.ID]; !ok {
			if gone[r.ID], err = sagadef.TargetGone(ctx, d, r.OldTargetID); err != nil {
				errf(&st.Errors, "step %s: target: %v", s.ID, err)
				delete(gone, r.ID)
				continue
			}
		}
		retire := gone[r.ID]
		fresh := t.fresh[s.ID]
		delete(t.fresh, s.ID) // a relaunch (after an unwind, say) checks again
		if !retire && !fresh {
			ref, err := d.Volumes.VolumeReferencesReadOnlyTarget(ctx, &volumev1.VolumeReferencesReadOnlyTargetRequest{
				VolumeId: s.VolumeID.String(), TargetId: r.OldTargetID.String(),
			})
			if err != nil {
				errf(&st.Errors, "step %s: volume %s: %v", s.ID, s.VolumeID, err)
				continue
			}
			// A step made for a stash (by a version that could not tell
			// one) is retired unrun.
			retire = !ref.VolumeExists || ref.SoftDeleted || !ref.Referenced ||
				ref.Purpose != volumev1.VolumePurpose_VOLUME_PURPOSE_DATA
		}
		if retire {
			if err := d.Store.SetStepVolumeDeletedFromRequested(ctx, s.ID); err != nil {
				errf(&st.Errors, "step %s: retire: %v", s.ID, err)
				t.lost.note(s.ID)
				continue
			}
			st.StepSetVolumeDeletedOK = append(st.StepSetVolumeDeletedOK, "step "+s.ID.String())
			continue
		}
		if t.env.StepBatch > 0 && s.Attempts.Attempts == 0 && !attached[s.VolumeID] {
			// No Upstairs seen, no failed attempt: this step joins its
			// request's batch (the budget counts it from now on).
			batches[r.ID] = append(batches[r.ID], s)
			used++
			perRequest[r.ID]++
			budgets.InUse[store.BudgetRackSteps] = used
			if len(batches[r.ID]) >= t.env.StepBatch {
				used -= t.startBatch(ctx, st, r, batches[r.ID])
				budgets.InUse[store.BudgetRackSteps] = used
				delete(batches, r.ID)
			}
			continue
		}
		stepID, reqID := s.ID, s.RequestID
		ok, err := startSaga(ctx, t.env, t.limiter, job{key: s.ID.String(), record: s.ID, request: s.RequestID, task: t.Name(), attempts: s.Attempts, skipped: &st.Skipped,
			ended: func() {
				t.mu.Lock()
				delete(t.inflight, stepID)
				t.mu.Unlock()
			}}, sagadef.ROStep,
			sagadef.StepParams{StepID: s.ID, RequestID: s.RequestID, VolumeID: s.VolumeID},
			saga.WithTraceParent(r.Traceparent), saga.WithSubject(s.ID.String()), saga.WithSubjectParent(s.RequestID.String()))
		switch {
		case err != nil:
			errf(&st.Errors, "step %s: start saga: %v", s.ID, err)
		case ok:
			t.mu.Lock()
			if t.inflight == nil {
				t.inflight = map[uuid.UUID]uuid.UUID{}
			}
			t.inflight[stepID] = reqID
			t.mu.Unlock()
			used++
			perRequest[reqID]++
			budgets.InUse[store.BudgetRackSteps] = used
			st.StepInvokedOK = append(st.StepInvokedOK, "step "+s.ID.String())
		}
	}
}

// startBatch starts ro-replacement-step-batch on steps of request r (each
// already counted in the rack_steps use) and returns how many of them it
// did not start, for the caller to uncount.
func (t *roStep) startBatch(ctx context.Context, st *StepStatus, r *store.ROReplacement, steps []store.Step) int {
	p := sagadef.StepBatchParams{RequestID: r.ID, Steps: make([]sagadef.BatchStep, len(steps))}
	ids := make([]uuid.UUID, len(steps))
	for i, s := range steps {
		p.Steps[i] = sagadef.BatchStep{StepID: s.ID, VolumeID: s.VolumeID}
		ids[i] = s.ID
	}
	t.mu.Lock()
	if t.inflight == nil {
		t.inflight = map[uuid.UUID]uuid.UUID{}
	}
	for _, id := range ids {
		t.inflight[id] = r.ID
	}
	t.mu.Unlock()
	// Keyed by its first step: each step is in one batch at a time (a
	// step is launched only while Requested and not in flight).
	ok, err := startSaga(ctx, t.env, t.limiter, job{key: "batch/" + ids[0].String(), record: ids[0], also: ids[1:], request: r.ID, task: t.Name(), skipped: &st.Skipped,
		ended: func() {
			t.mu.Lock()
			for _, id := range ids {
				delete(t.inflight, id)
			}
			t.mu.Unlock()
		}}, sagadef.ROStepBatch, p,
		saga.WithTraceParent(r.Traceparent), saga.WithSubject(ids[0].String()), saga.WithSubjectParent(r.ID.String()))
	switch {
	case err != nil:
		errf(&st.Errors, "request %s: start a batch of %d steps: %v", r.ID, len(ids), err)
	case ok:
		countStepBatch(ctx, len(ids))
		for _, id := range ids {
			st.StepInvokedOK = append(st.StepInvokedOK, "step "+id.String()+" (batch)")
		}
		return 0
	}
	return len(ids)
}

// stepsPerRequest bounds the Requested steps a pass reads per request: a
// pass starts at most the task's saga bound, and every request gets its
// share of the list whatever the others' fan-out.
const stepsPerRequest = 512

// stepBefore orders two requests for the next step slot: higher priority,
// then fewer steps in flight, then fewer live copies (uncounted last), then
// older.
func stepBefore(a *store.ROReplacement, aRunning int, b *store.ROReplacement, bRunning int) bool {
	lc := func(r *store.ROReplacement) int64 {
		if r.LiveCopies < 0 {
			return math.MaxInt64
		}
		return int64(r.LiveCopies)
	}
	if c := cmp.Or(
		cmp.Compare(b.Priority, a.Priority),
		cmp.Compare(aRunning, bRunning),
		cmp.Compare(lc(a), lc(b)),
		a.RequestTime.Compare(b.RequestTime),
	); c != 0 {
		return c < 0
	}
	return a.ID.String() < b.ID.String()
}

func full(limit, use int) bool { return limit > 0 && use >= limit }

// roundRobin interleaves steps by request, keeping each request's order.
func roundRobin(steps []store.Step) []store.Step {
	var order []uuid.UUID
	by := map[uuid.UUID][]store.Step{}
	for _, s := range steps {
		if _, ok := by[s.RequestID]; !ok {
			order = append(order, s.RequestID)
		}
		by[s.RequestID] = append(by[s.RequestID], s)
	}
	out := make([]store.Step, 0, len(steps))
	for len(out) < len(steps) {
		for _, id := range order {
			if q := by[id]; len(q) > 0 {
				out = append(out, q[0])
				by[id] = q[1:]
			}
		}
	}
	return out
}
