package tasks

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
)

// Rebuild admission (docs/replacement.md, "Budgets and the order of
// admission"). Two tasks start rebuilds — the read-only start task
// (region clones) and the rw detector (repairs) — and both draw on the
// same budgets, so both plan from one Admission: every Requested request of
// either kind, in one order (operator priority, then fewest live copies,
// then age), admitted while the budgets have room. Each task then starts
// sagas for the admitted requests of its own kind only; a request of the
// other kind admitted ahead keeps its place (its slot is not given to one
// behind it) and its task is woken.
//
// The plan is an estimate that orders work and keeps sagas from starting
// only to be refused; the budgets themselves are enforced exactly where the
// work begins: a rebuild at its start saga's allocation
// (store.AdmitRebuild), a step at its claim (store.SetStepRunning).

// DefaultBudgets are the limits an orchestrator starts with (flags
// --budget-*; docs/operations.md, "Rebuild budgets", says why these).
// Per sled, 2 rebuilds written and 4 read at once: a sled keeps serving its
// own volumes while it takes part in a mass rebuild, and a rack of 32 sleds
// still runs 32 rebuilds at once (the rack limit). Steps only swap a target
// in a volume and tell its Upstairs; 64 matches a task's saga bound.
var DefaultBudgets = store.Limits{RackRebuilds: 32, SourceSledRebuilds: 4, DestSledRebuilds: 2, RackSteps: 64}

// Admission is the budgets' shared state in the leader's process: the
// rebuilds this process reserved and has not yet seen take their slot, and
// what the last passes held back.
type Admission struct {
	mu sync.Mutex
	// reserved: rebuilds a plan admitted whose records hold no slot yet:
	// started by this task, or owed to the other kind's task (admitted
	// ahead of this task's own; they keep their place until that task
	// plans again).
	reserved map[uuid.UUID]reservation
	// destBlocked: records whose saga was refused for want of a
	// destination sled since the last slot freed. Planning holds them back
	// until a slot frees (lastHeld tells).
	destBlocked map[uuid.UUID]bool
	lastHeld    map[uuid.UUID]bool
	// held: record → why the last plan held it back; heldSteps: step →
	// why the step task's last pass did.
	held      map[uuid.UUID]string
	heldSteps map[uuid.UUID]string
	// waiting: per budget, what the last passes held back (rebuilds from
	// the last plan, steps from the step task's last pass).
	waitingRebuilds map[string]int
	waitingSteps    int
	// counts: each waiting request's live copies and sources as a plan
	// last counted them, recounted once older than recount (0:
	// copiesRecount) so that a pass lists only the requests due.
	counts  map[uuid.UUID]copiesCount
	recount time.Duration
	// readOnlyWaiting: the last plan left read-only requests waiting.
	readOnlyWaiting bool
}

// copiesCount is one request's live copies as a plan counted them.
type copiesCount struct {
	live    int32
	sources []uuid.UUID
	at      time.Time
}

// copiesRecount is how long a plan orders a waiting request by the live
// copies it counted before counting them again. The count only orders
// admissions and forecasts their source sleds; the rebuild's own
// admission (store.AdmitRebuild) reads its sources afresh, and every
// give-up counts survivors afresh. A fresh expunge's requests are counted
// in the first pass that sees them; an older request whose copies a
// second expunge reduced moves ahead within this long.
const copiesRecount = 5 * time.Second

// NewAdmission returns an empty Admission.
func NewAdmission() *Admission {
	return &Admission{
		reserved: map[uuid.UUID]reservation{}, destBlocked: map[uuid.UUID]bool{}, lastHeld: map[uuid.UUID]bool{},
		held: map[uuid.UUID]string{}, heldSteps: map[uuid.UUID]string{}, waitingRebuilds: map[string]int{},
		counts: map[uuid.UUID]copiesCount{},
	}
}

// HeldBack says why the last pass held a request or step back, if it did.
func (a *Admission) HeldBack(id uuid.UUID) (string, bool) {
	if a == nil {
		return "", false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if why, ok := a.held[id]; ok {
		return why, true
	}
	why, ok := a.heldSteps[id]
	return why, ok
}

// stepsHeld replaces what the step task held back.
func (a *Admission) stepsHeld(held map[uuid.UUID]string) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.heldSteps = held
	a.waitingSteps = len(held)
}

