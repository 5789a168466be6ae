package migrations_test

import (
	"context"
	"encoding/json"
	"io/fs"
	"strings"
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

// Migration 011 gives sagas written before it a subject_parent_id: a step
// saga (subject: a step) gets the step's request, so ListSagas'
// replacement_id finds it; every other saga keeps NULL.
func TestStepSagasGetTheirRequest(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t, "orchestrator")
	req, step, other := uuid.New(), uuid.New(), uuid.New()
	if _, err := pool.Exec(ctx, `INSERT INTO ro_replacement (id, kind, old_target_id, old_region_id, old_dataset_id, old_snapshot_id, lock_volume_id, state)
		VALUES ($1, 'region_snapshot', $2, $3, $3, $4, $4, 'requested')`, req, uuid.New(), uuid.New(), uuid.New()); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO ro_replacement_step (id, request_id, volume_id, state)
		VALUES ($1, $2, $3, 'volume_deleted')`, step, req, uuid.New()); err != nil {
		t.Fatal(err)
	}
	sagas := map[string]uuid.UUID{"step": uuid.New(), "request": uuid.New(), "volume": uuid.New()}
	subjects := map[string]uuid.UUID{"step": step, "request": req, "volume": other}
	for k, id := range sagas {
		if _, err := pool.Exec(ctx, `INSERT INTO saga (id, name, creator, dag, saga_state, current_sec, subject_id)
			VALUES ($1, 'x', 'sec', '{}', 'done', NULL, $2)`, id, subjects[k].String()); err != nil {
			t.Fatal(err)
		}
	}
	sql, err := fs.ReadFile(migrations.FS, "011_saga_subject_filters.sql")
	if err != nil {
		t.Fatal(err)
	}
	// The migration already ran on this database; its UPDATE is what
	// matters for old rows, so run that statement again.
	stmt := string(sql)
	i := strings.Index(stmt, "UPDATE saga")
	j := strings.Index(stmt[i:], ";")
	if _, err := pool.Exec(ctx, stmt[i:i+j]); err != nil {
		t.Fatal(err)
	}
	want := map[string]*string{"step": ptr(req.String()), "request": nil, "volume": nil}
	for k, id := range sagas {
		var got *string
		if err := pool.QueryRow(ctx, `SELECT subject_parent_id FROM saga WHERE id = $1`, id).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if (got == nil) != (want[k] == nil) || (got != nil && *got != *want[k]) {
			t.Errorf("%s saga: subject_parent_id %v, want %v", k, deref(got), deref(want[k]))
		}
	}
}

func ptr(s string) *string { return &s }

func deref(s *string) string {
	if s == nil {
		return "NULL"
	}
	return *s
}
