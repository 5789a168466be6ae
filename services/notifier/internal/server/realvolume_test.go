package server

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/platform/pgtest"
)

// realVolumes runs the volume-service binary on its own database in the
// test binary's PostgreSQL cluster, and drives it the way the orchestrator
// would: targets registered and activated before a volume names them, and
// replacements through ReplaceReadOnlyTarget / ReplaceRegion with a stash
// volume.
type realVolumes struct {
	p *process
	c volumev1.VolumeServiceClient

	mu sync.Mutex
	// targets maps an address to its registered target (= region) id.
	targets map[string]string
}

func startRealVolumes(t testing.TB) *realVolumes {
	t.Helper()
	cluster := pgtest.Cluster(t)
	ctx := context.Background()
	name := "vs_" + strings.ReplaceAll(uuid.NewString(), "-", "")[:16]
	if err := cluster.CreateDatabase(ctx, name, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.DropDatabase(context.Background(), name) })
	p := startProcess(t, "volume-service", freeAddr(t), "--db", cluster.DSN(name))
	return &realVolumes{p: p, c: volumev1.NewVolumeServiceClient(dial(t, p.addr)), targets: map[string]string{}}
}

func (r *realVolumes) addr() string { return r.p.addr }

// register records targets at addresses as registered and ACTIVE.
func (r *realVolumes) register(t testing.TB, kind commonv1.TargetKind, owner string, addrs ...string) {
	t.Helper()
	ctx := context.Background()
	var regs []*volumev1.TargetRegistration
	var acts []*volumev1.TargetActivation
	r.mu.Lock()
	for _, a := range addrs {
		id := uuid.NewString()
		r.targets[a] = id
		regs = append(regs, &volumev1.TargetRegistration{TargetId: id, Kind: kind, RegionId: id, OwnerVolumeId: owner})
		acts = append(acts, &volumev1.TargetActivation{TargetId: id, DatasetId: uuid.NewString(), Address: a})
	}
	r.mu.Unlock()
	if _, err := r.c.RegisterTargets(ctx, &volumev1.RegisterTargetsRequest{Targets: regs}); err != nil {
		t.Fatalf("RegisterTargets: %v", err)
	}
	if _, err := r.c.ActivateTargets(ctx, &volumev1.ActivateTargetsRequest{Targets: acts}); err != nil {
		t.Fatalf("ActivateTargets: %v", err)
	}
}

func (r *realVolumes) target(t testing.TB, addr string) string {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok := r.targets[addr]
	if !ok {
		t.Fatalf("no target registered at %s", addr)
	}
	return id
}

func (r *realVolumes) createVCR(t testing.TB, id string, v *commonv1.VolumeConstructionRequest) {
	t.Helper()
	if _, err := r.c.CreateVolume(context.Background(), &volumev1.CreateVolumeRequest{VolumeId: id, Vcr: v}); err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
}

func (r *realVolumes) create(t testing.TB, rw, ro []string) string {
	t.Helper()
	vol := uuid.NewString()
	r.register(t, commonv1.TargetKind_TARGET_KIND_RW_REGION, vol, rw...)
	if len(ro) > 0 {
		r.register(t, commonv1.TargetKind_TARGET_KIND_RO_REGION, uuid.NewString(), ro...)
	}
	r.createVCR(t, vol, testVCR(1, rw, ro))
	return vol
}

// stash creates the empty volume a replacement parks the old reference in.
func (r *realVolumes) stash(t testing.TB) string {
	t.Helper()
	id := uuid.NewString()
	r.createVCR(t, id, &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: &commonv1.VcrVolume{Id: uuid.NewString(), BlockSize: 512}}})
	return id
}

func (r *realVolumes) replaceRO(t testing.TB, vol, oldAddr, newAddr string) {
	t.Helper()
	r.register(t, commonv1.TargetKind_TARGET_KIND_RO_REGION, uuid.NewString(), newAddr)
	resp, err := r.c.ReplaceReadOnlyTarget(context.Background(), &volumev1.ReplaceReadOnlyTargetRequest{
		VolumeId: vol, OldTargetId: r.target(t, oldAddr), NewTargetId: r.target(t, newAddr), StashVolumeId: r.stash(t),
	})
	if err != nil || resp.GetResult() != commonv1.VolumeReplaceResult_VOLUME_REPLACE_RESULT_DONE {
		t.Fatalf("ReplaceReadOnlyTarget: %v %v", resp, err)
	}
}

func (r *realVolumes) replaceRW(t testing.TB, vol, oldAddr, newAddr string) {
	t.Helper()
	r.register(t, commonv1.TargetKind_TARGET_KIND_RW_REGION, vol, newAddr)
	resp, err := r.c.ReplaceRegion(context.Background(), &volumev1.ReplaceRegionRequest{
		VolumeId: vol, OldRegionId: r.target(t, oldAddr), NewRegionId: r.target(t, newAddr), StashVolumeId: r.stash(t),
	})
	if err != nil || resp.GetResult() != commonv1.VolumeReplaceResult_VOLUME_REPLACE_RESULT_DONE {
		t.Fatalf("ReplaceRegion: %v %v", resp, err)
	}
}

// newVolumes starts the real volume-service for one test.
func newVolumes(t testing.TB) volumeFixture { return startRealVolumes(t) }
