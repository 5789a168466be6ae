package sagas_test

import (
	"strings"
	"testing"

	"storagecp.dev/orchestrator/internal/sagas"
)

// The sabotage hooks parse strictly: a misspelt one is an error, never a
// silent no-op that would let an oracle test prove nothing.
func TestParseSabotage(t *testing.T) {
	for _, c := range []struct {
		in, want string
		err      bool
	}{
		{"", "", false},
		{"rsr-start/wrong_clone_source", "rsr-start/wrong_clone_source", false},
		{"rsr-step/skip_swap", "rsr-step/skip_swap", false},
		{" rsr-step/skip_swap , rsr-start/wrong_clone_source ", "rsr-start/wrong_clone_source,rsr-step/skip_swap", false},
		{"rsr-step/skip-swap", "", true},
		{"rsr-start/skip_swap", "", true},
	} {
		s, err := sagas.ParseSabotage(c.in)
		if (err != nil) != c.err || s.String() != c.want || s.Any() != (c.want != "") {
			t.Errorf("ParseSabotage(%q) = %q, %v; want %q, error %v", c.in, s.String(), err, c.want, c.err)
		}
		if err != nil && !strings.Contains(err.Error(), sagas.SabotageEnv) {
			t.Errorf("error %q does not name %s", err, sagas.SabotageEnv)
		}
	}
}
