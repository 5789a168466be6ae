// Package preview answers "what would expunging this disk (or sled) do?"
// without changing anything: the operation behind ReplacementService's
// PreviewExpunge. It reads the same rows the detectors and the replacement
// sagas read, with the previewed disks treated as expunged.
package preview

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/sagadef"
)

// Clients are the services a preview reads.
type Clients struct {
	Volumes   volumev1.VolumeServiceClient
	Allocator allocatorv1.RegionAllocatorServiceClient
}

// Expunge answers what expunging a disk (or every in-service disk of
// a sled) would hand to the detectors, and what the replacement sagas would
// then find: for each read-only target the clone source ro-replacement-start would
// pick, for each rw region whether another member of its region set
// survives, and whether the allocator has room for each replacement region.
// It reads the same rows the detectors and sagas read (ListExpungedTargets'
// walk, ListCloneSources, GetTarget, the dry run of the saga's allocation)
// with the previewed disks treated as expunged, and writes nothing anywhere.
//
// The preview covers the union of the disks and the sleds' in-service
// disks, together: a region set with copies on two of them loses both, and
// no replacement region is placed on any of them. At least one disk or
// sled is named (the handler checked the request). Unknown disks and sleds
// (NotFound) and disks already expunged (FailedPrecondition) come back as
// gRPC status errors; any other error is the failed read, wrapped.
func Expunge(ctx context.Context, c Clients, sel Selection) (*orchestratorv1.PreviewExpungeResponse, error) {
	p := newPreviewer(c)
	if err := p.loadDisks(ctx); err != nil {
		return nil, err
	}
	var covered []*allocatorv1.PhysicalDisk
	seen := map[string]bool{}
	for _, it := range sel.items() {
		ds, err := p.chooseDisks(it.disk, it.sled)
		if err != nil {
			return nil, it.field(err)
		}
		covered = appendNew(covered, seen, ds)
	}
	sort.Slice(covered, func(i, j int) bool { return covered[i].DiskId < covered[j].DiskId })
	return p.preview(ctx, covered)
}

// Selection is the disks and sleds a request names: the single fields and
// the repeated ones (ids already parsed; uuid.Nil for an absent single
// field).
type Selection struct {
	DiskID, SledID   uuid.UUID
	DiskIDs, SledIDs []uuid.UUID
}

// item is one disk or sled of a Selection and the field it came from.
type item struct {
	disk, sled uuid.UUID
	index      int // -1: the single field
}

func (s Selection) items() []item {
	var out []item
	if s.DiskID != uuid.Nil {
		out = append(out, item{disk: s.DiskID, index: -1})
	}
	for i, id := range s.DiskIDs {
		out = append(out, item{disk: id, index: i})
	}
	if s.SledID != uuid.Nil {
		out = append(out, item{sled: s.SledID, index: -1})
	}
	for i, id := range s.SledIDs {
		out = append(out, item{sled: id, index: i})
	}
	return out
}

// field renames "disk_id:"/"sled_id:" in err to the repeated field and
// index the item came from.
func (it item) field(err error) error {
	if it.disk != uuid.Nil {
		return fieldIndex(err, "disk_id", "disk_ids", it.index)
	}
	return fieldIndex(err, "sled_id", "sled_ids", it.index)
}

func newPreviewer(c Clients) *previewer {
	return &previewer{c: c, disks: map[string]*allocatorv1.PhysicalDisk{}, byDataset: map[string]*allocatorv1.PhysicalDisk{}, previewed: map[string]bool{}}
}

// fieldIndex names the repeated field an error came from when the caller
// gave it there ("disk_ids[1]" rather than "disk_id"). index -1 means the
// single field.
func fieldIndex(err error, single, repeated string, index int) error {
	st, ok := status.FromError(err)
	if !ok || index < 0 {
		return err
	}
	msg := st.Message()
	if rest, found := strings.CutPrefix(msg, single+":"); found {
		msg = fmt.Sprintf("%s[%d]:%s", repeated, index, rest)
	}
	return status.Error(st.Code(), msg)
}

