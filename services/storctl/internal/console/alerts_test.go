package console

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// prometheusAlerts is a stand-in for Prometheus's GET /api/v1/alerts (not
// ours: the console only reads its documented answer).
const prometheusAlerts = `{"status":"success","data":{"alerts":[
 {"labels":{"alertname":"StoragecpVolumesAtRedundancyOne","severity":"warning"},"annotations":{"summary":"2 volumes at one copy"},"state":"pending","activeAt":"2026-12-03T10:00:00Z","value":"2"},
 {"labels":{"alertname":"StoragecpSagaStuck","severity":"critical","job":"replacement-orchestrator"},"annotations":{"summary":"a saga is stuck"},"state":"firing","activeAt":"2026-12-03T09:00:00Z","value":"1"}]}}`

func healthOf(t *testing.T, o Options) map[string]json.RawMessage {
	t.Helper()
	o.Health = func(context.Context) ([]byte, error) {
		return []byte(`{"services":[{"service":"volume-service","status":"SERVING"}]}`), nil
	}
	hs := httptest.NewServer(New(o))
	t.Cleanup(hs.Close)
	code, body := get(t, hs.URL+"/api/snapshot?view=health")
	if code != http.StatusOK {
		t.Fatalf("health: %d %s", code, body)
	}
	var env struct {
		Data map[string]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &env); err != nil {
		t.Fatal(err)
	}
	if _, ok := env.Data["services"]; !ok {
		t.Fatalf("health lost storctl health's fields: %s", body)
	}
	return env.Data
}

func alertsOf(t *testing.T, o Options) alertsView {
	t.Helper()
	var v alertsView
	if err := json.Unmarshal(healthOf(t, o)["alerts"], &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// The health page lists Prometheus's alerts, firing first, with their
// severity, summary and other labels.
func TestHealthListsPrometheusAlerts(t *testing.T) {
	prom := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/prom/api/v1/alerts" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(prometheusAlerts))
	}))
	defer prom.Close()
	v := alertsOf(t, Options{AlertsURL: prom.URL + "/prom"})
	if v.Error != "" || len(v.Alerts) != 2 {
		t.Fatalf("alerts %+v", v)
	}
	first, second := v.Alerts[0], v.Alerts[1]
	if first.Name != "StoragecpSagaStuck" || first.State != "firing" || first.Severity != "critical" ||
		first.Summary != "a saga is stuck" || first.Labels["job"] != "replacement-orchestrator" || first.Labels["alertname"] != "" {
		t.Fatalf("first alert %+v", first)
	}
	if second.Name != "StoragecpVolumesAtRedundancyOne" || second.State != "pending" {
		t.Fatalf("second alert %+v", second)
	}
}

// Without a Prometheus the page says alerts are unknown (no source), and a
// Prometheus that fails is named with its error: neither reads as "none".
func TestHealthAlertsUnknownOrFailing(t *testing.T) {
	if v := alertsOf(t, Options{}); v.Source != "" || v.Error != "" || len(v.Alerts) != 0 {
		t.Fatalf("no Prometheus: %+v", v)
	}
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"status":"error","error":"rule manager not ready"}`))
	}))
	defer broken.Close()
	v := alertsOf(t, Options{AlertsURL: broken.URL})
	if v.Source != broken.URL || !strings.Contains(v.Error, "rule manager not ready") {
		t.Fatalf("failing Prometheus: %+v", v)
	}
	v = alertsOf(t, Options{AlertsURL: "http://127.0.0.1:1"})
	if v.Error == "" {
		t.Fatalf("unreachable Prometheus: %+v", v)
	}
}

// A console on loopback answers only to loopback names with its port: a
// page that rebinds its own name to 127.0.0.1 is refused (421) before any
// handler, actions included.
func TestLoopbackHostOnly(t *testing.T) {
	srv := New(Options{Health: func(context.Context) ([]byte, error) { return []byte(`{}`), nil }})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	u, _ := url.Parse(hs.URL)
	srv.o.AllowedHost = LoopbackHost(u.Port())
	for host, want := range map[string]int{
		u.Host:                         http.StatusOK,
		"localhost:" + u.Port():        http.StatusOK,
		"[::1]:" + u.Port():            http.StatusOK,
		"attacker.example:" + u.Port(): http.StatusMisdirectedRequest,
		"127.0.0.1.nip.io:" + u.Port(): http.StatusMisdirectedRequest,
		"127.0.0.1:1" + u.Port():       http.StatusMisdirectedRequest,
		"127.0.0.1":                    http.StatusMisdirectedRequest,
	} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			path := "/"
			if method == http.MethodPost {
				path = "/api/actions/pause"
			}
			req, _ := http.NewRequest(method, hs.URL+path, strings.NewReader(`{}`))
			req.Host = host
			req.Header.Set("X-Storagecp-Console", "1")
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			refused := resp.StatusCode == http.StatusMisdirectedRequest
			if refused != (want == http.StatusMisdirectedRequest) {
				t.Errorf("%s %s with Host %q: %d", method, path, host, resp.StatusCode)
			}
		}
	}
}
