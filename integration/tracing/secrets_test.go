package tracing

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// VCRs carry encryption keys; docs/architecture.md, "Observability", says
// they never reach a
// log, a span or a saga output. After a whole replacement with tracing on,
// every key of every volume involved (read back in full from the
// volume-service, the only place that may hold them), in every encoding a
// careless print could produce, is looked for in every process log, every
// span Jaeger holds, every row of the orchestrator's database (saga_node_event
// above all), the notifier's and the allocator's. The volume database is
// the positive control: the same search must find them there.
func TestKeysNeverLeak(t *testing.T) {
	bin := jaegerBin(t)
	r := rack.Start(t, 4, 2, stack.Config{Tracing: true, JaegerBin: bin})
	c := runCanonical(t, r)
	ctx := context.Background()

	keys := map[string]bool{}
	for _, v := range append([]string{c.disk, c.snap}, c.clones...) {
		resp, err := r.Volumes.GetVolumeWithKeys(ctx, &volumev1.GetVolumeWithKeysRequest{VolumeId: v})
		if err != nil {
			t.Fatal(err)
		}
		collectKeys(resp.Volume.Vcr, keys)
	}
	if len(keys) < 3 { // the disk's (shared by its snapshot) and each clone's
		t.Fatalf("%d distinct keys in the VCRs, want at least 3", len(keys))
	}
	var needles []string
	for k := range keys {
		needles = append(needles, keyForms(t, k)...)
	}
	leaks := &leakFinder{needles: needles, audited: map[string]int{}}

	// Stop the processes first: their last log lines and spans are flushed
	// at shutdown (tracer provider Shutdown), so nothing escapes the search.
	for _, p := range r.Stack.Procs() {
		p.Stop(10 * time.Second)
	}

	// Logs of every process, Jaeger's own included.
	logs, err := filepath.Glob(filepath.Join(r.Stack.LogDir, "*.log"))
	if err != nil || len(logs) == 0 {
		t.Fatalf("no logs in %s: %v", r.Stack.LogDir, err)
	}
	lines := 0
	for _, path := range logs {
		lines += leaks.file(t, path)
	}
	// The audit lines of the calls that carry VCRs, keys and all, were
	// among the lines searched.
	for _, m := range []string{
		"/storage.volume.v1.VolumeService/CreateVolume",
		"/storage.volume.v1.VolumeService/ReplaceReadOnlyTarget",
		"/storage.upstairs.v1.UpstairsService/Activate",
		"/storage.upstairs.v1.UpstairsService/ReplaceVolume",
	} {
		if leaks.audited[m] == 0 {
			t.Errorf("no audit line for %s among the logs searched (audited: %v)", m, leaks.audited)
		}
	}

	// Every span in Jaeger, tags, events and process tags alike.
	base := r.Stack.JaegerURL()
	svcs, err := services(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) < 4 {
		t.Fatalf("Jaeger knows %d services (%v), want the four and sim-upstairs", len(svcs), svcs)
	}
	spans := 0
	for _, svc := range svcs {
		body, err := searchTraces(ctx, base, svc, "", 100000)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("traces of %s: %v", svc, err)
		}
		spans += strings.Count(string(body), `"spanID"`)
		leaks.value(fmt.Sprintf("Jaeger traces of %s", svc), v)
	}

	// Every row of every table of the services that must never hold a key.
	rows := 0
	for _, svc := range []string{stack.Orchestrator, stack.Notifier, stack.Allocator} {
		rows += leaks.database(t, r.Stack.Cluster.DSN(stack.DatabaseOf(svc)))
	}
	if len(leaks.found) > 0 {
		t.Errorf("encryption keys leaked:\n  %s", strings.Join(leaks.found, "\n  "))
	}
	t.Logf("searched %d keys (%d forms) in %d log lines, %d span occurrences in Jaeger, %d rows", len(keys), len(needles), lines, spans, rows)

	// Positive control: the volume-service stores VCRs with their keys,
	// and the same search finds them there.
	control := &leakFinder{needles: needles}
	control.database(t, r.Stack.Cluster.DSN(stack.DatabaseOf(stack.Volume)))
	if len(control.found) == 0 {
		t.Fatal("the search finds no key even in the volume database: the search is broken")
	}
}

