package demo

// Choosing the disk to expunge, previewing what expunging it replaces, and
// expunging it. Watching the replacement that follows is watch.go.

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

// victim is the disk the demo expunges and what lives on it.
type victim struct {
	disk    *allocatorv1.PhysicalDisk
	serial  string
	targets map[string]bool // region snapshot target ids and region ids on its dataset
	regions map[string]bool // region ids (rw and read-only) on its dataset
}

// chooseDisk picks, among the disks holding one of the new snapshot's
// region snapshots (each also holds the disk's rw region the snapshot was
// taken of), the one holding the most rw regions of the new clones, so the
// demo shows read-only and rw replacement side by side.
func (d *run) chooseDisk(ctx context.Context, rep seedReport) (victim, error) {
	snap, err := d.a.vol.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: d.res.SnapshotID})
	if err != nil {
		return victim{}, fmt.Errorf("get snapshot volume: %w", err)
	}
	datasets := map[string]bool{}
	for _, t := range snap.GetVolume().GetTargets() {
		if t.GetKind() == commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT && t.GetDatasetId() != "" {
			datasets[t.GetDatasetId()] = true
		}
	}
	disks, err := listDisks(ctx, d.a, "")
	if err != nil {
		return victim{}, err
	}
	ours := map[string]bool{d.res.VolumeID: true}
	for _, id := range d.res.CloneIDs {
		ours[id] = true
	}
	var best *allocatorv1.PhysicalDisk
	bestScore := -1
	for _, dk := range disks {
		if !datasets[dk.GetDatasetId()] || dk.GetPolicy() != allocatorv1.Policy_POLICY_IN_SERVICE {
			continue
		}
		regions, err := listRegions(ctx, d.a, dk.GetDatasetId())
		if err != nil {
			return victim{}, err
		}
		score := 0
		for _, r := range regions {
			if !r.GetReadOnly() && ours[r.GetAllocatedFor()] {
				score++
			}
		}
		if score > bestScore {
			best, bestScore = dk, score
		}
	}
	if best == nil {
		return victim{}, fmt.Errorf("no in-service disk holds a region snapshot of snapshot %s", d.res.SnapshotID)
	}
	v := victim{disk: best, serial: rep.SledSerial[best.GetSledId()], targets: map[string]bool{}, regions: map[string]bool{}}
	regions, err := listRegions(ctx, d.a, best.GetDatasetId())
	if err != nil {
		return victim{}, err
	}
	for _, r := range regions {
		v.targets[r.GetRegionId()] = true
		v.regions[r.GetRegionId()] = true
	}
	token := ""
	for {
		resp, err := d.a.alloc.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return victim{}, fmt.Errorf("list region snapshots: %w", err)
		}
		for _, rs := range resp.GetRegionSnapshots() {
			if rs.GetDatasetId() == best.GetDatasetId() {
				v.targets[rs.GetTargetId()] = true
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	d.res.DiskID, d.res.DatasetID = best.GetDiskId(), best.GetDatasetId()
	where := best.GetSledId()
	if v.serial != "" {
		where = v.serial
	}
	d.printf("\n  %-10s physical disk %s on %s (dataset %s)\n", "victim", best.GetDiskId(), where, best.GetDatasetAddress())
	d.printf("  %-10s holds one of the snapshot's region snapshots, the disk's rw region it was taken of, and %d rw region(s) of the clones\n",
		"", bestScore-1)
	return v, nil
}

func listRegions(ctx context.Context, a api, dataset string) ([]*allocatorv1.Region, error) {
	var out []*allocatorv1.Region
	token := ""
	for {
		resp, err := a.alloc.ListRegions(ctx, &allocatorv1.ListRegionsRequest{PageSize: 1000, PageToken: token, DatasetId: dataset})
		if err != nil {
			return nil, fmt.Errorf("list regions: %w", err)
		}
		out = append(out, resp.GetRegions()...)
		if token = resp.GetNextPageToken(); token == "" {
			return out, nil
		}
	}
}

// preview shows what the expunge will replace. The preview is advisory:
// when the orchestrator cannot answer, the demo goes on.
func (d *run) preview(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	p, err := d.a.replacement.PreviewExpunge(ctx, &orchestratorv1.PreviewExpungeRequest{DiskId: d.res.DiskID})
	switch {
	case status.Code(err) == codes.Unimplemented:
		d.printf("  %-10s preview unavailable (PreviewExpunge is not implemented by this orchestrator)\n", "preview")
		return
	case err != nil:
		d.printf("  %-10s preview unavailable: %v\n", "preview", err)
		return
	}
	d.res.PreviewAvailable = true
	byKind := map[orchestratorv1.ReplacementKind]int{}
	var refs int64
	for _, t := range p.GetReadOnlyTargets() {
		byKind[t.GetKind()]++
		refs += t.GetReferencingVolumes()
	}
	d.printf("  %-10s expunging it replaces %d region snapshot(s) and %d read-only region(s) (%d volume reference(s)), and %d rw region(s)\n",
		"preview", byKind[orchestratorv1.ReplacementKind_REPLACEMENT_KIND_REGION_SNAPSHOT],
		byKind[orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_ONLY_REGION], refs, len(p.GetReadWriteRegions()))
	capacity := "capacity for every replacement region"
	if !p.GetCapacityOk() {
		capacity = "NOT ENOUGH CAPACITY: " + p.GetCapacityDetail()
	}
	loss := "no data loss"
	if p.GetDataLoss() {
		loss = "DATA WOULD BE LOST"
	}
	d.printf("  %-10s %s; %s\n", "", capacity, loss)
}

// expunge expunges the disk and activates both detectors, as `storctl
// disks expunge` does, so the replacement starts now rather than at the
// detectors' next period.
func (d *run) expunge(ctx context.Context, v victim) error {
	d.expungedAt = time.Now()
	if _, err := d.a.alloc.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: v.disk.GetDiskId()}); err != nil {
		return fmt.Errorf("expunge disk %s: %w", v.disk.GetDiskId(), err)
	}
	if err := d.activateDetectors(ctx); err != nil {
		return err
	}
	d.printf("\n  %-10s disk %s expunged; read-only and rw replacement detectors activated\n\n", "expunge", d.res.DiskID)
	return nil
}

func (d *run) activateDetectors(ctx context.Context) error {
	for _, task := range []string{"ro_replacement_detector", "rw_replacement_detector"} {
		if _, err := d.a.admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: task}); err != nil {
			return fmt.Errorf("activate %s: %w", task, err)
		}
	}
	return nil
}
