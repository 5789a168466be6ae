package sagadef_test

import (
	"context"
	"testing"
	"time"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/testenv"
)

// Every disk is read, past the allocator's first page (100 by default,
// 1000 at most): with 130 disks, the expunged one and every in-service one
// are known by disk and by dataset. Reading one page made rw repairs on a
// 320-disk rack count copies beyond it as lost and end DATA_LOST.
func TestListDiskPoliciesReadsEveryPage(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t, testenv.Options{})
	disks := e.SeedRack(t, 13, 10, 1<<40)
	expunged := disks[len(disks)-1]
	if _, err := e.Allocator.ExpungePhysicalDisk(context.Background(), &allocatorv1.ExpungePhysicalDiskRequest{DiskId: expunged.DiskID}); err != nil {
		t.Fatal(err)
	}
	p, err := sagadef.ListDiskPolicies(context.Background(), e.Allocator)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.ByDisk) != len(disks) || len(p.ByDataset) != len(disks) {
		t.Fatalf("%d disks by id, %d by dataset; the rack has %d", len(p.ByDisk), len(p.ByDataset), len(disks))
	}
	for _, d := range disks {
		want := d != expunged
		if in, ok := p.ByDisk[d.DiskID]; !ok || in != want {
			t.Errorf("disk %s: in service %v (known %v), want %v", d.DiskID, in, ok, want)
		}
		if in, ok := p.ByDataset[d.DatasetID]; !ok || in != want {
			t.Errorf("dataset %s: in service %v (known %v), want %v", d.DatasetID, in, ok, want)
		}
	}
}

// The cache answers from its last read within MaxAge, reads again after
// it, and reads at once for a disk or dataset it does not know (one added
// since would otherwise count as expunged). Its only staleness is a disk
// expunged since the read still counted in service.
func TestDiskPolicyCache(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := testenv.Start(t, testenv.Options{})
	disks := e.SeedRack(t, 3, 1, 1<<40)
	c := &sagadef.DiskPolicyCache{Alloc: e.Allocator, MaxAge: time.Hour}
	first, err := c.Get(ctx, nil, nil)
	if err != nil || !first.ByDisk[disks[0].DiskID] {
		t.Fatalf("first read: %v, %v", first.ByDisk, err)
	}
	if _, err := e.Allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: disks[0].DiskID}); err != nil {
		t.Fatal(err)
	}
	if p, err := c.Get(ctx, []string{disks[0].DiskID}, []string{disks[1].DatasetID}); err != nil || !p.ByDisk[disks[0].DiskID] {
		t.Fatalf("within MaxAge the cached read answers: %v, %v", p.ByDisk, err)
	}

	// A disk added since: known at once, which also shows the expunge.
	added, err := e.Allocator.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{
		SledId: disks[1].SledID, CapacityBytes: 1 << 40, DatasetAddress: "fd00:1122:3344:1fe::1"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Get(ctx, nil, []string{added.Disk.DatasetId})
	if err != nil || !p.ByDataset[added.Disk.DatasetId] || p.ByDisk[disks[0].DiskID] {
		t.Fatalf("after asking for a new dataset: %v, %v; want it in service and disk 0 expunged", p.ByDisk, err)
	}

	// Past MaxAge, a fresh read.
	fresh := &sagadef.DiskPolicyCache{Alloc: e.Allocator, MaxAge: time.Nanosecond}
	if _, err := fresh.Get(ctx, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: disks[2].DiskID}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond)
	if p, err := fresh.Get(ctx, []string{disks[2].DiskID}, nil); err != nil || p.ByDisk[disks[2].DiskID] {
		t.Fatalf("past MaxAge: %v, %v; want disk 2 expunged", p.ByDisk, err)
	}
}
