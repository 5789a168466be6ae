package vcr

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/uuid"

	"storagecp.dev/platform/target"
)

// Errors of the traversal helpers. They describe malformed stored VCRs (a
// validated VCR never produces them) and never contain key material.
var (
	ErrIPv4Target      = target.ErrIPv4
	ErrBadAddress      = target.ErrMalformed
	ErrRWUnderROP      = errors.New("read/write region under a read-only parent")
	ErrTopLevelRegion  = errors.New("top-level region")
	ErrNotVolume       = errors.New("not a volume")
	ErrNoMatch         = errors.New("target not found in VCR")
	ErrReadWriteRegion = errors.New("read/write region")
	ErrNonRegionSub    = errors.New("non-region sub-volume")
)

// ParseAddress parses a target by the rule of platform/target: IPv4
// (including IPv4-mapped IPv6) is ErrIPv4Target, a zone target.ErrZone,
// port 0 target.ErrPortZero, anything unparsable ErrBadAddress.
func ParseAddress(s string) (netip.AddrPort, error) { return target.Parse(s) }

// Canonical is the canonical "[compressed-ipv6]:port" form (RFC 5952) every
// comparison and every stored address uses.
func Canonical(s string) (string, error) { return target.Canonical(s) }

// SameAddress compares two targets as parsed IPv6 socket addresses.
func SameAddress(a, b string) (bool, error) {
	pa, err := ParseAddress(a)
	if err != nil {
		return false, err
	}
	pb, err := ParseAddress(b)
	if err != nil {
		return false, err
	}
	return pa == pb, nil
}

// walk visits the tree breadth-first: a node's sub_volumes in order, then its
// read-only parent. underROP tells whether a node lies under some ROP.
// fn returning errStop ends the walk early without error.
func walk(root *VCR, enterROP bool, fn func(n *VCR, underROP bool) error) error {
	type item struct {
		n        *VCR
		underROP bool
	}
	queue := []item{{root, false}}
	for len(queue) > 0 {
		it := queue[0]
		queue = queue[1:]
		if it.n == nil {
			continue
		}
		if err := fn(it.n, it.underROP); err != nil {
			if errors.Is(err, errStop) {
				return nil
			}
			return err
		}
		if v := it.n.Volume; v != nil {
			for _, s := range v.SubVolumes {
				queue = append(queue, item{s, it.underROP})
			}
			if enterROP && v.ReadOnlyParent != nil {
				queue = append(queue, item{v.ReadOnlyParent, true})
			}
		}
	}
	return nil
}

var errStop = errors.New("stop")

// ReadOnlyTargets lists every target of every read-only Region anywhere in
// the tree, ROPs included, duplicates kept, in BFS order.
func ReadOnlyTargets(v *VCR) []string {
	var out []string
	walk(v, true, func(n *VCR, _ bool) error {
		if n.Region != nil && n.Region.Opts.ReadOnly {
			out = append(out, n.Region.Opts.Target...)
		}
		return nil
	})
	return out
}

// ReadWriteTargets lists every target of every rw Region reached through
// sub_volumes; it never enters a ROP.
func ReadWriteTargets(v *VCR) []string {
	var out []string
	walk(v, false, func(n *VCR, _ bool) error {
		if n.Region != nil && !n.Region.Opts.ReadOnly {
			out = append(out, n.Region.Opts.Target...)
		}
		return nil
	})
	return out
}

// AllTargets lists every target of every Region in the tree with whether it
// is read-only, in BFS order.
func AllTargets(v *VCR) []TargetRef {
	var out []TargetRef
	walk(v, true, func(n *VCR, _ bool) error {
		if n.Region != nil {
			for _, t := range n.Region.Opts.Target {
				out = append(out, TargetRef{Address: t, ReadOnly: n.Region.Opts.ReadOnly})
			}
		}
		return nil
	})
	return out
}

// TargetRef is one target occurrence.
type TargetRef struct {
	Address  string
	ReadOnly bool
}

// RegionInVCR reports whether any Region reached through sub_volumes (never a
// ROP), of either read_only value, has a target equal to addr.
func RegionInVCR(v *VCR, addr string) (bool, error) {
	needle, err := ParseAddress(addr)
	if err != nil {
		return false, err
	}
	found := false
	err = walk(v, false, func(n *VCR, _ bool) error {
		if n.Region == nil {
			return nil
		}
		for _, t := range n.Region.Opts.Target {
			p, err := ParseAddress(t)
			if err != nil {
				return err
			}
			if p == needle {
				found = true
				return errStop
			}
		}
		return nil
	})
	return found, err
}

