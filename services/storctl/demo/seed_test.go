package demo

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// fakeAllocator answers the three calls seedRack makes, as the allocator
// does: sleds unique by serial and idempotent on it.
type fakeAllocator struct {
	allocatorv1.RegionAllocatorServiceClient
	bySerial map[string]string // serial → sled id
	disks    map[string][]*allocatorv1.PhysicalDisk
}

func (f *fakeAllocator) AddSled(_ context.Context, req *allocatorv1.AddSledRequest, _ ...grpc.CallOption) (*allocatorv1.AddSledResponse, error) {
	if id, ok := f.bySerial[req.Serial]; ok && id != req.SledId {
		return nil, status.Errorf(codes.AlreadyExists, "serial: sled %q already exists with id %s", req.Serial, id)
	}
	f.bySerial[req.Serial] = req.SledId
	return &allocatorv1.AddSledResponse{Sled: &allocatorv1.Sled{SledId: req.SledId, Serial: req.Serial, Policy: allocatorv1.Policy_POLICY_IN_SERVICE}}, nil
}

func (f *fakeAllocator) ListPhysicalDisks(_ context.Context, req *allocatorv1.ListPhysicalDisksRequest, _ ...grpc.CallOption) (*allocatorv1.ListPhysicalDisksResponse, error) {
	return &allocatorv1.ListPhysicalDisksResponse{Disks: f.disks[req.SledId]}, nil
}

func (f *fakeAllocator) AddPhysicalDisk(_ context.Context, req *allocatorv1.AddPhysicalDiskRequest, _ ...grpc.CallOption) (*allocatorv1.AddPhysicalDiskResponse, error) {
	d := &allocatorv1.PhysicalDisk{DiskId: req.DiskId, SledId: req.SledId, Policy: allocatorv1.Policy_POLICY_IN_SERVICE}
	f.disks[req.SledId] = append(f.disks[req.SledId], d)
	return &allocatorv1.AddPhysicalDiskResponse{Disk: d}, nil
}

// A sled that is not the demo's but has a demo serial (added by hand) is
// passed over: the demo takes the next slot rather than failing.
func TestSeedRackSkipsASerialTakenByAnotherSled(t *testing.T) {
	f := &fakeAllocator{bySerial: map[string]string{"demo-sled-1": "0b6f5e1e-0000-4000-8000-000000000001"}, disks: map[string][]*allocatorv1.PhysicalDisk{}}
	rep, err := seedRack(context.Background(), api{alloc: f}, SeedOptions{Sleds: 2, DisksPerSled: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sleds != 2 || rep.Disks != 2 {
		t.Fatalf("seeded %+v", rep)
	}
	for _, serial := range []string{"demo-sled-0", "demo-sled-2"} {
		if f.bySerial[serial] != nameID(serial) {
			t.Errorf("%s: sled %q, want the demo's %s", serial, f.bySerial[serial], nameID(serial))
		}
	}
	// Idempotent: a second run adds nothing.
	again, err := seedRack(context.Background(), api{alloc: f}, SeedOptions{Sleds: 2, DisksPerSled: 1})
	if err != nil || again.DisksAdded != 0 || again.Sleds != 2 {
		t.Fatalf("second seed: %+v, %v", again, err)
	}
}
