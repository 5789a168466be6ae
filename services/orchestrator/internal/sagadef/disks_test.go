package sagadef_test

import (
	"testing"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/orchestrator/internal/sagadef"
)

// A copy is in service or expunged as its disk's policy says; a policy the
// allocator did not report (an older allocator) is an error, never
// "expunged", which would end a repair DATA_LOST with its copies alive.
func TestDiskInService(t *testing.T) {
	for p, want := range map[allocatorv1.Policy]bool{
		allocatorv1.Policy_POLICY_IN_SERVICE: true,
		allocatorv1.Policy_POLICY_EXPUNGED:   false,
	} {
		if got, err := sagadef.DiskInService(p, "region r"); err != nil || got != want {
			t.Errorf("%s: in service %v (%v), want %v", p, got, err, want)
		}
	}
	if _, err := sagadef.DiskInService(allocatorv1.Policy_POLICY_UNSPECIFIED, "region r"); err == nil {
		t.Errorf("an unreported policy was taken for an answer")
	}
}
