package vcrutil

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
)

func region(gen uint64, readOnly bool, targets ...string) *commonv1.VolumeConstructionRequest {
	return &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Region{Region: &commonv1.VcrRegion{
		BlockSize: 512, BlocksPerExtent: 64, ExtentCount: 8, Gen: gen,
		Opts: &commonv1.CrucibleOpts{Id: "opts", Target: targets, ReadOnly: readOnly},
	}}}
}

func volume(rop *commonv1.VolumeConstructionRequest, subs ...*commonv1.VolumeConstructionRequest) *commonv1.VolumeConstructionRequest {
	return &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: &commonv1.VcrVolume{
		Id: "v", BlockSize: 512, SubVolumes: subs, ReadOnlyParent: rop,
	}}}
}

func TestGeneration(t *testing.T) {
	v := volume(volume(nil, region(99, true, "[fd00::9]:1")), region(3, false, "[fd00::1]:1"), region(8, false, "[fd00::2]:1"), volume(nil, region(50, false, "[fd00::3]:1")))
	if g := Generation(v); g != 8 {
		t.Fatalf("generation %d, want 8 (direct Region sub-volumes only)", g)
	}
	if g := Generation(region(4, false, "[fd00::1]:1")); g != 0 {
		t.Fatalf("a top-level region has no volume generation: %d", g)
	}
}

func TestTargetsWholeTree(t *testing.T) {
	v := volume(volume(nil, region(1, true, "[fd00::9]:1")), region(3, false, "[fd00::1]:1", "[fd00::2]:1"))
	got := Targets(v)
	want := []Target{{Address: "[fd00::1]:1", ReadOnly: false}, {Address: "[fd00::2]:1", ReadOnly: false}, {Address: "[fd00::9]:1", ReadOnly: true}}
	if len(got) != len(want) {
		t.Fatalf("%v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%v, want %v", got, want)
		}
	}
}

// Region sets are named by the path Diff reports a change at, at every
// depth, so a position keeps its name across replacements.
func TestRegionSetsPaths(t *testing.T) {
	inner := volume(volume(nil, region(1, true, "[fd00::8]:1")), region(1, true, "[fd00::7]:1"))
	v := volume(inner, region(3, false, "[fd00::1]:1", "[fd00::2]:1"), region(3, false, "[fd00::3]:1"))
	got := RegionSets(v)
	want := []RegionSet{
		{Path: "vcr.sub_volumes[0]", Targets: []string{"[fd00::1]:1", "[fd00::2]:1"}, ReadOnly: false},
		{Path: "vcr.sub_volumes[1]", Targets: []string{"[fd00::3]:1"}, ReadOnly: false},
		{Path: "vcr.read_only_parent.sub_volumes[0]", Targets: []string{"[fd00::7]:1"}, ReadOnly: true},
		{Path: "vcr.read_only_parent.read_only_parent.sub_volumes[0]", Targets: []string{"[fd00::8]:1"}, ReadOnly: true},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i].Path != want[i].Path || got[i].ReadOnly != want[i].ReadOnly || strings.Join(got[i].Targets, ",") != strings.Join(want[i].Targets, ",") {
			t.Fatalf("set %d: %v, want %v", i, got[i], want[i])
		}
	}
	next := proto.Clone(v).(*commonv1.VolumeConstructionRequest)
	next.GetVolume().GetReadOnlyParent().GetVolume().GetReadOnlyParent().GetVolume().GetSubVolumes()[0].GetRegion().GetOpts().Target[0] = "[fd00::9]:1"
	changes, err := Diff(v, next)
	if err != nil || len(changes) != 1 || changes[0].Path != want[3].Path {
		t.Fatalf("Diff names %v (%v), want %s", changes, err, want[3].Path)
	}
}

func TestDiff(t *testing.T) {
	base := volume(volume(nil, region(1, true, "[fd00::a]:1", "[fd00::b]:1")), region(3, false, "[fd00::1]:1", "[fd00::2]:1"))
	mut := func(f func(v *commonv1.VcrVolume)) *commonv1.VolumeConstructionRequest {
		c := proto.Clone(base).(*commonv1.VolumeConstructionRequest)
		f(c.GetVolume())
		return c
	}
	tests := []struct {
		name     string
		next     *commonv1.VolumeConstructionRequest
		changes  int
		mismatch bool
	}{
		{"identical", base, 0, false},
		{"generation up", mut(func(v *commonv1.VcrVolume) { v.SubVolumes[0].GetRegion().Gen = 4 }), 0, false},
		{"generation down", mut(func(v *commonv1.VcrVolume) { v.SubVolumes[0].GetRegion().Gen = 2 }), 0, true},
		{"ro target", mut(func(v *commonv1.VcrVolume) {
			v.ReadOnlyParent.GetVolume().SubVolumes[0].GetRegion().Opts.Target[1] = "[fd00::c]:1"
		}), 1, false},
		{"rw target and gen", mut(func(v *commonv1.VcrVolume) {
			v.SubVolumes[0].GetRegion().Opts.Target[0] = "[fd00::3]:1"
			v.SubVolumes[0].GetRegion().Gen = 4
		}), 1, false},
		{"two targets", mut(func(v *commonv1.VcrVolume) {
			v.SubVolumes[0].GetRegion().Opts.Target[0] = "[fd00::3]:1"
			v.SubVolumes[0].GetRegion().Opts.Target[1] = "[fd00::4]:1"
		}), 2, false},
		{"volume id", mut(func(v *commonv1.VcrVolume) { v.Id = "other" }), 0, true},
		{"extra sub-volume", mut(func(v *commonv1.VcrVolume) { v.SubVolumes = append(v.SubVolumes, region(1, false, "[fd00::5]:1")) }), 0, true},
		{"no read-only parent", mut(func(v *commonv1.VcrVolume) { v.ReadOnlyParent = nil }), 0, true},
		{"fewer targets", mut(func(v *commonv1.VcrVolume) {
			v.SubVolumes[0].GetRegion().Opts.Target = v.SubVolumes[0].GetRegion().Opts.Target[:1]
		}), 0, true},
		{"geometry", mut(func(v *commonv1.VcrVolume) { v.SubVolumes[0].GetRegion().ExtentCount = 9 }), 0, true},
		{"key", mut(func(v *commonv1.VcrVolume) { k := "k"; v.SubVolumes[0].GetRegion().Opts.Key = &k }), 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Diff(base, tc.next)
			if tc.mismatch {
				if !errors.Is(err, ErrMismatch) {
					t.Fatalf("err %v, want mismatch", err)
				}
				return
			}
			if err != nil || len(got) != tc.changes {
				t.Fatalf("changes %v err %v, want %d", got, err, tc.changes)
			}
		})
	}
	// The answer names what differs, never a key.
	k := "c2VjcmV0"
	withKey := mut(func(v *commonv1.VcrVolume) { v.SubVolumes[0].GetRegion().Opts.Key = &k })
	if _, err := Diff(base, withKey); err == nil || strings.Contains(err.Error(), k) {
		t.Fatalf("error leaks the key or is missing: %v", err)
	}
}

func TestValidate(t *testing.T) {
	if err := Validate(volume(nil, region(1, false, "[fd00::1]:1"))); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]*commonv1.VolumeConstructionRequest{
		"nil":              nil,
		"top-level region": region(1, false, "[fd00::1]:1"),
		"no targets":       volume(nil, region(1, false)),
		"empty sub-volume": volume(nil, &commonv1.VolumeConstructionRequest{}),
	} {
		if err := Validate(v); !errors.Is(err, ErrShape) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
