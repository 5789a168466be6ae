package sagadef

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/platform/vcr"
)

// RegionSetOf returns the targets of the rw region set (anywhere in the VCR
// tree) that names address, or nil: vcr.RegionSetOf over the message.
func RegionSetOf(p *commonv1.VolumeConstructionRequest, address string) []string {
	v, err := vcr.FromProto(p)
	if err != nil {
		return nil
	}
	return vcr.RegionSetOf(v, address)
}

// RepairSources counts the members of a new rw region's region set that
// can still serve its data to a repair: not the new region itself, on a disk
// still in service, and not a region a replacement put there that was never
// repaired (unrepaired lists them: a blank copy is no source). Zero means
// the data of the region set is lost. detail names each member's fate.
func RepairSources(ctx context.Context, d *Deps, volumeID, newRegionID uuid.UUID, unrepaired map[uuid.UUID]bool) (int, string, error) {
	vol, err := d.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: volumeID.String()})
	if err != nil {
		return 0, "", fmt.Errorf("volume %s: %w", volumeID, err)
	}
	byAddr := map[string]*commonv1.Target{}
	var newAddr string
	for _, t := range vol.Volume.Targets {
		byAddr[t.Address] = t
		if t.TargetId == newRegionID.String() {
			newAddr = t.Address
		}
	}
	if newAddr == "" {
		return 0, "", fmt.Errorf("%w: volume %s does not name region %s", errInvalidState, volumeID, newRegionID)
	}
	policies, err := regionPolicies(ctx, d, volumeID)
	if err != nil {
		return 0, "", err
	}
	var survivors int
	var fates []string
	for _, addr := range RegionSetOf(vol.Volume.Vcr, newAddr) {
		if addr == newAddr {
			continue
		}
		t, ok := byAddr[addr]
		if !ok {
			fates = append(fates, addr+": not registered")
			continue
		}
		policy, known := policies[t.RegionId]
		if !known {
			// Not allocated for this volume (no repair puts one there):
			// read it alone.
			r, err := d.Allocator.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: t.RegionId})
			switch {
			case status.Code(err) == codes.NotFound:
				fates = append(fates, fmt.Sprintf("region %s: not in the allocator", t.RegionId))
				continue
			case err != nil:
				return 0, "", fmt.Errorf("region %s: %w", t.RegionId, err)
			}
			policy = r.Region.DiskPolicy
		}
		in, err := DiskInService(policy, "region "+t.RegionId)
		if err != nil {
			return 0, "", err
		}
		switch {
		case !in:
			fates = append(fates, fmt.Sprintf("region %s: disk expunged", t.RegionId))
		case unrepaired[parseOrNil(t.RegionId)]:
			fates = append(fates, fmt.Sprintf("region %s: a replacement region never repaired", t.RegionId))
		default:
			survivors++
			fates = append(fates, fmt.Sprintf("region %s: in service", t.RegionId))
		}
	}
	return survivors, strings.Join(fates, "; "), nil
}

// regionPolicies reads the disk policy of every region allocated for the
// volume, by region id, in the same answer as the regions.
func regionPolicies(ctx context.Context, d *Deps, volumeID uuid.UUID) (map[string]allocatorv1.Policy, error) {
	out := map[string]allocatorv1.Policy{}
	for token := ""; ; {
		resp, err := d.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedFor: volumeID.String(), PageSize: 1000, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("regions of volume %s: %w", volumeID, err)
		}
		for _, r := range resp.Regions {
			out[r.RegionId] = r.DiskPolicy
		}
		if token = resp.NextPageToken; token == "" {
			return out, nil
		}
	}
}

func parseOrNil(s string) uuid.UUID {
	id, _ := uuid.Parse(s)
	return id
}
