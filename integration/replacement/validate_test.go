package replacement

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// ValidateSystem is able to fail: each inconsistency planted through the
// services' own APIs (bypassing the sagas that keep them in step) is
// reported under its code.
func TestValidateSystemReportsInconsistencies(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
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
	// An ACTIVE target its agent no longer serves (destroyed behind the
	// control plane's back, as a lost disk write or a bug would).
	unserved := r.Targets(t, disk, commonv1.TargetKind_TARGET_KIND_RW_REGION)[0]
	exec(t, r, stack.Allocator, `UPDATE agent_region SET state = 'destroyed' WHERE region_id = $1`, unserved.TargetId)
	exec(t, r, stack.Allocator, `DELETE FROM agent_port WHERE region_id = $1 AND snapshot_id IS NULL`, unserved.TargetId)
	resp, err := r.Admin.ValidateSystem(ctx, &orchestratorv1.ValidateSystemRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, v := range resp.Violations {
		got[v.Subject] = v.Code
	}
	if got[orphan] != "unregistered_allocation" || got[pending] != "stuck_pending" ||
		got[unserved.Address] != "active_target_not_served" || len(got) != 3 {
		t.Fatalf("violations %v", resp.Violations)
	}
}

// exec runs statements on one service's own database, the way only a bug
// (or an operator with psql) could change it.
func exec(t *testing.T, r *rack.Rack, service, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, r.Stack.Cluster.DSN(stack.DatabaseOf(service)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// The checks that join the notifier's attachments with the volumes, and the
// orchestrator's requests and steps with its saga log and with each other,
// are clean on a healthy system that has attachments, a finished
// replacement and its step, and each reports what is planted under its
// code: an attachment of a soft-deleted and of an unknown volume, a request,
// a step and a rw request held by a saga that is finished or unknown, a
// second step of one request for one volume, and steps made for stashes.
// While the replacement runs, the checks that need no quiet period are
// clean too.
func TestValidateSystemReportsAttachmentsAndRecords(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	clone := r.Clone(t, snap)
	other := r.CreateDisk(t)
	r.Snapshot(t, other) // so its soft delete below frees nothing
	attached := r.Construct(t, other, 0)
	r.Construct(t, clone, 1)
	target := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	if _, err := r.Replacement.RequestReplacement(ctx, &orchestratorv1.RequestReplacementRequest{TargetId: target.TargetId}); err != nil {
		t.Fatal(err)
	}
	// While it runs, the checks that need no quiet period find nothing:
	// every record a running saga holds names that saga.
	for deadline := time.Now().Add(60 * time.Second); ; {
		resp, err := r.Admin.ValidateSystem(ctx, &orchestratorv1.ValidateSystemRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range resp.Violations {
			t.Errorf("during the replacement: %s %s: %s", v.Code, v.Subject, v.Detail)
		}
		list, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Replacements) == 1 && rack.Terminal(list.Replacements[0]) || time.Now().After(deadline) {
			break
		}
	}
	reqs := r.WaitRequests(t, 60*time.Second)
	if len(reqs) != 1 {
		t.Fatalf("requests %v", reqs)
	}
	r.Invariants(t)
	r.Validate(t) // healthy: attachments of live volumes, a request and its step
	r.UpstairsCurrent(t)

	// An attachment left on a soft-deleted volume (a delete whose detach
	// never ran) and one of a volume that does not exist.
	if _, err := r.Volumes.SoftDeleteVolume(ctx, &volumev1.SoftDeleteVolumeRequest{VolumeId: other}); err != nil {
		t.Fatal(err)
	}
	ghost := uuid.New()
	exec(t, r, stack.Notifier, `INSERT INTO attachment (attachment_id, volume_id, kind, endpoint, upstairs_id, incarnation, state, read_only)
		VALUES ($1, $2, 'propolis', '127.0.0.1:9', $3, 1, 'stopped', false)`, ghost, uuid.New(), uuid.New())

	// Records held by sagas that are not running: a request under a saga
	// that never existed, a step and a rw request under a finished one.
	request := uuid.MustParse(reqs[0].ReplacementId)
	finished, err := r.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{State: orchestratorv1.SagaState_SAGA_STATE_DONE})
	if err != nil || len(finished.Sagas) == 0 {
		t.Fatalf("finished sagas: %v, %v", finished, err)
	}
	done := uuid.MustParse(finished.Sagas[0].SagaId)
	roReq, step, rwReq := uuid.New(), uuid.New(), uuid.New()
	exec(t, r, stack.Orchestrator, `INSERT INTO ro_replacement (id, kind, old_target_id, old_region_id, old_snapshot_id,
			lock_volume_id, state, operating_saga_id)
		VALUES ($1, 'read_only_region', $2, $2, $3, $3, 'allocating', $4)`, roReq, uuid.New(), uuid.New(), uuid.New())
	exec(t, r, stack.Orchestrator, `INSERT INTO ro_replacement_step (id, request_id, volume_id, state, operating_saga_id)
		VALUES ($1, $2, $3, 'running', $4)`, step, request, uuid.New(), done)
	exec(t, r, stack.Orchestrator, `INSERT INTO rw_replacement (id, old_region_id, volume_id, state, operating_saga_id)
		VALUES ($1, $2, $3, 'driving', $4)`, rwReq, uuid.New(), uuid.New(), done)
	// A second step of the same request for the clone.
	exec(t, r, stack.Orchestrator, `INSERT INTO ro_replacement_step (id, request_id, volume_id, state)
		VALUES ($1, $2, $3, 'volume_deleted')`, uuid.New(), request, uuid.MustParse(clone))
	// Steps made for stashes: one the volume-service knows by its purpose,
	// and the request's own stash, long deleted.
	stash := uuid.New()
	if _, err := r.Volumes.CreateVolume(ctx, &volumev1.CreateVolumeRequest{
		VolumeId: stash.String(), Purpose: volumev1.VolumePurpose_VOLUME_PURPOSE_STASH,
		Vcr: &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: &commonv1.VcrVolume{Id: stash.String(), BlockSize: 512}}},
	}); err != nil {
		t.Fatal(err)
	}
	stashStep, oldStashStep := uuid.New(), uuid.New()
	exec(t, r, stack.Orchestrator, `INSERT INTO ro_replacement_step (id, request_id, volume_id, state)
		VALUES ($1, $2, $3, 'volume_deleted')`, stashStep, request, stash)
	exec(t, r, stack.Orchestrator, `INSERT INTO ro_replacement_step (id, request_id, volume_id, state)
		SELECT $1, id, old_snapshot_volume_id, 'volume_deleted' FROM ro_replacement WHERE id = $2`, oldStashStep, request)

	if _, err := r.Admin.WaitIdle(ctx, &orchestratorv1.WaitIdleRequest{}); err != nil {
		t.Fatal(err)
	}
	resp, err := r.Admin.ValidateSystem(ctx, &orchestratorv1.ValidateSystemRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, v := range resp.Violations {
		got[v.Subject] = v.Code
		t.Logf("%s %s: %s", v.Code, v.Subject, v.Detail)
	}
	want := map[string]string{
		attached.AttachmentId: "deleted_volume_attached",
		ghost.String():        "deleted_volume_attached",
		roReq.String():        "operating_saga_not_running",
		step.String():         "operating_saga_not_running",
		rwReq.String():        "operating_saga_not_running",
		clone:                 "duplicate_step",
		stashStep.String():    "stash_stepped",
		oldStashStep.String(): "stash_stepped",
	}
	if len(resp.Violations) != len(want) {
		t.Errorf("%d violations, want %d", len(resp.Violations), len(want))
	}
	for subject, code := range want {
		if got[subject] != code {
			t.Errorf("%s: got %q, want %q", subject, got[subject], code)
		}
	}
}
