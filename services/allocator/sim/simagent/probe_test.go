package simagent

import (
	"context"
	"net/netip"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/allocator/agentapi"
)

// ProbeTargets answers in one statement what resolving each address alone
// answers: served regions and running snapshots with their content, an
// expunged disk's addresses unreachable, an unused port or an unknown
// agent destroyed; in the order asked, repeats included.
func TestProbeTargetsMatchesEachAddressAlone(t *testing.T) {
	ctx := context.Background()
	r := newRack(t, 3)
	none := netip.AddrPort{}
	a := r.region(t, 0, none)
	r.write(t, a)
	s := r.snapshot(t, 0, a)
	c := r.region(t, 1, s)
	gone := r.region(t, 2, c)
	if err := r.expunge(ctx, 2); err != nil {
		t.Fatal(err)
	}
	unusedPort := netip.AddrPortFrom(r.ips[1], 1)
	unknownAgent := netip.MustParseAddrPort("[fd00:1122:3344:999::1]:19000")
	addrs := []netip.AddrPort{a, s, c, gone, unusedPort, unknownAgent, a}
	want := []agentapi.ProbeResult{agentapi.Served, agentapi.Served, agentapi.Served, agentapi.Unreachable, agentapi.Destroyed, agentapi.Destroyed, agentapi.Served}

	got, err := r.sim.ProbeTargets(ctx, addrs)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(addrs) {
		t.Fatalf("%d probes for %d addresses", len(got), len(addrs))
	}
	for i, addr := range addrs {
		res, content, err := probe(ctx, r.pool, addr)
		if err != nil {
			t.Fatal(err)
		}
		if got[i].Result != want[i] || got[i].Result != res || got[i].Content != content {
			t.Errorf("%s: batch says %v %q, alone %v %q; want %v", addr, got[i].Result, got[i].Content, res, content, want[i])
		}
	}
	if got[0].Content == Blank || got[1].Content != got[0].Content || got[2].Content != got[1].Content {
		t.Errorf("contents %q, %q, %q: want the written region's, its snapshot's and the clone's to agree", got[0].Content, got[1].Content, got[2].Content)
	}
	if empty, err := r.sim.ProbeTargets(ctx, nil); err != nil || len(empty) != 0 {
		t.Errorf("no addresses: %v, %v", empty, err)
	}
}

// A probe after any change to an agent, by the agents or by hand in SQL
// (a trigger's row change, a TRUNCATE, a policy change), answers what
// resolving each address alone answers, although the probe before it
// cached every answer; and an agent nothing changed on is answered from
// the cache without a lookup.
func TestProbeTargetsSeesEveryChangeSinceTheLastProbe(t *testing.T) {
	ctx := context.Background()
	r := newRack(t, 3)
	none := netip.AddrPort{}
	a := r.region(t, 0, none)
	s := r.snapshot(t, 0, a)
	c := r.region(t, 1, s)
	b := r.region(t, 2, none)
	addrs := []netip.AddrPort{a, s, c, b}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := r.pool.Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	check := func(step string) []agentapi.Probe {
		t.Helper()
		got, err := r.sim.ProbeTargets(ctx, addrs)
		if err != nil {
			t.Fatal(err)
		}
		for i, addr := range addrs {
			res, content, err := probe(ctx, r.pool, addr)
			if err != nil {
				t.Fatal(err)
			}
			if got[i].Result != res || got[i].Content != content {
				t.Errorf("%s: %s: probe says %v %q, a lookup %v %q", step, addr, got[i].Result, got[i].Content, res, content)
			}
		}
		return got
	}
	check("first probe")
	check("nothing changed")

	// An answer cached at the agent's current version is used as it is;
	// one cached at another version is not.
	r.sim.probes.mu.Lock()
	bogus := r.sim.probes.answers[b]
	bogus.content = "cached"
	r.sim.probes.answers[b] = bogus
	stale := r.sim.probes.answers[c]
	stale.version--
	stale.content = "stale"
	r.sim.probes.answers[c] = stale
	r.sim.probes.mu.Unlock()
	got, err := r.sim.ProbeTargets(ctx, addrs)
	if err != nil {
		t.Fatal(err)
	}
	if got[3].Content != "cached" {
		t.Errorf("unchanged agent: content %q, want the cached answer", got[3].Content)
	}
	if got[2].Content == "stale" {
		t.Errorf("an answer cached at an old version was used")
	}
	exec(`UPDATE agent_region SET content = 'blank' WHERE dataset_id = $1`, r.datasets[2])
	check("content set by hand")

	r.write(t, c)
	check("write through the agent")
	exec(`UPDATE agent_region SET content = 'by-hand' WHERE dataset_id = $1`, r.datasets[1])
	check("content set by hand")
	exec(`DELETE FROM agent_port WHERE dataset_id = $1`, r.datasets[1])
	check("port removed by hand")
	obj, _, err := servedAt(ctx, r.pool, r.datasets[0], int32(a.Port()))
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := r.pool.Query(ctx, `SELECT snapshot_id FROM agent_snapshot WHERE dataset_id = $1`, r.datasets[0])
	if err != nil {
		t.Fatal(err)
	}
	snapIDs, err := pgx.CollectRows(snaps, pgx.RowTo[uuid.UUID])
	if err != nil || len(snapIDs) != 1 {
		t.Fatalf("snapshots: %v, %v", snapIDs, err)
	}
	if err := r.sim.StopRunningSnapshot(ctx, r.datasets[0], obj.RegionID, snapIDs[0]); err != nil {
		t.Fatal(err)
	}
	check("running snapshot stopped")
	if err := r.expunge(ctx, 2); err != nil {
		t.Fatal(err)
	}
	check("disk expunged")
	exec(`TRUNCATE agent_port`)
	got = check("ports truncated")
	for i, p := range got {
		if p.Result == agentapi.Served {
			t.Errorf("%s served after every port was removed", addrs[i])
		}
	}
}

// Agent calls that reach the same agents in different orders, all at
// once, neither deadlock nor fail: each takes its agents' versions first,
// in one order.
func TestAgentCallsOnSharedAgentsDoNotDeadlock(t *testing.T) {
	ctx := context.Background()
	r := newRack(t, 3)
	none := netip.AddrPort{}
	set := []netip.AddrPort{r.region(t, 0, none), r.region(t, 1, none), r.region(t, 2, none)}
	reversed := []netip.AddrPort{set[2], set[1], set[0]}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				addrs := set
				if w%2 == 1 {
					addrs = reversed
				}
				if _, _, _, err := r.sim.Write(ctx, addrs, uuid.New()); err != nil {
					errs <- err
					return
				}
				if _, err := r.sim.EnsureRegion(ctx, r.datasets[w%3], uuid.New(), ""); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var deadlocks int64
	if err := r.pool.QueryRow(ctx, `SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()`).Scan(&deadlocks); err != nil {
		t.Fatal(err)
	}
	if deadlocks != 0 {
		t.Errorf("%d deadlocks", deadlocks)
	}
}
