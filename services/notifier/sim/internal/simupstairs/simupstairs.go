// Package simupstairs is the simulated Upstairs host (Propolis or Pantry).
//
// One process holds, per activated volume, the VCR it runs. It answers
// ReplaceVolume as Crucible does, reports reconciliation and live repairs to
// the upstairs-notifier, and probes the data path of every active volume
// through the allocator. Two oracles integration tests check stay zero: the
// liveness one counts any target found destroyed as a data-loss event; the
// content one (content.go) counts any copy that reads other bytes than its
// position held, copies that disagree, and positions no copy of which can
// be read. Writes (the Write RPC) and the bytes repairs copy are recorded on
// the simulated agents through the allocator's dev-only AgentDataService.
// With no allocator address there is no data path: no probes, no writes.
package simupstairs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	"storagecp.dev/notifier/internal/vcrutil"
	"storagecp.dev/platform/grpcclient"
	"storagecp.dev/platform/mtls"
)

// Defaults of the tunables.
const (
	DefaultRepairDelay   = 200 * time.Millisecond
	DefaultProbeInterval = 300 * time.Millisecond
)

// Option tunes a Server.
type Option func(*Server)

// WithRepairDelay sets how long a simulated live repair or reconciliation
// takes.
func WithRepairDelay(d time.Duration) Option { return func(s *Server) { s.repairDelay = d } }

// WithProbeInterval sets the data-path probe period.
func WithProbeInterval(d time.Duration) Option { return func(s *Server) { s.probeInterval = d } }

// notifierClient is what the sim reports repairs to.
type notifierClient interface {
	RepairStart(ctx context.Context, in *notifierv1.RepairStartRequest, opts ...grpc.CallOption) (*notifierv1.RepairStartResponse, error)
	RepairFinish(ctx context.Context, in *notifierv1.RepairFinishRequest, opts ...grpc.CallOption) (*notifierv1.RepairFinishResponse, error)
}

// prober is the allocator's data-path probe.
type prober interface {
	ProbeTargets(ctx context.Context, in *allocatorv1.ProbeTargetsRequest, opts ...grpc.CallOption) (*allocatorv1.ProbeTargetsResponse, error)
}

// Server is the UpstairsService of one sim-upstairs process.
type Server struct {
	upstairsv1.UnimplementedUpstairsServiceServer
	logger   *slog.Logger
	notifier notifierClient
	// allocator and data are nil without an allocator: no data path.
	allocator     prober
	data          dataPath
	faults        *FaultServer
	repairDelay   time.Duration
	probeInterval time.Duration

	// bg bounds the background repair reports; cancelled by Run's end.
	bg       context.Context
	cancelBg context.CancelFunc

	mu      sync.Mutex
	volumes map[string]*activation
	// lastGen is the highest generation ever activated per volume id, kept
	// across Deactivate (a downstairs remembers) and dropped by ForgetAll.
	lastGen map[string]uint64
	// activations counts the Activate calls accepted per volume id, kept
	// across deactivation like lastGen.
	activations map[string]int64
	// totalDataLoss survives ForgetAll: data loss seen is never unseen.
	totalDataLoss int64
	// totalContentMismatch survives ForgetAll too.
	totalContentMismatch int64
}

// activation is one volume as this Upstairs runs it. Background work holds
// the pointer and checks it is still the current one before acting.
type activation struct {
	volumeID   string
	upstairsID string
	sessionID  string
	readOnly   bool
	// cur is the VCR currently in effect (targets switched by replacements).
	cur          *commonv1.VolumeConstructionRequest
	gen          uint64
	seenActive   bool
	reconciling  bool
	replacements []*replacement
	// liveRepair: addresses being filled by a live repair.
	liveRepair map[string]bool
	// faulted: addresses the last probe found unreachable.
	faulted       map[string]bool
	dataLoss      int64
	dataLossAddrs []string
	replaceCalls  int64

	// The content oracle (content.go). expected is what each position
	// (region set path) is expected to hold; origin its copies at
	// activation; contents what the last probe found served per address.
	expected     map[string]string
	origin       map[string][]string
	contents     map[string]string
	mismatches   int64
	mismatchList []*upstairsv1.ContentMismatch
	mismatchSeen map[string]bool
	// dataOps counts this Upstairs' writes and repair copies in flight;
	// dataSeq rises as each ends. A probe checks content only if neither
	// moved while it was in flight.
	dataOps int
	dataSeq uint64

	// gone: deactivated (repairs report an abort) or forgotten (silence).
	gone      bool
	forgotten bool
}

