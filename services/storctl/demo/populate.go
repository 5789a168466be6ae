package demo

// The volumes the demo replaces under: a disk, its snapshot and clones of
// the snapshot, the clones attached to sim-upstairs.

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

// makeVolumes creates the disk, its snapshot and the clones, each a saga
// the orchestrator runs while the call waits.
func (d *run) makeVolumes(ctx context.Context) error {
	start := time.Now()
	err := retry(ctx, "create disk", func() (*orchestratorv1.SagaResult, error) {
		resp, err := d.a.lifecycle.CreateVolume(ctx, &orchestratorv1.CreateVolumeRequest{SizeBytes: GiB, Wait: true})
		d.res.VolumeID = resp.GetVolumeId()
		return resp.GetSaga(), err
	})
	if err != nil {
		return err
	}
	d.printf("  %-10s %s  1 GiB, 3 rw regions on distinct sleds  (%s)\n", "disk", d.res.VolumeID, since(start))

	start = time.Now()
	err = retry(ctx, "snapshot", func() (*orchestratorv1.SagaResult, error) {
		resp, err := d.a.lifecycle.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: d.res.VolumeID, Wait: true})
		d.res.SnapshotID = resp.GetSnapshotId()
		return resp.GetSaga(), err
	})
	if err != nil {
		return err
	}
	d.printf("  %-10s %s  3 region snapshots  (%s)\n", "snapshot", d.res.SnapshotID, since(start))

	start = time.Now()
	for i := 0; i < d.o.Clones; i++ {
		var id string
		err := retry(ctx, "clone", func() (*orchestratorv1.SagaResult, error) {
			resp, err := d.a.lifecycle.CloneVolume(ctx, &orchestratorv1.CloneVolumeRequest{SnapshotId: d.res.SnapshotID, Wait: true})
			id = resp.GetVolumeId()
			return resp.GetSaga(), err
		})
		if err != nil {
			return err
		}
		d.res.CloneIDs = append(d.res.CloneIDs, id)
	}
	d.printf("  %-10s %d disks cloned from the snapshot, each reading it through its read-only parent  (%s)\n",
		"clones", len(d.res.CloneIDs), since(start))
	return nil
}

// attachClones constructs every clone on a sim-upstairs, as a VM start
// would: these are the running Upstairs each replacement step notifies.
func (d *run) attachClones(ctx context.Context) error {
	if len(d.o.SimUpstairs) == 0 {
		d.printf("  %-10s no sim-upstairs given: clones stay unattached\n", "attach")
		return nil
	}
	start := time.Now()
	for i, id := range d.res.CloneIDs {
		ep := d.o.SimUpstairs[i%len(d.o.SimUpstairs)]
		err := poll(ctx, 30*time.Second, "construct "+id, func() error {
			resp, err := d.a.notifier.ConstructVolume(ctx, &notifierv1.ConstructVolumeRequest{
				VolumeId: id, Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, Endpoint: ep,
			})
			if status.Code(err) == codes.Unavailable {
				return err
			}
			if err != nil {
				return permanent{err}
			}
			if s := resp.GetAttachment().GetState(); s != notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING {
				return permanent{fmt.Errorf("attachment is %v: %s", s, resp.GetAttachment().GetError())}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	d.printf("  %-10s %d clones running on sim-upstairs %s  (%s)\n", "attach", len(d.res.CloneIDs),
		strings.Join(d.o.SimUpstairs, ", "), since(start))
	return nil
}
