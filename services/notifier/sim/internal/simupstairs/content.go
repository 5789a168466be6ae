package simupstairs

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	"storagecp.dev/notifier/internal/vcrutil"
	"storagecp.dev/platform/target"
)

// The content oracle. The liveness probe only asks whether each target is
// still served; it cannot see a replacement that cloned other bytes (a copy
// of another snapshot, or of the same region at another time), nor a volume
// left naming copies that no longer answer while the control plane believes
// it repaired. The allocator's probe also returns the content identity of
// what each address serves (what bytes it would hold, derived from its
// lineage), and for every volume it runs this Upstairs checks, at every
// probe and right after every ReplaceVolume it accepts:
//
//   - every copy at a position (a region set of the VCR tree, in the
//     sub-volumes or the read-only parents, at any depth) reads the content
//     the position held when the volume was activated — changed since only by
//     this Upstairs' own writes to its rw positions; a target being filled by
//     a live repair is exempt until the repair ends, and rw positions until
//     the activation's reconciliation settles their content;
//   - the copies of a position agree (with no expected content known yet);
//   - some copy of every position can still be read.
//
// Each violation is counted once per activation (a content-mismatch event,
// per volume and in a process total that survives ForgetAll) and logged at
// error level with the volume, the position and the addresses — never a
// VCR, which carries keys.

// dataPath is the allocator's dev-only AgentDataService: where this
// Upstairs records what its writes and repairs do to the regions' bytes.
type dataPath interface {
	WriteRegions(ctx context.Context, in *allocatorv1.WriteRegionsRequest, opts ...grpc.CallOption) (*allocatorv1.WriteRegionsResponse, error)
	RepairRegionSet(ctx context.Context, in *allocatorv1.RepairRegionSetRequest, opts ...grpc.CallOption) (*allocatorv1.RepairRegionSetResponse, error)
}

// maxMismatchesListed bounds the violations a status lists (all are counted).
const maxMismatchesListed = 100

// probed is what the allocator said about one address.
type probed struct {
	result  allocatorv1.ProbeResult
	content string
}

