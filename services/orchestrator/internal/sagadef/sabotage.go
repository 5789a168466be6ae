package sagadef

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	"storagecp.dev/orchestrator/internal/saga"
)

// SabotageEnv names the environment variable of the sabotage hooks: deliberate
// replacement bugs that prove the sim-upstairs content oracle can fail. A
// comma-separated list of "<template>/<sabotage>":
//
//   - ro-replacement-start/wrong_clone_source: ensure_new_region clones the new
//     read-only region B from a region snapshot of another snapshot (of the
//     same disk when there is one) instead of the surviving copy
//     get_clone_source chose, so B holds other bytes than the target it
//     replaces;
//   - ro-replacement-step/skip_swap: replace_in_volume does not swap A for B in the
//     step's volume but reports the swap done, so the saga goes on (notifies,
//     completes the step) with the volume still naming A.
//
// The binary reads it once at start, and only with --dev (see
// cmd/replacement-orchestrator); nothing else does.
const SabotageEnv = "STORAGECP_SABOTAGE"

// Sabotage names.
const (
	SabotageWrongCloneSource = "ro-replacement-start/wrong_clone_source"
	SabotageSkipSwap         = "ro-replacement-step/skip_swap"
)

// Sabotage is the set of sabotages a process applies; the zero value applies
// none.
type Sabotage struct {
	wrongCloneSource bool
	skipSwap         bool
}

// ParseSabotage parses SabotageEnv's value. An unknown name is an error: a
// misspelt sabotage silently doing nothing would make a test of the oracle
// prove nothing.
func ParseSabotage(v string) (Sabotage, error) {
	var s Sabotage
	for _, name := range strings.Split(v, ",") {
		switch strings.TrimSpace(name) {
		case "":
		case SabotageWrongCloneSource:
			s.wrongCloneSource = true
		case SabotageSkipSwap:
			s.skipSwap = true
		default:
			return Sabotage{}, fmt.Errorf("%s: unknown sabotage %q (known: %s, %s)", SabotageEnv, name, SabotageWrongCloneSource, SabotageSkipSwap)
		}
	}
	return s, nil
}

// Any reports whether any sabotage is on.
func (s Sabotage) Any() bool { return s.wrongCloneSource || s.skipSwap }

// String lists the sabotages on, as SabotageEnv spells them.
func (s Sabotage) String() string {
	var out []string
	if s.wrongCloneSource {
		out = append(out, SabotageWrongCloneSource)
	}
	if s.skipSwap {
		out = append(out, SabotageSkipSwap)
	}
	return strings.Join(out, ",")
}

// sabotageCloneSource is ro-replacement-start's clone source: chosen, unless
// wrong_clone_source is on and a served region snapshot of another snapshot
// exists. Another snapshot of the old region's disk is preferred: it is the
// subtle mistake (same disk, same shape, other time), the one a liveness
// probe cannot see.
func sabotageCloneSource(ctx context.Context, ac *saga.ActionContext, chosen string) (string, error) {
	d := deps(ac)
	if !d.Sabotage.wrongCloneSource {
		return chosen, nil
	}
	p, _, err := startParams(ac)
	if err != nil {
		return "", err
	}
	snapshots, err := otherSnapshots(ctx, d, p)
	if err != nil {
		return "", err
	}
	for _, snap := range snapshots {
		cs, err := d.Allocator.ListCloneSources(ctx, &allocatorv1.ListCloneSourcesRequest{SnapshotId: snap.String()})
		if err != nil {
			return "", err
		}
		for _, rs := range cs.GetRegionSnapshots() {
			if rs.GetAddress() != "" {
				ac.Logger().Warn("sabotage: cloning the new read-only region from another snapshot",
					"sabotage", SabotageWrongCloneSource, "request_id", p.RequestID, "snapshot_id", p.OldSnapshotID,
					"chosen_source", chosen, "wrong_source", rs.GetAddress(), "wrong_snapshot_id", snap)
				return rs.GetAddress(), nil
			}
		}
	}
	ac.Logger().Warn("sabotage: no other snapshot to clone from; cloning from the chosen source",
		"sabotage", SabotageWrongCloneSource, "request_id", p.RequestID)
	return chosen, nil
}

// otherSnapshots lists snapshot ids other than the request's: first those
// of the old region's disk, then every other, each group sorted.
func otherSnapshots(ctx context.Context, d *Deps, p StartParams) ([]uuid.UUID, error) {
	var sameDisk []uuid.UUID
	old, err := d.Allocator.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: p.OldRegionID.String()})
	if err != nil {
		return nil, fmt.Errorf("old region %s: %w", p.OldRegionID, err)
	}
	regions, err := d.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedFor: old.GetRegion().GetAllocatedFor(), PageSize: 1000})
	if err != nil {
		return nil, err
	}
	for _, r := range regions.GetRegions() {
		got, err := d.Allocator.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: r.GetRegionId()})
		if err != nil {
			return nil, err
		}
		for _, rs := range got.GetRegionSnapshots() {
			sameDisk = appendSnapshot(sameDisk, rs.GetSnapshotId(), p.OldSnapshotID)
		}
	}
	var others []uuid.UUID
	for token := ""; ; {
		resp, err := d.Allocator.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return nil, err
		}
		for _, rs := range resp.GetRegionSnapshots() {
			if id, err := uuid.Parse(rs.GetSnapshotId()); err == nil && !slices.Contains(sameDisk, id) {
				others = appendSnapshot(others, rs.GetSnapshotId(), p.OldSnapshotID)
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	sortIDs := func(ids []uuid.UUID) {
		slices.SortFunc(ids, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })
	}
	sortIDs(sameDisk)
	sortIDs(others)
	return append(sameDisk, others...), nil
}

func appendSnapshot(ids []uuid.UUID, v string, not uuid.UUID) []uuid.UUID {
	id, err := uuid.Parse(v)
	if err != nil || id == not || slices.Contains(ids, id) {
		return ids
	}
	return append(ids, id)
}

// sabotageSkipSwap is ro-replacement-step's swap when skip_swap is on: nothing is
// swapped, and the result says it was (ok is false when the sabotage is
// off and the real swap must run).
func sabotageSkipSwap(ac *saga.ActionContext, r Replacement) (Replacement, bool) {
	if !deps(ac).Sabotage.skipSwap {
		return r, false
	}
	ac.Logger().Warn("sabotage: skipping the swap and reporting it done",
		"sabotage", SabotageSkipSwap, "volume_id", r.Volume, "old_target_id", r.Old, "new_target_id", r.New)
	r.Result = commonv1.VolumeReplaceResult_VOLUME_REPLACE_RESULT_DONE.String()
	return r, true
}