// eachReadOnlyTarget calls f with every target of every read-only Region
// of v (its Region, index and parsed address), stopping at f's first error.
// A rw Region under a ROP is ErrRWUnderROP, a malformed target its parse
// error.
func eachReadOnlyTarget(v *VCR, f func(n *VCR, i int, p netip.AddrPort) error) error {
	return walk(v, true, func(n *VCR, underROP bool) error {
		if n.Region == nil {
			return nil
		}
		if !n.Region.Opts.ReadOnly {
			if underROP {
				return ErrRWUnderROP
			}
			return nil
		}
		for i, t := range n.Region.Opts.Target {
			p, err := ParseAddress(t)
			if err != nil {
				return err
			}
			if err := f(n, i, p); err != nil {
				return err
			}
		}
		return nil
	})
}

// ReadOnlyTargetInVCR reports whether a read-only Region anywhere in the
// tree contains addr. A rw Region under a ROP, or an IPv4 target seen before
// a match, is an error.
func ReadOnlyTargetInVCR(v *VCR, addr string) (bool, error) {
	needle, err := ParseAddress(addr)
	if err != nil {
		return false, err
	}
	found := false
	err = eachReadOnlyTarget(v, func(_ *VCR, _ int, p netip.AddrPort) error {
		if p == needle {
			found = true
			return errStop
		}
		return nil
	})
	return found, err
}

// ReplaceRegionInVCR returns a copy in which every target equal to old,
// reached through sub_volumes, becomes new, and every visited Region's gen is
// bumped (Crucible rejects an update whose generation did not rise). Ids are
// untouched. Error if old never matched.
func ReplaceRegionInVCR(v *VCR, old, new string) (*VCR, error) {
	o, err := ParseAddress(old)
	if err != nil {
		return nil, err
	}
	newCanon, err := Canonical(new)
	if err != nil {
		return nil, err
	}
	c := v.Clone()
	matched := 0
	err = walk(c, false, func(n *VCR, _ bool) error {
		if n.Region == nil {
			return nil
		}
		for i, t := range n.Region.Opts.Target {
			p, err := ParseAddress(t)
			if err != nil {
				return err
			}
			if p == o {
				n.Region.Opts.Target[i] = newCanon
				matched++
			}
		}
		n.Region.Gen++
		return nil
	})
	if err != nil {
		return nil, err
	}
	if matched == 0 {
		return nil, ErrNoMatch
	}
	return c, nil
}

