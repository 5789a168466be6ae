package vcr

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
)

func region(readOnly bool, gen uint64, targets ...string) *VCR {
	key := "c2VjcmV0LWtleQ=="
	return &VCR{Region: &Region{BlockSize: 512, BlocksPerExtent: 64, ExtentCount: 8, Gen: gen,
		Opts: CrucibleOpts{ID: uuid.NewString(), Target: targets, Key: &key, ReadOnly: readOnly}}}
}

func volume(rop *VCR, subs ...*VCR) *VCR {
	return &VCR{Volume: &Volume{ID: uuid.NewString(), BlockSize: 512, SubVolumes: subs, ReadOnlyParent: rop}}
}

func TestJSONShapeUsesTypeTagAndGenKey(t *testing.T) {
	v := volume(volume(nil, region(true, 1, "[fd00::1]:19016")), region(false, 3, "[fd00::1]:19000"))
	b, err := Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{`"type":"volume"`, `"type":"region"`, `"gen":3`, `"sub_volumes":[`, `"read_only_parent":{`, `"flush_timeout":null`} {
		if !strings.Contains(s, want) {
			t.Errorf("JSON lacks %s: %s", want, s)
		}
	}
	if strings.Contains(s, "generation") {
		t.Errorf("JSON uses generation instead of gen: %s", s)
	}
	back, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := Encode(back)
	if string(b2) != s {
		t.Fatalf("round trip differs:\n%s\n%s", s, b2)
	}
}

