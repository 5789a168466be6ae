package harness

import (
	"context"
	"fmt"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"storagecp.dev/testsupport/stack"
)

// Sample is one series of a Prometheus scrape, named as in the text
// format: a counter's, gauge's or untyped metric's value; a histogram or
// summary gives two, <name>_count and <name>_sum (buckets are left out).
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Scrape fetches a process's /metrics (plain HTTP on loopback) and parses
// it with Prometheus's own text parser.
func Scrape(ctx context.Context, url string) ([]Sample, error) {
	return ScrapeWith(ctx, http.DefaultClient, url)
}

// ScrapeProc is Scrape of one of st's processes, reaching it the way
// st.HTTPClient does (from inside its host in hosts mode).
func ScrapeProc(ctx context.Context, st *stack.Stack, proc string) ([]Sample, error) {
	return ScrapeWith(ctx, st.HTTPClient(proc), st.MetricsURL(proc))
}

// ScrapeWith is Scrape through client.
func ScrapeWith(ctx context.Context, client *http.Client, url string) ([]Sample, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	var out []Sample
	for name, f := range families {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for suffix, v := range values(f.GetType(), m) {
				out = append(out, Sample{Name: name + suffix, Labels: labels, Value: v})
			}
		}
	}
	return out, nil
}

// values are a metric's series by name suffix.
func values(kind dto.MetricType, m *dto.Metric) map[string]float64 {
	switch kind {
	case dto.MetricType_COUNTER:
		return map[string]float64{"": m.GetCounter().GetValue()}
	case dto.MetricType_GAUGE:
		return map[string]float64{"": m.GetGauge().GetValue()}
	case dto.MetricType_HISTOGRAM:
		return map[string]float64{"_count": float64(m.GetHistogram().GetSampleCount()), "_sum": m.GetHistogram().GetSampleSum()}
	case dto.MetricType_SUMMARY:
		return map[string]float64{"_count": float64(m.GetSummary().GetSampleCount()), "_sum": m.GetSummary().GetSampleSum()}
	default:
		return map[string]float64{"": m.GetUntyped().GetValue()}
	}
}
