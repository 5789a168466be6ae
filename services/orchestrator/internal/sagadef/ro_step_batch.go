package sagadef

import (
	"context"
	"fmt"
	"slices"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/saga"
)

// ro-replacement-step-batch: ro-replacement-step for many steps of one
// request whose volumes no Upstairs was found running when the step task
// launched them (docs/replacement.md, "The batch swap"). It leaves every
// step it completes exactly as ro-replacement-step does — Complete with a
// stash of its own that names A, its volume naming B, its lock released —
// with one claim, one volume-service call, one notifier question and one
// commit for the whole batch. "No Upstairs" at launch is only a hint: after
// the swap it asks the notifier which volumes have any attachment, in any
// state, and notifies those exactly as ro-replacement-step does; a failure
// there unwinds the whole batch (every volume swapped back, every stash
// removed, every step Requested again). Its nodes, each described where it
// is declared, are in newROStepBatch.

// BatchStep is one step of a batch.
type BatchStep struct {
	StepID   uuid.UUID `json:"step_id"`
	VolumeID uuid.UUID `json:"volume_id"`
}

// StepBatchParams are ro-replacement-step-batch's parameters: steps of one
// request, each with a distinct volume.
type StepBatchParams struct {
	RequestID uuid.UUID   `json:"request_id"`
	Steps     []BatchStep `json:"steps"`
}

// MaxStepBatch bounds a batch: the volume-service's bound on one
// ReplaceReadOnlyTargets call.
const MaxStepBatch = 1000

// ROStepBatch is the ro-replacement-step-batch template.
var ROStepBatch = newROStepBatch()

func newROStepBatch() *saga.Template {
	t := saga.NewTemplate("ro-replacement-step-batch")
	// The nodes, in order, each after the one before it.
	nodes := []*saga.Action{
		// S = this saga's id.
		t.Action("saga_id", operatingSagaID, nil).Local(),
		// One stash id per step, by the step's place in the parameters.
		t.Action("new_volume_ids", batchStashIDs, nil).Local(),
		// Claim: Requested → Running for as many steps as the rack_steps
		// budget admits, in one transaction; the output is the steps
		// claimed (the rest stay Requested for a later pass). ⟲ every
		// step this saga holds back to Requested.
		t.Action("set_saga_id", batchClaim, batchClaimUndo),
		// A and B, as ro-replacement-step computes them.
		t.Action("create_replace_params", batchReplaceParams, nil),
		// ReplaceReadOnlyTargets(A → B) on the claimed steps' volumes,
		// each stash created blank first, in one transaction. ⟲ swap
		// every one back in one call, then remove every stash.
		t.Action("replace_in_volumes", batchReplace, batchReplaceUndo),
		// After the swap: FindAttachedVolumes over the volumes not found
		// deleted, and NotifyReplacement for each one with any attachment
		// (as ro-replacement-step's notify_upstairs).
		t.Action("notify_upstairs", batchNotify, nil),
		// Commit: every claimed step Complete with its stash, locks
		// released, in one transaction.
		t.Action("update_request", batchCommit, nil),
	}
	saga.SetBuild(t, func(b *saga.Builder, p StepBatchParams) error {
		if err := checkBatch(p); err != nil {
			return err
		}
		for _, a := range nodes {
			b.Append(a.Node())
		}
		return nil
	})
	return t
}

// checkBatch refuses parameters the volume-service would refuse whole.
func checkBatch(p StepBatchParams) error {
	vols := make([]uuid.UUID, len(p.Steps))
	for i, s := range p.Steps {
		vols[i] = s.VolumeID
	}
	return checkBatchIDs("volume", vols)
}

// checkBatchIDs refuses a batch of more than MaxStepBatch steps, or one
// whose steps name a volume (what) twice: the volume-service's batch
// calls refuse both whole.
func checkBatchIDs(what string, ids []uuid.UUID) error {
	if len(ids) > MaxStepBatch {
		return fmt.Errorf("steps: at most %d, got %d", MaxStepBatch, len(ids))
	}
	seen := map[uuid.UUID]bool{}
	for i, id := range ids {
		if seen[id] {
			return fmt.Errorf("steps[%d]: %s %s appears twice", i, what, id)
		}
		seen[id] = true
	}
	return nil
}

func batchParams(ac *saga.ActionContext) (StepBatchParams, uuid.UUID, error) {
	p, err := saga.Params[StepBatchParams](ac)
	if err != nil {
		return p, uuid.Nil, err
	}
	s, err := saga.Lookup[uuid.UUID](ac, "saga_id")
	return p, s, err
}

