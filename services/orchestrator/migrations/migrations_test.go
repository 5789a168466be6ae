package migrations_test

import (
	"context"
	"encoding/json"
	"io/fs"
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/migrations"
	"storagecp.dev/platform/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Schema{Name: "orchestrator", Migrations: migrations.FS})
}

// A saga logged under a replacement saga's old name (before migration 008)
// resumes under the new one: the row, its DAG's template and every action
// node are renamed, a name that is a prefix of another ("rsr-step" of
// "rsr-step-garbage-collect") is renamed only where it is the whole name,
// and a subsaga's actions (volume-delete) and other sagas are left alone.
func TestReplacementSagaNamesMigrate(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t, "orchestrator")
	type node struct {
		Name    string `json:"name"`
		Kind    string `json:"kind"`
		Action  string `json:"action,omitempty"`
		Parents []int  `json:"parents"`
	}
	type dag struct {
		Version  int             `json:"version"`
		Template string          `json:"template"`
		Params   json.RawMessage `json:"params"`
		Nodes    []node          `json:"nodes"`
	}
	sagas := map[string]struct {
		old, want string
		nodes     []node
		wantNodes []string
	}{
		"step": {"rsr-step", "ro-replacement-step",
			[]node{{"saga_id", "action", "rsr-step.saga_id", []int{}}, {"update_request", "action", "rsr-step.update_request", []int{0}}},
			[]string{"ro-replacement-step.saga_id", "ro-replacement-step.update_request"}},
		"step gc": {"rsr-step-garbage-collect", "ro-replacement-step-garbage-collect",
			[]node{{"set_saga_id", "action", "rsr-step-garbage-collect.set_saga_id", []int{}}, {"soft_delete", "action", "volume-delete.soft_delete", []int{0}}},
			[]string{"ro-replacement-step-garbage-collect.set_saga_id", "volume-delete.soft_delete"}},
		"drive": {"rr-drive", "rw-replacement-drive",
			[]node{{"check", "action", "rr-drive.check", []int{}}},
			[]string{"rw-replacement-drive.check"}},
		"untouched": {"volume-create", "volume-create",
			[]node{{"region_ids", "action", "volume-create.region_ids", []int{}}},
			[]string{"volume-create.region_ids"}},
	}
	ids := map[string]uuid.UUID{}
	for k, s := range sagas {
		d, err := json.Marshal(dag{Version: 1, Template: s.old, Params: json.RawMessage(`{}`), Nodes: s.nodes})
		if err != nil {
			t.Fatal(err)
		}
		ids[k] = uuid.New()
		if _, err := pool.Exec(ctx, `INSERT INTO saga (id, name, creator, dag, saga_state, current_sec) VALUES ($1, $2, 'sec', $3, 'running', 'sec')`,
			ids[k], s.old, d); err != nil {
			t.Fatal(err)
		}
	}
	sql, err := fs.ReadFile(migrations.FS, "008_replacement_saga_names.sql")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, string(sql)); err != nil {
		t.Fatal(err)
	}
	for k, s := range sagas {
		var name string
		var raw []byte
		if err := pool.QueryRow(ctx, `SELECT name, dag FROM saga WHERE id = $1`, ids[k]).Scan(&name, &raw); err != nil {
			t.Fatal(err)
		}
		var d dag
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatal(err)
		}
		if name != s.want || d.Template != s.want {
			t.Errorf("%s: name %q, template %q; want %q", k, name, d.Template, s.want)
		}
		for i, n := range d.Nodes {
			if n.Action != s.wantNodes[i] {
				t.Errorf("%s: node %d action %q; want %q", k, i, n.Action, s.wantNodes[i])
			}
		}
	}
}
