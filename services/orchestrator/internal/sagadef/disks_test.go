package sagadef_test

import (
	"context"
	"testing"

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
