package monitoring_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// services are the jobs every alert and the scrape configuration name.
var services = []string{"volume-service", "region-allocator", "upstairs-notifier", "replacement-orchestrator"}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func alerts(t *testing.T) []rule {
	t.Helper()
	var f ruleFile
	readYAML(t, "alerts.yml", &f)
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatal("alerts.yml has no rules")
	}
	return out
}

// slug is GitHub's anchor of a Markdown heading.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}

func anchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	fence := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "```") {
			fence = !fence
		}
		if !fence && strings.HasPrefix(line, "#") {
			out[slug(strings.TrimLeft(line, "#"))] = true
		}
	}
	return out
}

var runbook = regexp.MustCompile(`^docs/operations\.md#([a-z0-9-]+)$`)

// Every alert is one an operator can act on: a Storagecp name, a severity
// (critical pages, warning does not), a summary and a description, and a
// runbook_url naming a section of docs/operations.md that exists.
func TestAlertsAreActionable(t *testing.T) {
	ops := anchors(t, "../../docs/operations.md")
	seen := map[string]bool{}
	for _, r := range alerts(t) {
		if r.Alert == "" {
			t.Errorf("a rule that is not an alert (record %q): alerts.yml holds alerts only", r.Record)
			continue
		}
		if seen[r.Alert] {
			t.Errorf("%s: defined twice", r.Alert)
		}
		seen[r.Alert] = true
		if !strings.HasPrefix(r.Alert, "Storagecp") {
			t.Errorf("%s: alert names start with Storagecp", r.Alert)
		}
		if s := r.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
		}
		for _, a := range []string{"summary", "description", "runbook_url"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("%s: no %s annotation", r.Alert, a)
			}
		}
		if m := runbook.FindStringSubmatch(r.Annotations["runbook_url"]); m == nil {
			t.Errorf("%s: runbook_url %q is not a section of docs/operations.md (path, #, anchor)", r.Alert, r.Annotations["runbook_url"])
		} else if !ops[m[1]] {
			t.Errorf("%s: runbook_url %q: docs/operations.md has no such heading", r.Alert, r.Annotations["runbook_url"])
		}
	}
}

type unitTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		AlertRuleTest []struct {
			EvalTime  string `yaml:"eval_time"`
			Alertname string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// Every alert has promtool tests on both sides: an evaluation where it
// fires and one where it must not; and the tests name no alert that does
// not exist.
func TestEveryAlertTestedBothWays(t *testing.T) {
	var u unitTests
	readYAML(t, "alerts_test.yml", &u)
	fires, quiet := map[string]int{}, map[string]int{}
	for _, tc := range u.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname]++
			} else {
				quiet[a.Alertname]++
			}
		}
	}
	names := map[string]bool{}
	for _, r := range alerts(t) {
		names[r.Alert] = true
		if fires[r.Alert] == 0 {
			t.Errorf("%s: no promtool test expects it to fire", r.Alert)
		}
		if quiet[r.Alert] == 0 {
			t.Errorf("%s: no promtool test expects it quiet", r.Alert)
		}
	}
	for n := range fires {
		if !names[n] {
			t.Errorf("alerts_test.yml tests %s, which alerts.yml does not define", n)
		}
	}
}

// The scrape configuration's jobs are exactly the services the alerts
// name, and it loads alerts.yml.
func TestScrapeConfigJobs(t *testing.T) {
	var cfg struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName string `yaml:"job_name"`
		} `yaml:"scrape_configs"`
	}
	readYAML(t, "prometheus.yml", &cfg)
	var jobs []string
	for _, s := range cfg.ScrapeConfigs {
		jobs = append(jobs, s.JobName)
	}
	if !slices.Equal(slices.Sorted(slices.Values(jobs)), slices.Sorted(slices.Values(services))) {
		t.Errorf("prometheus.yml jobs %v, want %v", jobs, services)
	}
	if !slices.Contains(cfg.RuleFiles, "alerts.yml") {
		t.Errorf("prometheus.yml rule_files %v: alerts.yml missing", cfg.RuleFiles)
	}
	for _, r := range alerts(t) {
		for _, m := range regexp.MustCompile(`job=~?"([^"]*)"`).FindAllStringSubmatch(r.Expr, -1) {
			for _, j := range strings.Split(m[1], "|") {
				if !slices.Contains(services, j) {
					t.Errorf("%s: job %q is not one of prometheus.yml's", r.Alert, j)
				}
			}
		}
	}
}

