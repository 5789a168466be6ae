package simagent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/allocator/agentapi"
	"storagecp.dev/allocator/migrations"
	"storagecp.dev/platform/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Schema{Name: "allocator", Migrations: migrations.FS})
}

// rack is n in-service datasets, one per sled, on a fresh database.
type rack struct {
	pool     *pgxpool.Pool
	sim      *Sim
	datasets []uuid.UUID
	disks    []uuid.UUID
	ips      []netip.Addr
}

func newRack(t *testing.T, n int) *rack {
	t.Helper()
	ctx := context.Background()
	r := &rack{pool: pgtest.NewPool(t, "allocator")}
	r.sim = NewSim(r.pool)
	for i := range n {
		ip := netip.MustParseAddr(fmt.Sprintf("fd00:1122:3344:%x::1", 0x101+i))
		sled, disk, zpool, dataset := uuid.New(), uuid.New(), uuid.New(), uuid.New()
		// The allocator's inventory code is internal to its module: add
		// the rows the agents read directly.
		for _, stmt := range []struct {
			sql  string
			args []any
		}{
			{`INSERT INTO sled (id, serial) VALUES ($1, $2)`, []any{sled, fmt.Sprint("sled-", i)}},
			{`INSERT INTO physical_disk (id, sled_id) VALUES ($1, $2)`, []any{disk, sled}},
			{`INSERT INTO zpool (id, physical_disk_id, sled_id) VALUES ($1, $2, $3)`, []any{zpool, disk, sled}},
			{`INSERT INTO crucible_dataset (id, zpool_id, ip, capacity) VALUES ($1, $2, $3::inet, $4)`, []any{dataset, zpool, ip.String(), int64(1) << 40}},
		} {
			if _, err := r.pool.Exec(ctx, stmt.sql, stmt.args...); err != nil {
				t.Fatal(err)
			}
		}
		r.datasets, r.disks, r.ips = append(r.datasets, dataset), append(r.disks, disk), append(r.ips, ip)
	}
	return r
}

// expunge expunges dataset i's disk.
func (r *rack) expunge(ctx context.Context, i int) error {
	_, err := r.pool.Exec(ctx, `UPDATE physical_disk SET policy = 'expunged' WHERE id = $1`, r.disks[i])
	return err
}

// region ensures a region on dataset i (cloned from src when valid) and
// returns its address.
func (r *rack) region(t *testing.T, i int, src netip.AddrPort) netip.AddrPort {
	t.Helper()
	clone := ""
	if src.IsValid() {
		clone = src.String()
	}
	port, err := r.sim.EnsureRegion(context.Background(), r.datasets[i], uuid.New(), clone)
	if err != nil {
		t.Fatalf("ensure region on dataset %d: %v", i, err)
	}
	return netip.AddrPortFrom(r.ips[i], port)
}

// snapshot takes a snapshot of the region at addr (on dataset i), starts
// its running snapshot and returns the running snapshot's address.
func (r *rack) snapshot(t *testing.T, i int, regionAddr netip.AddrPort) netip.AddrPort {
	t.Helper()
	ctx := context.Background()
	obj, found, err := servedAt(ctx, r.pool, r.datasets[i], int32(regionAddr.Port()))
	if err != nil || !found {
		t.Fatalf("region at %s: found %v, %v", regionAddr, found, err)
	}
	snap := uuid.New()
	if err := r.sim.CreateSnapshot(ctx, r.datasets[i], obj.RegionID, snap); err != nil {
		t.Fatal(err)
	}
	port, err := r.sim.StartRunningSnapshot(ctx, r.datasets[i], obj.RegionID, snap)
	if err != nil {
		t.Fatal(err)
	}
	return netip.AddrPortFrom(r.ips[i], port)
}

// content probes addr and fails unless it is served.
func (r *rack) content(t *testing.T, addr netip.AddrPort) string {
	t.Helper()
	p, err := r.sim.ProbeTargets(context.Background(), []netip.AddrPort{addr})
	if err != nil || p[0].Result != agentapi.Served {
		t.Fatalf("probe %s: %v, %v", addr, p, err)
	}
	return p[0].Content
}

