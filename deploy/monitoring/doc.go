// Package monitoring holds what an operator loads into Prometheus and
// Grafana (alerts.yml, prometheus.yml, dashboard.json; README.md says how)
// and the tests that keep them honest: every alert has a severity, a
// summary, a description and a runbook section; every alert has promtool
// tests that fire it and keep it quiet, and those tests fail when the alert
// is broken; the dashboard covers the replacement views and its queries
// parse. Whether each metric a query names is exported is checked against
// live processes by integration/monitoring.
package monitoring
