package simagent

import (
	"context"
	"net/netip"
	"testing"

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