// collectKeys adds every key and TLS secret of a VCR tree to keys.
func collectKeys(v *commonv1.VolumeConstructionRequest, keys map[string]bool) {
	if v == nil {
		return
	}
	if vol := v.GetVolume(); vol != nil {
		for _, s := range vol.SubVolumes {
			collectKeys(s, keys)
		}
		collectKeys(vol.ReadOnlyParent, keys)
	}
	if opts := v.GetRegion().GetOpts(); opts != nil {
		for _, k := range []string{opts.GetKey(), opts.GetKeyPem()} {
			if k != "" {
				keys[k] = true
			}
		}
	}
}

// keyForms is a key as stored (base64) and as a careless print would show
// it: raw bytes in hex, other base64 alphabets, JSON's escaped slash, and a
// long prefix of each (a truncated print is still a leak).
func keyForms(t *testing.T, key string) []string {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		t.Fatalf("key is not base64: %v", err)
	}
	forms := []string{
		key,
		strings.ReplaceAll(key, "/", `\/`),
		hex.EncodeToString(raw),
		strings.ToUpper(hex.EncodeToString(raw)),
		base64.URLEncoding.EncodeToString(raw),
		base64.RawStdEncoding.EncodeToString(raw),
	}
	out := forms
	for _, f := range forms {
		if len(f) > 24 {
			out = append(out, f[:24])
		}
	}
	return out
}

type leakFinder struct {
	needles []string
	found   []string
	// audited counts the audit lines (platform/authz) seen, by method:
	// they are searched like every other line, and must be there.
	audited map[string]int
}

func (l *leakFinder) check(where, s string) {
	for _, n := range l.needles {
		if strings.Contains(s, n) {
			l.found = append(l.found, fmt.Sprintf("%s: %.200s", where, s))
			return
		}
	}
}

// value checks every string (and key) of a decoded JSON value.
func (l *leakFinder) value(where string, v any) {
	switch x := v.(type) {
	case string:
		l.check(where, x)
	case []any:
		for _, e := range x {
			l.value(where, e)
		}
	case map[string]any:
		for k, e := range x {
			l.check(where, k)
			l.value(where, e)
		}
	}
}

// file checks a log file line by line, raw and JSON-decoded (a key split
// by escaping in the raw line is whole again once decoded).
func (l *leakFinder) file(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	n := 0
	for sc.Scan() {
		n++
		where := fmt.Sprintf("%s:%d", filepath.Base(path), n)
		l.check(where, sc.Text())
		var v any
		if json.Unmarshal(sc.Bytes(), &v) == nil {
			l.value(where, v)
			if m, ok := v.(map[string]any); ok && m["msg"] == "audit" {
				method, _ := m["method"].(string)
				l.audited[method]++
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n
}

// database checks every row of every table of a database, as JSON.
func (l *leakFinder) database(t *testing.T, dsn string) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tables, err := pgxCollect(ctx, conn, `SELECT quote_ident(table_name) FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'`)
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) == 0 {
		t.Fatalf("no tables in %s", dsn)
	}
	n := 0
	for _, table := range tables {
		rows, err := pgxCollect(ctx, conn, "SELECT row_to_json(t)::text FROM "+table+" t")
		if err != nil {
			t.Fatal(err)
		}
		for _, row := range rows {
			l.check(conn.Config().Database+"."+table, row)
			var v any
			if json.Unmarshal([]byte(row), &v) == nil {
				l.value(conn.Config().Database+"."+table, v)
			}
		}
		n += len(rows)
	}
	return n
}

func pgxCollect(ctx context.Context, conn *pgx.Conn, sql string) ([]string, error) {
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", sql, err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