// Waiting is, per budget, the work the last passes held back.
func (a *Admission) Waiting() map[string]int {
	out := map[string]int{}
	for _, b := range store.BudgetNames {
		out[b] = 0
	}
	if a == nil {
		return out
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for b, n := range a.waitingRebuilds {
		out[b] = n
	}
	out[store.BudgetRackSteps] = a.waitingSteps
	return out
}

// anyWaiting reports whether anything is held back (a freed slot must then
// wake the tasks that admit).
func (a *Admission) anyWaiting() bool {
	if a == nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.held) > 0 || len(a.destBlocked) > 0 || len(a.heldSteps) > 0
}

// readOnlyWaits reports whether the last plan left read-only requests
// waiting.
func (a *Admission) readOnlyWaits() bool {
	if a == nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.readOnlyWaiting
}

// ended forgets a rebuild saga's reservation.
func (a *Admission) ended(id uuid.UUID) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.reserved, id)
}

// refusedDest notes a rebuild refused for want of a destination sled.
func (a *Admission) refusedDest(id uuid.UUID) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.destBlocked[id] = true
}

// reservation is a rebuild a plan admitted, with the sources it counted.
type reservation struct {
	kind    string
	sources []uuid.UUID
	// owed: admitted for the other kind's task, not started yet.
	owed bool
}

// Request kinds in a plan.
const (
	kindRO = "read_only"
	kindRW = "read_write"
)

// candidate is a Requested request waiting to start its rebuild.
type candidate struct {
	id          uuid.UUID
	kind        string
	order       store.Order
	requestTime time.Time
	// sources: the sleds its rebuild would read from, as the plan sees
	// them (a clone's preferred source; a repair's surviving members).
	sources  []uuid.UUID
	attempts store.Attempts
	// blocking: its request holds a volume's repair lock that someone
	// waits for (another request, or a request's step).
	blocking bool
	ro       store.ROReplacement
	rw       store.RWReplacement
}

// lockVolume is the volume whose repair lock the candidate's request holds.
func (c candidate) lockVolume() uuid.UUID {
	if c.kind == kindRO {
		return c.ro.LockVolumeID
	}
	return c.rw.VolumeID
}

// before is the order of admission: higher priority, then fewer live copies
// (uncounted last), then one whose lock someone waits for, then older, then
// by id for a stable order.
//
// A request holds its volume's lock from its creation, through its wait
// for admission, to its end, and whatever else must change that volume
// waits in the lock's queue: a snapshot's request for a clone that also
// lost a rw region, a second target of one snapshot. Admitted by age
// alone, such a holder could wait out most of a sled's replacement with
// its waiter behind it, which then became the slowest request of all (a
// full rack's oldest lock wait reached 70 s). Admitting it first ends two
// waits with one rebuild; risk still comes before it.
func before(a, b candidate) int {
	lc := func(c candidate) int64 {
		if c.order.LiveCopies < 0 {
			return math.MaxInt64
		}
		return int64(c.order.LiveCopies)
	}
	return cmp.Or(
		cmp.Compare(b.order.Priority, a.order.Priority),
		cmp.Compare(lc(a), lc(b)),
		-cmpBool(a.blocking, b.blocking),
		a.requestTime.Compare(b.requestTime),
		strings.Compare(a.id.String(), b.id.String()),
	)
}

// cmpBool orders false before true.
func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// BudgetStatus is what a task's status shows of the budgets: the limits
// and use it planned with, what it admitted in which order, and what it
// held back by which budget.
type BudgetStatus struct {
	Limits   map[string]int   `json:"limits"`
	InUse    map[string]int   `json:"in_use"`
	Admitted []string         `json:"admitted"`
	HeldBack map[string]Skips `json:"held_back"`
}

func newBudgetStatus(l store.Limits) *BudgetStatus {
	st := &BudgetStatus{Limits: map[string]int{}, InUse: map[string]int{}, Admitted: []string{}, HeldBack: map[string]Skips{}}
	for _, b := range store.BudgetNames {
		st.Limits[b] = l.Get(b)
	}
	return st
}

func (s *BudgetStatus) hold(budget, format string, args ...any) {
	sk := s.HeldBack[budget]
	sk.Add(format, args...)
	s.HeldBack[budget] = sk
}

// plan orders every Requested rebuild of both kinds and admits them while
// the budgets have room. It returns the admitted candidates of kind mine,
// in order, each reserved (the caller starts its saga, or releases the
// reservation with Admission.ended), and whether candidates of the other
// kind were admitted (their task must be woken).
func (env Env) plan(ctx context.Context, mine string) ([]candidate, bool, *BudgetStatus, error) {
	return env.planFrom(ctx, mine, requestedLists{})
}

// requestedLists are the Requested requests a pass has already read, so
// that its plan does not read them again: the rw detector and the start
// task read their own kind first (to complete what needs no rebuild), and
// during a sled's replacement each runs many times a second over hundreds
// of waiting requests. A kind not marked read is read by the plan.
type requestedLists struct {
	ro             []store.ROReplacement
	rw             []store.RWReplacement
	haveRO, haveRW bool
}