type panel struct {
	Type        string            `json:"type"`
	Title       string            `json:"title"`
	Description string            `json:"description"`
	Datasource  map[string]string `json:"datasource"`
	Targets     []struct {
		Expr       string            `json:"expr"`
		Datasource map[string]string `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name, Type, Query string
		} `json:"list"`
	} `json:"templating"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	return d
}

// flat is every panel, rows' children included.
func (d dashboard) flat() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// DashboardExprs are the dashboard's queries with Grafana's variables
// replaced by what Prometheus accepts, so that they parse.
func dashboardExprs(d dashboard) []string {
	var out []string
	for _, p := range d.flat() {
		for _, tg := range p.Targets {
			out = append(out, grafanaVars.Replace(tg.Expr))
		}
	}
	return out
}

var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

// The dashboard reads the Prometheus data source the user picks, every
// panel says what it shows, and it has a panel for each view the operators
// asked for.
func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q title %q: both needed for provisioning", d.UID, d.Title)
	}
	if len(d.Templating.List) == 0 || d.Templating.List[0].Type != "datasource" || d.Templating.List[0].Query != "prometheus" {
		t.Errorf("dashboard: the first variable must pick a Prometheus data source")
	}
	all := ""
	for _, p := range d.flat() {
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || p.Description == "" {
			t.Errorf("panel %q: title and description needed", p.Title)
		}
		if p.Datasource["uid"] != "${datasource}" {
			t.Errorf("panel %q: data source %v, want ${datasource}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q: empty query", p.Title)
			}
			all += tg.Expr + "\n"
		}
	}
	for view, metric := range map[string]string{
		"replacements by state": "storagecp_replacement_requests",
		"steps/s":               `storagecp_saga_finished_total{saga="ro-replacement-step"`,
		"redundancy":            "storagecp_volume_redundancy",
		"saga outcomes":         "sum by (outcome) (rate(storagecp_saga_finished_total",
		"lock waits":            "storagecp_replacement_oldest_lock_wait_seconds",
		"budgets":               "storagecp_rebuild_budget_in_use",
		"budget limits":         "storagecp_rebuild_budget_limit",
		"budget waiting":        "storagecp_rebuild_budget_waiting",
		"paused":                "storagecp_replacement_paused",
		"rack paused":           "storagecp_replacement_rack_paused",
		"stalled":               "storagecp_replacement_stalled_seconds",
	} {
		if !strings.Contains(all, metric) {
			t.Errorf("dashboard: no panel shows %s (%s)", view, metric)
		}
	}
}

// promtool is the binary make monitoring-check installs; without
// STORAGECP_PROMTOOL these tests are skipped (make unit), as the make
// target runs them.
func promtool(t *testing.T) string {
	t.Helper()
	p := os.Getenv("STORAGECP_PROMTOOL")
	if p == "" {
		t.Skip("STORAGECP_PROMTOOL not set: make monitoring-check runs this")
	}
	return p
}

func run(bin, dir string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// dashboardRules writes the dashboard's queries as recording rules, which
// is how promtool parses an expression.
func dashboardRules(exprs []string) []byte {
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		q, _ := json.Marshal(e) // a JSON string is a YAML string
		fmt.Fprintf(&b, "      - record: dashboard:query_%d\n        expr: %s\n", i, q)
	}
	return []byte(b.String())
}

