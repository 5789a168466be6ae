package simagent

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/allocator/agentapi"
	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/fence"
)

// Content identities. The agents hold no bytes; instead every region and
// region snapshot carries an identity of the bytes it would hold, derived
// from its lineage, so that a test oracle can tell a copy of the right data
// from a copy of other data without any data:
//
//   - a region created empty is Blank (all blank regions hold the same
//     bytes: none);
//   - a region cloned from a source takes the source's identity at the
//     time of the clone;
//   - a snapshot takes its region's identity at the time it is taken, and
//     keeps it whatever the region does later;
//   - a write through an Upstairs gives every rw region it reaches the new
//     identity WriteContent(write id);
//   - a repair (live or reconciliation) gives the repaired region its set's
//     identity, as the Upstairs copies the bytes.
//
// Equal identities mean equal bytes; different ones, different bytes.
const Blank = "blank"

// Errors of the data-path calls, all FailedPrecondition.
var (
	// ErrReadOnly: the address serves read-only data (a running snapshot
	// or a read-only region); nothing writes or repairs it.
	ErrReadOnly = apierr.New(apierr.Precondition, "serves read-only data")
	// ErrNoSource: no copy of the set to repair from is served.
	ErrNoSource = apierr.New(apierr.Precondition, "no served copy to repair from")
	// ErrDisagree: the copies to repair from hold different content.
	ErrDisagree = apierr.New(apierr.Precondition, "the copies to repair from disagree")
	// ErrNotServed: a copy to repair is not served.
	ErrNotServed = apierr.New(apierr.Precondition, "not served")
)

// WriteContent is the content identity a write gives the regions it reaches.
func WriteContent(writeID uuid.UUID) string { return "write:" + writeID.String() }

// dataTx runs a data-path call's transaction, fenced like every agent call.
// Unlike inTx it spans several agents: a write or a repair reaches every
// copy of a region set, each on its own dataset. It reads first and takes
// the versions of only the agents it then writes (setContents), so that a
// reconciliation that changes nothing changes no agent's version.
func (s *Sim) dataTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return db.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		if err := fence.Check(ctx, tx); err != nil {
			return err
		}
		return fn(tx)
	})
}

// Write gives every rw region served at one of addrs the content of the
// write writeID, in one transaction, and returns the content, the
// addresses written and those skipped because nothing serves them (an
// Upstairs skips a faulted downstairs). An address serving read-only data
// is ErrReadOnly and nothing is written.
func (s *Sim) Write(ctx context.Context, addrs []netip.AddrPort, writeID uuid.UUID) (content string, written, skipped []netip.AddrPort, err error) {
	content = WriteContent(writeID)
	err = s.dataTx(ctx, func(tx pgx.Tx) error {
		written, skipped = written[:0], skipped[:0]
		var objs []servedObject
		for _, a := range dedup(addrs) {
			res, obj, err := resolve(ctx, tx, a)
			if err != nil {
				return err
			}
			if res != agentapi.Served {
				skipped = append(skipped, a)
				continue
			}
			if obj.ReadOnly {
				return fmt.Errorf("write to %s: %w", a, ErrReadOnly)
			}
			written = append(written, a)
			objs = append(objs, obj)
		}
		return setContents(ctx, tx, objs, content)
	})
	if err != nil {
		return "", nil, nil, err
	}
	return content, written, skipped, nil
}

// Repair records the end of a repair of one rw region set whose copies
// are addrs, in one transaction, and returns the content the set's served
// copies now hold and the addresses it changed.
//
// With repair non-empty (a live repair, repair ⊆ addrs) the copies in
// repair get the content of the other served copies, which must agree
// (ErrDisagree) and exist (ErrNoSource); a copy to repair must be served
// (ErrNotServed).
//
// With repair empty (a reconciliation) every served copy gets the content
// most served copies hold, where a Blank copy — never written, as
// Crucible's flush numbers would tell — loses to any written one. Two
// different written contents with no majority are ErrDisagree.
//
// Any address serving read-only data is ErrReadOnly. Nothing changes on
// error.
func (s *Sim) Repair(ctx context.Context, addrs, repair []netip.AddrPort) (content string, repaired []netip.AddrPort, err error) {
	err = s.dataTx(ctx, func(tx pgx.Tx) error {
		repaired = repaired[:0]
		served := map[netip.AddrPort]servedObject{}
		for _, a := range dedup(addrs) {
			res, obj, err := resolve(ctx, tx, a)
			if err != nil {
				return err
			}
			if res != agentapi.Served {
				continue
			}
			if obj.ReadOnly {
				return fmt.Errorf("repair of %s: %w", a, ErrReadOnly)
			}
			served[a] = obj
		}
		var fill []netip.AddrPort
		if len(repair) > 0 {
			var sources []string
			for a, o := range served {
				if !slices.Contains(repair, a) {
					sources = append(sources, o.Content)
				}
			}
			if len(sources) == 0 {
				return ErrNoSource
			}
			slices.Sort(sources)
			if sources = slices.Compact(sources); len(sources) > 1 {
				return fmt.Errorf("%w: %v", ErrDisagree, sources)
			}
			content = sources[0]
			for _, a := range dedup(repair) {
				if _, ok := served[a]; !ok {
					return fmt.Errorf("repair of %s: %w", a, ErrNotServed)
				}
				fill = append(fill, a)
			}
		} else {
			if len(served) == 0 {
				return ErrNoSource
			}
			c, err := reconciled(slices.Collect(maps.Values(served)))
			if err != nil {
				return err
			}
			content = c
			for _, a := range dedup(addrs) {
				if _, ok := served[a]; ok {
					fill = append(fill, a)
				}
			}
		}
		var objs []servedObject
		for _, a := range fill {
			if o := served[a]; o.Content != content {
				objs = append(objs, o)
				repaired = append(repaired, a)
			}
		}
		return setContents(ctx, tx, objs, content)
	})
	if err != nil {
		return "", nil, err
	}
	return content, repaired, nil
}

// setContents gives each object content, after taking the versions of
// their agents (lockAgents: first, and in one order).
func setContents(ctx context.Context, tx pgx.Tx, objs []servedObject, content string) error {
	if len(objs) == 0 {
		return nil
	}
	datasets := make([]uuid.UUID, len(objs))
	for i, o := range objs {
		datasets[i] = o.DatasetID
	}
	if err := lockAgents(ctx, tx, datasets); err != nil {
		return err
	}
	for _, o := range objs {
		if err := setAgentRegionContent(ctx, tx, o.DatasetID, o.RegionID, content); err != nil {
			return err
		}
	}
	return nil
}

// reconciled is the content a reconciliation settles on (see Repair).
func reconciled(objs []servedObject) (string, error) {
	count := map[string]int{}
	for _, o := range objs {
		if o.Content != Blank {
			count[o.Content]++
		}
	}
	if len(count) == 0 {
		return Blank, nil
	}
	best, n, tie := "", 0, false
	for c, k := range count {
		switch {
		case k > n:
			best, n, tie = c, k, false
		case k == n:
			tie = true
		}
	}
	if tie {
		contents := slices.Sorted(maps.Keys(count))
		return "", fmt.Errorf("%w: %v and no majority", ErrDisagree, contents)
	}
	return best, nil
}

// dedup drops repeated addresses, keeping the first of each.
func dedup(addrs []netip.AddrPort) []netip.AddrPort {
	seen := map[netip.AddrPort]bool{}
	var out []netip.AddrPort
	for _, a := range addrs {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}
