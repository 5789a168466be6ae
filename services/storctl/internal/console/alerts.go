package console

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
)

// The health page's active alerts come from Prometheus, which evaluates
// deploy/monitoring/alerts.yml against the services' metrics: the console
// does not re-implement the rules. Without an alerts URL the page says so
// rather than showing an empty list that reads as "all clear".

// alert is one of Prometheus's pending or firing alerts, as the page
// shows it.
type alert struct {
	Name     string    `json:"name"`
	State    string    `json:"state"` // pending or firing
	Severity string    `json:"severity,omitempty"`
	Summary  string    `json:"summary,omitempty"`
	ActiveAt time.Time `json:"activeAt"`
	// Labels are the alert's other labels (job, instance, budget, …).
	Labels map[string]string `json:"labels,omitempty"`
}

// alertsView is what the health page shows under "Active alerts".
type alertsView struct {
	// Source is the Prometheus the alerts came from; empty when the
	// console was started without one.
	Source string  `json:"source,omitempty"`
	Alerts []alert `json:"alerts"`
	Error  string  `json:"error,omitempty"`
}

// maxAlertsBody bounds what the console reads of Prometheus's answer.
const maxAlertsBody = 4 << 20

// alerts asks Prometheus's HTTP API (GET /api/v1/alerts) for its alerts,
// firing first, then by name.
func (s *Server) alerts(ctx context.Context) alertsView {
	v := alertsView{Source: s.o.AlertsURL, Alerts: []alert{}}
	if s.o.AlertsURL == "" {
		return v
	}
	u, err := url.JoinPath(s.o.AlertsURL, "api/v1/alerts")
	if err != nil {
		v.Error = fmt.Sprintf("alerts URL: %v", err)
		return v
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		v.Error = fmt.Sprintf("alerts URL: %v", err)
		return v
	}
	resp, err := s.httpClient().Do(req)
	if err != nil {
		v.Error = fmt.Sprintf("asking Prometheus: %v", err)
		return v
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAlertsBody))
	if err != nil {
		v.Error = fmt.Sprintf("reading Prometheus's answer: %v", err)
		return v
	}
	var out struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Alerts []struct {
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
				State       string            `json:"state"`
				ActiveAt    time.Time         `json:"activeAt"`
			} `json:"alerts"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		v.Error = fmt.Sprintf("Prometheus answered %s, not its alerts API: %v", resp.Status, err)
		return v
	}
	if resp.StatusCode != http.StatusOK || out.Status != "success" {
		v.Error = strings.TrimSpace(fmt.Sprintf("Prometheus answered %s: %s", resp.Status, out.Error))
		return v
	}
	for _, a := range out.Data.Alerts {
		labels := map[string]string{}
		for k, val := range a.Labels {
			if k != "alertname" && k != "severity" {
				labels[k] = val
			}
		}
		v.Alerts = append(v.Alerts, alert{
			Name: a.Labels["alertname"], State: a.State, Severity: a.Labels["severity"],
			Summary: a.Annotations["summary"], ActiveAt: a.ActiveAt, Labels: labels,
		})
	}
	sort.SliceStable(v.Alerts, func(i, j int) bool {
		if (v.Alerts[i].State == "firing") != (v.Alerts[j].State == "firing") {
			return v.Alerts[i].State == "firing"
		}
		return v.Alerts[i].Name < v.Alerts[j].Name
	})
	return v
}

func (s *Server) httpClient() *http.Client {
	if s.o.HTTPClient != nil {
		return s.o.HTTPClient
	}
	return http.DefaultClient
}

// healthWithAlerts adds the alerts to storctl health's JSON object.
func (s *Server) healthWithAlerts(ctx context.Context, health []byte) (any, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(health, &m); err != nil {
		return nil, fmt.Errorf("health: %w", err)
	}
	a, err := json.Marshal(s.alerts(ctx))
	if err != nil {
		return nil, err
	}
	m["alerts"] = a
	return m, nil
}
