package sagadef

import (
	"context"
	"sync"
	"time"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// DiskPolicies is whether each disk the allocator knows is in service, by
// disk id and by dataset id: what a repair needs to tell a surviving copy
// from one on an expunged disk.
type DiskPolicies struct {
	ByDisk, ByDataset map[string]bool
}

// knows reports whether every one of disks and datasets is in p (an empty
// id, a target not placed yet, names no disk to know).
func (p DiskPolicies) knows(disks, datasets []string) bool {
	for _, id := range disks {
		if _, ok := p.ByDisk[id]; !ok && id != "" {
			return false
		}
	}
	for _, id := range datasets {
		if _, ok := p.ByDataset[id]; !ok && id != "" {
			return false
		}
	}
	return true
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

// DiskPolicyCache keeps the disk policies for MaxAge: the tasks and sagas
// ask for them several times per rw repair they plan, start and drive
// (2,680 listings in one full-rack expunge). It is safe because a disk
// only ever goes from in service to expunged, never back: a cached answer
// can only count a copy on a disk expunged since as still live, for at
// most MaxAge, which delays a give-up and never declares data lost. A disk
// or dataset the cache does not know (added since) is read afresh, since
// an unknown one would count as expunged.
type DiskPolicyCache struct {
	Alloc  allocatorv1.RegionAllocatorServiceClient
	MaxAge time.Duration

	mu sync.Mutex
	p  DiskPolicies
	at time.Time
}

// Get returns policies that know every one of disks and datasets, read
// within MaxAge.
func (c *DiskPolicyCache) Get(ctx context.Context, disks, datasets []string) (DiskPolicies, error) {
	c.mu.Lock()
	p, at := c.p, c.at
	c.mu.Unlock()
	if !at.IsZero() && time.Since(at) < c.MaxAge && p.knows(disks, datasets) {
		return p, nil
	}
	read := time.Now()
	p, err := ListDiskPolicies(ctx, c.Alloc)
	if err != nil {
		return DiskPolicies{}, err
	}
	c.mu.Lock()
	if read.After(c.at) {
		c.p, c.at = p, read
	}
	c.mu.Unlock()
	return p, nil
}

// DiskPolicies returns the disk policies, knowing every one of disks and
// datasets: from d.Disks when set, else read afresh.
func (d *Deps) DiskPolicies(ctx context.Context, disks, datasets []string) (DiskPolicies, error) {
	if d.Disks != nil {
		return d.Disks.Get(ctx, disks, datasets)
	}
	return ListDiskPolicies(ctx, d.Allocator)
}
