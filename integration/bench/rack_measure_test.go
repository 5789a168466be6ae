package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// constructRequest is rack.Construct's request: the volume on sim-upstairs
// sim, as a running Propolis instance.
func constructRequest(r *rack.Rack, volume string, sim int) *notifierv1.ConstructVolumeRequest {
	return &notifierv1.ConstructVolumeRequest{
		VolumeId: volume, Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, Endpoint: r.Stack.UpstairsEndpoints()[sim],
	}
}

// sledTargets counts the regions and region snapshots on each sled.
func sledTargets(t *testing.T, r *rack.Rack) map[string]int {
	t.Helper()
	ctx := context.Background()
	n := map[string]int{}
	for token := ""; ; {
		resp, err := r.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range resp.Regions {
			n[g.SledId]++
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	for token := ""; ; {
		resp, err := r.Allocator.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range resp.RegionSnapshots {
			n[s.SledId]++
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	return n
}

// allReplacements lists every replacement request, page by page.
func allReplacements(ctx context.Context, r *rack.Rack) ([]*orchestratorv1.Replacement, error) {
	var out []*orchestratorv1.Replacement
	for token := ""; ; {
		resp, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return nil, err
		}
		out = append(out, resp.Replacements...)
		if token = resp.NextPageToken; token == "" {
			return out, nil
		}
	}
}

// stepCount counts every read-only replacement step.
func stepCount(t *testing.T, r *rack.Rack) int {
	t.Helper()
	n := 0
	for token := ""; ; {
		resp, err := r.Replacement.ListSteps(context.Background(), &orchestratorv1.ListStepsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		n += len(resp.Steps)
		if token = resp.NextPageToken; token == "" {
			return n
		}
	}
}

// liveRepairs counts the live repairs Upstairs reported (to the notifier)
// into the new regions of rw requests: one per distinct repair id.
func liveRepairs(t *testing.T, r *rack.Rack, reqs []*orchestratorv1.Replacement) int {
	t.Helper()
	var mu sync.Mutex
	n := 0
	var regions []string
	for _, q := range reqs {
		if q.Kind == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION && q.NewRegionId != "" {
			regions = append(regions, q.NewRegionId)
		}
	}
	if err := parallel(len(regions), 8, func(i int) error {
		ids := map[string]bool{}
		for token := ""; ; {
			resp, err := r.Notifier.ListRepairNotifications(context.Background(), &notifierv1.ListRepairNotificationsRequest{
				RegionId: regions[i], PageSize: 1000, PageToken: token})
			if err != nil {
				return err
			}
			for _, x := range resp.Notifications {
				if x.RepairType == notifierv1.RepairType_REPAIR_TYPE_LIVE {
					ids[x.RepairId] = true
				}
			}
			if token = resp.NextPageToken; token == "" {
				break
			}
		}
		mu.Lock()
		n += len(ids)
		mu.Unlock()
		return nil
	}); err != nil {
		t.Errorf("repair notifications: %v", err)
	}
	return n
}

// sampler watches the orchestrator while requests run: its saga gauge,
// its lock-queue gauges, and every request's wait.
type sampler struct {
	mu          sync.Mutex
	peakSagas   float64
	peakWaiters float64
	// oldestLockWait is the orchestrator's own gauge (the longest waiter
	// in any volume's repair-lock queue), at its highest.
	oldestLockWait float64
	// lockWaited: request → the longest it was seen waiting on a lock.
	lockWaited map[string]time.Duration
	// admitted and repaired: request → when a sample first saw it past
	// its admission (a rw request running, a read-only request's clone
	// made) and, for rw requests, past its repair (replacement done).
	admitted, repaired map[string]time.Time
	samples            int
}

// phase is how far a sampled request has come: admitted (its rebuild
// started: a rw request running or later, a read-only request's clone
// made), repaired (a rw request's repair done).
func phase(q *orchestratorv1.Replacement) (admitted, repaired bool) {
	if q.Kind == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
		st := q.RegionState
		return st >= orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_RUNNING,
			st >= orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_REPLACEMENT_DONE
	}
	return q.ReadOnlyState >= orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_REPLACEMENT_DONE, false
}

func (s *sampler) run(ctx context.Context, r *rack.Rack, period time.Duration) {
	s.lockWaited = map[string]time.Duration{}
	s.admitted, s.repaired = map[string]time.Time{}, map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(period):
		}
		scraped, err := harness.ScrapeProc(ctx, r.Stack, stack.Orchestrator)
		reqs, lerr := allReplacements(ctx, r)
		now := time.Now()
		s.mu.Lock()
		s.samples++
		if err == nil {
			running := 0.0
			for _, x := range scraped {
				switch {
				case x.Name == "storagecp_saga_running":
					running += x.Value
				case x.Name == "storagecp_replacement_lock_waiters":
					s.peakWaiters = max(s.peakWaiters, x.Value)
				case strings.HasPrefix(x.Name, "storagecp_replacement_oldest_lock_wait"):
					s.oldestLockWait = max(s.oldestLockWait, x.Value)
				}
			}
			s.peakSagas = max(s.peakSagas, running)
		}
		if lerr == nil {
			for _, q := range reqs {
				if w := q.GetWait(); w.GetKind() == orchestratorv1.WaitKind_WAIT_KIND_LOCK && w.Since != nil {
					s.lockWaited[q.ReplacementId] = max(s.lockWaited[q.ReplacementId], now.Sub(w.Since.AsTime()))
				}
				admitted, repaired := phase(q)
				if _, seen := s.admitted[q.ReplacementId]; admitted && !seen {
					s.admitted[q.ReplacementId] = now
				}
				if _, seen := s.repaired[q.ReplacementId]; repaired && !seen {
					s.repaired[q.ReplacementId] = now
				}
			}
		}
		s.mu.Unlock()
	}
}

// procCPU is a process's user and system CPU time in clock ticks, with
// its reaped children's (cutime, cstime) when children is set: the
// postmaster's reaped children are the backends that have exited.
func procCPU(pid int, children bool) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces: the fields start after its ')'.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// f[0] is field 3 (state): utime is field 14, stime 15, cutime 16,
	// cstime 17.
	var v int64
	n := 2
	if children {
		n = 4
	}
	for i := range n {
		x, _ := strconv.ParseInt(f[11+i], 10, 64)
		v += x
	}
	return v
}