func appendNew(out []*allocatorv1.PhysicalDisk, seen map[string]bool, ds []*allocatorv1.PhysicalDisk) []*allocatorv1.PhysicalDisk {
	for _, d := range ds {
		if !seen[d.DiskId] {
			seen[d.DiskId] = true
			out = append(out, d)
		}
	}
	return out
}

// preview previews the covered disks together; p's disks are loaded and
// nothing is previewed yet.
func (p *previewer) preview(ctx context.Context, covered []*allocatorv1.PhysicalDisk) (*orchestratorv1.PreviewExpungeResponse, error) {
	out := &orchestratorv1.PreviewExpungeResponse{CapacityOk: true}
	for _, d := range covered {
		out.DiskIds = append(out.DiskIds, d.DiskId)
		p.previewed[d.DiskId] = true
	}
	for _, d := range covered {
		if err := p.disk(ctx, d, out); err != nil {
			return nil, err
		}
	}
	sort.Slice(out.ReadOnlyTargets, func(i, j int) bool { return out.ReadOnlyTargets[i].TargetId < out.ReadOnlyTargets[j].TargetId })
	sort.Slice(out.ReadWriteRegions, func(i, j int) bool { return out.ReadWriteRegions[i].RegionId < out.ReadWriteRegions[j].RegionId })
	p.summarise(out)
	return out, nil
}

// previewer holds one preview's view of the inventory.
type previewer struct {
	c         Clients
	disks     map[string]*allocatorv1.PhysicalDisk
	byDataset map[string]*allocatorv1.PhysicalDisk
	// previewed are the disks the preview treats as expunged.
	previewed map[string]bool
	// short lists every replacement region that did not fit, for the
	// summary.
	short []string
	// needed counts the replacement regions the preview placed or failed to.
	needed int
}

func (p *previewer) loadDisks(ctx context.Context) error {
	for token := ""; ; {
		resp, err := p.c.Allocator.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000, PageToken: token, OmitCounts: true})
		if err != nil {
			return fmt.Errorf("list physical disks: %w", err)
		}
		for _, d := range resp.Disks {
			p.disks[d.DiskId] = d
			p.byDataset[d.DatasetId] = d
		}
		if token = resp.NextPageToken; token == "" {
			return nil
		}
	}
}

// chooseDisks returns the in-service disks the preview covers, in id order.
func (p *previewer) chooseDisks(diskID, sledID uuid.UUID) ([]*allocatorv1.PhysicalDisk, error) {
	if diskID != uuid.Nil {
		id := diskID
		d, ok := p.disks[id.String()]
		if !ok {
			return nil, status.Errorf(codes.NotFound, "disk_id: physical disk %s not found", id)
		}
		if d.Policy == allocatorv1.Policy_POLICY_EXPUNGED {
			return nil, status.Errorf(codes.FailedPrecondition, "physical disk %s is already expunged", id)
		}
		return []*allocatorv1.PhysicalDisk{d}, nil
	}
	return p.sledDisks(sledID)
}

// sledDisks returns the in-service disks of a sled, in id order.
func (p *previewer) sledDisks(id uuid.UUID) ([]*allocatorv1.PhysicalDisk, error) {
	var all, live []*allocatorv1.PhysicalDisk
	for _, d := range p.disks {
		if d.SledId != id.String() {
			continue
		}
		all = append(all, d)
		if d.Policy != allocatorv1.Policy_POLICY_EXPUNGED {
			live = append(live, d)
		}
	}
	if len(all) == 0 {
		// The allocator has no sled lookup; a sled without disks holds
		// nothing to preview either.
		return nil, status.Errorf(codes.NotFound, "sled_id: no physical disk on sled %s", id)
	}
	if len(live) == 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "every disk of sled %s is already expunged", id)
	}
	sort.Slice(live, func(i, j int) bool { return live[i].DiskId < live[j].DiskId })
	return live, nil
}

// lostDisk reports whether a disk is, or would be, expunged.
func (p *previewer) lostDisk(diskID string) bool {
	d, ok := p.disks[diskID]
	return !ok || p.previewed[diskID] || d.Policy == allocatorv1.Policy_POLICY_EXPUNGED
}