// replacement is one accepted ReplaceVolume that changed a target.
type replacement struct {
	vcr      *commonv1.VolumeConstructionRequest
	old, new string
	// path is the position (region set) whose target changed.
	path string
	done bool
}

// New returns a sim-upstairs reporting to the notifier and probing through
// the allocator (none when allocatorAddr is empty: no data path). Call Run
// to start the probe loop.
func New(logger *slog.Logger, transport *mtls.Transport, notifierAddr, allocatorAddr string, opts ...Option) (*Server, error) {
	nc, err := grpcclient.Dial(notifierAddr, transport.DialOption(mtls.UpstairsNotifier))
	if err != nil {
		return nil, err
	}
	bg, cancel := context.WithCancel(context.Background())
	s := &Server{
		logger:        logger,
		notifier:      notifierv1.NewUpstairsNotifierServiceClient(nc),
		repairDelay:   DefaultRepairDelay,
		probeInterval: DefaultProbeInterval,
		bg:            bg,
		cancelBg:      cancel,
		volumes:       map[string]*activation{},
		lastGen:       map[string]uint64{},
		activations:   map[string]int64{},
	}
	if allocatorAddr != "" {
		ac, err := grpcclient.Dial(allocatorAddr, transport.DialOption(mtls.RegionAllocator))
		if err != nil {
			cancel()
			return nil, err
		}
		s.allocator = allocatorv1.NewRegionAllocatorServiceClient(ac)
		s.data = allocatorv1.NewAgentDataServiceClient(ac)
	}
	s.faults = &FaultServer{s: s}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// Faults is the development-only fault injection service.
func (s *Server) Faults() *FaultServer { return s.faults }

// Run probes the data path of every active volume until ctx ends, then
// stops background repair reports.
func (s *Server) Run(ctx context.Context) {
	defer s.cancelBg()
	if s.probeInterval <= 0 || s.allocator == nil {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(s.probeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.probeOnce(ctx)
		}
	}
}

// Activate implements UpstairsService.
func (s *Server) Activate(ctx context.Context, req *upstairsv1.ActivateRequest) (*upstairsv1.ActivateResponse, error) {
	if err := s.faults.apply(ctx, "Activate"); err != nil {
		return nil, err
	}
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id: required")
	}
	if err := vcrutil.Validate(req.GetVcr()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "vcr: %v", err)
	}
	gen := vcrutil.Generation(req.GetVcr())
	s.mu.Lock()
	defer s.mu.Unlock()
	if last, ok := s.lastGen[req.GetVolumeId()]; ok && gen <= last && gen > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "generation %d is not higher than %d, the last activated", gen, last)
	}
	if old := s.volumes[req.GetVolumeId()]; old != nil {
		// A restart on a higher generation: the old session ends silently.
		old.gone, old.forgotten = true, true
	}
	a := &activation{
		volumeID:   req.GetVolumeId(),
		upstairsID: req.GetUpstairsId(),
		sessionID:  uuid.NewString(),
		readOnly:   req.GetReadOnly(),
		cur:        proto.Clone(req.GetVcr()).(*commonv1.VolumeConstructionRequest),
		gen:        gen,
		liveRepair: map[string]bool{},
		faulted:    map[string]bool{},

		expected:     map[string]string{},
		origin:       map[string][]string{},
		contents:     map[string]string{},
		mismatchSeen: map[string]bool{},
	}
	for _, p := range vcrutil.RegionSets(a.cur) {
		a.origin[p.Path] = p.Targets
	}
	if a.upstairsID == "" {
		a.upstairsID = uuid.NewString()
	}
	s.volumes[a.volumeID] = a
	s.lastGen[a.volumeID] = gen
	s.activations[a.volumeID]++
	rw := rwTargets(a.cur)
	if a.readOnly || len(rw) == 0 {
		a.seenActive = true
	} else {
		// Activation reconciles the rw region sets; only then is the volume
		// fully active (a Pantry's seen_active).
		a.reconciling = true
		go s.reconcile(a, rw)
	}
	// Record what every position holds now, before anything can replace a
	// copy.
	s.kickProbe(a)
	return &upstairsv1.ActivateResponse{Status: s.statusLocked(a)}, nil
}