// postgresCPU is the whole server's CPU time in clock ticks: the
// postmaster with its reaped children, and every live child (backends,
// background workers) it has not reaped yet.
func postgresCPU(dataDir string) int64 {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pm, _ := strconv.Atoi(strings.TrimSpace(line))
	total := procCPU(pm, true)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(data)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if ppid, _ := strconv.Atoi(f[1]); ppid == pm {
			total += procCPU(pid, false)
		}
	}
	return total
}

// cpuByProcess reads the CPU ticks of every service process, the
// sim-upstairs together, and PostgreSQL.
func cpuByProcess(r *rack.Rack) map[string]int64 {
	out := map[string]int64{}
	for _, p := range r.Stack.Procs() {
		name := p.Name
		if strings.HasPrefix(name, "sim-upstairs") {
			name = "sim-upstairs"
		}
		if pid := p.Pid(); pid != 0 {
			out[name] += procCPU(pid, false)
		}
	}
	if r.Stack.Cluster != nil {
		out["postgres"] = postgresCPU(filepath.Join(r.Stack.Cluster.Dir, "data"))
	}
	return out
}

// loadAverage is /proc/loadavg's one-minute figure.
func loadAverage() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// percentile is the p-th percentile (0–100) of sorted durations, by the
// nearest-rank rule.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	k := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(k, 0), len(sorted)-1)]
}

// phases are the per-request phase times the sampler saw: for rw requests
// the wait for admission (created → running), the repair (running →
// replacement done) and the finish (→ terminal); for read-only requests the
// wait for their clone (created → clone made) and the rest (→ terminal).
// A phase a request passed between two samples is charged to the later
// one, so each is good to a sample period.
type phases struct {
	RWWait, RWRepair, RWFinish, ROWait, RORest quantiles
}

// quantiles are a phase's p50 and p99 in seconds, over n requests.
type quantiles struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_seconds"`
	P99 float64 `json:"p99_seconds"`
}

func quantilesOf(d []time.Duration) quantiles {
	slices.Sort(d)
	return quantiles{N: len(d), P50: percentile(d, 50).Seconds(), P99: percentile(d, 99).Seconds()}
}

func (q quantiles) String() string { return fmt.Sprintf("%.1f/%.1f (%d)", q.P50, q.P99, q.N) }

// phasesOf splits each terminal request's life at the sampled times.
func (s *sampler) phasesOf(reqs []*orchestratorv1.Replacement) phases {
	s.mu.Lock()
	defer s.mu.Unlock()
	var rwWait, rwRepair, rwFinish, roWait, roRest []time.Duration
	for _, q := range reqs {
		created, ended := q.RequestTime.AsTime(), q.TimeModified.AsTime()
		admitted, ok := s.admitted[q.ReplacementId]
		if !ok || admitted.After(ended) {
			// Ended between two samples, or never admitted.
			continue
		}
		if q.Kind != orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
			roWait, roRest = append(roWait, admitted.Sub(created)), append(roRest, ended.Sub(admitted))
			continue
		}
		repaired, ok := s.repaired[q.ReplacementId]
		if !ok || repaired.After(ended) {
			repaired = ended
		}
		rwWait = append(rwWait, admitted.Sub(created))
		rwRepair = append(rwRepair, repaired.Sub(admitted))
		rwFinish = append(rwFinish, ended.Sub(repaired))
	}
	return phases{quantilesOf(rwWait), quantilesOf(rwRepair), quantilesOf(rwFinish), quantilesOf(roWait), quantilesOf(roRest)}
}

// budgets reads the rebuild budgets in force.
func budgets(t *testing.T, r *rack.Rack) map[string]int32 {
	t.Helper()
	resp, err := r.Admin.GetRebuildBudgets(context.Background(), &orchestratorv1.GetRebuildBudgetsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int32{}
	for _, b := range resp.Budgets {
		out[b.Name] = b.Limit
	}
	return out
}

// kindName is a request kind's short name in the table.
func kindName(k orchestratorv1.ReplacementKind) string {
	s := strings.ToLower(strings.TrimPrefix(k.String(), "REPLACEMENT_KIND_"))
	return s
}

// sortedKeys returns a map's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// maxDuration is the largest of durations (0 for none).
func maxDuration(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return slices.Max(d)
}
