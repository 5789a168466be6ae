// Package vcrutil holds the few VCR helpers the notifier and the
// sim-upstairs need, over the proto message (the volume-service's own vcr
// package is internal to its module).
package vcrutil

import (
	"errors"
	"fmt"
	"net/netip"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
)

// Generation is the highest gen among the direct Region sub-volumes of a
// top-level Volume: the number an Upstairs compares on activation and the
// notifier deduplicates on. 0 when there are none.
func Generation(v *commonv1.VolumeConstructionRequest) uint64 {
	var g uint64
	for _, sv := range v.GetVolume().GetSubVolumes() {
		if r := sv.GetRegion(); r != nil && r.GetGen() > g {
			g = r.GetGen()
		}
	}
	return g
}

// Target is one downstairs address of a VCR.
type Target struct {
	Address string
	// ReadOnly is the Region's opts.read_only.
	ReadOnly bool
}

// Targets lists every target of the whole tree (sub-volumes, then the
// read-only parent, breadth first), duplicates kept.
func Targets(v *commonv1.VolumeConstructionRequest) []Target {
	var out []Target
	queue := []*commonv1.VolumeConstructionRequest{v}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		switch k := n.GetKind().(type) {
		case *commonv1.VolumeConstructionRequest_Volume:
			queue = append(queue, k.Volume.GetSubVolumes()...)
			if rop := k.Volume.GetReadOnlyParent(); rop != nil {
				queue = append(queue, rop)
			}
		case *commonv1.VolumeConstructionRequest_Region:
			for _, t := range k.Region.GetOpts().GetTarget() {
				out = append(out, Target{Address: t, ReadOnly: k.Region.GetOpts().GetReadOnly()})
			}
		}
	}
	return out
}

// RegionSet is one Region of a VCR tree: a position whose targets are the
// copies of the same data.
type RegionSet struct {
	// Path locates the Region as Diff names it, e.g. "vcr.sub_volumes[0]"
	// or "vcr.read_only_parent.sub_volumes[0]": a replacement changes the
	// targets at a path, never the path.
	Path    string
	Targets []string
	// ReadOnly is the Region's opts.read_only.
	ReadOnly bool
}

// RegionSets lists every Region of the tree, depth first (sub-volumes in
// order, then the read-only parent), at every depth.
func RegionSets(v *commonv1.VolumeConstructionRequest) []RegionSet {
	var out []RegionSet
	var walk func(n *commonv1.VolumeConstructionRequest, path string)
	walk = func(n *commonv1.VolumeConstructionRequest, path string) {
		switch k := n.GetKind().(type) {
		case *commonv1.VolumeConstructionRequest_Volume:
			for i, sv := range k.Volume.GetSubVolumes() {
				walk(sv, fmt.Sprintf("%s.sub_volumes[%d]", path, i))
			}
			if rop := k.Volume.GetReadOnlyParent(); rop != nil {
				walk(rop, path+".read_only_parent")
			}
		case *commonv1.VolumeConstructionRequest_Region:
			out = append(out, RegionSet{
				Path:     path,
				Targets:  append([]string(nil), k.Region.GetOpts().GetTarget()...),
				ReadOnly: k.Region.GetOpts().GetReadOnly(),
			})
		}
	}
	walk(v, "vcr")
	return out
}

// CanonicalAddress parses "[ipv6]:port" and formats it canonically
// (RFC 5952), so equal addresses compare equal as strings. IPv4 is refused.
func CanonicalAddress(s string) (string, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", s, err)
	}
	if !ap.Addr().Is6() || ap.Addr().Is4In6() {
		return "", fmt.Errorf("address %q: not IPv6", s)
	}
	return ap.String(), nil
}

// ErrShape is returned by Validate for a VCR an Upstairs cannot be built
// from.
var ErrShape = errors.New("invalid VCR")

// Validate checks that a VCR is a top-level Volume whose Regions all name
// at least one target. It says what is wrong without echoing any field
// (a VCR carries keys).
func Validate(v *commonv1.VolumeConstructionRequest) error {
	if v.GetVolume() == nil {
		return fmt.Errorf("%w: top level is not a volume", ErrShape)
	}
	var check func(n *commonv1.VolumeConstructionRequest, path string) error
	check = func(n *commonv1.VolumeConstructionRequest, path string) error {
		switch k := n.GetKind().(type) {
		case *commonv1.VolumeConstructionRequest_Volume:
			for i, sv := range k.Volume.GetSubVolumes() {
				if err := check(sv, fmt.Sprintf("%s.sub_volumes[%d]", path, i)); err != nil {
					return err
				}
			}
			if rop := k.Volume.GetReadOnlyParent(); rop != nil {
				return check(rop, path+".read_only_parent")
			}
		case *commonv1.VolumeConstructionRequest_Region:
			if len(k.Region.GetOpts().GetTarget()) == 0 {
				return fmt.Errorf("%w: %s has no targets", ErrShape, path)
			}
		case nil:
			return fmt.Errorf("%w: %s is empty", ErrShape, path)
		}
		return nil
	}
	return check(v, "vcr")
}