// Deactivate implements UpstairsService.
func (s *Server) Deactivate(ctx context.Context, req *upstairsv1.DeactivateRequest) (*upstairsv1.DeactivateResponse, error) {
	if err := s.faults.apply(ctx, "Deactivate"); err != nil {
		return nil, err
	}
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id: required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.volumes[req.GetVolumeId()]; a != nil {
		a.gone = true
		delete(s.volumes, req.GetVolumeId())
	}
	return &upstairsv1.DeactivateResponse{}, nil
}

// ReplaceVolume implements UpstairsService with Crucible's answers.
func (s *Server) ReplaceVolume(ctx context.Context, req *upstairsv1.ReplaceVolumeRequest) (*upstairsv1.ReplaceVolumeResponse, error) {
	if err := s.faults.apply(ctx, "ReplaceVolume"); err != nil {
		return nil, err
	}
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id: required")
	}
	if err := vcrutil.Validate(req.GetVcr()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "vcr: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.volumes[req.GetVolumeId()]
	if a == nil {
		return nil, status.Errorf(codes.NotFound, "volume %s is not active here", req.GetVolumeId())
	}
	a.replaceCalls++
	res, detail := s.replaceLocked(a, req.GetVcr())
	if res == upstairsv1.ReplaceResult_REPLACE_RESULT_STARTED {
		// Check the new target against what its position held at once,
		// not only at the next probe.
		s.kickProbe(a)
	}
	return &upstairsv1.ReplaceVolumeResponse{Result: res, Detail: detail}, nil
}

// replaceLocked decides the answer to a ReplaceVolume and starts the switch.
func (s *Server) replaceLocked(a *activation, next *commonv1.VolumeConstructionRequest) (upstairsv1.ReplaceResult, string) {
	changes, err := vcrutil.Diff(a.cur, next)
	if err != nil {
		return upstairsv1.ReplaceResult_REPLACE_RESULT_MISSING, err.Error()
	}
	switch len(changes) {
	case 0:
		// Built from (or already switched to) these targets. While a target
		// it names is still being repaired, the replacement is in flight
		// (whatever the generation); an exact repeat of the request that
		// switched a target says it completed.
		nextTargets := vcrutil.Targets(next)
		for _, r := range a.replacements {
			if !r.done && slices.ContainsFunc(nextTargets, func(t vcrutil.Target) bool { return t.Address == r.new }) {
				return upstairsv1.ReplaceResult_REPLACE_RESULT_STARTED_ALREADY, ""
			}
		}
		for _, r := range slices.Backward(a.replacements) {
			if proto.Equal(r.vcr, next) {
				return upstairsv1.ReplaceResult_REPLACE_RESULT_COMPLETED_ALREADY, ""
			}
		}
		return upstairsv1.ReplaceResult_REPLACE_RESULT_VCR_MATCHES, ""
	case 1:
	default:
		return upstairsv1.ReplaceResult_REPLACE_RESULT_MISSING, fmt.Sprintf("%d targets differ; only one may be replaced at a time", len(changes))
	}
	c := changes[0]
	if !c.ReadOnly && !c.GenRaised {
		return upstairsv1.ReplaceResult_REPLACE_RESULT_MISSING, fmt.Sprintf("read/write target %s replaced without a higher generation", c.Old)
	}
	if !slices.ContainsFunc(vcrutil.Targets(a.cur), func(t vcrutil.Target) bool { return t.Address == c.Old }) {
		return upstairsv1.ReplaceResult_REPLACE_RESULT_MISSING, fmt.Sprintf("old target %s is not in the volume", c.Old)
	}
	r := &replacement{vcr: proto.Clone(next).(*commonv1.VolumeConstructionRequest), old: c.Old, new: c.New, path: c.Path}
	a.replacements = append(a.replacements, r)
	a.cur = proto.Clone(next).(*commonv1.VolumeConstructionRequest)
	a.gen = vcrutil.Generation(next)
	delete(a.faulted, c.Old)
	delete(a.contents, c.Old)
	if c.ReadOnly {
		// Read-only data is identical on both targets: the switch is
		// immediate, no repair.
		r.done = true
	} else {
		a.liveRepair[c.New] = true
		go s.liveRepair(a, r)
	}
	return upstairsv1.ReplaceResult_REPLACE_RESULT_STARTED, ""
}