func (r *rack) write(t *testing.T, addrs ...netip.AddrPort) string {
	t.Helper()
	c, written, skipped, err := r.sim.Write(context.Background(), addrs, uuid.New())
	if err != nil {
		t.Fatalf("write %v: %v", addrs, err)
	}
	if len(written) != len(addrs) || len(skipped) != 0 {
		t.Fatalf("write %v: written %v, skipped %v", addrs, written, skipped)
	}
	return c
}

// The lineage rules: a new region is blank; a snapshot is its region's
// content when taken and keeps it; a write changes a region's content; a
// clone copies its source's; snapshots taken at different times differ.
func TestContentLineage(t *testing.T) {
	r := newRack(t, 3)
	none := netip.AddrPort{}
	a := r.region(t, 0, none)
	if got := r.content(t, a); got != Blank {
		t.Fatalf("new region holds %q, want %q", got, Blank)
	}
	if b := r.region(t, 1, none); r.content(t, b) != r.content(t, a) {
		t.Fatalf("two blank regions differ: %q, %q", r.content(t, b), r.content(t, a))
	}

	w1 := r.write(t, a)
	if w1 == Blank || r.content(t, a) != w1 {
		t.Fatalf("after a write the region holds %q (write said %q)", r.content(t, a), w1)
	}
	s1 := r.snapshot(t, 0, a)
	if r.content(t, s1) != w1 {
		t.Fatalf("snapshot holds %q, its region held %q when taken", r.content(t, s1), w1)
	}

	w2 := r.write(t, a)
	if w2 == w1 {
		t.Fatalf("two writes gave the same content %q", w1)
	}
	if r.content(t, s1) != w1 {
		t.Fatalf("a later write reached the snapshot: %q", r.content(t, s1))
	}
	s2 := r.snapshot(t, 0, a)
	if r.content(t, s2) != w2 || r.content(t, s2) == r.content(t, s1) {
		t.Fatalf("snapshots at different times: %q then %q, want %q then %q", r.content(t, s1), r.content(t, s2), w1, w2)
	}

	// A clone copies what its source serves, from a snapshot or a region.
	c1 := r.region(t, 1, s1)
	c2 := r.region(t, 2, s2)
	if r.content(t, c1) != w1 || r.content(t, c2) != w2 {
		t.Fatalf("clones hold %q and %q, want %q and %q", r.content(t, c1), r.content(t, c2), w1, w2)
	}
	c3 := r.region(t, 2, c1)
	if r.content(t, c3) != w1 {
		t.Fatalf("clone of a clone holds %q, want %q", r.content(t, c3), w1)
	}
	// The clone is a copy, not a link: writing the source later leaves it.
	r.write(t, a)
	if r.content(t, r.region(t, 1, a)) == r.content(t, c2) {
		t.Fatal("clone of the region after a third write equals the second snapshot")
	}
	if r.content(t, c2) != w2 {
		t.Fatalf("a write to the source region reached an earlier clone: %q", r.content(t, c2))
	}

	// Ensuring again does not re-copy: the region keeps its bytes.
	obj, _, err := servedAt(context.Background(), r.pool, r.datasets[1], int32(c1.Port()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.sim.EnsureRegion(context.Background(), r.datasets[1], obj.RegionID, s2.String()); err != nil {
		t.Fatal(err)
	}
	if r.content(t, c1) != w1 {
		t.Fatalf("a repeated ensure changed the clone to %q", r.content(t, c1))
	}
}

// A write reaches every served rw copy in one go, skips unreachable ones,
// and refuses read-only data without writing anything.
func TestWriteSkipsGoneAndRefusesReadOnly(t *testing.T) {
	r := newRack(t, 3)
	ctx := context.Background()
	none := netip.AddrPort{}
	set := []netip.AddrPort{r.region(t, 0, none), r.region(t, 1, none), r.region(t, 2, none)}
	if err := r.expunge(ctx, 2); err != nil {
		t.Fatal(err)
	}
	c, written, skipped, err := r.sim.Write(ctx, set, uuid.New())
	if err != nil {
		t.Fatal(err)
	}
	if len(written) != 2 || len(skipped) != 1 || skipped[0] != set[2] {
		t.Fatalf("written %v, skipped %v", written, skipped)
	}
	for _, a := range set[:2] {
		if r.content(t, a) != c {
			t.Fatalf("%s holds %q, want %q", a, r.content(t, a), c)
		}
	}
	// A snapshot's running snapshot is read-only: the whole write is refused.
	snap := r.snapshot(t, 0, set[0])
	if _, _, _, err := r.sim.Write(ctx, []netip.AddrPort{set[1], snap}, uuid.New()); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to a running snapshot: %v", err)
	}
	if r.content(t, set[1]) != c {
		t.Fatalf("a refused write changed %s", set[1])
	}
	// The same write id gives the same content (a retried call).
	id := uuid.New()
	c1, _, _, err := r.sim.Write(ctx, set[:2], id)
	if err != nil {
		t.Fatal(err)
	}
	c2, _, _, err := r.sim.Write(ctx, set[:2], id)
	if err != nil || c1 != c2 {
		t.Fatalf("repeated write: %q then %q (%v)", c1, c2, err)
	}
}

// A live repair fills the new copy with what the others hold; a
// reconciliation settles on the written content over blank copies and
// refuses to pick between two written ones with no majority.
func TestRepairCopiesTheSetsContent(t *testing.T) {
	r := newRack(t, 4)
	ctx := context.Background()
	none := netip.AddrPort{}
	old := []netip.AddrPort{r.region(t, 0, none), r.region(t, 1, none), r.region(t, 2, none)}
	w := r.write(t, old...)
	// Copy 2 is replaced by a blank region on dataset 3, live-repaired.
	fresh := r.region(t, 3, none)
	set := []netip.AddrPort{old[0], old[1], fresh}
	c, repaired, err := r.sim.Repair(ctx, set, []netip.AddrPort{fresh})
	if err != nil || c != w || len(repaired) != 1 || repaired[0] != fresh || r.content(t, fresh) != w {
		t.Fatalf("live repair: content %q, repaired %v, new copy holds %q, %v; want %q", c, repaired, r.content(t, fresh), err, w)
	}

	// Reconciliation: blank loses to the written copies.
	blank := r.region(t, 2, none)
	set = []netip.AddrPort{old[0], old[1], blank}
	if c, repaired, err := r.sim.Repair(ctx, set, nil); err != nil || c != w || len(repaired) != 1 || r.content(t, blank) != w {
		t.Fatalf("reconciliation: %q, %v, %v", c, repaired, err)
	}
	// Even a single written copy wins over two blank ones.
	b1, b2 := r.region(t, 1, none), r.region(t, 2, none)
	if c, _, err := r.sim.Repair(ctx, []netip.AddrPort{old[0], b1, b2}, nil); err != nil || c != w || r.content(t, b1) != w || r.content(t, b2) != w {
		t.Fatalf("reconciliation with one written copy: %q, %v", c, err)
	}

	// Two different written contents and no majority: refused, nothing
	// changed.
	x, y := r.region(t, 1, none), r.region(t, 2, none)
	cx, cy := r.write(t, x), r.write(t, y)
	if _, _, err := r.sim.Repair(ctx, []netip.AddrPort{x, y}, nil); !errors.Is(err, ErrDisagree) {
		t.Fatalf("reconciliation of two written contents: %v", err)
	}
	if r.content(t, x) != cx || r.content(t, y) != cy {
		t.Fatal("a refused reconciliation changed a copy")
	}
	// A live repair whose sources disagree is refused too.
	z := r.region(t, 3, none)
	if _, _, err := r.sim.Repair(ctx, []netip.AddrPort{x, y, z}, []netip.AddrPort{z}); !errors.Is(err, ErrDisagree) {
		t.Fatalf("live repair from disagreeing copies: %v", err)
	}
	// With every source gone there is nothing to repair from.
	if err := r.expunge(ctx, 0); err != nil {
		t.Fatal(err)
	}
	lone := r.region(t, 3, none)
	if _, _, err := r.sim.Repair(ctx, []netip.AddrPort{old[0], lone}, []netip.AddrPort{lone}); !errors.Is(err, ErrNoSource) {
		t.Fatalf("live repair with no served source: %v", err)
	}
}