func (p *previewer) exclude() []string {
	out := make([]string, 0, len(p.previewed))
	for id := range p.previewed {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// disk previews one disk: its region snapshots and regions, as the
// detectors' walk (disk → dataset → rows) would find them.
func (p *previewer) disk(ctx context.Context, d *allocatorv1.PhysicalDisk, out *orchestratorv1.PreviewExpungeResponse) error {
	a := p.c.Allocator
	for token := ""; ; {
		resp, err := a.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{DatasetId: d.DatasetId, PageSize: 1000, PageToken: token})
		if err != nil {
			return fmt.Errorf("list region snapshots on disk %s: %w", d.DiskId, err)
		}
		for _, rs := range resp.RegionSnapshots {
			t, err := p.readOnly(ctx, orchestratorv1.ReplacementKind_REPLACEMENT_KIND_REGION_SNAPSHOT,
				rs.TargetId, rs.RegionId, rs.SnapshotId, rs.Address, d.DiskId)
			if err != nil {
				return err
			}
			out.ReadOnlyTargets = append(out.ReadOnlyTargets, t)
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	for token := ""; ; {
		resp, err := a.ListRegions(ctx, &allocatorv1.ListRegionsRequest{DatasetId: d.DatasetId, PageSize: 1000, PageToken: token})
		if err != nil {
			return fmt.Errorf("list regions on disk %s: %w", d.DiskId, err)
		}
		for _, reg := range resp.Regions {
			if reg.ReadOnly {
				// A read-only region is allocated for its snapshot's volume,
				// whose id is the snapshot id.
				t, err := p.readOnly(ctx, orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_ONLY_REGION,
					reg.RegionId, reg.RegionId, reg.AllocatedFor, reg.Address, d.DiskId)
				if err != nil {
					return err
				}
				out.ReadOnlyTargets = append(out.ReadOnlyTargets, t)
				continue
			}
			rw, err := p.readWrite(ctx, reg, d.DiskId)
			if err != nil {
				return err
			}
			if rw != nil {
				out.ReadWriteRegions = append(out.ReadWriteRegions, rw)
			}
		}
		if token = resp.NextPageToken; token == "" {
			return nil
		}
	}
}

// targetState is GetTarget reduced to what a preview needs: whether the
// target is gone (NotFound or DELETING: docs/architecture.md, '"Gone"
// means the reference count reached zero: DELETING'), and the target when
// registered.
func (p *previewer) targetState(ctx context.Context, id string) (*commonv1.Target, bool, error) {
	resp, err := p.c.Volumes.GetTarget(ctx, &volumev1.GetTargetRequest{TargetId: id})
	if status.Code(err) == codes.NotFound {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("target %s: %w", id, err)
	}
	return resp.Target, resp.Target.State == commonv1.TargetState_TARGET_STATE_DELETING, nil
}

// readOnly previews one read-only target the way ro-replacement-start would treat it.
func (p *previewer) readOnly(ctx context.Context, kind orchestratorv1.ReplacementKind, targetID, regionID, snapshotID, address, diskID string) (*orchestratorv1.ReadOnlyTargetPreview, error) {
	t := &orchestratorv1.ReadOnlyTargetPreview{
		TargetId: targetID, Kind: kind, SnapshotId: snapshotID, RegionId: regionID, DiskId: diskID, Address: address, CapacityOk: true,
	}
	_, gone, err := p.targetState(ctx, targetID)
	if err != nil {
		return nil, err
	}
	t.Gone = gone
	if gone {
		// Nothing references it: ro-replacement-start completes the request at once.
		return t, nil
	}
	n, err := p.countReferences(ctx, targetID)
	if err != nil {
		return nil, err
	}
	t.ReferencingVolumes = n
	if err := p.cloneSource(ctx, t); err != nil {
		return nil, err
	}
	if t.DataLoss {
		return t, nil
	}
	// The allocation ro-replacement-start makes: one more read-only region for the
	// snapshot volume, away from every sled holding a copy of the snapshot.
	old, err := p.c.Allocator.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: regionID})
	if err != nil {
		return nil, fmt.Errorf("region %s of target %s: %w", regionID, targetID, err)
	}
	current, err := p.countRegions(ctx, snapshotID)
	if err != nil {
		return nil, err
	}
	g := old.Region
	t.NewRegionDiskId, t.CapacityOk, err = p.dryRun(ctx, "read-only target "+targetID, &allocatorv1.AllocateRegionsRequest{
		VolumeId: snapshotID, SnapshotId: snapshotID,
		BlockSize: g.BlockSize, BlocksPerExtent: g.BlocksPerExtent, ExtentCount: g.ExtentCount, ReadOnly: true,
		Redundancy: int32(current + 1),
	})
	return t, err
}

// cloneSource picks what ro-replacement-start would (sagadef.ChooseCloneSource), with
// the previewed disks lost.
func (p *previewer) cloneSource(ctx context.Context, t *orchestratorv1.ReadOnlyTargetPreview) error {
	resp, err := p.c.Allocator.ListCloneSources(ctx, &allocatorv1.ListCloneSourcesRequest{SnapshotId: t.SnapshotId, VolumeId: t.SnapshotId})
	if err != nil {
		return fmt.Errorf("clone sources of snapshot %s: %w", t.SnapshotId, err)
	}
	old, err := uuid.Parse(t.TargetId)
	if err != nil {
		return fmt.Errorf("target %q: %w", t.TargetId, err)
	}
	c, ok, err := sagadef.ChooseCloneSource(ctx, resp, old, p.lostDisk, func(ctx context.Context, id uuid.UUID) (bool, error) {
		_, gone, err := p.targetState(ctx, id.String())
		return gone, err
	})
	if err != nil {
		return err
	}
	if !ok {
		t.DataLoss = true
		return nil
	}
	t.CloneSourceTargetId, t.CloneSourceKind, t.CloneSourceDiskId = c.TargetID.String(), c.Kind, c.DiskID
	return nil
}

func (p *previewer) countReferences(ctx context.Context, targetID string) (int64, error) {
	var n int64
	for token := ""; ; {
		resp, err := p.c.Volumes.FindVolumesReferencingTarget(ctx, &volumev1.FindVolumesReferencingTargetRequest{
			TargetId: targetID, PageSize: 1000, PageToken: token,
		})
		if err != nil {
			return 0, fmt.Errorf("volumes referencing %s: %w", targetID, err)
		}
		n += int64(len(resp.Volumes))
		if token = resp.NextPageToken; token == "" {
			return n, nil
		}
	}
}

func (p *previewer) countRegions(ctx context.Context, volumeID string) (int, error) {
	n := 0
	for token := ""; ; {
		resp, err := p.c.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedFor: volumeID, PageSize: 1000, PageToken: token})
		if err != nil {
			return 0, fmt.Errorf("regions of volume %s: %w", volumeID, err)
		}
		n += len(resp.Regions)
		if token = resp.NextPageToken; token == "" {
			return n, nil
		}
	}
}

