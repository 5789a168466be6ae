package demo

// Text renderings of durations and of request and step counts.

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

func since(t time.Time) string { return fmtDur(time.Since(t)) }

func fmtDur(d time.Duration) string {
	if d < 10*time.Second {
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	return d.Round(100 * time.Millisecond).String()
}

// statesLine renders request counts by state, read-only first.
func statesLine(states map[string]int) string {
	keys := make([]string, 0, len(states))
	for k := range states {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		ri, rj := strings.HasPrefix(keys[i], "rw "), strings.HasPrefix(keys[j], "rw ")
		if ri != rj {
			return !ri
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", states[k], k))
	}
	if len(parts) == 0 {
		return "none yet"
	}
	return strings.Join(parts, " · ")
}

func stepsLine(s StepCounts) string {
	var parts []string
	for _, p := range []struct {
		n    int64
		name string
	}{{s.Requested, "requested"}, {s.Running, "running"}, {s.Complete, "complete"}, {s.Collecting, "collecting"}, {s.VolumeDeleted, "done (stash deleted)"}} {
		if p.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", p.n, p.name))
		}
	}
	if len(parts) == 0 {
		return "none yet"
	}
	return strings.Join(parts, " · ")
}