// GetVolumeStatus implements UpstairsService.
func (s *Server) GetVolumeStatus(ctx context.Context, req *upstairsv1.GetVolumeStatusRequest) (*upstairsv1.GetVolumeStatusResponse, error) {
	if err := s.faults.apply(ctx, "GetVolumeStatus"); err != nil {
		return nil, err
	}
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id: required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.volumes[req.GetVolumeId()]
	if a == nil {
		return nil, status.Errorf(codes.NotFound, "volume %s is not active here", req.GetVolumeId())
	}
	return &upstairsv1.GetVolumeStatusResponse{Status: s.statusLocked(a)}, nil
}

// ListVolumes implements UpstairsService.
func (s *Server) ListVolumes(ctx context.Context, _ *upstairsv1.ListVolumesRequest) (*upstairsv1.ListVolumesResponse, error) {
	if err := s.faults.apply(ctx, "ListVolumes"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &upstairsv1.ListVolumesResponse{TotalDataLossEvents: s.totalDataLoss, TotalContentMismatchEvents: s.totalContentMismatch}
	for _, a := range s.volumes {
		resp.Volumes = append(resp.Volumes, s.statusLocked(a))
	}
	sort.Slice(resp.Volumes, func(i, j int) bool { return resp.Volumes[i].GetVolumeId() < resp.Volumes[j].GetVolumeId() })
	return resp, nil
}

func (s *Server) statusLocked(a *activation) *upstairsv1.VolumeStatus {
	st := &upstairsv1.VolumeStatus{
		VolumeId:          a.volumeID,
		Active:            !a.gone,
		SeenActive:        a.seenActive,
		Generation:        a.gen,
		DataLossEvents:    a.dataLoss,
		DataLossAddresses: slices.Clone(a.dataLossAddrs),
		Repairing:         a.reconciling || len(a.liveRepair) > 0,
		ReplaceCalls:      a.replaceCalls,
		Activations:       s.activations[a.volumeID],

		ContentMismatchEvents: a.mismatches,
		ContentMismatches:     slices.Clone(a.mismatchList),
		Positions:             positionsLocked(a),
	}
	for _, t := range vcrutil.Targets(a.cur) {
		state := upstairsv1.DownstairsState_DOWNSTAIRS_STATE_ACTIVE
		switch {
		case a.faulted[t.Address] || slices.Contains(a.dataLossAddrs, t.Address):
			state = upstairsv1.DownstairsState_DOWNSTAIRS_STATE_FAULTED
		case a.liveRepair[t.Address] || (a.reconciling && !t.ReadOnly):
			state = upstairsv1.DownstairsState_DOWNSTAIRS_STATE_REPAIRING
		}
		st.Downstairs = append(st.Downstairs, &upstairsv1.Downstairs{Address: t.Address, ReadOnly: t.ReadOnly, State: state, Content: a.contents[t.Address]})
	}
	return st
}

// rwTargets lists the read/write targets an activation reconciles: those of
// rw Regions among the sub-volumes (never under the read-only parent).
func rwTargets(v *commonv1.VolumeConstructionRequest) []string {
	var out []string
	var walk func(n *commonv1.VolumeConstructionRequest)
	walk = func(n *commonv1.VolumeConstructionRequest) {
		switch k := n.GetKind().(type) {
		case *commonv1.VolumeConstructionRequest_Volume:
			for _, sv := range k.Volume.GetSubVolumes() {
				walk(sv)
			}
		case *commonv1.VolumeConstructionRequest_Region:
			if !k.Region.GetOpts().GetReadOnly() {
				out = append(out, k.Region.GetOpts().GetTarget()...)
			}
		}
	}
	walk(v)
	return out
}

// reconcile reports a RECONCILIATION repair of the rw targets, takes the
// repair delay, records on the agents the content each rw region set
// settles on (the repair's copies), reports it finished and marks the
// volume seen active.
func (s *Server) reconcile(a *activation, targets []string) {
	repairID := uuid.NewString()
	s.reportRepair(a, repairID, notifierv1.RepairType_REPAIR_TYPE_RECONCILIATION, targets, false, false)
	ended := s.sleep(s.repairDelay)
	s.mu.Lock()
	copying := s.volumes[a.volumeID] == a && !ended
	var sets []vcrutil.RegionSet
	if copying {
		for _, p := range vcrutil.RegionSets(a.cur) {
			if !p.ReadOnly && !strings.Contains(p.Path, ".read_only_parent") {
				sets = append(sets, p)
			}
		}
		a.dataOps++
	}
	s.mu.Unlock()
	settled := map[string]string{}
	for _, p := range sets {
		if c := s.recordRepair(a, p.Path, p.Targets, nil); c != "" {
			settled[p.Path] = c
		}
	}
	s.mu.Lock()
	if copying {
		a.dataOps--
		a.dataSeq++
	}
	current, forgotten := s.volumes[a.volumeID] == a, a.forgotten
	if current && !ended {
		a.reconciling = false
		a.seenActive = true
		// What a rw position holds at activation is what reconciliation
		// settled on; one not recorded is taken from the next probe.
		for path, c := range settled {
			a.expected[path] = c
		}
	}
	s.mu.Unlock()
	if forgotten || ended {
		return
	}
	// A deactivation mid-repair aborts it.
	s.reportRepair(a, repairID, notifierv1.RepairType_REPAIR_TYPE_RECONCILIATION, targets, true, !current)
}

// liveRepair fills the new target of a rw replacement (recording on the
// agents that it now holds what the set's other copies hold) and reports
// it.
func (s *Server) liveRepair(a *activation, r *replacement) {
	repairID := uuid.NewString()
	s.reportRepair(a, repairID, notifierv1.RepairType_REPAIR_TYPE_LIVE, []string{r.new}, false, false)
	ended := s.sleep(s.repairDelay)
	s.mu.Lock()
	copying := s.volumes[a.volumeID] == a && !ended
	var set []string
	if copying {
		for _, p := range vcrutil.RegionSets(a.cur) {
			if p.Path == r.path {
				set = p.Targets
			}
		}
		a.dataOps++
	}
	s.mu.Unlock()
	if copying && slices.Contains(set, r.new) {
		s.recordRepair(a, r.path, set, []string{r.new})
	}
	s.mu.Lock()
	if copying {
		a.dataOps--
		a.dataSeq++
	}
	current, forgotten := s.volumes[a.volumeID] == a, a.forgotten
	if current && !ended {
		r.done = true
		delete(a.liveRepair, r.new)
	}
	s.mu.Unlock()
	if forgotten || ended {
		return
	}
	s.reportRepair(a, repairID, notifierv1.RepairType_REPAIR_TYPE_LIVE, []string{r.new}, true, !current)
}

// sleep waits d; true when the process is shutting down instead.
func (s *Server) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return false
	case <-s.bg.Done():
		return true
	}
}

