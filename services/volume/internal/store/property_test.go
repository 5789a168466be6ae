package store

import (
	"flag"
	"testing"

	"github.com/google/uuid"
	"pgregory.net/rapid"

	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/vcr"
)

// TestPropertyInvariantsHoldOverRandomOperations drives random sequences of
// register / create / snapshot / clone-by-checkout / soft delete (with the
// volume-delete saga's follow-up: unregister what was freed,
// FindDeletedVolumeRegions, hard delete) / both replacements and their
// undo / ROP removal / arbitrary unregister attempts, and after every step
// asserts CheckInvariants is empty and every target's reference count
// equals its occurrences in live VCRs (computed here from the VCRs).
//
// Default 8 sequences of ~30 steps (each step hits PostgreSQL); run
// longer with -rapid.checks=N.
func TestPropertyInvariantsHoldOverRandomOperations(t *testing.T) {
	explicit := false
	flag.Visit(func(fl *flag.Flag) { explicit = explicit || fl.Name == "rapid.checks" })
	if fl := flag.Lookup("rapid.checks"); fl != nil && !explicit {
		_ = fl.Value.Set("8")
		defer fl.Value.Set(fl.DefValue)
	}
	f := newFixture(t)
	ran := map[string]int{}
	rapid.Check(t, func(rt *rapid.T) {
		f.exec(`TRUNCATE volume, target, volume_resource_usage, volume_target`)
		p := &propState{f: f, t: rt}
		// counted wraps an action so the log shows what the run exercised.
		counted := func(name string, fn func(*rapid.T)) func(*rapid.T) {
			return func(t *rapid.T) {
				fn(t)
				ran[name]++
			}
		}
		rt.Repeat(map[string]func(*rapid.T){
			"newDisk":       counted("newDisk", p.newDisk),
			"snapshot":      counted("snapshot", p.snapshot),
			"clone":         counted("clone", p.clone),
			"softDelete":    counted("softDelete", p.softDelete),
			"replaceRO":     counted("replaceRO", p.replaceRO),
			"replaceRegion": counted("replaceRegion", p.replaceRegion),
			"removeROP":     counted("removeROP", p.removeROP),
			"unregister":    counted("unregister", p.unregisterAny),
			"":              p.check,
		})
	})
	t.Logf("actions completed: %v", ran)
}

type propState struct {
	f *fixture
	t *rapid.T
}