// Every dashboard query parses as PromQL (promtool check rules on them as
// recording rules); a broken query fails the same check.
func TestDashboardQueriesParse(t *testing.T) {
	bin := promtool(t)
	dir := t.TempDir()
	exprs := dashboardExprs(readDashboard(t))
	if err := os.WriteFile(filepath.Join(dir, "dashboard.yml"), dashboardRules(exprs), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(bin, dir, "check", "rules", "dashboard.yml"); err != nil {
		t.Fatalf("dashboard queries: %v\n%s", err, out)
	}
	bad := append(slices.Clone(exprs), `sum by (kind (storagecp_replacement_requests)`)
	if err := os.WriteFile(filepath.Join(dir, "bad.yml"), dashboardRules(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(bin, dir, "check", "rules", "bad.yml"); err == nil {
		t.Fatalf("a broken query passed promtool check rules:\n%s", out)
	}
}

// mutate writes, into a fresh directory, alerts.yml holding only alert,
// changed by edit (nil: as it is), and alerts_test.yml holding only the
// evaluations of that alert: promtool then runs in a fraction of the time
// of the whole suite.
func mutate(t *testing.T, alert string, edit func(r *yaml.Node)) string {
	t.Helper()
	rules := yamlDoc(t, "alerts.yml")
	var keep *yaml.Node
	walk(rules, func(n *yaml.Node) bool {
		if n.Kind == yaml.MappingNode && value(n, "alert") == alert {
			keep = n
			return false
		}
		return true
	})
	if keep == nil {
		t.Fatalf("no alert %s", alert)
	}
	if edit != nil {
		edit(keep)
	}
	only := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
		scalar("groups"), {Kind: yaml.SequenceNode, Content: []*yaml.Node{{Kind: yaml.MappingNode, Content: []*yaml.Node{
			scalar("name"), scalar("mutant"), scalar("rules"), {Kind: yaml.SequenceNode, Content: []*yaml.Node{keep}},
		}}}},
	}}

	tests := yamlDoc(t, "alerts_test.yml")
	top := tests.Content[0]
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value != "tests" {
			continue
		}
		var kept []*yaml.Node
		for _, tc := range top.Content[i+1].Content {
			for j := 0; j+1 < len(tc.Content); j += 2 {
				if tc.Content[j].Value != "alert_rule_test" {
					continue
				}
				var evals []*yaml.Node
				for _, e := range tc.Content[j+1].Content {
					if value(e, "alertname") == alert {
						evals = append(evals, e)
					}
				}
				tc.Content[j+1].Content = evals
				if len(evals) > 0 {
					kept = append(kept, tc)
				}
			}
		}
		top.Content[i+1].Content = kept
	}
	dir := t.TempDir()
	for name, doc := range map[string]*yaml.Node{"alerts.yml": only, "alerts_test.yml": tests} {
		b, err := yaml.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func yamlDoc(t *testing.T, path string) *yaml.Node {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &doc
}

// walk visits n and its descendants while visit returns true.
func walk(n *yaml.Node, visit func(*yaml.Node) bool) bool {
	if !visit(n) {
		return false
	}
	for _, c := range n.Content {
		if !walk(c, visit) {
			return false
		}
	}
	return true
}

// value is the scalar at key of mapping n ("" if none). Aliases are
// followed: the tests share annotations through anchors.
func value(n *yaml.Node, key string) string {
	if n.Kind != yaml.MappingNode {
		return ""
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1].Value
		}
	}
	return ""
}

func scalar(v string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Value: v} }

// set sets key of a rule's mapping (adding it if missing).
func set(r *yaml.Node, key, value string) {
	for i := 0; i+1 < len(r.Content); i += 2 {
		if r.Content[i].Value == key {
			r.Content[i+1] = &yaml.Node{Kind: yaml.ScalarNode, Value: value}
			return
		}
	}
	r.Content = append(r.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, &yaml.Node{Kind: yaml.ScalarNode, Value: value})
}

// The promtool tests bite: alerts.yml as it is passes them, and for every
// alert, each of these breaks fails that alert's tests — the alert always
// firing, never firing, and (for an alert with a for: duration) firing
// without waiting — while the alert alone, unbroken, passes them (so the
// failures are the breaks', not the cut-down files').
func TestAlertTestsFailOnBrokenAlerts(t *testing.T) {
	bin := promtool(t)
	if out, err := run(bin, ".", "test", "rules", "alerts_test.yml"); err != nil {
		t.Fatalf("promtool test rules on the real alerts: %v\n%s", err, out)
	}
	for _, r := range alerts(t) {
		t.Run(r.Alert+"/as_is", func(t *testing.T) {
			t.Parallel()
			dir := mutate(t, r.Alert, nil)
			if out, err := run(bin, dir, "test", "rules", "alerts_test.yml"); err != nil {
				t.Errorf("%s alone fails its own tests: %v\n%s", r.Alert, err, out)
			}
		})
		breaks := map[string]func(n *yaml.Node){
			"always": func(n *yaml.Node) { set(n, "expr", "vector(1)"); set(n, "for", "0s") },
			"never":  func(n *yaml.Node) { set(n, "expr", "vector(1) < 0") },
		}
		if r.For != "" && r.For != "0s" && r.For != "0m" {
			breaks["no_for"] = func(n *yaml.Node) { set(n, "for", "0s") }
		}
		for name, edit := range breaks {
			t.Run(r.Alert+"/"+name, func(t *testing.T) {
				t.Parallel()
				dir := mutate(t, r.Alert, edit)
				if out, err := run(bin, dir, "test", "rules", "alerts_test.yml"); err == nil {
					t.Errorf("%s broken (%s) still passes alerts_test.yml:\n%s", r.Alert, name, out)
				}
			})
		}
	}
}