// probeVolumes probes every target of the given activations in one call,
// records liveness (data loss, faulted targets) and checks content. An
// activation whose content this Upstairs changed (a write or a repair's
// copy) while the probe was in flight is not checked this time: the answer
// may predate the change.
func (s *Server) probeVolumes(ctx context.Context, acts []*activation) {
	if s.allocator == nil {
		return
	}
	type mark struct {
		a   *activation
		seq uint64
	}
	s.mu.Lock()
	seen := map[string]bool{}
	var addrs []string
	var marks []mark
	for _, a := range acts {
		if s.volumes[a.volumeID] != a {
			continue
		}
		marks = append(marks, mark{a: a, seq: a.dataSeq})
		for _, t := range vcrutil.Targets(a.cur) {
			if !seen[t.Address] {
				seen[t.Address] = true
				addrs = append(addrs, t.Address)
			}
		}
	}
	s.mu.Unlock()
	if len(addrs) == 0 {
		return
	}
	sort.Strings(addrs)
	pctx, cancel := context.WithTimeout(ctx, max(3*s.probeInterval, 2*time.Second))
	resp, err := s.allocator.ProbeTargets(pctx, &allocatorv1.ProbeTargetsRequest{Addresses: addrs})
	cancel()
	if err != nil {
		s.logger.Debug("data-path probe failed", "err", err)
		return
	}
	results := map[string]probed{}
	for _, p := range resp.GetProbes() {
		results[p.GetAddress()] = probed{result: p.GetResult(), content: p.GetContent()}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range marks {
		a := m.a
		if s.volumes[a.volumeID] != a {
			continue
		}
		s.recordLivenessLocked(a, results)
		if a.dataOps == 0 && a.dataSeq == m.seq {
			s.checkContentLocked(a, results)
		}
	}
}

// kickProbe probes one activation now, in the background: at activation
// (so its positions' content is recorded before anything can replace a
// copy) and after an accepted ReplaceVolume.
func (s *Server) kickProbe(a *activation) {
	if s.allocator == nil {
		return
	}
	go s.probeVolumes(s.bg, []*activation{a})
}

// recordLivenessLocked is the liveness probe: destroyed targets are data
// loss, unreachable ones faulted.
func (s *Server) recordLivenessLocked(a *activation, results map[string]probed) {
	// Count each destroyed address once per volume per probe, and only
	// if the volume still uses it (it may have switched meanwhile).
	done := map[string]bool{}
	for _, t := range vcrutil.Targets(a.cur) {
		if done[t.Address] {
			continue
		}
		done[t.Address] = true
		r, ok := results[t.Address]
		if !ok {
			continue
		}
		switch r.result {
		case allocatorv1.ProbeResult_PROBE_RESULT_DESTROYED:
			a.dataLoss++
			s.totalDataLoss++
			if !slices.Contains(a.dataLossAddrs, t.Address) {
				a.dataLossAddrs = append(a.dataLossAddrs, t.Address)
			}
			delete(a.contents, t.Address)
			s.logger.Error("data loss: active volume's target destroyed", "volume_id", a.volumeID, "address", t.Address)
		case allocatorv1.ProbeResult_PROBE_RESULT_UNREACHABLE:
			a.faulted[t.Address] = true
			delete(a.contents, t.Address)
		case allocatorv1.ProbeResult_PROBE_RESULT_SERVED:
			delete(a.faulted, t.Address)
			a.contents[t.Address] = r.content
		}
	}
}

// checkContentLocked applies the content oracle to every position of the
// volume with the probe's results.
func (s *Server) checkContentLocked(a *activation, results map[string]probed) {
	for _, p := range vcrutil.RegionSets(a.cur) {
		if !p.ReadOnly && a.reconciling {
			continue // its content is settled by the reconciliation
		}
		var copies []string
		for _, t := range p.Targets {
			if !a.liveRepair[t] {
				copies = append(copies, t)
			}
		}
		if len(copies) == 0 {
			continue
		}
		served := map[string]string{}
		known := true
		for _, t := range copies {
			r, ok := results[t]
			if !ok {
				known = false
				continue
			}
			if r.result == allocatorv1.ProbeResult_PROBE_RESULT_SERVED {
				served[t] = r.content
			}
		}
		expected, ok := a.expected[p.Path]
		if !ok {
			expected = s.baselineLocked(a, p, served)
		}
		if known && len(served) == 0 {
			s.mismatchLocked(a, &upstairsv1.ContentMismatch{
				Position: p.Path, Kind: upstairsv1.ContentMismatchKind_CONTENT_MISMATCH_KIND_UNREADABLE,
				Addresses: copies, Expected: expected,
			})
			continue
		}
		if expected == "" {
			if distinct := distinctContents(served); len(distinct) > 1 {
				s.mismatchLocked(a, &upstairsv1.ContentMismatch{
					Position: p.Path, Kind: upstairsv1.ContentMismatchKind_CONTENT_MISMATCH_KIND_COPIES_DISAGREE,
					Addresses: sortedKeys(served), Observed: strings.Join(distinct, ","),
				})
			}
			continue
		}
		for _, t := range copies {
			if c, ok := served[t]; ok && c != expected {
				s.mismatchLocked(a, &upstairsv1.ContentMismatch{
					Position: p.Path, Kind: upstairsv1.ContentMismatchKind_CONTENT_MISMATCH_KIND_CHANGED,
					Addresses: []string{t}, Expected: expected, Observed: c,
				})
			}
		}
	}
}

// baselineLocked records what a position is expected to hold, from the
// first probe that reads it: the content its copies agree on, read from
// the copies it had at activation if any of them answers (so that a copy a
// replacement brought in meanwhile cannot set the baseline it is checked
// against). Copies that disagree set nothing ("" is returned).
func (s *Server) baselineLocked(a *activation, p vcrutil.RegionSet, served map[string]string) string {
	from := map[string]string{}
	for _, t := range a.origin[p.Path] {
		if c, ok := served[t]; ok {
			from[t] = c
		}
	}
	if len(from) == 0 {
		from = served
	}
	distinct := distinctContents(from)
	if len(distinct) != 1 {
		return ""
	}
	a.expected[p.Path] = distinct[0]
	return distinct[0]
}

// mismatchLocked counts and logs a violation, once per activation.
func (s *Server) mismatchLocked(a *activation, m *upstairsv1.ContentMismatch) {
	key := fmt.Sprintf("%s|%s|%s|%s", m.GetKind(), m.GetPosition(), strings.Join(m.GetAddresses(), ","), m.GetObserved())
	if a.mismatchSeen[key] {
		return
	}
	a.mismatchSeen[key] = true
	a.mismatches++
	s.totalContentMismatch++
	if len(a.mismatchList) < maxMismatchesListed {
		a.mismatchList = append(a.mismatchList, m)
	}
	s.logger.Error("content mismatch: a running volume does not read what its position held",
		"volume_id", a.volumeID, "position", m.GetPosition(), "kind", m.GetKind().String(),
		"addresses", m.GetAddresses(), "expected", m.GetExpected(), "observed", m.GetObserved())
}

func distinctContents(m map[string]string) []string {
	var out []string
	for _, c := range m {
		out = append(out, c)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// positionsLocked is the expected content of every position, for status.
func positionsLocked(a *activation) []*upstairsv1.PositionContent {
	var out []*upstairsv1.PositionContent
	for _, p := range vcrutil.RegionSets(a.cur) {
		out = append(out, &upstairsv1.PositionContent{Position: p.Path, ReadOnly: p.ReadOnly, Expected: a.expected[p.Path]})
	}
	return out
}

// errNoDataPath is why a write cannot be made.
var errNoDataPath = status.Error(codes.FailedPrecondition,
	"no data path: this sim-upstairs has no allocator, or the allocator does not serve AgentDataService (run it with --dev)")

// Write implements UpstairsService: the volume's guest writes, and every
// rw region of its sub-volumes gets one new content identity.
func (s *Server) Write(ctx context.Context, req *upstairsv1.WriteRequest) (*upstairsv1.WriteResponse, error) {
	if err := s.faults.apply(ctx, "Write"); err != nil {
		return nil, err
	}
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id: required")
	}
	if s.data == nil {
		return nil, errNoDataPath
	}
	s.mu.Lock()
	a := s.volumes[req.GetVolumeId()]
	if a == nil {
		s.mu.Unlock()
		return nil, status.Errorf(codes.NotFound, "volume %s is not active here", req.GetVolumeId())
	}
	var positions []vcrutil.RegionSet
	for _, p := range vcrutil.RegionSets(a.cur) {
		if !p.ReadOnly && !strings.Contains(p.Path, ".read_only_parent") {
			positions = append(positions, p)
		}
	}
	switch {
	case a.readOnly:
		s.mu.Unlock()
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is active read-only", a.volumeID)
	case len(positions) == 0:
		s.mu.Unlock()
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s has no read/write region", a.volumeID)
	case a.reconciling:
		s.mu.Unlock()
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still reconciling", a.volumeID)
	}
	var addrs []string
	for _, p := range positions {
		addrs = append(addrs, p.Targets...)
	}
	// While the write is in flight no probe checks this volume: its copies
	// change before the expected content does.
	a.dataOps++
	s.mu.Unlock()

	resp, err := s.data.WriteRegions(ctx, &allocatorv1.WriteRegionsRequest{Addresses: addrs, WriteId: uuid.NewString()})

	s.mu.Lock()
	defer s.mu.Unlock()
	a.dataOps--
	a.dataSeq++
	if err != nil {
		if status.Code(err) == codes.Unimplemented {
			return nil, errNoDataPath
		}
		return nil, err
	}
	written := map[string]bool{}
	for _, w := range resp.GetWritten() {
		written[w] = true
	}
	for _, p := range positions {
		// A position none of whose copies took the write keeps its content
		// (and will read as changed if any copy comes back).
		if slices.ContainsFunc(p.Targets, func(t string) bool { return written[canonical(t)] }) {
			a.expected[p.Path] = resp.GetContent()
		}
	}
	return &upstairsv1.WriteResponse{Content: resp.GetContent(), Written: resp.GetWritten(), Skipped: resp.GetSkipped()}, nil
}

// canonical is the allocator's spelling of an address (it answers with
// canonical ones); an address it cannot parse is kept as is.
func canonical(addr string) string {
	if c, err := target.Canonical(addr); err == nil {
		return c
	}
	return addr
}

// recordRepair records on the agents what the end of a repair of one rw
// region set did to its bytes (repair lists the copies a live repair
// filled; empty for a reconciliation) and returns the content the set now
// holds ("" when nothing could be recorded). It retries while the allocator
// is unreachable for a while, as the repair reports do; a refusal (no copy
// to repair from, copies that disagree) is logged, and the oracle sees the
// copies differ.
func (s *Server) recordRepair(a *activation, position string, targets, repair []string) string {
	if s.data == nil {
		return ""
	}
	req := &allocatorv1.RepairRegionSetRequest{Addresses: targets, Repair: repair}
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(s.bg, 5*time.Second)
		resp, err := s.data.RepairRegionSet(ctx, req)
		cancel()
		if err == nil {
			return resp.GetContent()
		}
		code := status.Code(err)
		if code == codes.Unimplemented {
			s.logger.Warn("repair not recorded: the allocator has no AgentDataService (run it with --dev)", "volume_id", a.volumeID, "position", position)
			return ""
		}
		if (code != codes.Unavailable && code != codes.DeadlineExceeded) || attempt >= 20 || s.bg.Err() != nil {
			s.logger.Error("repair not recorded on the agents: the repaired copies keep their content",
				"volume_id", a.volumeID, "position", position, "targets", targets, "repair", repair, "err", err)
			return ""
		}
		if s.sleep(backoff) {
			return ""
		}
		backoff = min(2*backoff, time.Second)
	}
}
