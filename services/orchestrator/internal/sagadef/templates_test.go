package sagadef_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
)

// TestTemplatesDeclareNodesOnlyInCode keeps each saga's node list in one
// place, the template's code, each node described where it is declared or
// appended. A table of the nodes in a comment (a doc code block line
// "//\t<node>   <what it does>") is a second copy that nothing checks and
// that drifts, so no comment in the package's source may have such a line
// for a node of any template. Building the DAGs needs no database.
func TestTemplatesDeclareNodesOnlyInCode(t *testing.T) {
	// Parameters that take every optional branch: ro-replacement-finish
	// has its delete_region_volume nodes only with a reference volume.
	params := map[string]any{"new_region_volume_id": uuid.New()}
	owners := map[string][]string{} // top-level node name → its templates
	for _, tmpl := range sagadef.Templates() {
		d, err := tmpl.BuildDAG(params)
		if err != nil {
			t.Fatalf("build %s: %v", tmpl.Name(), err)
		}
		for _, n := range d.Nodes {
			if n.Scope != "" || n.Kind == saga.KindStart || n.Kind == saga.KindEnd {
				continue // a subsaga's own nodes belong to its template
			}
			owners[n.Name] = append(owners[n.Name], tmpl.Name())
		}
	}
	if len(owners["delete_region_volume"]) == 0 {
		t.Fatal("the parameters no longer build ro-replacement-finish's optional nodes")
	}

	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(src), "\n") {
			rest, ok := strings.CutPrefix(strings.TrimLeft(line, " \t"), "//\t")
			if !ok {
				continue
			}
			if w := strings.Fields(rest); len(w) > 0 && len(owners[w[0]]) > 0 {
				t.Errorf("%s:%d: node table line for node %q of %v: describe the node in a comment at its declaration in the template's code instead\n%s",
					f, i+1, w[0], owners[w[0]], line)
			}
		}
	}
}
