package sagadef

import (
	"context"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// CloneCandidate is a copy of a snapshot's data a read-only replacement
// can clone from.
type CloneCandidate struct {
	TargetID uuid.UUID
	Address  string
	Kind     string // region_snapshot | read_only_region
	DiskID   string
	// SledID is where the clone reads from (the source_sled_rebuilds
	// budget).
	SledID string
}

// ChooseCloneSource is the one rule for the copy a read-only replacement
// clones from: ro-replacement-start's get_clone_source runs it, and PreviewExpunge runs
// it to say what ro-replacement-start would do. Among the copies the allocator lists
// for the snapshot, in order: a region snapshot, then a read-only region of
// the snapshot volume that has an address; a copy on a disk lost reports
// (ro-replacement-start: none, the listing holds only in-service disks; the preview:
// the disks it previews expunging) or whose target is gone is skipped. The
// old target itself is the last resort. ok is false when no copy survives.
func ChooseCloneSource(ctx context.Context, sources *allocatorv1.ListCloneSourcesResponse, oldTargetID uuid.UUID,
	lost func(diskID string) bool, gone func(ctx context.Context, targetID uuid.UUID) (bool, error)) (c CloneCandidate, ok bool, err error) {
	var cands []CloneCandidate
	for _, rs := range sources.GetRegionSnapshots() {
		id, err := uuid.Parse(rs.GetTargetId())
		if err != nil {
			return CloneCandidate{}, false, err
		}
		cands = append(cands, CloneCandidate{TargetID: id, Address: rs.GetAddress(), Kind: "region_snapshot", DiskID: rs.GetDiskId(), SledID: rs.GetSledId()})
	}
	for _, r := range sources.GetReadOnlyRegions() {
		id, err := uuid.Parse(r.GetRegionId())
		if err != nil {
			return CloneCandidate{}, false, err
		}
		if r.GetAddress() == "" {
			continue
		}
		cands = append(cands, CloneCandidate{TargetID: id, Address: r.GetAddress(), Kind: "read_only_region", DiskID: r.GetDiskId(), SledID: r.GetSledId()})
	}
	var self *CloneCandidate
	for _, c := range cands {
		if lost != nil && lost(c.DiskID) {
			continue
		}
		g, err := gone(ctx, c.TargetID)
		if err != nil {
			return CloneCandidate{}, false, err
		}
		if g {
			continue
		}
		if c.TargetID == oldTargetID {
			self = &c
			continue
		}
		return c, true, nil
	}
	if self != nil {
		return *self, true, nil
	}
	return CloneCandidate{}, false, nil
}