// reportRepair tells the notifier about a repair start or finish, retrying
// while it is unreachable for a while. The Upstairs does not know region
// ids, only addresses.
func (s *Server) reportRepair(a *activation, repairID string, typ notifierv1.RepairType, targets []string, finish, aborted bool) {
	repairs := make([]*notifierv1.RepairedDownstairs, 0, len(targets))
	for _, t := range targets {
		repairs = append(repairs, &notifierv1.RepairedDownstairs{TargetAddress: t})
	}
	now := timestamppb.Now()
	call := func(ctx context.Context) error {
		if finish {
			_, err := s.notifier.RepairFinish(ctx, &notifierv1.RepairFinishRequest{
				UpstairsId: a.upstairsID, SessionId: a.sessionID, RepairId: repairID, RepairType: typ,
				Time: now, Repairs: repairs, Aborted: aborted,
			})
			return err
		}
		_, err := s.notifier.RepairStart(ctx, &notifierv1.RepairStartRequest{
			UpstairsId: a.upstairsID, SessionId: a.sessionID, RepairId: repairID, RepairType: typ,
			Time: now, Repairs: repairs,
		})
		return err
	}
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(s.bg, 5*time.Second)
		err := call(ctx)
		cancel()
		if err == nil {
			return
		}
		if code := status.Code(err); (code != codes.Unavailable && code != codes.DeadlineExceeded) || attempt >= 20 || s.bg.Err() != nil {
			s.logger.Warn("repair report not delivered", "volume_id", a.volumeID, "repair_id", repairID, "finish", finish, "err", err)
			return
		}
		if s.sleep(backoff) {
			return
		}
		backoff = min(2*backoff, time.Second)
	}
}

