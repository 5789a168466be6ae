package operator

// Redundancy and ok-to-expunge against an independent count: the test
// reads the VCRs, the registry and the disk states itself and counts live
// copies its own way (never through platform/redundancy), then compares
// GetVolume, ListDegradedVolumes, the storagecp.volume.redundancy gauge,
// storctl volumes degraded, and PreviewExpunge's ok-to-expunge answer.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// census is the test's own reading of the system.
type censusSet struct {
	// live: the disks of its live copies (registered, not DELETING, disk
	// in service); all: the disks of every copy that resolves to one.
	live, all []string
	// n: the copies the VCR names.
	n        int
	readOnly bool
}

type census struct {
	// disks by id, and the disk of each dataset.
	disks     map[string]*allocatorv1.PhysicalDisk
	datasetOf map[string]string // dataset -> disk
	// sets: per live data volume, each region set.
	sets map[string][]censusSet
	// depth: the deepest read-only parent seen.
	depth int
}

func canon(a string) string {
	if ap, err := netip.ParseAddrPort(a); err == nil {
		return ap.String()
	}
	return a
}

func takeCensus(t *testing.T, r *rack.Rack) *census {
	t.Helper()
	ctx := context.Background()
	c := &census{disks: map[string]*allocatorv1.PhysicalDisk{}, datasetOf: map[string]string{}, sets: map[string][]censusSet{}}
	disks, err := r.Allocator.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks.Disks {
		c.disks[d.DiskId] = d
		c.datasetOf[d.DatasetId] = d.DiskId
	}
	vols, err := r.Volumes.ListVolumes(ctx, &volumev1.ListVolumesRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if vols.NextPageToken != "" {
		t.Fatal("more than a page of volumes")
	}
	for _, v := range vols.Volumes {
		if v.Purpose != volumev1.VolumePurpose_VOLUME_PURPOSE_DATA {
			continue
		}
		byAddr := map[string]*commonv1.Target{}
		for _, tg := range v.Targets {
			byAddr[canon(tg.Address)] = tg
		}
		var sets []censusSet
		var walk func(n *commonv1.VolumeConstructionRequest, depth int)
		walk = func(n *commonv1.VolumeConstructionRequest, depth int) {
			switch k := n.GetKind().(type) {
			case *commonv1.VolumeConstructionRequest_Volume:
				for _, s := range k.Volume.SubVolumes {
					walk(s, depth)
				}
				if k.Volume.ReadOnlyParent != nil {
					walk(k.Volume.ReadOnlyParent, depth+1)
				}
			case *commonv1.VolumeConstructionRequest_Region:
				c.depth = max(c.depth, depth)
				set := censusSet{live: []string{}, n: len(k.Region.GetOpts().GetTarget()), readOnly: k.Region.GetOpts().GetReadOnly()}
				for _, a := range k.Region.GetOpts().GetTarget() {
					tg := byAddr[canon(a)]
					if tg == nil {
						continue
					}
					d := c.disks[c.datasetOf[tg.DatasetId]]
					if d == nil {
						continue
					}
					set.all = append(set.all, d.DiskId)
					if tg.State != commonv1.TargetState_TARGET_STATE_DELETING && d.Policy != allocatorv1.Policy_POLICY_EXPUNGED {
						set.live = append(set.live, d.DiskId)
					}
				}
				sets = append(sets, set)
			}
		}
		walk(v.Vcr, 0)
		c.sets[v.VolumeId] = sets
	}
	return c
}

// redundancy of each live data volume: its weakest set's live copies.
func (c *census) redundancy() map[string]int {
	out := map[string]int{}
	for v, sets := range c.sets {
		r := 3
		for _, s := range sets {
			r = min(r, len(s.live))
		}
		out[v] = r
	}
	return out
}

func (c *census) counts() []int64 {
	out := make([]int64, 4)
	for _, r := range c.redundancy() {
		out[r]++
	}
	return out
}

// losers are the volumes some of whose sets would lose their last live
// copy if the disks were expunged too.
func (c *census) losers(disks []string) []string {
	gone := map[string]bool{}
	for _, d := range disks {
		gone[d] = true
	}
	var out []string
	for v, sets := range c.sets {
		for _, s := range sets {
			left := 0
			for _, d := range s.live {
				if !gone[d] {
					left++
				}
			}
			if len(s.live) > 0 && left == 0 {
				out = append(out, v)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// roomy reports whether, with the disks expunged too, every region set
// that would then miss k copies still has k in-service sleds holding none
// of its copies (where the allocator can put its replacements), leaving
// aside sets already short now.
func (c *census) roomy(disks []string) bool {
	gone := map[string]bool{}
	for _, d := range disks {
		gone[d] = true
	}
	short := func(s censusSet, gone map[string]bool) bool {
		need := s.n - len(s.live)
		for _, d := range s.live {
			if gone[d] {
				need++
			}
		}
		occupied := map[string]bool{}
		for _, d := range s.all {
			occupied[c.disks[d].SledId] = true
		}
		up := map[string]bool{}
		for _, d := range c.disks {
			if d.Policy != allocatorv1.Policy_POLICY_EXPUNGED && !gone[d.DiskId] && !occupied[d.SledId] {
				up[d.SledId] = true
			}
		}
		return need > 0 && len(up) < need
	}
	for _, sets := range c.sets {
		for _, s := range sets {
			if short(s, gone) && !short(s, nil) {
				return false
			}
		}
	}
	return true
}

// checkRedundancy waits until GetVolume, ListDegradedVolumes and the gauge
// all agree with a census taken while nothing changes.
func checkRedundancy(t *testing.T, r *rack.Rack, what string) *census {
	t.Helper()
	ctx := context.Background()
	c := takeCensus(t, r)
	want := c.redundancy()
	harness.Eventually(t, 30*time.Second, what+": redundancy agrees with the census", func() error {
		for v, n := range want {
			resp, err := r.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: v, IncludeRedundancy: true})
			if err != nil {
				return err
			}
			if got := resp.Redundancy.GetRedundancy(); int(got) != n {
				return fmt.Errorf("GetVolume(%s): redundancy %d, census %d", v, got, n)
			}
		}
		deg, err := r.Volumes.ListDegradedVolumes(ctx, &volumev1.ListDegradedVolumesRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		var got, exp []string
		for _, v := range deg.Volumes {
			got = append(got, fmt.Sprintf("%d/%s", v.Redundancy, v.VolumeId))
		}
		for v, n := range want {
			if n < 3 {
				exp = append(exp, fmt.Sprintf("%d/%s", n, v))
			}
		}
		sort.Strings(exp) // worst first, then by id: the cursor order
		if !slices.Equal(got, exp) {
			return fmt.Errorf("degraded %v, census %v", got, exp)
		}
		if !slices.Equal(deg.VolumesAtRedundancy, c.counts()) {
			return fmt.Errorf("ListDegradedVolumes counts %v, census %v", deg.VolumesAtRedundancy, c.counts())
		}
		samples, err := harness.ScrapeProc(ctx, r.Stack, stack.Volume)
		if err != nil {
			return err
		}
		gauge := make([]int64, 4)
		seen := 0
		for _, s := range samples {
			if s.Name == "storagecp_volume_redundancy" {
				var lvl int
				fmt.Sscan(s.Labels["redundancy"], &lvl)
				gauge[lvl] = int64(s.Value)
				seen++
			}
		}
		if seen != 4 || !slices.Equal(gauge, c.counts()) {
			return fmt.Errorf("gauge %v (%d series), census %v", gauge, seen, c.counts())
		}
		return nil
	})
	return c
}

// chain makes disk → snapshot → clone → snapshot → clone: the last clone
// reads read-only parents at depth 1 and 2. It returns the volumes.
func chain(t *testing.T, r *rack.Rack) (base string, vols []string) {
	base = r.CreateDisk(t)
	s0 := r.Snapshot(t, base)
	c1 := r.Clone(t, s0)
	s1 := r.Snapshot(t, c1)
	c2 := r.Clone(t, s1)
	return base, []string{base, s0, c1, s1, c2}
}

type degradedJSON struct {
	Volumes []struct {
		Volume struct {
			VolumeID string `json:"volumeId"`
			Sets     []struct {
				LiveCopies int `json:"liveCopies"`
				Copies     []struct {
					TargetID string `json:"targetId"`
					Live     bool   `json:"live"`
				} `json:"copies"`
			} `json:"sets"`
		} `json:"volume"`
		WaitingFor []string `json:"waitingFor"`
	} `json:"volumes"`
}

// checkWaiting runs storctl volumes degraded -o json and checks that every
// copy that is not live is accounted for: the request for its target
// (from ListReplacements, read here) or "no request yet". wantRequests:
// some copy has a request (none has, when false).
func checkWaiting(t *testing.T, r *rack.Rack, wantRequests bool) {
	t.Helper()
	reps, err := r.Replacement.ListReplacements(context.Background(), &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	reqOf := map[string]string{}
	for _, rep := range reps.Replacements {
		reqOf[rep.OldTargetId] = rep.ReplacementId
	}
	stdout, stderr, code := storctl(t, r, "volumes", "degraded", "-o", "json")
	if code != 0 {
		t.Fatalf("volumes degraded: exit %d\n%s", code, stderr)
	}
	var out degradedJSON
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("volumes degraded -o json: %v\n%s", err, stdout)
	}
	if len(out.Volumes) == 0 {
		t.Fatal("volumes degraded lists nothing")
	}
	named := 0
	defer func() {
		if wantRequests && named == 0 {
			t.Error("volumes degraded names no request")
		}
	}()
	for _, v := range out.Volumes {
		text := strings.Join(v.WaitingFor, "\n")
		for _, s := range v.Volume.Sets {
			if s.LiveCopies >= 3 {
				continue
			}
			for _, cp := range s.Copies {
				if cp.Live {
					continue
				}
				req, ok := reqOf[cp.TargetID]
				switch {
				case ok && !strings.Contains(text, "request "+req):
					t.Errorf("volume %s: copy %s has request %s, but storctl says %q", v.Volume.VolumeID, cp.TargetID, req, text)
				case !ok && !strings.Contains(text, "no request yet for "+cp.TargetID):
					t.Errorf("volume %s: copy %s has no request, but storctl says %q", v.Volume.VolumeID, cp.TargetID, text)
				case ok && !wantRequests:
					t.Errorf("volume %s: copy %s has request %s before any detector ran", v.Volume.VolumeID, cp.TargetID, req)
				}
				if ok {
					named++
				}
			}
		}
	}
}

// TestRedundancyAsDisksGo builds two clone chains (read-only parents at
// depth 2), expunges disks one by one behind the detectors' back, and after
// each checks every volume's redundancy, the degraded list and the gauge
// against the census; storctl's degraded list says no request exists yet.
// Then the detectors run with every ro-replacement-start failing (a fault
// hook): the rw replacements complete and the views follow, while the
// read-only requests keep waiting and storctl names them and their waits.
func TestRedundancyAsDisksGo(t *testing.T) {
	t.Parallel()
	start := time.Now()
	r := rack.Start(t, 8, 1, stack.Config{
		ExtraArgs: map[string][]string{
			stack.Volume: {"--redundancy-period", "200ms"},
			// A volume that lost two rw copies is repaired one copy after
			// the other; the second retries until the first is done.
			stack.Orchestrator: {"--retry-backoff-max", "1s"},
		},
		Env: []string{"STORAGECP_FAIL_AT=ro-replacement-start/get_clone_source"},
	})
	ctx := context.Background()
	baseA, _ := chain(t, r)
	baseB, _ := chain(t, r)
	c := checkRedundancy(t, r, "healthy")
	if c.depth < 2 {
		t.Fatalf("deepest read-only parent at depth %d, want 2", c.depth)
	}
	if got := c.counts(); got[3] != 10 {
		t.Fatalf("healthy rack: counts %v, want 10 volumes at 3", got)
	}
	// Every volume of chain A reads the base disk's snapshot, which lives
	// on the base disk's three disks: expunge two of them, then disks of
	// B's base while no set loses its last copy.
	var victims []string
	for _, tg := range r.Targets(t, baseA, commonv1.TargetKind_TARGET_KIND_RW_REGION)[:2] {
		victims = append(victims, r.DiskOf(t, tg.DatasetId))
	}
	for _, tg := range r.Targets(t, baseB, commonv1.TargetKind_TARGET_KIND_RW_REGION) {
		if d := r.DiskOf(t, tg.DatasetId); !slices.Contains(victims, d) && len(c.losers(append(slices.Clone(victims), d))) == 0 {
			victims = append(victims, d)
		}
	}
	for i, d := range victims {
		if _, err := r.Allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: d}); err != nil {
			t.Fatal(err)
		}
		c = checkRedundancy(t, r, fmt.Sprintf("after expunge %d", i+1))
		t.Logf("after expunging %d disk(s): volumes at redundancy 0..3: %v", i+1, c.counts())
	}
	if got := c.counts(); got[1] < 5 || got[0] != 0 {
		t.Fatalf("after %d expunges: counts %v, want chain A's 5 volumes at 1 and none at 0", len(victims), got)
	}

	checkWaiting(t, r, false)
	if stdout, _, code := storctl(t, r, "volumes", "degraded"); code == 0 {
		t.Logf("storctl volumes degraded, before any request:\n%s", stdout)
	}
	if stdout, _, code := storctl(t, r, "volumes", "show", baseA); code != 0 || !strings.Contains(stdout, "Redundancy: 1") {
		t.Errorf("volumes show %s: exit %d, want redundancy 1:\n%s", baseA, code, stdout)
	}

	// The detectors find the expunged disks; the rw replacements run to
	// the end, the read-only ones fail and wait.
	for _, task := range []string{"ro_replacement_detector", "rw_replacement_detector"} {
		if _, err := r.Admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: task}); err != nil {
			t.Fatal(err)
		}
	}
	before := c.redundancy()
	// A rw copy whose region has a region snapshot is freed only once that
	// region snapshot is replaced (never here), so a second rw replacement
	// in the same set keeps failing at its allocation: wait until every
	// request has been tried and nothing more can complete.
	harness.Eventually(t, 2*time.Minute, "every request tried, some rw replacement complete", func() error {
		resp, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		ro, done := 0, 0
		for _, rep := range resp.Replacements {
			switch {
			case rep.Kind != orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION:
				if rep.Attempts == 0 {
					return fmt.Errorf("read-only request %s not tried yet", rep.ReplacementId)
				}
				ro++
			case rep.RegionState == orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE:
				done++
			case rack.Terminal(rep):
				t.Fatalf("rw request %s ended %v: %s", rep.ReplacementId, rep.RegionState, rep.EndReason)
			case rep.Attempts < 2 || rep.Wait.GetKind() == orchestratorv1.WaitKind_WAIT_KIND_SAGA:
				return fmt.Errorf("rw request %s is %v (attempt %d, %v)", rep.ReplacementId, rep.RegionState, rep.Attempts, rep.Wait.GetKind())
			}
		}
		if ro == 0 || done == 0 {
			return fmt.Errorf("%d read-only requests, %d rw complete", ro, done)
		}
		return nil
	})
	c = checkRedundancy(t, r, "after the rw replacements")
	t.Logf("after the rw replacements: volumes at redundancy 0..3: %v", c.counts())
	gained := 0
	for v, n := range c.redundancy() {
		if n < before[v] {
			t.Errorf("volume %s went from redundancy %d to %d while replacements ran", v, before[v], n)
		}
		if n > before[v] {
			gained++
		}
	}
	if gained == 0 {
		t.Errorf("no volume gained redundancy from the completed rw replacements: %v", c.counts())
	}
	checkWaiting(t, r, true)
	if stdout, _, code := storctl(t, r, "volumes", "degraded"); code == 0 {
		t.Logf("storctl volumes degraded, read-only requests failing:\n%s", stdout)
	}
	r.Invariants(t)
	t.Logf("wall time %s", time.Since(start).Round(time.Millisecond))
}

