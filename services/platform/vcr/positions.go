package vcr

import (
	"errors"
	"fmt"

	"storagecp.dev/platform/target"
)

// Positions. A position is where a Region sits in the tree, named by its
// path through volumes, e.g. "vcr.sub_volumes[0]" or
// "vcr.read_only_parent.sub_volumes[0]": a replacement changes the targets
// at a position, never the position. (Validate's error paths name proto
// fields instead, "vcr.volume.sub_volumes[0].region…".)

// Generation is the highest gen among the direct Region sub-volumes of a
// top-level Volume: the number an Upstairs compares on activation and the
// notifier deduplicates on. 0 when there are none.
func Generation(v *VCR) uint64 {
	var g uint64
	if v == nil || v.Volume == nil {
		return 0
	}
	for _, s := range v.Volume.SubVolumes {
		if s != nil && s.Region != nil && s.Region.Gen > g {
			g = s.Region.Gen
		}
	}
	return g
}

// RegionSet is one Region of a VCR tree: a position whose targets are the
// copies of the same data.
type RegionSet struct {
	Path    string
	Targets []string
	// ReadOnly is the Region's opts.read_only.
	ReadOnly bool
}

// RegionSets lists every Region of the tree, depth first (sub-volumes in
// order, then the read-only parent), at every depth.
func RegionSets(v *VCR) []RegionSet {
	var out []RegionSet
	var visit func(n *VCR, path string)
	visit = func(n *VCR, path string) {
		switch {
		case n == nil:
		case n.Volume != nil:
			for i, s := range n.Volume.SubVolumes {
				visit(s, fmt.Sprintf("%s.sub_volumes[%d]", path, i))
			}
			visit(n.Volume.ReadOnlyParent, path+".read_only_parent")
		case n.Region != nil:
			out = append(out, RegionSet{
				Path:     path,
				Targets:  append([]string(nil), n.Region.Opts.Target...),
				ReadOnly: n.Region.Opts.ReadOnly,
			})
		}
	}
	visit(v, "vcr")
	return out
}

// RegionSetOf returns the targets of the rw Region (anywhere in the tree)
// that names address, or nil. Addresses compare in canonical form.
func RegionSetOf(v *VCR, address string) []string {
	want, err := target.Canonical(address)
	if err != nil {
		want = address
	}
	for _, set := range RegionSets(v) {
		if set.ReadOnly {
			continue
		}
		for _, t := range set.Targets {
			if c, err := target.Canonical(t); t == address || err == nil && c == want {
				return set.Targets
			}
		}
	}
	return nil
}

// ErrShape is returned by CheckShape for a VCR an Upstairs cannot be built
// from.
var ErrShape = errors.New("invalid VCR")

// CheckShape checks the least an Upstairs needs: a top-level Volume whose
// Regions all name at least one target, every one a target address
// (platform/target), and no empty node. It says what is
// wrong by position, without echoing any field (a VCR carries keys).
// Validate is the full check of an incoming VCR.
func CheckShape(v *VCR) error {
	if v == nil || v.Volume == nil {
		return fmt.Errorf("%w: top level is not a volume", ErrShape)
	}
	var check func(n *VCR, path string) error
	check = func(n *VCR, path string) error {
		switch {
		case n == nil || n.Volume == nil && n.Region == nil && n.File == nil && n.URL == nil:
			return fmt.Errorf("%w: %s is empty", ErrShape, path)
		case n.Volume != nil:
			for i, s := range n.Volume.SubVolumes {
				if err := check(s, fmt.Sprintf("%s.sub_volumes[%d]", path, i)); err != nil {
					return err
				}
			}
			if rop := n.Volume.ReadOnlyParent; rop != nil {
				return check(rop, path+".read_only_parent")
			}
		case n.Region != nil:
			if len(n.Region.Opts.Target) == 0 {
				return fmt.Errorf("%w: %s has no targets", ErrShape, path)
			}
			for i, t := range n.Region.Opts.Target {
				if _, err := target.Parse(t); err != nil {
					return fmt.Errorf("%w: %s target[%d]: %v", ErrShape, path, i, err)
				}
			}
		}
		return nil
	}
	return check(v, "vcr")
}

