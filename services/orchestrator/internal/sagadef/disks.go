package sagadef

import (
	"fmt"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// DiskInService reads the disk policy the allocator reported with a region
// or a region snapshot (what names it, for the error). The policy comes in
// the same answer as the copy, read at the same moment: a repair needs no
// listing of every disk of the rack to tell a surviving copy from one on
// an expunged disk, and no copy of that listing that could be stale.
//
// POLICY_UNSPECIFIED is an allocator older than the field. It is an error,
// not "expunged": taking every copy for lost would end repairs DATA_LOST
// with their copies alive.
func DiskInService(p allocatorv1.Policy, what string) (bool, error) {
	switch p {
	case allocatorv1.Policy_POLICY_IN_SERVICE:
		return true, nil
	case allocatorv1.Policy_POLICY_EXPUNGED:
		return false, nil
	}
	return false, fmt.Errorf("%w: the allocator reported no disk policy for %s (is it older than this orchestrator?)", errInvalidState, what)
}