func (p *propState) must(err error, what string) {
	if err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

// allowPrecondition accepts success or FailedPrecondition only.
func (p *propState) allowPrecondition(err error, what string) bool {
	if err == nil {
		return true
	}
	if apierr.KindOf(err) != apierr.Precondition {
		p.t.Fatalf("%s: %v", what, err)
	}
	return false
}

func (p *propState) volumes(pred func(Volume) bool) []Volume {
	vols, _, err := p.f.s.ListVolumes(p.f.ctx, uuid.Nil, 1000, true)
	p.must(err, "list volumes")
	var out []Volume
	for _, v := range vols {
		if pred(v) {
			out = append(out, v)
		}
	}
	return out
}

func (p *propState) pick(vols []Volume, label string) (Volume, bool) {
	if len(vols) == 0 {
		return Volume{}, false
	}
	return rapid.SampledFrom(vols).Draw(p.t, label), true
}

func (p *propState) register(regs []Registration) []Target {
	ts, err := p.f.s.RegisterTargets(p.f.ctx, regs)
	p.must(err, "register")
	var acts []Activation
	for _, t := range ts {
		acts = append(acts, Activation{TargetID: t.ID, DatasetID: uuid.New(), Address: p.f.addr()})
	}
	out, err := p.f.s.ActivateTargets(p.f.ctx, acts)
	p.must(err, "activate")
	return out
}

func (p *propState) rwFor(owner uuid.UUID, n int) []Target {
	var regs []Registration
	for i := 0; i < n; i++ {
		regs = append(regs, Registration{Kind: KindRWRegion, RegionID: uuid.New(), OwnerVolumeID: owner})
	}
	return p.register(regs)
}

func (p *propState) blank() uuid.UUID {
	id := uuid.New()
	_, _, err := p.f.s.CreateVolume(p.f.ctx, CreateParams{ID: id, VCR: volumeNode(nil)})
	p.must(err, "create blank")
	return id
}

func (p *propState) newDisk(t *rapid.T) {
	id := uuid.New()
	rw := p.rwFor(id, 3)
	_, _, err := p.f.s.CreateVolume(p.f.ctx, CreateParams{ID: id, VCR: disk(rw, nil)})
	p.must(err, "create disk")
}

func (p *propState) snapshot(t *rapid.T) {
	v, ok := p.pick(p.volumes(func(v Volume) bool { return !v.SoftDeleted() && len(vcr.ReadWriteTargets(v.VCR)) > 0 }), "disk")
	if !ok {
		t.Skip("no disk")
	}
	snapID := uuid.New()
	m := map[string]string{}
	for _, a := range vcr.ReadWriteTargets(v.VCR) {
		rt, err := p.f.s.ResolveAddress(p.f.ctx, a)
		p.must(err, "resolve rw")
		snaps := p.register([]Registration{{Kind: KindRegionSnapshot, RegionID: rt.RegionID, SnapshotID: snapID}})
		m[a] = snaps[0].Address
	}
	_, _, err := p.f.s.CreateVolume(p.f.ctx, CreateParams{ID: snapID, SnapshotOf: &SnapshotOf{Source: v.ID, TargetMap: m}})
	p.must(err, "create snapshot")
}

func (p *propState) clone(t *rapid.T) {
	src, ok := p.pick(p.volumes(func(v Volume) bool {
		ro, err := vcr.IsReadOnly(v.VCR)
		return err == nil && ro && len(vcr.ReadOnlyTargets(v.VCR)) > 0
	}), "source")
	if !ok {
		t.Skip("no read-only source")
	}
	id := uuid.New()
	rw := p.rwFor(id, 3)
	_, _, err := p.f.s.CreateVolume(p.f.ctx, CreateParams{ID: id, VCR: disk(rw, nil), ReadOnlyParentFrom: src.ID})
	if !p.allowPrecondition(err, "clone") {
		if !src.SoftDeleted() {
			p.t.Fatalf("clone of live source refused: %v", err)
		}
		// The saga's undo: the regions never got a volume.
		_, err := p.f.s.UnregisterTargets(p.f.ctx, targetIDs(rw))
		p.must(err, "unregister unused regions")
	}
}

// softDelete runs the volume-delete saga's steps.
func (p *propState) softDelete(t *rapid.T) {
	v, ok := p.pick(p.volumes(func(Volume) bool { return true }), "victim")
	if !ok {
		t.Skip("no volume")
	}
	res, err := p.f.s.SoftDeleteVolume(p.f.ctx, v.ID)
	p.must(err, "soft delete")
	var freed []uuid.UUID
	freed = append(freed, res.Regions...)
	for _, rs := range res.RegionSnapshots {
		freed = append(freed, rs.TargetID())
	}
	_, err = p.f.s.UnregisterTargets(p.f.ctx, freed)
	p.must(err, "unregister freed")
	regions, vols, err := p.f.s.FindDeletedVolumeRegions(p.f.ctx)
	p.must(err, "find deleted volume regions")
	_, err = p.f.s.UnregisterTargets(p.f.ctx, regions)
	p.must(err, "unregister found regions")
	for _, id := range append(vols, v.ID) {
		r, err := p.f.s.HardDeleteVolume(p.f.ctx, id)
		p.must(err, "hard delete")
		if r.Kept && containsID(vols, id) {
			p.t.Fatalf("volume %s listed by FindDeletedVolumeRegions but KEPT", id)
		}
	}
}

func containsID(list []uuid.UUID, id uuid.UUID) bool {
	for _, x := range list {
		if x == id {
			return true
		}
	}
	return false
}

func (p *propState) replaceRO(t *rapid.T) {
	v, ok := p.pick(p.volumes(func(v Volume) bool { return !v.SoftDeleted() && len(vcr.ReadOnlyTargets(v.VCR)) > 0 }), "volume")
	if !ok {
		t.Skip("no volume with read-only targets")
	}
	addr := rapid.SampledFrom(vcr.ReadOnlyTargets(v.VCR)).Draw(t, "old")
	old, err := p.f.s.ResolveAddress(p.f.ctx, addr)
	p.must(err, "resolve old")
	nr := p.register([]Registration{{Kind: KindRORegion, RegionID: uuid.New(), OwnerVolumeID: uuid.New()}})[0]
	holder := uuid.New()
	_, _, err = p.f.s.CreateVolume(p.f.ctx, CreateParams{ID: holder, VCR: snapshotVCR([]Target{nr})})
	p.must(err, "create holder")
	stash := p.blank()
	r, err := p.f.s.ReplaceReadOnlyTarget(p.f.ctx, v.ID, old.ID, nr.ID, stash)
	if err != nil || r != ReplaceDone {
		p.t.Fatalf("replace read-only: %v %v", r, err)
	}
	if rapid.Bool().Draw(t, "undo") {
		r, err := p.f.s.ReplaceReadOnlyTarget(p.f.ctx, v.ID, nr.ID, old.ID, stash)
		if err != nil || r != ReplaceDone {
			p.t.Fatalf("undo replace read-only: %v %v", r, err)
		}
	}
}

func (p *propState) replaceRegion(t *rapid.T) {
	v, ok := p.pick(p.volumes(func(v Volume) bool { return !v.SoftDeleted() && len(vcr.ReadWriteTargets(v.VCR)) > 0 }), "volume")
	if !ok {
		t.Skip("no volume with rw regions")
	}
	addr := rapid.SampledFrom(vcr.ReadWriteTargets(v.VCR)).Draw(t, "old")
	old, err := p.f.s.ResolveAddress(p.f.ctx, addr)
	p.must(err, "resolve old")
	stash := p.blank()
	nr := p.rwFor(stash, 1)[0]
	r, err := p.f.s.ReplaceRegion(p.f.ctx, v.ID, old.ID, nr.ID, stash)
	if err != nil || r != ReplaceDone {
		p.t.Fatalf("replace region: %v %v", r, err)
	}
	if rapid.Bool().Draw(t, "undo") {
		r, err := p.f.s.ReplaceRegion(p.f.ctx, v.ID, nr.ID, old.ID, stash)
		if err != nil || r != ReplaceDone {
			p.t.Fatalf("undo replace region: %v %v", r, err)
		}
	}
}

func (p *propState) removeROP(t *rapid.T) {
	v, ok := p.pick(p.volumes(func(v Volume) bool { return v.VCR.Volume != nil && v.VCR.Volume.ReadOnlyParent != nil }), "volume")
	if !ok {
		t.Skip("no volume with a read-only parent")
	}
	temp := p.blank()
	removed, err := p.f.s.RemoveReadOnlyParent(p.f.ctx, v.ID, temp)
	p.must(err, "remove ROP")
	if removed == v.SoftDeleted() {
		p.t.Fatalf("removed=%v for soft-deleted=%v", removed, v.SoftDeleted())
	}
}

func (p *propState) unregisterAny(t *rapid.T) {
	ts, _, err := p.f.s.ListTargets(p.f.ctx, TargetFilter{}, uuid.Nil, 1000)
	p.must(err, "list targets")
	if len(ts) == 0 {
		t.Skip("no targets")
	}
	tg := rapid.SampledFrom(ts).Draw(t, "target")
	_, err = p.f.s.UnregisterTargets(p.f.ctx, []uuid.UUID{tg.ID})
	p.allowPrecondition(err, "unregister")
}

func (p *propState) check(t *rapid.T) {
	vs, err := p.f.s.CheckInvariants(p.f.ctx)
	p.must(err, "check invariants")
	if len(vs) > 0 {
		p.t.Fatalf("invariants violated: %+v", vs)
	}
	want := map[string]int64{}
	for _, v := range p.volumes(func(v Volume) bool { return !v.SoftDeleted() }) {
		for _, a := range vcr.ReadOnlyTargets(v.VCR) {
			want[a]++
		}
	}
	ts, _, err := p.f.s.ListTargets(p.f.ctx, TargetFilter{}, uuid.Nil, 1000)
	p.must(err, "list targets")
	for _, tg := range ts {
		if tg.State == StateDeleting || !tg.Kind.ReadOnly() {
			if tg.RefCount != 0 {
				p.t.Fatalf("%s %s target %s has %d references", tg.State, tg.Kind, tg.ID, tg.RefCount)
			}
			continue
		}
		if tg.RefCount != want[tg.Address] {
			p.t.Fatalf("target %s: count %d, live VCRs name it %d times", tg.ID, tg.RefCount, want[tg.Address])
		}
	}
}
