package sagadef

import (
	"context"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// DiskPolicies is whether each disk the allocator knows is in service, by
// disk id and by dataset id: what a repair needs to tell a surviving copy
// from one on an expunged disk.
type DiskPolicies struct {
	ByDisk, ByDataset map[string]bool
}

// ListDiskPolicies reads every page of the allocator's disks. Reading only
// the first page (100 disks by default) once made every copy on a disk
// beyond it look expunged: rw repairs on a 320-disk rack ended DATA_LOST
// with their copies alive.
func ListDiskPolicies(ctx context.Context, alloc allocatorv1.RegionAllocatorServiceClient) (DiskPolicies, error) {
	p := DiskPolicies{ByDisk: map[string]bool{}, ByDataset: map[string]bool{}}
	for token := ""; ; {
		resp, err := alloc.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000, PageToken: token, OmitCounts: true})
		if err != nil {
			return DiskPolicies{}, err
		}
		for _, dk := range resp.Disks {
			in := dk.Policy == allocatorv1.Policy_POLICY_IN_SERVICE
			p.ByDisk[dk.DiskId] = in
			p.ByDataset[dk.DatasetId] = in
		}
		if token = resp.NextPageToken; token == "" {
			return p, nil
		}
	}
}
