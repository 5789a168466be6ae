package demo

// What the demo reads off a replacement request: rw or read-only, whether
// it ended, and its kind and state by name.

import (
	"strings"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

func kindName(k orchestratorv1.ReplacementKind) string {
	switch k {
	case orchestratorv1.ReplacementKind_REPLACEMENT_KIND_REGION_SNAPSHOT:
		return "region snapshot"
	case orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_ONLY_REGION:
		return "read-only region"
	case orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION:
		return "rw region"
	}
	return "unknown"
}

// stateName is a request's state in lower case ("running", "data lost").
func stateName(r *orchestratorv1.Replacement) string {
	var name string
	if r.GetKind() == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
		name = strings.TrimPrefix(r.GetRegionState().String(), "REGION_REPLACEMENT_STATE_")
	} else {
		name = strings.TrimPrefix(r.GetReadOnlyState().String(), "READ_ONLY_REPLACEMENT_STATE_")
	}
	return strings.ToLower(strings.ReplaceAll(name, "_", " "))
}

func isRW(r *orchestratorv1.Replacement) bool {
	return r.GetKind() == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION
}

// terminal reports whether a request ended.
func terminal(r *orchestratorv1.Replacement) bool {
	if isRW(r) {
		switch r.GetRegionState() {
		case orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE,
			orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_DATA_LOST,
			orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_NEEDS_OPERATOR,
			orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_CANCELLED:
			return true
		}
		return false
	}
	s := r.GetReadOnlyState()
	return s == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE ||
		s == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DATA_LOST ||
		s == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_CANCELLED
}

// stateKey is a request's kind family and state, the key of
// Result.States ("read-only complete", "rw driving").
func stateKey(r *orchestratorv1.Replacement) string {
	if isRW(r) {
		return "rw " + stateName(r)
	}
	return "read-only " + stateName(r)
}