// dryRun asks the allocator where the saga's allocation would put the one
// new region with the previewed disks gone. ResourceExhausted is an answer
// (no room), not an error.
func (p *previewer) dryRun(ctx context.Context, what string, a *allocatorv1.AllocateRegionsRequest) (diskID string, ok bool, err error) {
	p.needed++
	newID := uuid.NewString()
	a.Strategy = allocatorv1.AllocationStrategy_ALLOCATION_STRATEGY_RANDOM_WITH_DISTINCT_SLEDS
	a.NewRegionIds = []string{newID}
	resp, err := p.c.Allocator.DryRunAllocation(ctx, &allocatorv1.DryRunAllocationRequest{Allocation: a, ExcludeDiskIds: p.exclude()})
	if status.Code(err) == codes.ResourceExhausted {
		p.short = append(p.short, fmt.Sprintf("%s: %s", what, status.Convert(err).Message()))
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("dry run for %s: %w", what, err)
	}
	for _, reg := range resp.Regions {
		if reg.RegionId == newID {
			return reg.DiskId, true, nil
		}
	}
	// The volume already has redundancy regions: a replacement of it is in
	// flight, and the saga's allocation would not add one either.
	p.short = append(p.short, fmt.Sprintf("%s: volume %s already has %d regions (a replacement is in flight)", what, a.VolumeId, len(resp.Regions)))
	return "", false, nil
}