// planFrom is plan with the Requested requests the caller already read.
func (env Env) planFrom(ctx context.Context, mine string, lists requestedLists) ([]candidate, bool, *BudgetStatus, error) {
	a := env.Admission
	if a == nil {
		a = NewAdmission() // tasks built without Register (tests): plan afresh each pass
	}
	d := env.Deps
	limits, _, err := d.Store.RebuildLimits(ctx)
	if err != nil {
		return nil, false, nil, err
	}
	st := newBudgetStatus(limits)
	ros, rws := lists.ro, lists.rw
	if !lists.haveRO {
		if ros, err = d.Store.ROReplacementsIn(ctx, store.RORequested); err != nil {
			return nil, false, st, err
		}
	}
	if !lists.haveRW {
		if rws, err = d.Store.RWReplacementsIn(ctx, store.RWRequested); err != nil {
			return nil, false, st, err
		}
	}
	slots, err := d.Store.HeldSlots(ctx)
	if err != nil {
		return nil, false, st, err
	}
	starting, err := d.Store.RebuildsStarting(ctx)
	if err != nil {
		return nil, false, st, err
	}
	cands, err := env.liveCopies(ctx, a, ros, rws)
	if err != nil {
		return nil, false, st, err
	}
	waited, err := d.Store.VolumesWithLockWaiters(ctx)
	if err != nil {
		return nil, false, st, err
	}
	for i := range cands {
		cands[i].blocking = waited[cands[i].lockVolume()]
	}
	slices.SortFunc(cands, before)

	a.mu.Lock()
	defer a.mu.Unlock()
	// This task starts its own kind: what another plan owed it is planned
	// afresh here, in the current order.
	for id, r := range a.reserved {
		if r.owed && r.kind == mine {
			delete(a.reserved, id)
		}
	}
	held := map[uuid.UUID]bool{}
	for _, sl := range slots {
		held[sl.RecordID] = true
	}
	for id := range a.lastHeld {
		if !held[id] {
			clear(a.destBlocked) // a slot freed: every destination may have room again
			break
		}
	}
	a.lastHeld = held
	use := store.UseOf(slots, uuid.Nil)
	if store.MaxOf(use.ByDest) < limits.DestSledRebuilds || limits.DestSledRebuilds == 0 {
		// No sled is at its destination limit, so no refusal for want of
		// one still stands. The rule above misses a slot that freed after
		// the refusal and before the refused saga finished unwinding (the
		// plan in between saw it go, with nothing yet blocked); the record
		// then waited for a release that never came.
		clear(a.destBlocked)
	}
	// Rebuilds on their way to their allocation hold no slot yet but
	// will ask for one: count them, with the sources this process
	// reserved for them when it knows them.
	requested := map[uuid.UUID]bool{}
	for _, c := range cands {
		requested[c.id] = true
	}
	counted := map[uuid.UUID]bool{}
	for _, id := range starting {
		if held[id] {
			continue
		}
		counted[id] = true
		use.Rack++
		for _, src := range a.reserved[id].sources {
			use.BySource[src]++
		}
	}
	for id, res := range a.reserved {
		switch {
		case held[id]:
			delete(a.reserved, id) // it took its slot: the slot counts now
		case counted[id]:
		case requested[id]:
			// Started and not yet claimed, or owed to the other task:
			// counts like one starting.
			use.Rack++
			for _, src := range res.sources {
				use.BySource[src]++
			}
		default:
			delete(a.reserved, id) // it ended without taking a slot
		}
	}
	st.InUse[store.BudgetRackRebuilds] = use.Rack
	st.InUse[store.BudgetSourceSledRebuilds] = store.MaxOf(use.BySource)
	st.InUse[store.BudgetDestSledRebuilds] = store.MaxOf(use.ByDest)
	clear(a.held)
	clear(a.waitingRebuilds)
	var mineOut []candidate
	other := false
	for _, c := range cands {
		if _, ok := a.reserved[c.id]; ok {
			continue // its saga is starting, or the other task's plan admitted it
		}
		if p := env.holdOn(c.id); p != nil {
			// Held by an operator: it takes no place under a budget.
			st.hold("paused", "%s %s: %s", c.kind, c.id, heldText(p))
			continue
		}
		if due, ok := env.backoffEnds(c.attempts); ok {
			st.hold("backoff", "%s %s: retry in %v after %d failed attempts", c.kind, c.id, time.Until(due).Round(time.Millisecond), c.attempts.Attempts)
			continue
		}
		if be := use.Check(limits, c.sources); be != nil {
			a.held[c.id] = be.Error()
			a.waitingRebuilds[be.Budget]++
			st.hold(be.Budget, "%s %s (priority %d, %d live copies): %s", c.kind, c.id, c.order.Priority, c.order.LiveCopies, be.Error())
			continue
		}
		if a.destBlocked[c.id] {
			why := store.BudgetErrorPrefix + store.BudgetDestSledRebuilds + ": every sled it may be placed on is at its limit; waiting for a slot to free"
			a.held[c.id] = why
			a.waitingRebuilds[store.BudgetDestSledRebuilds]++
			st.hold(store.BudgetDestSledRebuilds, "%s %s (priority %d, %d live copies): %s", c.kind, c.id, c.order.Priority, c.order.LiveCopies, why)
			continue
		}
		use.Rack++
		for _, src := range c.sources {
			use.BySource[src]++
		}
		st.Admitted = append(st.Admitted, fmt.Sprintf("%s %s (priority %d, %d live copies, requested %s)",
			c.kind, c.id, c.order.Priority, c.order.LiveCopies, c.requestTime.UTC().Format(time.RFC3339Nano)))
		if c.kind != mine {
			a.reserved[c.id] = reservation{kind: c.kind, sources: c.sources, owed: true}
			other = true
			continue
		}
		a.reserved[c.id] = reservation{kind: c.kind, sources: c.sources}
		mineOut = append(mineOut, c)
	}
	// Read-only requests left waiting, whatever holds them (a budget, a
	// pause, a backoff): while there are some, a freed slot wakes the
	// start task too (slotFreed).
	a.readOnlyWaiting = slices.ContainsFunc(cands, func(c candidate) bool {
		_, reserved := a.reserved[c.id]
		return c.kind == kindRO && !reserved
	})
	return mineOut, other, st, nil
}