// probeOnce probes every target of every active volume in one call and
// records what it finds.
func (s *Server) probeOnce(ctx context.Context) {
	s.mu.Lock()
	acts := make([]*activation, 0, len(s.volumes))
	for _, a := range s.volumes {
		acts = append(acts, a)
	}
	s.mu.Unlock()
	s.probeVolumes(ctx, acts)
}

// FaultServer is the UpstairsFaultService, registered only with --dev.
type FaultServer struct {
	upstairsv1.UnimplementedUpstairsFaultServiceServer
	s *Server

	mu     sync.Mutex
	faults []*fault
}

type fault struct {
	method    string
	remaining int32
	fail      bool
	delay     time.Duration
}

var faultableMethods = []string{"Activate", "Deactivate", "ReplaceVolume", "GetVolumeStatus", "ListVolumes", "Write"}

// InjectUpstairsFault implements UpstairsFaultService: the next `count`
// matching calls are delayed and/or fail with INTERNAL.
func (f *FaultServer) InjectUpstairsFault(_ context.Context, req *upstairsv1.InjectUpstairsFaultRequest) (*upstairsv1.InjectUpstairsFaultResponse, error) {
	if req.GetCount() <= 0 {
		return nil, status.Error(codes.InvalidArgument, "count: must be positive")
	}
	if m := req.GetMethod(); m != "" && !slices.Contains(faultableMethods, m) {
		return nil, status.Errorf(codes.InvalidArgument, "method: %q is not an UpstairsService method", m)
	}
	delay := req.GetDelay().AsDuration()
	if req.GetDelay() != nil && (!req.GetDelay().IsValid() || delay < 0) {
		return nil, status.Error(codes.InvalidArgument, "delay: invalid")
	}
	if !req.GetFail() && delay == 0 {
		return nil, status.Error(codes.InvalidArgument, "fail or delay: one is required")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, &fault{method: req.GetMethod(), remaining: req.GetCount(), fail: req.GetFail(), delay: delay})
	return &upstairsv1.InjectUpstairsFaultResponse{}, nil
}

// ForgetAll implements UpstairsFaultService: every activation is dropped
// without any report, as when the process restarts. Pending faults stay.
func (f *FaultServer) ForgetAll(context.Context, *upstairsv1.ForgetAllRequest) (*upstairsv1.ForgetAllResponse, error) {
	s := f.s
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.volumes {
		a.gone, a.forgotten = true, true
	}
	s.volumes = map[string]*activation{}
	s.lastGen = map[string]uint64{}
	s.activations = map[string]int64{}
	return &upstairsv1.ForgetAllResponse{}, nil
}

// errInjected is the failure an injected fault produces.
var errInjected = errors.New("injected fault")

// apply consumes the first pending fault matching method, if any.
func (f *FaultServer) apply(ctx context.Context, method string) error {
	f.mu.Lock()
	var hit *fault
	for i, ft := range f.faults {
		if ft.method == "" || ft.method == method {
			hit = ft
			ft.remaining--
			if ft.remaining <= 0 {
				f.faults = slices.Delete(f.faults, i, i+1)
			}
			break
		}
	}
	f.mu.Unlock()
	if hit == nil {
		return nil
	}
	if hit.delay > 0 {
		t := time.NewTimer(hit.delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	if hit.fail {
		// Internal, not Unavailable: clients retry UNAVAILABLE, which would
		// make "fail the next N calls" consume an unpredictable number.
		return status.Errorf(codes.Internal, "%s: %v", method, errInjected)
	}
	return nil
}
