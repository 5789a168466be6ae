// Package budgets tests the rebuild budgets end to end over real
// processes: after two sleds are expunged, every region clone and live
// repair runs within its per-sled limits (as the budget metrics report
// them, and as the rebuild sagas' own logs show them), every request
// completes, and requests down to one live copy start before those with
// two. The budget RPCs' validation and authorisation are checked on the
// same rack.
package budgets

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// The per-sled limits the test runs with.
const perSled = 2

// interval is one rebuild as its saga log and the request samples show it:
// certainly holding its slot from `from` to `to` (the inner bounds; the
// slot is taken a little before and given back a little after).
type interval struct {
	request  string
	kind     string
	from, to time.Time
	dest     string
	sources  []string
	copies   int32
}

func TestBudgetsUnderSledExpunge(t *testing.T) {
	began := time.Now()
	r := rack.Start(t, 5, 1, stack.Config{ExtraArgs: map[string][]string{stack.Orchestrator: {
		"--budget-source-sled-rebuilds", fmt.Sprint(perSled), "--budget-dest-sled-rebuilds", fmt.Sprint(perSled), "--budget-rack-rebuilds", "0",
	}}})
	ctx := context.Background()
	checkRPCs(t, r)

	// Disks with snapshots until one sled holds at least 50 targets.
	disks := map[string]string{} // disk id → sled, per dataset
	sledOf := func() map[string]string {
		resp, err := r.Allocator.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, d := range resp.Disks {
			out[d.DatasetId] = d.SledId
			disks[d.DiskId] = d.SledId
		}
		return out
	}
	sledOf()
	perSledTargets := func() map[string]int {
		n := map[string]int{}
		regions, err := r.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{PageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range regions.Regions {
			n[g.SledId]++
		}
		token := ""
		for {
			snaps, err := r.Allocator.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{PageSize: 1000, PageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range snaps.RegionSnapshots {
				n[s.SledId]++
			}
			if token = snaps.NextPageToken; token == "" {
				break
			}
		}
		return n
	}
	// Twelve disks at once, then two at a time, each snapshotted four
	// times (a disk's snapshots one after another: each takes the disk's
	// repair lock). A disk puts five targets on each of three sleds of
	// five, so twelve average 36 a sled.
	var counts map[string]int
	for batch := 0; ; batch++ {
		var wg sync.WaitGroup
		n := 2
		if batch == 0 {
			n = 12
		}
		for range n {
			wg.Go(func() {
				d := r.CreateDisk(t)
				for range 4 {
					r.Snapshot(t, d)
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		counts = perSledTargets()
		if slices.Max(mapValues(counts)) >= 50 {
			break
		}
		if batch > 20 {
			t.Fatalf("no sled reached 50 targets: %v", counts)
		}
	}
	// The sled with the most targets, and the one with the fewest: the
	// targets of region sets on both are down to one live copy.
	sleds := mapKeys(counts)
	slices.SortFunc(sleds, func(a, b string) int { return counts[b] - counts[a] })
	x, y := sleds[0], sleds[len(sleds)-1]
	t.Logf("setup took %v; targets per sled %v; expunging %s (%d targets) and %s (%d)", time.Since(began).Round(time.Millisecond), counts, x, counts[x], y, counts[y])

	// Hold admission to one rebuild while the detectors find everything,
	// so the order is decided over every request at once.
	if _, err := r.Admin.SetRebuildBudgets(ctx, &orchestratorv1.SetRebuildBudgetsRequest{RackRebuilds: proto.Int32(1)}); err != nil {
		t.Fatal(err)
	}
	expungeAt := time.Now()
	for _, s := range []string{x, y} {
		if _, err := r.Allocator.ExpungeSled(ctx, &allocatorv1.ExpungeSledRequest{SledId: s}); err != nil {
			t.Fatal(err)
		}
	}
	for _, task := range []string{"ro_replacement_detector", "rw_replacement_detector"} {
		if _, err := r.Admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: task}); err != nil {
			t.Fatal(err)
		}
	}

	// Sample the budget metrics and the requests throughout.
	var mu sync.Mutex
	peak := map[string]float64{}
	lastHolding := map[string]time.Time{} // rw request → last sample seen Running or Driving
	firstCopies := map[string]int32{}     // request → its live copies when first counted
	var metricErrs []string
	stop := make(chan struct{})
	sampled := make(chan struct{})
	samples := 0
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			scraped, err := harness.ScrapeProc(ctx, r.Stack, stack.Orchestrator)
			now := time.Now()
			list, lerr := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
			mu.Lock()
			samples++
			if err == nil {
				limits := map[string]float64{}
				for _, s := range scraped {
					if s.Name == "storagecp_rebuild_budget_limit" {
						limits[s.Labels["budget"]] = s.Value
					}
				}
				for _, s := range scraped {
					if s.Name != "storagecp_rebuild_budget_in_use" {
						continue
					}
					b := s.Labels["budget"]
					peak[b] = max(peak[b], s.Value)
					if l := limits[b]; l > 0 && s.Value > l {
						metricErrs = append(metricErrs, fmt.Sprintf("%s in use %v over its limit %v", b, s.Value, l))
					}
				}
			}
			if lerr == nil {
				for _, rep := range list.Replacements {
					if _, ok := firstCopies[rep.ReplacementId]; !ok && rep.LiveCopies >= 0 {
						firstCopies[rep.ReplacementId] = rep.LiveCopies
					}
					if rep.RegionState == orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_RUNNING ||
						rep.RegionState == orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_DRIVING {
						lastHolding[rep.ReplacementId] = now
					}
				}
			}
			mu.Unlock()
		}
	}()

	// Every request exists (the detectors found every target) before
	// admission opens: the counts stop changing and each is counted.
	var total int
	harness.Eventually(t, 30*time.Second, "the detectors found every target", func() error {
		list, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		if n := len(list.Replacements); n == 0 || n != total {
			total = n
			return fmt.Errorf("%d requests, still changing", n)
		}
		for _, rep := range list.Replacements {
			if rep.LiveCopies < 0 && !rack.Terminal(rep) {
				return fmt.Errorf("request %s not counted yet", rep.ReplacementId)
			}
		}
		return nil
	})
	// The held-back requests wait on the budget, naming it.
	harness.Eventually(t, 10*time.Second, "a request waits on WAIT_KIND_BUDGET naming rack_rebuilds", func() error {
		list, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		for _, rep := range list.Replacements {
			if rep.Wait.GetKind() == orchestratorv1.WaitKind_WAIT_KIND_BUDGET && strings.Contains(rep.Wait.GetDetail(), "rack_rebuilds") {
				full, err := r.Replacement.GetReplacement(ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: rep.ReplacementId})
				if err != nil {
					return err
				}
				if full.Replacement.Wait.GetKind() != orchestratorv1.WaitKind_WAIT_KIND_BUDGET {
					return fmt.Errorf("GetReplacement says %v where the list says budget", full.Replacement.Wait)
				}
				return nil
			}
		}
		return fmt.Errorf("none waits on the rack budget")
	})
	statusHeldBack(t, r)
	openAt := time.Now()
	if _, err := r.Admin.SetRebuildBudgets(ctx, &orchestratorv1.SetRebuildBudgetsRequest{RackRebuilds: proto.Int32(0)}); err != nil {
		t.Fatal(err)
	}
	reqs := r.WaitRequests(t, 90*time.Second)
	done := time.Now()
	close(stop)
	<-sampled

	mu.Lock()
	defer mu.Unlock()
	for _, e := range metricErrs {
		t.Error("metrics: " + e)
	}
	for _, rep := range reqs {
		if !isComplete(rep) {
			t.Errorf("request %s ended %v%v: %s", rep.ReplacementId, rep.ReadOnlyState, rep.RegionState, rep.EndReason)
		}
	}
	if peak["dest_sled_rebuilds"] != perSled || peak["source_sled_rebuilds"] != perSled {
		t.Errorf("peak per-sled use %v: the budgets never filled, so they were not tested", peak)
	}

	// The rebuild sagas' own record: no instant at which more rebuilds
	// certainly held a sled than its limit allows.
	ivs := intervals(t, r, sledOf(), lastHolding, firstCopies)
	check := func(name string, key func(interval) []string) {
		worst := 0
		for _, a := range ivs {
			for _, k := range key(a) {
				n := 0
				for _, b := range ivs {
					if slices.Contains(key(b), k) && !b.from.After(a.from) && b.to.After(a.from) {
						n++
					}
				}
				worst = max(worst, n)
				if n > perSled {
					t.Errorf("%s: %d rebuilds held sled %s at %s (limit %d)", name, n, k, a.from.Format(time.RFC3339Nano), perSled)
				}
			}
		}
		t.Logf("%s: peak %d by the saga log", name, worst)
	}
	check("dest_sled_rebuilds", func(i interval) []string { return []string{i.dest} })
	check("source_sled_rebuilds", func(i interval) []string { return i.sources })

	// Risk order: of the requests waiting when admission opened, those down
	// to one live copy started before those with two.
	var waiting []interval
	for _, iv := range ivs {
		if iv.from.After(openAt) {
			waiting = append(waiting, iv)
		}
	}
	slices.SortFunc(waiting, func(a, b interval) int { return a.from.Compare(b.from) })
	var order []string
	rank := map[int32][]int{}
	for i, iv := range waiting {
		order = append(order, fmt.Sprint(iv.copies))
		rank[iv.copies] = append(rank[iv.copies], i)
	}
	mean := func(v []int) float64 {
		s := 0
		for _, x := range v {
			s += x
		}
		return float64(s) / float64(max(len(v), 1))
	}
	t.Logf("figures: %d requests (%d rebuilds admitted after opening), %d samples; peak use by the metrics %v; expunge to done %v (opening to done %v); live copies in start order: %s",
		len(reqs), len(waiting), samples, peak, done.Sub(expungeAt).Round(time.Millisecond), done.Sub(openAt).Round(time.Millisecond), strings.Join(order, ""))
	if len(rank[1]) == 0 || len(rank[2]) == 0 {
		t.Fatalf("want requests at one and at two live copies, got %v", rank)
	}
	if mean(rank[1]) >= mean(rank[2]) {
		t.Errorf("one-copy requests started at mean rank %.1f, two-copy ones at %.1f: risk order not observed", mean(rank[1]), mean(rank[2]))
	}

	r.NoStuckSagas(t)
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
	t.Logf("wall time %v", time.Since(began).Round(time.Millisecond))
}

// intervals reads every rebuild's holding interval from its start saga's
// log (and, for a repair, the last sample that saw it Running or Driving).
func intervals(t *testing.T, r *rack.Rack, sledOfDataset map[string]string, lastHolding map[string]time.Time, copies map[string]int32) []interval {
	t.Helper()
	ctx := context.Background()
	var out []interval
	token := ""
	for {
		page, err := r.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range page.Sagas {
			if s.Name != "ro-replacement-start" && s.Name != "rw-replacement-start" {
				continue
			}
			full, err := r.Admin.GetSaga(ctx, &orchestratorv1.GetSagaRequest{SagaId: s.SagaId})
			if err != nil {
				t.Fatal(err)
			}
			iv := interval{request: s.SubjectId, kind: s.Name, copies: copies[s.SubjectId]}
			var allocated, ended bool
			for _, ev := range full.Events {
				switch {
				case ev.NodeName == "alloc_new_region" && ev.EventType == "succeeded":
					var reg struct {
						DatasetID string `json:"dataset_id"`
					}
					if err := json.Unmarshal([]byte(ev.DataJson), &reg); err != nil {
						t.Fatalf("saga %s: alloc output %q: %v", s.SagaId, ev.DataJson, err)
					}
					iv.dest = sledOfDataset[reg.DatasetID]
					iv.from, allocated = ev.Time.AsTime(), true
				case ev.NodeName == "get_clone_source" && ev.EventType == "succeeded":
					var src struct {
						SledID string `json:"sled_id"`
					}
					_ = json.Unmarshal([]byte(ev.DataJson), &src)
					if src.SledID != "" {
						iv.sources = []string{src.SledID}
					}
				case allocated && !ended && (ev.EventType == "undo_started" || (ev.NodeName == "update_request" && ev.EventType == "started")):
					iv.to, ended = ev.Time.AsTime(), true
				}
			}
			if !allocated || !ended {
				continue
			}
			if s.Name == "rw-replacement-start" {
				if last, ok := lastHolding[s.SubjectId]; ok && last.After(iv.to) {
					iv.to = last
				}
				iv.sources = repairSources(t, r, full.ParamsJson, iv.from)
			}
			out = append(out, iv)
		}
		if token = page.NextPageToken; token == "" {
			return out
		}
	}
}

// repairSources are the sleds a repair could read from when it started:
// the volume's rw regions created before then on sleds still in service,
// other than the new region (its own sled is its destination).
func repairSources(t *testing.T, r *rack.Rack, params string, at time.Time) []string {
	t.Helper()
	var p struct {
		VolumeID string `json:"volume_id"`
	}
	if err := json.Unmarshal([]byte(params), &p); err != nil {
		t.Fatal(err)
	}
	regions, err := r.Allocator.ListRegions(context.Background(), &allocatorv1.ListRegionsRequest{AllocatedFor: p.VolumeID, PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	disks, err := r.Allocator.ListPhysicalDisks(context.Background(), &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	inService := map[string]bool{}
	for _, d := range disks.Disks {
		inService[d.DiskId] = d.Policy == allocatorv1.Policy_POLICY_IN_SERVICE
	}
	var out []string
	for _, g := range regions.Regions {
		if !g.ReadOnly && inService[g.DiskId] && g.TimeCreated.AsTime().Before(at.Add(-time.Second)) && !slices.Contains(out, g.SledId) {
			out = append(out, g.SledId)
		}
	}
	return out
}

// statusHeldBack expects the start tasks' statuses to say what the budget
// holds back.
func statusHeldBack(t *testing.T, r *rack.Rack) {
	t.Helper()
	harness.Eventually(t, 10*time.Second, "a task status names what rack_rebuilds holds back", func() error {
		resp, err := r.Admin.ListBackgroundTasks(context.Background(), &orchestratorv1.ListBackgroundTasksRequest{})
		if err != nil {
			return err
		}
		for _, tk := range resp.Tasks {
			if tk.Name != "ro_replacement_start" && tk.Name != "rw_replacement_detector" {
				continue
			}
			var st struct {
				Budgets struct {
					HeldBack map[string]struct {
						Total int `json:"total"`
					} `json:"held_back"`
				} `json:"budgets"`
			}
			if err := json.Unmarshal([]byte(tk.LastStatusJson), &st); err == nil && st.Budgets.HeldBack["rack_rebuilds"].Total > 0 {
				return nil
			}
		}
		return fmt.Errorf("no start task status holds anything back by rack_rebuilds")
	})
}

// checkRPCs: bad input changes nothing and names the field; an unknown
// request is NotFound; a viewer reads the budgets but may not change them.
func checkRPCs(t *testing.T, r *rack.Rack) {
	t.Helper()
	ctx := context.Background()
	before, err := r.Admin.GetRebuildBudgets(ctx, &orchestratorv1.GetRebuildBudgetsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Admin.SetRebuildBudgets(ctx, &orchestratorv1.SetRebuildBudgetsRequest{RackRebuilds: proto.Int32(7), DestSledRebuilds: proto.Int32(-1)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "dest_sled_rebuilds") {
		t.Fatalf("negative limit: %v, want InvalidArgument naming dest_sled_rebuilds", err)
	}
	after, err := r.Admin.GetRebuildBudgets(ctx, &orchestratorv1.GetRebuildBudgetsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(before, after) {
		t.Fatalf("a refused change wrote something: %v → %v", before, after)
	}
	for _, b := range after.Budgets {
		if want := map[string]int32{"source_sled_rebuilds": perSled, "dest_sled_rebuilds": perSled, "rack_rebuilds": 0, "rack_steps": 64}[b.Name]; b.Limit != want || b.Source != "config" {
			t.Errorf("budget %s: limit %d from %s, want %d from the configuration", b.Name, b.Limit, b.Source, want)
		}
	}
	_, err = r.Replacement.SetReplacementPriority(ctx, &orchestratorv1.SetReplacementPriorityRequest{ReplacementId: "00000000-0000-0000-0000-000000000001", Priority: 3})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("priority of an unknown request: %v, want NotFound", err)
	}
	_, err = r.Replacement.SetReplacementPriority(ctx, &orchestratorv1.SetReplacementPriorityRequest{ReplacementId: "x", Priority: 3})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "replacement_id") {
		t.Fatalf("priority of a malformed id: %v, want InvalidArgument naming replacement_id", err)
	}

	viewer := r.StorctlTLS(t, "viewer/x")
	if out, code := storctl(t, r, append(viewer, "budgets", "show")...); code != 0 || !strings.Contains(out, "dest_sled_rebuilds") {
		t.Errorf("viewer: budgets show: exit %d\n%s", code, out)
	}
	want := "PermissionDenied: spiffe://storagecp.local/viewer/x may not call /storage.orchestrator.v1.AdminService/SetRebuildBudgets"
	if out, code := storctl(t, r, append(viewer, "budgets", "set", "--rack-rebuilds", "3")...); code != 1 || !strings.Contains(out, want) {
		t.Errorf("viewer: budgets set: exit %d, want 1 and %q\n%s", code, want, out)
	}
	want = "PermissionDenied: spiffe://storagecp.local/viewer/x may not call /storage.orchestrator.v1.ReplacementService/SetReplacementPriority"
	if out, code := storctl(t, r, append(viewer, "replacements", "priority", "00000000-0000-0000-0000-000000000001", "1")...); code != 1 || !strings.Contains(out, want) {
		t.Errorf("viewer: replacements priority: exit %d, want 1 and %q\n%s", code, want, out)
	}
	operator := r.StorctlTLS(t, stack.OperatorID)
	if out, code := storctl(t, r, append(operator, "budgets", "set", "--rack-steps", "0")...); code != 0 || !strings.Contains(out, "runtime") {
		t.Errorf("operator: budgets set: exit %d\n%s", code, out)
	}
	if out, code := storctl(t, r, append(operator, "budgets", "set", "--reset")...); code != 0 || strings.Contains(out, "runtime") {
		t.Errorf("operator: budgets set --reset: exit %d\n%s", code, out)
	}
}

// storctl runs storctl with args against the rack; stdout and stderr
// together, and the exit code.
func storctl(t *testing.T, r *rack.Rack, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(harness.BinDir(t), "storctl"), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "STORCTL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "STORAGECP_ORCHESTRATOR_ADDR="+r.Stack.Addr(stack.Orchestrator))
	out, err := cmd.CombinedOutput()
	if exit, ok := err.(*exec.ExitError); ok {
		return string(out), exit.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

func isComplete(rep *orchestratorv1.Replacement) bool {
	return rep.ReadOnlyState == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE ||
		rep.RegionState == orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE
}

func mapKeys[K comparable, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func mapValues[K comparable, V any](m map[K]V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