// recordedCandidates are the candidates with the live copies their last
// count recorded, and no sources yet.
func recordedCandidates(ros []store.ROReplacement, rws []store.RWReplacement) []candidate {
	out := make([]candidate, 0, len(ros)+len(rws))
	for _, r := range ros {
		out = append(out, candidate{id: r.ID, kind: kindRO, order: r.Order, requestTime: r.RequestTime, attempts: r.Attempts, ro: r})
	}
	for _, r := range rws {
		out = append(out, candidate{id: r.ID, kind: kindRW, order: r.Order, requestTime: r.RequestTime, attempts: r.Attempts, rw: r})
	}
	return out
}

// liveCopies builds the candidates: the requests a.counts counted within
// the recount period with that count, and the rest (new, or due) counted
// now (countCopies), their counts kept for the next passes.
func (env Env) liveCopies(ctx context.Context, a *Admission, ros []store.ROReplacement, rws []store.RWReplacement) ([]candidate, error) {
	now := time.Now()
	a.mu.Lock()
	recount := a.recount
	if recount == 0 {
		recount = copiesRecount
	}
	counted := func(id uuid.UUID) (copiesCount, bool) {
		c, ok := a.counts[id]
		return c, ok && now.Sub(c.at) < recount
	}
	waiting := make(map[uuid.UUID]bool, len(ros)+len(rws))
	var out []candidate
	var dueRO []store.ROReplacement
	var dueRW []store.RWReplacement
	for _, c := range recordedCandidates(ros, rws) {
		waiting[c.id] = true
		n, ok := counted(c.id)
		switch {
		case ok:
			c.order.LiveCopies, c.sources = n.live, n.sources
			out = append(out, c)
		case c.kind == kindRO:
			dueRO = append(dueRO, c.ro)
		default:
			dueRW = append(dueRW, c.rw)
		}
	}
	maps.DeleteFunc(a.counts, func(id uuid.UUID, _ copiesCount) bool { return !waiting[id] })
	a.mu.Unlock()

	fresh, err := env.countCopies(ctx, dueRO, dueRW)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	for _, c := range fresh {
		a.counts[c.id] = copiesCount{live: c.order.LiveCopies, sources: c.sources, at: now}
	}
	a.mu.Unlock()
	return append(out, fresh...), nil
}