// TargetChange is one downstairs address that differs between two VCRs of
// the same shape.
type TargetChange struct {
	// Path locates the Region, e.g. "vcr.sub_volumes[0]".
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
// that differs. Errors describe the mismatch by path, never by value.
func Diff(cur, next *commonv1.VolumeConstructionRequest) ([]TargetChange, error) {
	var out []TargetChange
	var walk func(a, b *commonv1.VolumeConstructionRequest, path string) error
	walk = func(a, b *commonv1.VolumeConstructionRequest, path string) error {
		switch ka := a.GetKind().(type) {
		case *commonv1.VolumeConstructionRequest_Volume:
			kb, ok := b.GetKind().(*commonv1.VolumeConstructionRequest_Volume)
			if !ok {
				return fmt.Errorf("%w: %s changed kind", ErrMismatch, path)
			}
			va, vb := ka.Volume, kb.Volume
			if va.GetId() != vb.GetId() || va.GetBlockSize() != vb.GetBlockSize() {
				return fmt.Errorf("%w: %s id or block size differs", ErrMismatch, path)
			}
			if len(va.GetSubVolumes()) != len(vb.GetSubVolumes()) {
				return fmt.Errorf("%w: %s has %d sub-volumes, not %d", ErrMismatch, path, len(vb.GetSubVolumes()), len(va.GetSubVolumes()))
			}
			for i := range va.GetSubVolumes() {
				if err := walk(va.GetSubVolumes()[i], vb.GetSubVolumes()[i], fmt.Sprintf("%s.sub_volumes[%d]", path, i)); err != nil {
					return err
				}
			}
			ra, rb := va.GetReadOnlyParent(), vb.GetReadOnlyParent()
			if (ra == nil) != (rb == nil) {
				return fmt.Errorf("%w: %s read-only parent added or removed", ErrMismatch, path)
			}
			if ra != nil {
				return walk(ra, rb, path+".read_only_parent")
			}
			return nil
		case *commonv1.VolumeConstructionRequest_Region:
			kb, ok := b.GetKind().(*commonv1.VolumeConstructionRequest_Region)
			if !ok {
				return fmt.Errorf("%w: %s changed kind", ErrMismatch, path)
			}
			ra, rb := ka.Region, kb.Region
			if ra.GetBlockSize() != rb.GetBlockSize() || ra.GetBlocksPerExtent() != rb.GetBlocksPerExtent() || ra.GetExtentCount() != rb.GetExtentCount() {
				return fmt.Errorf("%w: %s geometry differs", ErrMismatch, path)
			}
			if rb.GetGen() < ra.GetGen() {
				return fmt.Errorf("%w: %s generation went backwards", ErrMismatch, path)
			}
			oa, ob := ra.GetOpts(), rb.GetOpts()
			if oa.GetId() != ob.GetId() || oa.GetReadOnly() != ob.GetReadOnly() || oa.GetKey() != ob.GetKey() || oa.GetLossy() != ob.GetLossy() {
				return fmt.Errorf("%w: %s options differ", ErrMismatch, path)
			}
			ta, tb := oa.GetTarget(), ob.GetTarget()
			if len(ta) != len(tb) {
				return fmt.Errorf("%w: %s has %d targets, not %d", ErrMismatch, path, len(tb), len(ta))
			}
			for i := range ta {
				if ta[i] != tb[i] {
					out = append(out, TargetChange{Path: path, Old: ta[i], New: tb[i], ReadOnly: oa.GetReadOnly(), GenRaised: rb.GetGen() > ra.GetGen()})
				}
			}
			return nil
		case *commonv1.VolumeConstructionRequest_File:
			kb, ok := b.GetKind().(*commonv1.VolumeConstructionRequest_File)
			if !ok || ka.File.GetId() != kb.File.GetId() || ka.File.GetPath() != kb.File.GetPath() || ka.File.GetBlockSize() != kb.File.GetBlockSize() {
				return fmt.Errorf("%w: %s file differs", ErrMismatch, path)
			}
			return nil
		case *commonv1.VolumeConstructionRequest_Url:
			kb, ok := b.GetKind().(*commonv1.VolumeConstructionRequest_Url)
			if !ok || ka.Url.GetId() != kb.Url.GetId() || ka.Url.GetUrl() != kb.Url.GetUrl() || ka.Url.GetBlockSize() != kb.Url.GetBlockSize() {
				return fmt.Errorf("%w: %s url differs", ErrMismatch, path)
			}
			return nil
		default:
			if b.GetKind() != nil {
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
