// Package redundancy holds storagecp's one rule for counting how many
// copies of a volume's data are left, and for asking which region sets a
// set of disks holds the last copies of. Every place that reports
// redundancy or answers "is it safe to expunge?" uses it: the
// volume-service's GetVolume, ListDegradedVolumes and
// storagecp.volume.redundancy metric, and the orchestrator's ok-to-expunge
// search (docs/operations.md, "Redundancy and the degraded list").
//
// The rule. A volume reads every region set in its VCR: its own (rw)
// sub-volumes and, at every depth, the region sets of its read-only
// parents (region snapshot sets and read-only region sets). A copy (one
// target address of a set) is live when the target it names is
// registered, not DELETING, and on a dataset whose physical disk is in
// service. A set's redundancy is its live copies; a volume's is the
// fewest of any set it reads (Full for a volume that reads none).
//
// The package is pure: the caller resolves addresses (Resolve) from what
// it has read, so the rule can be tested on hand-built VCRs.
package redundancy

import (
	"strings"

	"storagecp.dev/platform/target"
	"storagecp.dev/platform/vcr"
)

// Full is the redundancy of a healthy volume: three copies of every set.
const Full = 3

// Reasons a copy is not live.
const (
	NotRegistered = "unregistered"
	Deleting      = "deleting"
	DiskExpunged  = "disk expunged"
	DiskUnknown   = "disk unknown"
)

// Target is what the caller knows of one address a VCR names.
type Target struct {
	// Registered: a target of the registry serves the address.
	Registered bool
	ID         string
	// Kind is the registry's kind name, for display only.
	Kind      string
	Deleting  bool
	DatasetID string
	// SnapshotID: for a read-only target, the snapshot whose data it
	// holds (a region snapshot's snapshot id, a read-only region's owner).
	SnapshotID string
	// DiskID is the physical disk of the dataset; "" when unknown.
	DiskID string
	// InService: the disk's policy is in service (not expunged).
	InService bool
}

// Resolve answers for one target address, in the form the VCR has it.
type Resolve func(address string) Target

// Copy is one copy of a region set.
type Copy struct {
	Address string
	Target
	Live bool
	// Why is empty when Live, else one of the reasons above.
	Why string
}

// Set is one region set a volume reads.
type Set struct {
	Path     string
	ReadOnly bool
	// Depth is the number of read-only parents above the set.
	Depth  int
	Copies []Copy
	Live   int
	// SnapshotID of a read-only set: the first its copies name.
	SnapshotID string
}

// Volume is a volume's redundancy.
type Volume struct {
	Redundancy int
	// Weakest is the index in Sets of the first set with the fewest live
	// copies; -1 without sets.
	Weakest int
	Sets    []Set
}

// Live applies the rule to one resolved target and says why not.
func Live(t Target) (bool, string) {
	switch {
	case !t.Registered:
		return false, NotRegistered
	case t.Deleting:
		return false, Deleting
	case t.DiskID == "":
		return false, DiskUnknown
	case !t.InService:
		return false, DiskExpunged
	}
	return true, ""
}

// Count computes a volume's redundancy from its VCR.
func Count(v *vcr.VCR, resolve Resolve) Volume {
	out := Volume{Redundancy: Full, Weakest: -1}
	for _, rs := range vcr.RegionSets(v) {
		s := Set{Path: rs.Path, ReadOnly: rs.ReadOnly, Depth: strings.Count(rs.Path, ".read_only_parent")}
		for _, addr := range rs.Targets {
			t := resolve(addr)
			c := Copy{Address: addr, Target: t}
			c.Live, c.Why = Live(t)
			if c.Live {
				s.Live++
			}
			if s.SnapshotID == "" && rs.ReadOnly {
				s.SnapshotID = t.SnapshotID
			}
			s.Copies = append(s.Copies, c)
		}
		out.Sets = append(out.Sets, s)
		if out.Weakest < 0 || s.Live < out.Sets[out.Weakest].Live {
			out.Weakest = len(out.Sets) - 1
		}
	}
	if out.Weakest >= 0 {
		out.Redundancy = min(out.Sets[out.Weakest].Live, Full)
	}
	return out
}

// LiveDisks lists the disks holding a set's live copies, each once.
func (s Set) LiveDisks() []string {
	var out []string
	seen := map[string]bool{}
	for _, c := range s.Copies {
		if c.Live && !seen[c.DiskID] {
			seen[c.DiskID] = true
			out = append(out, c.DiskID)
		}
	}
	return out
}

// After is the set's live copies once the disks lost says are gone too.
func (s Set) After(lost func(diskID string) bool) int {
	n := 0
	for _, c := range s.Copies {
		if c.Live && !lost(c.DiskID) {
			n++
		}
	}
	return n
}

// LosesLast reports whether losing the disks lost says would take the
// set's last live copy. A set with no live copy left has nothing more to
// lose.
func (s Set) LosesLast(lost func(diskID string) bool) bool {
	return s.Live > 0 && s.After(lost) == 0
}

// AddressKey is the form addresses are matched in: canonical when the
// address parses, as given otherwise.
func AddressKey(addr string) string {
	if c, err := target.Canonical(addr); err == nil {
		return c
	}
	return addr
}