func batchStepIDs(p StepBatchParams) []uuid.UUID {
	ids := make([]uuid.UUID, len(p.Steps))
	for i, s := range p.Steps {
		ids[i] = s.StepID
	}
	return ids
}

func batchStashIDs(_ context.Context, ac *saga.ActionContext) (any, error) {
	p, err := saga.Params[StepBatchParams](ac)
	if err != nil {
		return nil, err
	}
	return newIDs(len(p.Steps))(context.Background(), ac)
}

func batchClaim(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := batchParams(ac)
	if err != nil {
		return nil, err
	}
	return deps(ac).Store.SetStepsRunning(ctx, batchStepIDs(p), s)
}

func batchClaimUndo(ctx context.Context, ac *saga.ActionContext) error {
	p, s, err := batchParams(ac)
	if err != nil {
		return err
	}
	// Every step of the batch, not the claim's output: a claim whose
	// outcome is unknown may have claimed any of them.
	return deps(ac).Store.UndoStepsRunning(ctx, batchStepIDs(p), s)
}

func batchReplaceParams(ctx context.Context, ac *saga.ActionContext) (any, error) {
	return stepReplaceParams(ctx, ac)
}

// batchSwaps is what replace_in_volumes swaps: each claimed step's volume,
// with the stash generated for its place in the parameters.
func batchSwaps(ac *saga.ActionContext) ([]Replacement, error) {
	p, err := saga.Params[StepBatchParams](ac)
	if err != nil {
		return nil, err
	}
	claimed, err := saga.Lookup[[]uuid.UUID](ac, "set_saga_id")
	if err != nil {
		return nil, err
	}
	stashes, err := saga.Lookup[[]uuid.UUID](ac, "new_volume_ids")
	if err != nil {
		return nil, err
	}
	rp, err := saga.Lookup[ReplaceParams](ac, "create_replace_params")
	if err != nil {
		return nil, err
	}
	if len(stashes) != len(p.Steps) {
		return nil, fmt.Errorf("%w: %d stash ids for %d steps", errInvalidState, len(stashes), len(p.Steps))
	}
	out := make([]Replacement, 0, len(claimed))
	for i, s := range p.Steps {
		if slices.Contains(claimed, s.StepID) {
			out = append(out, Replacement{Volume: s.VolumeID, Old: rp.Old, New: rp.New, Stash: stashes[i]})
		}
	}
	return out, nil
}

func replaceReadOnlyBatch(ctx context.Context, d *Deps, rs []Replacement, createStashes bool) ([]string, error) {
	if len(rs) == 0 {
		return nil, nil
	}
	req := &volumev1.ReplaceReadOnlyTargetsRequest{
		OldTargetId: rs[0].Old.String(), NewTargetId: rs[0].New.String(), CreateStashes: createStashes,
	}
	for _, r := range rs {
		req.Swaps = append(req.Swaps, &volumev1.ReadOnlySwap{VolumeId: r.Volume.String(), StashVolumeId: r.Stash.String()})
	}
	resp, err := d.Volumes.ReplaceReadOnlyTargets(ctx, req)
	if err != nil {
		return nil, err
	}
	if len(resp.Results) != len(rs) {
		return nil, fmt.Errorf("%w: %d results for %d swaps", errInvalidState, len(resp.Results), len(rs))
	}
	out := make([]string, len(rs))
	for i, r := range resp.Results {
		out[i] = r.String()
	}
	return out, nil
}

func batchReplace(ctx context.Context, ac *saga.ActionContext) (any, error) {
	rs, err := batchSwaps(ac)
	if err != nil {
		return nil, err
	}
	if deps(ac).Sabotage.skipSwap {
		// The deliberate bug ro-replacement-step has (sabotage.go),
		// here too, so the oracle that must catch it sees the batch.
		for i := range rs {
			rs[i], _ = sabotageSkipSwap(ac, rs[i])
		}
		return rs, nil
	}
	results, err := replaceReadOnlyBatch(ctx, deps(ac), rs, true)
	if err != nil {
		return nil, err
	}
	for i := range rs {
		rs[i].Result = results[i]
	}
	return rs, nil
}