// countCopies builds the candidates and counts each one's live copies from
// two batched listings (regions allocated for the requests' volumes and
// snapshots; the snapshots' region snapshots), each row with its disk's
// policy, then records the counts on the requests for operators.
//
// rw region: the rw regions allocated for its volume on in-service disks
// (the members of its region set still serving). Read-only target: its
// snapshot's region snapshots and read-only regions on in-service disks
// (what ListCloneSources would offer to clone from).
func (env Env) countCopies(ctx context.Context, ros []store.ROReplacement, rws []store.RWReplacement) ([]candidate, error) {
	if len(ros) == 0 && len(rws) == 0 {
		return nil, nil
	}
	d := env.Deps
	owners := map[string]bool{}
	var snaps []string
	for _, r := range ros {
		if !owners[r.OldSnapshotID.String()] {
			snaps = append(snaps, r.OldSnapshotID.String())
		}
		owners[r.OldSnapshotID.String()] = true
	}
	for _, r := range rws {
		owners[r.VolumeID.String()] = true
	}
	// Per volume or snapshot: the sleds of its live rw regions, of its
	// live read-only regions, of its live region snapshots.
	rwLive := map[string][]string{}
	roLive := map[string][]string{}
	rsLive := map[string][]string{}
	ids := make([]string, 0, len(owners))
	for id := range owners {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for chunk := range slices.Chunk(ids, 1000) {
		token := ""
		for {
			resp, err := d.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedForIds: chunk, PageSize: 1000, PageToken: token})
			if err != nil {
				return nil, fmt.Errorf("regions: %w", err)
			}
			for _, r := range resp.Regions {
				in, err := sagadef.DiskInService(r.DiskPolicy, "region "+r.RegionId)
				if err != nil {
					return nil, err
				}
				if !in {
					continue
				}
				if r.ReadOnly {
					if r.Address != "" {
						roLive[r.AllocatedFor] = append(roLive[r.AllocatedFor], r.SledId)
					}
				} else {
					rwLive[r.AllocatedFor] = append(rwLive[r.AllocatedFor], r.SledId)
				}
			}
			if token = resp.NextPageToken; token == "" {
				break
			}
		}
	}
	for chunk := range slices.Chunk(snaps, 1000) {
		token := ""
		for {
			resp, err := d.Allocator.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{SnapshotIds: chunk, PageSize: 1000, PageToken: token})
			if err != nil {
				return nil, fmt.Errorf("region snapshots: %w", err)
			}
			for _, rs := range resp.RegionSnapshots {
				in, err := sagadef.DiskInService(rs.DiskPolicy, "region snapshot "+rs.TargetId)
				if err != nil {
					return nil, err
				}
				if in {
					rsLive[rs.SnapshotId] = append(rsLive[rs.SnapshotId], rs.SledId)
				}
			}
			if token = resp.NextPageToken; token == "" {
				break
			}
		}
	}
	var out []candidate
	var roCopies, rwCopies []store.LiveCopies
	for _, r := range ros {
		p := r.OldSnapshotID.String()
		copies := len(rsLive[p]) + len(roLive[p])
		// The clone's preferred source, as get_clone_source picks it.
		var src []uuid.UUID
		if l := append(slices.Clone(rsLive[p]), roLive[p]...); len(l) > 0 {
			src = parseSleds(l[:1])
		}
		o := r.Order
		o.LiveCopies = int32(copies)
		out = append(out, candidate{id: r.ID, kind: kindRO, order: o, requestTime: r.RequestTime, sources: src, attempts: r.Attempts, ro: r})
		if r.LiveCopies != o.LiveCopies {
			roCopies = append(roCopies, store.LiveCopies{ID: r.ID, Copies: o.LiveCopies})
		}
	}
	for _, r := range rws {
		v := r.VolumeID.String()
		o := r.Order
		o.LiveCopies = int32(len(rwLive[v]))
		out = append(out, candidate{id: r.ID, kind: kindRW, order: o, requestTime: r.RequestTime, sources: parseSleds(rwLive[v]), attempts: r.Attempts, rw: r})
		if r.LiveCopies != o.LiveCopies {
			rwCopies = append(rwCopies, store.LiveCopies{ID: r.ID, Copies: o.LiveCopies})
		}
	}
	if err := d.Store.SetLiveCopies(ctx, roCopies, rwCopies); err != nil {
		return nil, err
	}
	return out, nil
}

func parseSleds(in []string) []uuid.UUID {
	var out []uuid.UUID
	for _, s := range in {
		if id, err := uuid.Parse(s); err == nil && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// budgetRefusal reports whether a saga failed for a rebuild budget (a
// refusal is not a failed attempt: the record waits for a slot, without
// backoff), and whether for want of a destination.
func budgetRefusal(msg string) (refused, dest bool) {
	i := strings.Index(msg, store.BudgetErrorPrefix)
	if i < 0 {
		return false, false
	}
	return true, strings.HasPrefix(msg[i+len(store.BudgetErrorPrefix):], store.BudgetDestSledRebuilds)
}