// ReplaceReadOnlyTargetInVCR returns a copy in which every target equal to
// old in a read-only Region anywhere becomes new, and how many were replaced.
// Generations and ids are untouched. Zero matches or a rw Region under a ROP
// is an error.
func ReplaceReadOnlyTargetInVCR(v *VCR, old, new string) (*VCR, int, error) {
	o, err := ParseAddress(old)
	if err != nil {
		return nil, 0, err
	}
	newCanon, err := Canonical(new)
	if err != nil {
		return nil, 0, err
	}
	c := v.Clone()
	count := 0
	err = eachReadOnlyTarget(c, func(n *VCR, i int, p netip.AddrPort) error {
		if p == o {
			n.Region.Opts.Target[i] = newCanon
			count++
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	if count == 0 {
		return nil, 0, ErrNoMatch
	}
	return c, count, nil
}

// CountSubVolumes is len(sub_volumes) for a Volume, 0 for File/Url, and an
// error for a top-level Region.
func CountSubVolumes(v *VCR) (int, error) {
	switch {
	case v.Volume != nil:
		return len(v.Volume.SubVolumes), nil
	case v.Region != nil:
		return 0, ErrTopLevelRegion
	}
	return 0, nil
}

// IsReadOnly: a Volume is read-only when every direct sub-volume is a
// read-only Region (or it has none); a non-Region sub-volume is an error.
// File is read-only; Region and Url are errors. The ROP is ignored.
func IsReadOnly(v *VCR) (bool, error) {
	switch {
	case v.Volume != nil:
		for _, s := range v.Volume.SubVolumes {
			if s.Region == nil {
				return false, ErrNonRegionSub
			}
			if !s.Region.Opts.ReadOnly {
				return false, nil
			}
		}
		return true, nil
	case v.File != nil:
		return true, nil
	case v.Region != nil:
		return false, ErrTopLevelRegion
	}
	return false, ErrNotVolume
}

// RWTargetsOnIP lists targets of rw Regions (never under a ROP) whose IP is ip.
func RWTargetsOnIP(v *VCR, ip netip.Addr) []string {
	var out []string
	walk(v, false, func(n *VCR, _ bool) error {
		if n.Region == nil || n.Region.Opts.ReadOnly {
			return nil
		}
		for _, t := range n.Region.Opts.Target {
			if p, err := ParseAddress(t); err == nil && p.Addr() == ip {
				out = append(out, t)
			}
		}
		return nil
	})
	return out
}

// IPReferenced reports whether any target anywhere has IP ip.
func IPReferenced(v *VCR, ip netip.Addr) bool {
	return NetReferenced(v, netip.PrefixFrom(ip, ip.BitLen()))
}

// NetReferenced reports whether any target anywhere lies in net (IPv4
// targets are ignored).
func NetReferenced(v *VCR, net netip.Prefix) bool {
	found := false
	walk(v, true, func(n *VCR, _ bool) error {
		if n.Region == nil {
			return nil
		}
		for _, t := range n.Region.Opts.Target {
			if p, err := ParseAddress(t); err == nil && net.Contains(p.Addr()) {
				found = true
				return errStop
			}
		}
		return nil
	})
	return found
}

// BumpDirectRegionGens adds one to gen of every direct Region sub-volume of
// a top-level Volume and reports whether any changed. Nested Volumes
// and the ROP are untouched; File/Url have nothing to bump.
func BumpDirectRegionGens(v *VCR) (bool, error) {
	switch {
	case v.Region != nil:
		return false, ErrTopLevelRegion
	case v.Volume == nil:
		return false, nil
	}
	bumped := false
	for _, s := range v.Volume.SubVolumes {
		if s.Region != nil {
			s.Region.Gen++
			bumped = true
		}
	}
	return bumped, nil
}

// RandomizeIDs returns a copy with every Volume/File/Url id and every
// Region's opts.id fresh. Any rw Region anywhere is an error: a rw
// region has exactly one owning volume, so a copy must not reference it.
func RandomizeIDs(v *VCR) (*VCR, error) {
	c := v.Clone()
	err := walk(c, true, func(n *VCR, _ bool) error {
		switch {
		case n.Volume != nil:
			n.Volume.ID = uuid.NewString()
		case n.Region != nil:
			if !n.Region.Opts.ReadOnly {
				return ErrReadWriteRegion
			}
			n.Region.Opts.ID = uuid.NewString()
		case n.File != nil:
			n.File.ID = uuid.NewString()
		case n.URL != nil:
			n.URL.ID = uuid.NewString()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// SnapshotCopy builds the VCR of a snapshot of v: fresh ids, every Region
// read-only, control sockets cleared, and every target of a Region reached
// through sub_volumes rewritten through targetMap (keys and values are
// canonical addresses). A rw target missing from the map is an error, naming
// the address.
func SnapshotCopy(v *VCR, targetMap map[string]string) (*VCR, error) {
	c := v.Clone()
	err := walk(c, false, func(n *VCR, _ bool) error {
		if n.Region == nil {
			return nil
		}
		for i, t := range n.Region.Opts.Target {
			canon, err := Canonical(t)
			if err != nil {
				return err
			}
			if to, ok := targetMap[canon]; ok {
				n.Region.Opts.Target[i] = to
			} else if !n.Region.Opts.ReadOnly {
				return fmt.Errorf("rw target %s is not in the snapshot target map: %w", canon, ErrNoMatch)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	walk(c, true, func(n *VCR, _ bool) error {
		switch {
		case n.Volume != nil:
			n.Volume.ID = uuid.NewString()
		case n.Region != nil:
			n.Region.Opts.ID = uuid.NewString()
			n.Region.Opts.ReadOnly = true
			n.Region.Opts.Control = nil
		case n.File != nil:
			n.File.ID = uuid.NewString()
		case n.URL != nil:
			n.URL.ID = uuid.NewString()
		}
		return nil
	})
	return c, nil
}

// Canonicalize rewrites every target into canonical form. Unparsable targets
// are left as they are (Validate rejects them).
func Canonicalize(v *VCR) {
	walk(v, true, func(n *VCR, _ bool) error {
		if n.Region != nil {
			for i, t := range n.Region.Opts.Target {
				if c, err := Canonical(t); err == nil {
					n.Region.Opts.Target[i] = c
				}
			}
		}
		return nil
	})
}

// StubReadOnly is the VCR of a read-only stash: a holder volume naming one
// read-only target.
func StubReadOnly(id uuid.UUID, target string) *VCR {
	return stub(id, target, true)
}

// StubReadWrite names one rw region: the VCR of a stash volume that took
// ownership of a replaced region, so deleting the stash frees it.
func StubReadWrite(id uuid.UUID, target string) *VCR {
	return stub(id, target, false)
}

func stub(id uuid.UUID, target string, readOnly bool) *VCR {
	return &VCR{Volume: &Volume{ID: id.String(), BlockSize: 512, SubVolumes: []*VCR{{Region: &Region{
		BlockSize: 512, BlocksPerExtent: 1, ExtentCount: 1, Gen: 1,
		Opts: CrucibleOpts{ID: id.String(), Target: []string{target}, ReadOnly: readOnly},
	}}}}}
}