// TargetChange is one target that differs between two VCRs of the same
// shape.
type TargetChange struct {
	// Path is the Region's position.
	Path     string
	Old, New string
	// ReadOnly is the Region's opts.read_only.
	ReadOnly bool
	// GenRaised: the Region's gen is higher in the new VCR.
	GenRaised bool
}

// ErrMismatch is returned by Diff when two VCRs differ in more than targets
// and generations.
var ErrMismatch = errors.New("VCRs differ beyond targets")

// Diff compares the VCR an Upstairs runs (cur) with a proposed one (next),
// as Crucible does before a target replacement: both must have the same
// shape, ids, geometry and options; Region generations may rise but never
// fall; targets are compared position by position. It returns every target
// that differs. Errors describe the mismatch by position, never by value.
func Diff(cur, next *VCR) ([]TargetChange, error) {
	var out []TargetChange
	var walk func(a, b *VCR, path string) error
	walk = func(a, b *VCR, path string) error {
		if a == nil {
			a = &VCR{}
		}
		if b == nil {
			b = &VCR{}
		}
		switch {
		case a.Volume != nil:
			if b.Volume == nil {
				return fmt.Errorf("%w: %s changed kind", ErrMismatch, path)
			}
			va, vb := a.Volume, b.Volume
			if va.ID != vb.ID || va.BlockSize != vb.BlockSize {
				return fmt.Errorf("%w: %s id or block size differs", ErrMismatch, path)
			}
			if len(va.SubVolumes) != len(vb.SubVolumes) {
				return fmt.Errorf("%w: %s has %d sub-volumes, not %d", ErrMismatch, path, len(vb.SubVolumes), len(va.SubVolumes))
			}
			for i := range va.SubVolumes {
				if err := walk(va.SubVolumes[i], vb.SubVolumes[i], fmt.Sprintf("%s.sub_volumes[%d]", path, i)); err != nil {
					return err
				}
			}
			ra, rb := va.ReadOnlyParent, vb.ReadOnlyParent
			if (ra == nil) != (rb == nil) {
				return fmt.Errorf("%w: %s read-only parent added or removed", ErrMismatch, path)
			}
			if ra != nil {
				return walk(ra, rb, path+".read_only_parent")
			}
			return nil
		case a.Region != nil:
			if b.Region == nil {
				return fmt.Errorf("%w: %s changed kind", ErrMismatch, path)
			}
			ra, rb := a.Region, b.Region
			if ra.BlockSize != rb.BlockSize || ra.BlocksPerExtent != rb.BlocksPerExtent || ra.ExtentCount != rb.ExtentCount {
				return fmt.Errorf("%w: %s geometry differs", ErrMismatch, path)
			}
			if rb.Gen < ra.Gen {
				return fmt.Errorf("%w: %s generation went backwards", ErrMismatch, path)
			}
			oa, ob := ra.Opts, rb.Opts
			if oa.ID != ob.ID || oa.ReadOnly != ob.ReadOnly || deref(oa.Key) != deref(ob.Key) || oa.Lossy != ob.Lossy {
				return fmt.Errorf("%w: %s options differ", ErrMismatch, path)
			}
			ta, tb := oa.Target, ob.Target
			if len(ta) != len(tb) {
				return fmt.Errorf("%w: %s has %d targets, not %d", ErrMismatch, path, len(tb), len(ta))
			}
			for i := range ta {
				if ta[i] != tb[i] {
					out = append(out, TargetChange{Path: path, Old: ta[i], New: tb[i], ReadOnly: oa.ReadOnly, GenRaised: rb.Gen > ra.Gen})
				}
			}
			return nil
		case a.File != nil:
			if b.File == nil || *a.File != *b.File {
				return fmt.Errorf("%w: %s file differs", ErrMismatch, path)
			}
			return nil
		case a.URL != nil:
			if b.URL == nil || *a.URL != *b.URL {
				return fmt.Errorf("%w: %s url differs", ErrMismatch, path)
			}
			return nil
		default:
			if b.Volume != nil || b.Region != nil || b.File != nil || b.URL != nil {
				return fmt.Errorf("%w: %s changed kind", ErrMismatch, path)
			}
			return nil
		}
	}
	if err := walk(cur, next, "vcr"); err != nil {
		return nil, err
	}
	return out, nil
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