// readWrite previews one rw region the way the rw detector and rw-replacement-start
// would treat it; nil when the detector would skip it (unregistered: its
// volume's deletion already freed it).
func (p *previewer) readWrite(ctx context.Context, reg *allocatorv1.Region, diskID string) (*orchestratorv1.ReadWriteRegionPreview, error) {
	tg, gone, err := p.targetState(ctx, reg.RegionId)
	if err != nil {
		return nil, err
	}
	if gone {
		return nil, nil
	}
	rw := &orchestratorv1.ReadWriteRegionPreview{
		RegionId: reg.RegionId, VolumeId: tg.OwnerVolumeId, DiskId: diskID, Address: tg.Address, CapacityOk: true,
	}
	vol, err := p.c.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: tg.OwnerVolumeId})
	if status.Code(err) == codes.NotFound {
		rw.VolumeDeleted = true
		return rw, nil
	}
	if err != nil {
		return nil, fmt.Errorf("volume %s of region %s: %w", tg.OwnerVolumeId, reg.RegionId, err)
	}
	if vol.Volume.TimeDeleted != nil {
		rw.VolumeDeleted = true
		return rw, nil
	}
	byAddr := map[string]*commonv1.Target{}
	for _, t := range vol.Volume.Targets {
		byAddr[t.Address] = t
	}
	set := sagadef.RegionSetOf(vol.Volume.Vcr, tg.Address)
	survivors := 0
	for _, addr := range set {
		if addr == tg.Address {
			continue
		}
		m := &orchestratorv1.RegionSetMember{Address: addr, Lost: true}
		if t, ok := byAddr[addr]; ok {
			m.RegionId = t.RegionId
			if d, ok := p.byDataset[t.DatasetId]; ok {
				m.DiskId = d.DiskId
				m.Lost = p.lostDisk(d.DiskId)
			}
		}
		if !m.Lost {
			survivors++
		}
		rw.OtherMembers = append(rw.OtherMembers, m)
	}
	// A member that resolves to no disk cannot be shown to survive, so it
	// counts as lost.
	rw.DataLoss = survivors == 0
	if rw.DataLoss {
		return rw, nil
	}
	g := reg
	rw.NewRegionDiskId, rw.CapacityOk, err = p.dryRun(ctx, "rw region "+reg.RegionId, &allocatorv1.AllocateRegionsRequest{
		VolumeId: tg.OwnerVolumeId, BlockSize: g.BlockSize, BlocksPerExtent: g.BlocksPerExtent, ExtentCount: g.ExtentCount,
		Redundancy: 3 + 1,
	})
	return rw, err
}

func (p *previewer) summarise(out *orchestratorv1.PreviewExpungeResponse) {
	for _, t := range out.ReadOnlyTargets {
		out.DataLoss = out.DataLoss || t.DataLoss
		out.CapacityOk = out.CapacityOk && t.CapacityOk
	}
	for _, rw := range out.ReadWriteRegions {
		out.DataLoss = out.DataLoss || rw.DataLoss
		out.CapacityOk = out.CapacityOk && rw.CapacityOk
	}
	switch {
	case p.needed == 0:
		out.CapacityDetail = "no replacement region needed"
	case len(p.short) == 0:
		// Each dry run sees today's free space, not the regions the others
		// would take first.
		out.CapacityDetail = fmt.Sprintf("each of %d replacement regions fits (checked one at a time)", p.needed)
	default:
		out.CapacityDetail = fmt.Sprintf("%d of %d replacement regions do not fit: %s", len(p.short), p.needed, strings.Join(p.short, "; "))
	}
}