// okAnswer asks PreviewExpunge's ok-to-expunge mode.
func okAnswer(t *testing.T, r *rack.Rack, req *orchestratorv1.PreviewExpungeRequest) *orchestratorv1.PreviewExpungeResponse {
	t.Helper()
	resp := preview(t, r, req)
	if resp.OkToExpunge == nil {
		t.Fatal("no ok_to_expunge in the answer")
	}
	return resp
}

func chosenDisks(ok *orchestratorv1.OkToExpunge) []string {
	var out []string
	for _, c := range ok.Chosen {
		out = append(out, c.DiskIds...)
	}
	sort.Strings(out)
	return out
}

// checkAnswer holds an ok-to-expunge answer to the census: the chosen
// disks lose nothing; each candidate left out for data loss would lose
// what it names, and the preview of chosen+it says data loss too; with no
// capacity exclusions, no larger safe subset exists (brute force).
func checkAnswer(t *testing.T, r *rack.Rack, c *census, max int, resp *orchestratorv1.PreviewExpungeResponse) {
	t.Helper()
	ok := resp.OkToExpunge
	chosen := chosenDisks(ok)
	if l := c.losers(chosen); len(l) != 0 || !c.roomy(chosen) {
		t.Fatalf("the answer %v loses volumes %v (or leaves a set no sled: room %v)", chosen, l, c.roomy(chosen))
	}
	if resp.DataLoss || !resp.CapacityOk {
		t.Fatalf("the preview of the answer: data_loss=%v capacity_ok=%v (%s)", resp.DataLoss, resp.CapacityOk, resp.CapacityDetail)
	}
	capacityOut := false
	for _, lo := range ok.LeftOut {
		with := append(slices.Clone(chosen), lo.Candidate.DiskIds...)
		losers := c.losers(with)
		switch lo.Reason {
		case orchestratorv1.LeftOutReason_LEFT_OUT_REASON_DATA_LOSS:
			if len(losers) == 0 {
				t.Errorf("%v left out for data loss, but the census loses nothing with it", lo.Candidate)
			}
			for _, v := range lo.VolumeIds {
				if !slices.Contains(losers, v) {
					t.Errorf("%v names volume %s, which the census says keeps a copy", lo.Candidate, v)
				}
			}
			if len(lo.VolumeIds) != min(len(losers), 20) {
				t.Errorf("%v names %d volumes, the census %d", lo.Candidate, len(lo.VolumeIds), len(losers))
			}
			p := preview(t, r, &orchestratorv1.PreviewExpungeRequest{DiskIds: with})
			if !p.DataLoss {
				t.Errorf("the preview of the answer plus %v finds no data loss", lo.Candidate)
			}
		case orchestratorv1.LeftOutReason_LEFT_OUT_REASON_MAX_REACHED:
			if len(losers) != 0 || !c.roomy(with) || len(ok.Chosen) != max {
				t.Errorf("%v left out for the limit, but it loses %v (or lacks room, or the answer is below %d)", lo.Candidate, losers, max)
			}
		case orchestratorv1.LeftOutReason_LEFT_OUT_REASON_CAPACITY:
			if len(losers) != 0 {
				t.Errorf("%v left out for capacity, but it would lose %v", lo.Candidate, losers)
			}
			if c.roomy(with) {
				// Not the sled rule: the bytes the preview's dry runs
				// found short; the search was run again without it.
				capacityOut = true
			}
		default:
			t.Errorf("%v left out for %v", lo.Candidate, lo.Reason)
		}
	}
	if !ok.Exact {
		t.Errorf("answer over %d candidates not exact: %s", len(ok.Chosen)+len(ok.LeftOut), ok.Method)
	}
	if capacityOut {
		return
	}
	// Brute force over the candidates: the largest subset that loses
	// nothing and leaves room.
	var cands [][]string
	for _, cd := range ok.Chosen {
		cands = append(cands, cd.DiskIds)
	}
	for _, lo := range ok.LeftOut {
		cands = append(cands, lo.Candidate.DiskIds)
	}
	best := 0
	for m := 0; m < 1<<len(cands); m++ {
		n := 0
		var ds []string
		for i := range cands {
			if m&(1<<i) != 0 {
				n++
				ds = append(ds, cands[i]...)
			}
		}
		if n <= max && n > best && len(c.losers(ds)) == 0 && c.roomy(ds) {
			best = n
		}
	}
	if len(ok.Chosen) != best {
		t.Errorf("answer holds %d candidates, the largest safe subset %d", len(ok.Chosen), best)
	}
}

