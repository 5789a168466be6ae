package monitoring

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// metricNames returns the metric names a PromQL expression selects, in
// order of appearance, each once. It is a tokenizer, not a parser (the
// Prometheus parser would bring Prometheus's whole module graph into the
// workspace): it skips strings, comments, numbers and durations, range and
// subquery brackets, label matchers (reading a __name__="…" matcher as a
// name), the label lists of by, without, on, ignoring, group_left and
// group_right, keywords, and identifiers followed by "(" (functions and
// aggregations); every other identifier is a metric name. Syntax is
// promtool's to check (make monitoring-check); this fails only on what it
// cannot tokenize: an unterminated string or bracket, a __name__ regex
// matcher, or a character PromQL does not have.
func metricNames(expr string) ([]string, error) {
	var names []string
	add := func(n string) {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	s := []rune(expr)
	i := 0
	skipSpace := func(j int) int {
		for j < len(s) && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r') {
			j++
		}
		return j
	}
	// skipString returns the index after the string starting at j.
	skipString := func(j int) (int, error) {
		q := s[j]
		for j++; j < len(s); j++ {
			if s[j] == '\\' && q != '`' {
				j++
				continue
			}
			if s[j] == q {
				return j + 1, nil
			}
		}
		return 0, fmt.Errorf("unterminated string in %q", expr)
	}
	// closing returns the index after the bracket that closes the one at
	// j, skipping strings.
	closing := func(j int, open, close rune) (int, error) {
		depth := 0
		for ; j < len(s); j++ {
			switch s[j] {
			case '"', '\'', '`':
				k, err := skipString(j)
				if err != nil {
					return 0, err
				}
				j = k - 1
			case open:
				depth++
			case close:
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, fmt.Errorf("unterminated %c in %q", open, expr)
	}
	isIdentStart := func(r rune) bool { return r == '_' || r == ':' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' }
	isIdent := func(r rune) bool { return isIdentStart(r) || r >= '0' && r <= '9' }
	for i < len(s) {
		r := s[i]
		switch {
		case r == ' ' || r == '\t' || r == '\n' || r == '\r':
			i++
		case r == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case r == '"' || r == '\'' || r == '`':
			j, err := skipString(i)
			if err != nil {
				return nil, err
			}
			i = j
		case r == '{':
			j, err := closing(i, '{', '}')
			if err != nil {
				return nil, err
			}
			body := string(s[i+1 : j-1])
			if m := nameMatcher.FindStringSubmatch(body); m != nil {
				if m[1] != "=" {
					return nil, fmt.Errorf("__name__%s matcher in %q: cannot tell which metrics it selects", m[1], expr)
				}
				add(m[2])
			}
			i = j
		case r == '[':
			j, err := closing(i, '[', ']')
			if err != nil {
				return nil, err
			}
			i = j
		case r >= '0' && r <= '9' || r == '.' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			for i < len(s) && (isIdent(s[i]) || s[i] == '.') {
				i++
			}
		case isIdentStart(r):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			word := string(s[i:j])
			next := skipSpace(j)
			paren := next < len(s) && s[next] == '('
			switch strings.ToLower(word) {
			case "by", "without", "on", "ignoring", "group_left", "group_right":
				if paren {
					k, err := closing(next, '(', ')')
					if err != nil {
						return nil, err
					}
					j = k
				}
			case "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan":
			default:
				if !paren && !(aggregations[word] && groupingNext(s[next:])) {
					add(word)
				}
			}
			i = j
		case strings.ContainsRune("()+-*/%^=!<>,@", r):
			i++
		default:
			return nil, fmt.Errorf("unexpected %q at %d in %q", r, i, expr)
		}
	}
	return names, nil
}

// aggregations are PromQL's aggregation operators, which may take their
// grouping before their argument: sum by (job) (x).
var aggregations = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// groupingNext reports whether rest starts with by or without.
func groupingNext(rest []rune) bool {
	w := strings.ToLower(string(rest))
	for _, g := range []string{"by", "without"} {
		if strings.HasPrefix(w, g) && (len(w) == len(g) || w[len(g)] == ' ' || w[len(g)] == '(' || w[len(g)] == '\n' || w[len(g)] == '\t') {
			return true
		}
	}
	return false
}

var nameMatcher = regexp.MustCompile(`(?:^|,)\s*__name__\s*(=~|!~|!=|=)\s*"([^"]*)"`)

// unexported lists, for each expression (keyed by where it is), the
// metric names it selects that are neither exported nor Prometheus's own.
func unexported(exprs map[string]string, exported map[string]bool) (map[string][]string, error) {
	out := map[string][]string{}
	for where, e := range exprs {
		names, err := metricNames(e)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if len(names) == 0 {
			return nil, fmt.Errorf("%s: %q selects no metric", where, e)
		}
		for _, n := range names {
			if !exported[n] && !prometheusOwn[n] {
				out[where] = append(out[where], n)
			}
		}
	}
	return out, nil
}

func TestMetricNames(t *testing.T) {
	t.Parallel()
	for expr, want := range map[string][]string{
		`up{job=~"volume-service|region-allocator"} == 0`:                                       {"up"},
		`sum by (job, instance, saga) (increase(storagecp_saga_stuck_total[1h])) > 0`:           {"storagecp_saga_stuck_total"},
		`max(storagecp_x{a="{b}", c='"'}) / on (kind) group_left (state) storagecp_y offset 5m`: {"storagecp_x", "storagecp_y"},
		`sum without (instance) (rate(a_total[$__rate_interval])) and bool b or c unless d`:     {"a_total", "b", "c", "d"},
		`label_replace(m, "dst", "$1", "src", "(.*)") # by (x) here is a comment`:               {"m"},
		`{__name__="storagecp_by_name", job="x"} + Inf - NaN * 1e3 + 0x1F`:                      {"storagecp_by_name"},
		`histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m:1m]))) @ start()`:                {"h_bucket"},
		`sum(x) by (job) > on() group_left y`:                                                   {"x", "y"},
		`absent(up{job="a"}) or absent(up{job="b"})`:                                            {"up"},
		"count(`raw`) + count(z)": {"z"},
	} {
		got, err := metricNames(expr)
		if err != nil {
			t.Errorf("%s: %v", expr, err)
			continue
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: names %v, want %v", expr, got, want)
		}
	}
	for _, bad := range []string{
		`sum(x{job="a)`,
		`rate(x[5m)`,
		`{__name__=~"storagecp_.*"}`,
		`x ; y`,
	} {
		if got, err := metricNames(bad); err == nil {
			t.Errorf("%s: names %v, want an error", bad, got)
		}
	}
}

// The check fails naming the metric no process exports, and where its
// expression is; it passes an expression whose every metric is exported
// or Prometheus's own.
func TestUnexportedNamesTheMissingMetric(t *testing.T) {
	t.Parallel()
	exported := map[string]bool{"storagecp_saga_running": true, "storagecp_replacement_requests": true}
	got, err := unexported(map[string]string{
		"alerts.yml StoragecpBad":  `max(storagecp_replacement_requests) > max(storagecp_no_such_metric_total)`,
		"alerts.yml StoragecpGood": `absent(storagecp_saga_running) or up == 0`,
	}, exported)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"alerts.yml StoragecpBad": {"storagecp_no_such_metric_total"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("unexported %v, want %v", got, want)
	}
	if _, err := unexported(map[string]string{"dashboard x": `vector(1)`}, exported); err == nil {
		t.Fatal("an expression naming no metric passed")
	}
}