func TestDecodeSpecExampleAndLegacyKinds(t *testing.T) {
	in := `{"type":"volume","id":"` + uuid.NewString() + `","block_size":512,
 "sub_volumes":[{"type":"region","block_size":512,"blocks_per_extent":131072,"extent_count":16,"gen":3,
   "opts":{"id":"` + uuid.NewString() + `","target":["[fd00:1122:3344:101::5]:19000","[fd00:1122:3344:102::9]:19004",
   "[fd00:1122:3344:103::2]:19011"],"lossy":false,"flush_timeout":null,"key":"a2V5",
   "cert_pem":null,"key_pem":null,"root_cert_pem":null,"control":null,"read_only":false}}],
 "read_only_parent":{"type":"file","id":"` + uuid.NewString() + `","block_size":512,"path":"/img"}}`
	v, err := Decode([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if err := Validate(v); err != nil {
		t.Fatal(err)
	}
	if got := v.Volume.SubVolumes[0].Region.Gen; got != 3 {
		t.Fatalf("gen = %d", got)
	}
	if _, err := Decode([]byte(`{"type":"Volume"}`)); err == nil {
		t.Fatal("capitalised type accepted")
	}
	var ie *InvalidError
	if _, err := Decode([]byte(`{"type":"region","opts":{"key":5}}`)); !errors.As(err, &ie) {
		t.Fatalf("want InvalidError, got %v", err)
	}
}

func TestProtoRoundTrip(t *testing.T) {
	ft := 1.5
	v := volume(volume(nil, region(true, 1, "[fd00::1]:19016")), region(false, 3, "[fd00::1]:19000"),
		&VCR{File: &File{ID: uuid.NewString(), BlockSize: 512, Path: "/x"}},
		&VCR{URL: &URL{ID: uuid.NewString(), BlockSize: 512, URL: "http://x"}})
	v.Volume.SubVolumes[0].Region.Opts.FlushTimeout = &ft
	p := ToProto(v)
	back, err := FromProto(p)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(p, ToProto(back)) {
		t.Fatal("proto round trip differs")
	}
	a, _ := Encode(v)
	b, _ := Encode(back)
	if string(a) != string(b) {
		t.Fatal("JSON after proto round trip differs")
	}
}

func TestRedactedDropsSecrets(t *testing.T) {
	s := "pem"
	v := volume(volume(nil, region(true, 1, "[fd00::1]:1")), region(false, 1, "[fd00::1]:2"))
	v.Volume.SubVolumes[0].Region.Opts.CertPEM = &s
	r := v.Redacted()
	b, _ := Encode(r)
	if strings.Contains(string(b), "c2VjcmV0") || strings.Contains(string(b), `"pem"`) {
		t.Fatalf("redacted VCR still has secrets: %s", b)
	}
	if v.Volume.SubVolumes[0].Region.Opts.Key == nil {
		t.Fatal("Redacted modified the original")
	}
}

func TestTraversalOrderAndROPHandling(t *testing.T) {
	// BFS: sub_volumes in order, then ROP; rw targets never under a ROP.
	rop := volume(volume(nil, region(true, 1, "[fd00::3]:1")), region(true, 1, "[fd00::2]:1"))
	v := volume(rop, region(false, 1, "[fd00::1]:1"), region(true, 1, "[fd00::1]:2"))
	got := ReadOnlyTargets(v)
	want := []string{"[fd00::1]:2", "[fd00::2]:1", "[fd00::3]:1"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("ReadOnlyTargets = %v, want %v", got, want)
	}
	if rw := ReadWriteTargets(v); len(rw) != 1 || rw[0] != "[fd00::1]:1" {
		t.Fatalf("ReadWriteTargets = %v", rw)
	}
	if in, err := RegionInVCR(v, "[fd00::2]:1"); err != nil || in {
		t.Fatalf("RegionInVCR entered the ROP: %v %v", in, err)
	}
	if in, err := RegionInVCR(v, "[fd00:0::1]:2"); err != nil || !in {
		t.Fatalf("RegionInVCR missed a non-canonical match: %v %v", in, err)
	}
	if in, err := ReadOnlyTargetInVCR(v, "[fd00::3]:1"); err != nil || !in {
		t.Fatalf("ReadOnlyTargetInVCR = %v %v", in, err)
	}
	if n, err := CountSubVolumes(v); err != nil || n != 2 {
		t.Fatalf("CountSubVolumes = %d %v", n, err)
	}
	if _, err := CountSubVolumes(region(false, 1, "[fd00::1]:1")); !errors.Is(err, ErrTopLevelRegion) {
		t.Fatal("top-level region counted")
	}
	if sets := RegionSets(volume(nil, region(true, 1, "[fd00::1]:1"), region(true, 1, "10.0.0.1:1"))); len(sets) != 2 || sets[1].Path != "vcr.sub_volumes[1]" {
		t.Fatalf("RegionSets: %v", sets)
	}
}

func TestReadOnlyTargetSearchRejectsMalformed(t *testing.T) {
	bad := volume(volume(nil, region(false, 1, "[fd00::9]:1")), region(true, 1, "[fd00::1]:1"))
	if _, err := ReadOnlyTargetInVCR(bad, "[fd00::7]:1"); !errors.Is(err, ErrRWUnderROP) {
		t.Fatalf("rw region under ROP: %v", err)
	}
	v4 := volume(nil, region(true, 1, "10.1.1.1:1"))
	if _, err := ReadOnlyTargetInVCR(v4, "[fd00::7]:1"); !errors.Is(err, ErrIPv4Target) {
		t.Fatalf("IPv4 target: %v", err)
	}
	if _, err := RegionInVCR(v4, "10.1.1.1:1"); !errors.Is(err, ErrIPv4Target) {
		t.Fatalf("IPv4 needle: %v", err)
	}
}

func TestReplaceRegionBumpsEveryRegionInSubVolumes(t *testing.T) {
	v := volume(volume(nil, region(true, 7, "[fd00::9]:1")),
		region(false, 3, "[fd00::1]:1", "[fd00::2]:1"), volume(nil, region(false, 5, "[fd00::3]:1")))
	c, err := ReplaceRegionInVCR(v, "[fd00::2]:1", "[fd00::4]:1")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Volume.SubVolumes[0].Region; got.Gen != 4 || got.Opts.Target[1] != "[fd00::4]:1" || got.Opts.ID != v.Volume.SubVolumes[0].Region.Opts.ID {
		t.Fatalf("changed region = %+v", got)
	}
	if g := c.Volume.SubVolumes[1].Volume.SubVolumes[0].Region.Gen; g != 6 {
		t.Fatalf("nested region gen = %d, want 6", g)
	}
	if g := c.Volume.ReadOnlyParent.Volume.SubVolumes[0].Region.Gen; g != 7 {
		t.Fatalf("ROP region bumped to %d", g)
	}
	if _, err := ReplaceRegionInVCR(v, "[fd00::5]:1", "[fd00::4]:1"); !errors.Is(err, ErrNoMatch) {
		t.Fatalf("no match: %v", err)
	}
}

func TestReplaceReadOnlyTargetKeepsGensAndIDs(t *testing.T) {
	v := volume(volume(nil, region(true, 7, "[fd00::9]:1")), region(false, 3, "[fd00::1]:1"))
	c, n, err := ReplaceReadOnlyTargetInVCR(v, "[fd00::9]:1", "[fd00::8]:1")
	if err != nil || n != 1 {
		t.Fatal(n, err)
	}
	r := c.Volume.ReadOnlyParent.Volume.SubVolumes[0].Region
	if r.Gen != 7 || r.Opts.Target[0] != "[fd00::8]:1" || c.Volume.ID != v.Volume.ID {
		t.Fatalf("replaced = %+v", r)
	}
	if _, _, err := ReplaceReadOnlyTargetInVCR(v, "[fd00::1]:1", "[fd00::8]:1"); !errors.Is(err, ErrNoMatch) {
		t.Fatalf("rw target replaced as read-only: %v", err)
	}
}

func TestIsReadOnlyAndRandomize(t *testing.T) {
	ro := volume(nil, region(true, 1, "[fd00::1]:1"))
	if ok, err := IsReadOnly(ro); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if ok, err := IsReadOnly(volume(nil, region(true, 1, "[fd00::1]:1"), region(false, 1, "[fd00::2]:1"))); ok || err != nil {
		t.Fatal(ok, err)
	}
	if _, err := IsReadOnly(volume(nil, &VCR{File: &File{ID: uuid.NewString()}})); !errors.Is(err, ErrNonRegionSub) {
		t.Fatalf("File sub-volume: %v", err)
	}
	c, err := RandomizeIDs(ro)
	if err != nil {
		t.Fatal(err)
	}
	if c.Volume.ID == ro.Volume.ID || c.Volume.SubVolumes[0].Region.Opts.ID == ro.Volume.SubVolumes[0].Region.Opts.ID {
		t.Fatal("ids not randomised")
	}
	if _, err := RandomizeIDs(volume(volume(nil, region(false, 1, "[fd00::3]:1")), region(true, 1, "[fd00::1]:1"))); !errors.Is(err, ErrReadWriteRegion) {
		t.Fatalf("rw region anywhere: %v", err)
	}
}

func TestBumpDirectRegionGensOnly(t *testing.T) {
	v := volume(volume(nil, region(true, 1, "[fd00::9]:1")), region(false, 3, "[fd00::1]:1"),
		volume(nil, region(false, 5, "[fd00::2]:1")), region(false, 8, "[fd00::3]:1"))
	if ok, err := BumpDirectRegionGens(v); !ok || err != nil {
		t.Fatal(ok, err)
	}
	s := v.Volume.SubVolumes
	if s[0].Region.Gen != 4 || s[2].Region.Gen != 9 || s[1].Volume.SubVolumes[0].Region.Gen != 5 ||
		v.Volume.ReadOnlyParent.Volume.SubVolumes[0].Region.Gen != 1 {
		t.Fatal("wrong regions bumped")
	}
	if ok, _ := BumpDirectRegionGens(volume(nil)); ok {
		t.Fatal("bumped a volume without regions")
	}
}

func TestCanonicalAddress(t *testing.T) {
	c, err := Canonical("[FD00:0000:0000::0001]:19000")
	if err != nil || c != "[fd00::1]:19000" {
		t.Fatalf("Canonical = %q %v", c, err)
	}
	for _, bad := range []string{"10.0.0.1:1", "[::ffff:10.0.0.1]:1", "fd00::1", "[fd00::1]", "[fe80::1%eth0]:1", ""} {
		if _, err := Canonical(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestValidateNamesThePathOfTheOffendingNode(t *testing.T) {
	id := uuid.NewString
	cases := []struct {
		name string
		v    *VCR
		path string
	}{
		{"rw region under ROP", volume(volume(nil, region(true, 1, "[fd00::1]:1"), region(false, 1, "[fd00::2]:1")), region(false, 1, "[fd00::3]:1")),
			"vcr.volume.read_only_parent.volume.sub_volumes[1].region.opts.read_only"},
		{"IPv4 target", volume(volume(nil, region(true, 1, "[fd00::1]:1", "10.0.0.1:5"))),
			"vcr.volume.read_only_parent.volume.sub_volumes[0].region.opts.target[1]"},
		{"malformed address", volume(nil, region(false, 1, "[fd00::1]:1", "fd00::2")),
			"vcr.volume.sub_volumes[0].region.opts.target[1]"},
		{"duplicate in region", volume(nil, region(false, 1, "[fd00::1]:1", "[fd00:0::1]:1")),
			"vcr.volume.sub_volumes[0].region.opts.target[1]"},
		{"duplicate read-only target", volume(volume(nil, region(true, 1, "[fd00::5]:1")), region(true, 1, "[fd00::5]:1")),
			"vcr.volume.read_only_parent.volume.sub_volumes[0].region.opts.target[0]"},
		{"rw target in two regions", volume(nil, region(false, 1, "[fd00::5]:1"), region(false, 1, "[fd00::5]:1")),
			"vcr.volume.sub_volumes[1].region.opts.target[0]"},
		{"top-level region", region(false, 1, "[fd00::1]:1"), "vcr.region"},
		{"bad id", &VCR{Volume: &Volume{ID: "disk"}}, "vcr.volume.id"},
		{"no targets", volume(nil, region(false, 1)), "vcr.volume.sub_volumes[0].region.opts.target"},
		{"empty node", volume(nil, &VCR{}), "vcr.volume.sub_volumes[0]"},
		{"file id", volume(nil, &VCR{File: &File{ID: "x"}}), "vcr.volume.sub_volumes[0].file.id"},
	}
	_ = id
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Validate(c.v)
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("want InvalidError, got %v", err)
			}
			if ie.Path != c.path {
				t.Fatalf("path = %s, want %s (%v)", ie.Path, c.path, err)
			}
			if strings.Contains(err.Error(), "c2VjcmV0") {
				t.Fatal("error contains the key")
			}
		})
	}
	ok := volume(volume(nil, region(true, 1, "[fd00::5]:1")), region(false, 1, "[fd00::1]:1", "[fd00::2]:1", "[fd00::3]:1"))
	if err := Validate(ok); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotCopy(t *testing.T) {
	ctl := "[fd00::1]:9"
	src := volume(volume(nil, region(true, 2, "[fd00::9]:1")), region(false, 3, "[fd00::1]:1", "[fd00::2]:1"))
	src.Volume.SubVolumes[0].Region.Opts.Control = &ctl
	m := map[string]string{"[fd00::1]:1": "[fd00::1]:2", "[fd00::2]:1": "[fd00::2]:2"}
	s, err := SnapshotCopy(src, m)
	if err != nil {
		t.Fatal(err)
	}
	r := s.Volume.SubVolumes[0].Region
	if !r.Opts.ReadOnly || r.Opts.Control != nil || r.Opts.Target[0] != "[fd00::1]:2" || r.Opts.ID == src.Volume.SubVolumes[0].Region.Opts.ID {
		t.Fatalf("snapshot region = %+v", r)
	}
	if err := Validate(s); err != nil {
		t.Fatal(err)
	}
	delete(m, "[fd00::2]:1")
	if _, err := SnapshotCopy(src, m); !errors.Is(err, ErrNoMatch) {
		t.Fatalf("unmapped rw target: %v", err)
	}
}

func TestJSONNullListsAndUnknownKinds(t *testing.T) {
	v, err := Decode([]byte(`{"type":"volume","id":"` + uuid.NewString() + `","block_size":512,"sub_volumes":null,"read_only_parent":null}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(v)
	if !strings.Contains(string(b), `"sub_volumes":[]`) {
		t.Fatalf("null sub_volumes not normalised: %s", b)
	}
	if _, err := Decode([]byte(`{"type":"volume","sub_volumes":[null]}`)); err == nil {
		t.Fatal("null sub-volume accepted")
	}
}

// BenchmarkDecodeClone decodes what the volume table holds for a clone of
// a snapshot (the fan-out reads one or two of these per replaced volume):
// a volume whose read-only parent is a volume of one three-target region.
func BenchmarkDecodeClone(b *testing.B) {
	data, err := Encode(volume(volume(nil, region(true, 1, "[fd00::1]:19016", "[fd00::2]:19016", "[fd00::3]:19016"))))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}