// TestOkToExpunge asks which disks (and which sleds) of a rack holding two
// clone chains can go together, checks the answers against the census,
// then expunges exactly the disk answer: every replacement completes, none
// DataLost, and every volume keeps a copy throughout.
func TestOkToExpunge(t *testing.T) {
	t.Parallel()
	start := time.Now()
	r := rack.Start(t, 5, 2, stack.Config{ExtraArgs: map[string][]string{
		stack.Volume:       {"--redundancy-period", "200ms"},
		stack.Orchestrator: {"--retry-backoff-max", "1s"},
	}})
	ctx := context.Background()
	base, _ := chain(t, r)
	chain(t, r)
	c := checkRedundancy(t, r, "healthy")

	// The three disks of the first base disk's regions hold every copy of
	// its snapshot, which every volume of its chain reads: together they
	// lose data (the multi-disk preview agrees with the census), and no
	// answer over them holds all three.
	var baseDisks []string
	for _, tg := range r.Targets(t, base, commonv1.TargetKind_TARGET_KIND_RW_REGION) {
		baseDisks = append(baseDisks, r.DiskOf(t, tg.DatasetId))
	}
	if p := preview(t, r, &orchestratorv1.PreviewExpungeRequest{DiskIds: baseDisks}); !p.DataLoss || len(c.losers(baseDisks)) < 5 {
		t.Fatalf("previewing %v together: data_loss=%v, census losers %v", baseDisks, p.DataLoss, c.losers(baseDisks))
	}
	three := okAnswer(t, r, &orchestratorv1.PreviewExpungeRequest{OkToExpungeMax: 3, DiskIds: baseDisks})
	checkAnswer(t, r, c, 3, three)
	if len(three.OkToExpunge.Chosen) == 3 {
		t.Fatalf("ok-to-expunge chose every copy of a snapshot: %v", three.OkToExpunge)
	}

	// Sleds: which whole sleds can go together.
	sledResp := okAnswer(t, r, &orchestratorv1.PreviewExpungeRequest{OkToExpungeMax: 5, SledIds: sledsOf(c)})
	checkAnswer(t, r, c, 5, sledResp)
	if stdout, _, code := storctl(t, r, "disks", "ok-to-expunge", "--max", "5", "--candidates", strings.Join(sledsOf(c), ",")); code == 0 {
		t.Logf("storctl disks ok-to-expunge --max 5 --candidates <every sled>:\n%s", stdout)
	}

	// Disks: every in-service disk a candidate.
	const max = 10
	resp := okAnswer(t, r, &orchestratorv1.PreviewExpungeRequest{OkToExpungeMax: max})
	checkAnswer(t, r, c, max, resp)
	stdout, stderr, code := storctl(t, r, "disks", "ok-to-expunge", "--max", fmt.Sprint(max))
	if code != 0 || !strings.Contains(stdout, fmt.Sprintf("Ok to expunge together: %d of 10 candidates", len(resp.OkToExpunge.Chosen))) {
		t.Fatalf("storctl disks ok-to-expunge: exit %d\n%s%s", code, stdout, stderr)
	}
	t.Logf("storctl disks ok-to-expunge --max %d:\n%s", max, stdout)

	// Expunge exactly the answer, behind the detectors' back: every
	// volume still has a live copy of every set.
	chosen := chosenDisks(resp.OkToExpunge)
	for _, d := range chosen {
		if _, err := r.Allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: d}); err != nil {
			t.Fatal(err)
		}
	}
	after := checkRedundancy(t, r, "after expunging the answer")
	if n := after.counts()[0]; n != 0 {
		t.Fatalf("%d volumes at redundancy 0 after expunging the answer %v", n, chosen)
	}
	t.Logf("after expunging the %d disks of the answer: volumes at redundancy 0..3: %v", len(chosen), after.counts())
	for _, task := range []string{"ro_replacement_detector", "rw_replacement_detector"} {
		if _, err := r.Admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: task}); err != nil {
			t.Fatal(err)
		}
	}
	reps := r.WaitRequests(t, 2*time.Minute)
	for _, rep := range reps {
		if rep.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE &&
			rep.RegionState != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE {
			t.Errorf("request %s for %s ended %v%v: %s", rep.ReplacementId, rep.OldTargetId, rep.ReadOnlyState, rep.RegionState, rep.EndReason)
		}
	}
	final := checkRedundancy(t, r, "after the replacements")
	t.Logf("%d replacements, all complete; volumes at redundancy 0..3: %v", len(reps), final.counts())
	if got := final.counts(); got[3] != 10 {
		t.Errorf("after the replacements: counts %v, want all 10 at 3", got)
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
	t.Logf("wall time %s", time.Since(start).Round(time.Millisecond))
}

func sledsOf(c *census) []string {
	seen := map[string]bool{}
	var out []string
	for _, d := range c.disks {
		if !seen[d.SledId] {
			seen[d.SledId] = true
			out = append(out, d.SledId)
		}
	}
	sort.Strings(out)
	return out
}
