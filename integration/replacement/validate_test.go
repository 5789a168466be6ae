package replacement

import (
	"context"
	"testing"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/deploy/stack"
	"storagecp.dev/integration/rack"
)

// ValidateSystem is able to fail: each inconsistency planted through the
// services' own APIs (bypassing the sagas that keep them in step) is
// reported under its code.
func TestValidateSystemReportsInconsistencies(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{})
	ctx := context.Background()
	r.CreateDisk(t)
	r.Validate(t) // a consistent system first

	// A region allocated without being registered.
	orphan := uuid.NewString()
	if _, err := r.Allocator.AllocateRegions(ctx, &allocatorv1.AllocateRegionsRequest{
		VolumeId: uuid.NewString(), BlockSize: 512, BlocksPerExtent: 131072, ExtentCount: 1, Redundancy: 1,
		NewRegionIds: []string{orphan},
	}); err != nil {
		t.Fatal(err)
	}
	// A target registered and never created.
	pending := uuid.NewString()
	if _, err := r.Volumes.RegisterTargets(ctx, &volumev1.RegisterTargetsRequest{Targets: []*volumev1.TargetRegistration{{
		TargetId: pending, Kind: commonv1.TargetKind_TARGET_KIND_RW_REGION, RegionId: pending, OwnerVolumeId: uuid.NewString(),
	}}}); err != nil {
		t.Fatal(err)
	}
	resp, err := r.Admin.ValidateSystem(ctx, &orchestratorv1.ValidateSystemRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, v := range resp.Violations {
		got[v.Subject] = v.Code
	}
	if got[orphan] != "unregistered_allocation" || got[pending] != "stuck_pending" || len(got) != 2 {
		t.Fatalf("violations %v", resp.Violations)
	}
}
