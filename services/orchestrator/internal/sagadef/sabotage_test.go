package sagadef_test

import (
	"strings"
	"testing"

	"storagecp.dev/orchestrator/internal/sagadef"
)

// The sabotage hooks parse strictly: a misspelt one is an error, never a
// silent no-op that would let an oracle test prove nothing.
func TestParseSabotage(t *testing.T) {
	for _, c := range []struct {
		in, want string
		err      bool
	}{
		{"", "", false},
		{"ro-replacement-start/wrong_clone_source", "ro-replacement-start/wrong_clone_source", false},
		{"ro-replacement-step/skip_swap", "ro-replacement-step/skip_swap", false},
		{" ro-replacement-step/skip_swap , ro-replacement-start/wrong_clone_source ", "ro-replacement-start/wrong_clone_source,ro-replacement-step/skip_swap", false},
		{"ro-replacement-step/skip-swap", "", true},
		{"ro-replacement-start/skip_swap", "", true},
	} {
		s, err := sagadef.ParseSabotage(c.in)
		if (err != nil) != c.err || s.String() != c.want || s.Any() != (c.want != "") {
			t.Errorf("ParseSabotage(%q) = %q, %v; want %q, error %v", c.in, s.String(), err, c.want, c.err)
		}
		if err != nil && !strings.Contains(err.Error(), sagadef.SabotageEnv) {
			t.Errorf("error %q does not name %s", err, sagadef.SabotageEnv)
		}
	}
}