// batchReplaceUndo swaps back every swap the action made (or, its outcome
// unknown, meant to make: swapping back one that never landed finds it
// ALREADY_HAPPENED), then removes every stash as ro-replacement-step's
// create_stash undo does. Every result is accepted, as undoSwap accepts
// it: a volume deleted since keeps its old reference in its stash, which
// the removal then frees.
func batchReplaceUndo(ctx context.Context, ac *saga.ActionContext) error {
	var rs []Replacement
	if ac.OutcomeUnknown() {
		var err error
		if rs, err = batchSwaps(ac); err != nil {
			return err
		}
	} else if err := ac.Output(&rs); err != nil {
		return err
	}
	back := make([]Replacement, len(rs))
	for i, r := range rs {
		back[i] = Replacement{Volume: r.Volume, Old: r.New, New: r.Old, Stash: r.Stash}
	}
	d := deps(ac)
	if _, err := replaceReadOnlyBatch(ctx, d, back, false); err != nil {
		return err
	}
	for _, r := range rs {
		if err := removeVolume(ctx, d, r.Stash); err != nil {
			return err
		}
	}
	return nil
}

// BatchNotified is notify_upstairs' output: the volumes it found with an
// attachment after the swap, each with NotifyReplacement's outcome.
type BatchNotified map[uuid.UUID]string

func batchNotify(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, err := saga.Params[StepBatchParams](ac)
	if err != nil {
		return nil, err
	}
	rs, err := saga.Lookup[[]Replacement](ac, "replace_in_volumes")
	if err != nil {
		return nil, err
	}
	step := map[uuid.UUID]uuid.UUID{}
	for _, s := range p.Steps {
		step[s.VolumeID] = s.StepID
	}
	var ask []string
	for _, r := range rs {
		if !r.VolumeGone() {
			ask = append(ask, r.Volume.String())
		}
	}
	out := BatchNotified{}
	if len(ask) == 0 {
		return out, nil
	}
	d := deps(ac)
	found, err := d.Notifier.FindAttachedVolumes(ctx, &notifierv1.FindAttachedVolumesRequest{VolumeIds: ask})
	if err != nil {
		return nil, err
	}
	// The hint was wrong for these (an Upstairs registered since the
	// launch, or one the launch could not see yet): tell each, as
	// ro-replacement-step would have.
	for _, v := range found.VolumeIds {
		vid, err := uuid.Parse(v)
		if err != nil {
			return nil, fmt.Errorf("%w: notifier answered volume %q", errInvalidState, v)
		}
		resp, err := d.Notifier.NotifyReplacement(ctx, &notifierv1.NotifyReplacementRequest{
			VolumeId: v, StepKey: step[vid].String(),
		})
		switch {
		case isCode(err, codes.NotFound):
			out[vid] = "volume deleted since the swap: nothing to notify"
		case err != nil:
			return nil, fmt.Errorf("volume %s: %w", v, err)
		default:
			out[vid] = resp.Outcome.String()
		}
	}
	return out, nil
}

func batchCommit(ctx context.Context, ac *saga.ActionContext) (any, error) {
	_, s, err := batchParams(ac)
	if err != nil {
		return nil, err
	}
	rs, err := saga.Lookup[[]Replacement](ac, "replace_in_volumes")
	if err != nil {
		return nil, err
	}
	claimed, err := saga.Lookup[[]uuid.UUID](ac, "set_saga_id")
	if err != nil {
		return nil, err
	}
	if len(claimed) != len(rs) {
		return nil, fmt.Errorf("%w: %d steps claimed, %d swapped", errInvalidState, len(claimed), len(rs))
	}
	stashes := make([]uuid.UUID, len(rs))
	for i, r := range rs {
		stashes[i] = r.Stash
	}
	d := deps(ac)
	// claimed and rs are both in the parameters' order (batchSwaps).
	if err := d.Store.SetStepsComplete(ctx, s, claimed, stashes); err != nil {
		return nil, err
	}
	Wakeup(d.Wake.ROStep)
	return len(claimed), nil
}

// AttachedVolumes asks the notifier which of vols have any attachment
// (the step task's hint for the batch path), in calls of at most
// MaxStepBatch volumes.
func AttachedVolumes(ctx context.Context, d *Deps, vols []uuid.UUID) (map[uuid.UUID]bool, error) {
	out := map[uuid.UUID]bool{}
	for chunk := range slices.Chunk(vols, MaxStepBatch) {
		resp, err := d.Notifier.FindAttachedVolumes(ctx, &notifierv1.FindAttachedVolumesRequest{VolumeIds: strs(chunk)})
		if err != nil {
			return nil, err
		}
		for _, v := range resp.VolumeIds {
			id, err := uuid.Parse(v)
			if err != nil {
				return nil, fmt.Errorf("notifier answered volume %q: %w", v, err)
			}
			out[id] = true
		}
	}
	return out, nil
}
