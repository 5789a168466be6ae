package store

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/pgtest"
	"storagecp.dev/platform/vcr"
	"storagecp.dev/volume/migrations"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Schema{Name: "volume", Migrations: migrations.FS})
}

type fixture struct {
	t    testing.TB
	ctx  context.Context
	pool *pgxpool.Pool
	s    *Store
	port atomic.Int64
	host int64
}

var hostSeq atomic.Int64

func newFixture(t testing.TB) *fixture {
	t.Helper()
	pool := pgtest.NewPool(t, "volume")
	f := &fixture{t: t, ctx: context.Background(), pool: pool, s: New(pool), host: hostSeq.Add(1)}
	f.port.Store(19000)
	return f
}

// addr returns a fresh address, spelled non-canonically half the time so
// every path canonicalises.
func (f *fixture) addr() string {
	p := f.port.Add(1)
	if p%2 == 0 {
		return fmt.Sprintf("[fd00:0:0:%x:0::1]:%d", f.host, p)
	}
	return fmt.Sprintf("[fd00::%x:0:0:1]:%d", f.host, p)
}

func canon(t testing.TB, a string) string {
	c, err := vcr.Canonical(a)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rwRegions registers and activates n rw regions owned by owner.
func (f *fixture) rwRegions(owner uuid.UUID, n int) []Target {
	f.t.Helper()
	var regs []Registration
	for i := 0; i < n; i++ {
		regs = append(regs, Registration{Kind: KindRWRegion, RegionID: uuid.New(), OwnerVolumeID: owner})
	}
	return f.registerAndActivate(regs)
}

// roRegion registers and activates a read-only region allocated for owner.
func (f *fixture) roRegion(owner uuid.UUID) Target {
	f.t.Helper()
	return f.registerAndActivate([]Registration{{Kind: KindRORegion, RegionID: uuid.New(), OwnerVolumeID: owner}})[0]
}

// snapshots registers and activates a region snapshot of every region.
func (f *fixture) snapshots(regions []Target, snapshotID uuid.UUID) []Target {
	f.t.Helper()
	var regs []Registration
	for _, r := range regions {
		regs = append(regs, Registration{Kind: KindRegionSnapshot, RegionID: r.RegionID, SnapshotID: snapshotID})
	}
	return f.registerAndActivate(regs)
}

func (f *fixture) registerAndActivate(regs []Registration) []Target {
	f.t.Helper()
	ts, err := f.s.RegisterTargets(f.ctx, regs)
	if err != nil {
		f.t.Fatalf("register: %v", err)
	}
	var acts []Activation
	for _, t := range ts {
		acts = append(acts, Activation{TargetID: t.ID, DatasetID: uuid.New(), Address: f.addr()})
	}
	out, err := f.s.ActivateTargets(f.ctx, acts)
	if err != nil {
		f.t.Fatalf("activate: %v", err)
	}
	return out
}

func regionNode(readOnly bool, gen uint64, targets ...Target) *vcr.VCR {
	key := "c2VjcmV0LWtleS1ub3QtdG8tbGVhaw=="
	var addrs []string
	for _, t := range targets {
		addrs = append(addrs, t.Address)
	}
	return &vcr.VCR{Region: &vcr.Region{BlockSize: 512, BlocksPerExtent: 64, ExtentCount: 8, Gen: gen,
		Opts: vcr.CrucibleOpts{ID: uuid.NewString(), Target: addrs, Key: &key, ReadOnly: readOnly}}}
}

func volumeNode(rop *vcr.VCR, subs ...*vcr.VCR) *vcr.VCR {
	return &vcr.VCR{Volume: &vcr.Volume{ID: uuid.NewString(), BlockSize: 512, SubVolumes: subs, ReadOnlyParent: rop}}
}

// disk is a VCR with one rw region set and an optional ROP.
func disk(rw []Target, rop *vcr.VCR) *vcr.VCR {
	return volumeNode(rop, regionNode(false, 1, rw...))
}

// snapshotVCR is an all-read-only VCR over targets.
func snapshotVCR(targets []Target) *vcr.VCR {
	return volumeNode(nil, regionNode(true, 1, targets...))
}

func (f *fixture) create(id uuid.UUID, v *vcr.VCR) Volume {
	f.t.Helper()
	out, created, err := f.s.CreateVolume(f.ctx, CreateParams{ID: id, VCR: v})
	if err != nil {
		f.t.Fatalf("create %s: %v", id, err)
	}
	if !created {
		f.t.Fatalf("create %s: already existed", id)
	}
	return out
}

// newDisk creates a volume owning 3 fresh rw regions, with rop.
func (f *fixture) newDisk(rop *vcr.VCR) (uuid.UUID, []Target) {
	f.t.Helper()
	id := uuid.New()
	rw := f.rwRegions(id, 3)
	f.create(id, disk(rw, rop))
	return id, rw
}

// newSnapshot snapshots a disk's regions and creates the snapshot volume.
func (f *fixture) newSnapshot(rw []Target) (uuid.UUID, []Target) {
	f.t.Helper()
	id := uuid.New()
	snaps := f.snapshots(rw, id)
	f.create(id, snapshotVCR(snaps))
	return id, snaps
}

func (f *fixture) softDelete(id uuid.UUID) SoftDeleteResult {
	f.t.Helper()
	r, err := f.s.SoftDeleteVolume(f.ctx, id)
	if err != nil {
		f.t.Fatalf("soft delete %s: %v", id, err)
	}
	return r
}

func (f *fixture) target(id uuid.UUID) Target {
	f.t.Helper()
	t, err := f.s.GetTarget(f.ctx, id, true)
	if err != nil {
		f.t.Fatalf("get target %s: %v", id, err)
	}
	return t
}

func (f *fixture) exec(sql string, args ...any) {
	f.t.Helper()
	if _, err := f.pool.Exec(f.ctx, sql, args...); err != nil {
		f.t.Fatalf("%s: %v", sql, err)
	}
}

func (f *fixture) count(sql string, args ...any) int {
	f.t.Helper()
	var n int
	if err := f.pool.QueryRow(f.ctx, sql, args...).Scan(&n); err != nil {
		f.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// healthy fails the test if any invariant is violated.
func (f *fixture) healthy() {
	f.t.Helper()
	vs, err := f.s.CheckInvariants(f.ctx)
	if err != nil {
		f.t.Fatalf("check invariants: %v", err)
	}
	if len(vs) > 0 {
		f.t.Fatalf("invariants violated: %+v", vs)
	}
}

func (f *fixture) violationCodes() []string {
	f.t.Helper()
	vs, err := f.s.CheckInvariants(f.ctx)
	if err != nil {
		f.t.Fatalf("check invariants: %v", err)
	}
	var codes []string
	seen := map[string]bool{}
	for _, v := range vs {
		if !seen[v.Code] {
			seen[v.Code] = true
			codes = append(codes, v.Code)
		}
	}
	sort.Strings(codes)
	return codes
}

func wantKind(t testing.TB, err error, kind apierr.Kind) {
	t.Helper()
	if err == nil {
		t.Fatalf("want error of kind %d, got nil", kind)
	}
	var ie *vcr.InvalidError
	if kind == apierr.Invalid && errors.As(err, &ie) {
		return
	}
	if got := apierr.KindOf(err); got != kind {
		t.Fatalf("want error kind %d, got %d: %v", kind, got, err)
	}
}

func wantContains(t testing.TB, err error, sub string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), sub) {
		t.Fatalf("want error containing %q, got %v", sub, err)
	}
}

func snapshotRefTarget(r RegionSnapshotRef) uuid.UUID {
	return ids.RegionSnapshotTargetID(r.RegionID, r.SnapshotID)
}

func sameIDs(a, b []uuid.UUID) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[uuid.UUID]int{}
	for _, x := range a {
		m[x]++
	}
	for _, x := range b {
		m[x]--
		if m[x] < 0 {
			return false
		}
	}
	return true
}

func targetIDs(ts []Target) []uuid.UUID {
	out := make([]uuid.UUID, len(ts))
	for i, t := range ts {
		out[i] = t.ID
	}
	return out
}

func regionIDs(ts []Target) []uuid.UUID {
	out := make([]uuid.UUID, len(ts))
	for i, t := range ts {
		out[i] = t.RegionID
	}
	return out
}
