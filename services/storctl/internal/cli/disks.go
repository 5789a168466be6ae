package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"google.golang.org/protobuf/proto"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

// detectors are the tasks an expunge hands its work to; activating them at
// once is what makes a replacement start in milliseconds instead of at the
// next period.
var detectors = []string{"ro_replacement_detector", "rw_replacement_detector"}

const (
	prefixPolicy = "POLICY_"
	prefixHW     = "HARDWARE_STATE_"
)

func (e *env) allocator() (allocatorv1.RegionAllocatorServiceClient, error) {
	c, err := e.conn(svcAllocator)
	if err != nil {
		return nil, err
	}
	return allocatorv1.NewRegionAllocatorServiceClient(c), nil
}

func diskCommands() []command {
	return []command{{
		path: "sleds list", summary: "sleds with their policy and state, disks by policy and state, regions and region snapshots",
		max: 0,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, _ []string) error {
				c, err := e.allocator()
				if err != nil {
					return err
				}
				req := &allocatorv1.ListSledsRequest{PageSize: 1000}
				all := &allocatorv1.ListSledsResponse{}
				if err := allPages(func(token string) (*allocatorv1.ListSledsResponse, error) {
					req.PageToken = token
					return c.ListSleds(ctx, req)
				}, func(resp *allocatorv1.ListSledsResponse) { all.Sleds = append(all.Sleds, resp.Sleds...) }); err != nil {
					return e.wrap(svcAllocator, err)
				}
				if e.json() {
					return e.printJSON(all)
				}
				return renderTable(e.stdout, sledHeader, sledRows(all.Sleds))
			}
		},
	}, {
		path: "disks list", summary: "physical disks with their dataset, usage and policy",
		max: 0,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			sled := fs.String("sled", "", "only the disks of this sled")
			return func(ctx context.Context, e *env, _ []string) error {
				all, err := e.listDisks(ctx, *sled)
				if err != nil {
					return err
				}
				if e.json() {
					return e.printJSON(all)
				}
				return renderTable(e.stdout, diskHeader, diskRows(all.Disks))
			}
		},
	}, {
		path: "disks expunge", args: "DISK", summary: "expunge a disk (or --sled) and start its replacements; --dry-run previews",
		max: 1,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			dry := fs.Bool("dry-run", false, "only preview what would be replaced and lost (PreviewExpunge); changes nothing")
			sled := fs.String("sled", "", "expunge every disk of this sled instead of one disk")
			return func(ctx context.Context, e *env, args []string) error {
				if (len(args) == 1) == (*sled != "") {
					return usagef("disks expunge: give either DISK or --sled SLED")
				}
				req := &orchestratorv1.PreviewExpungeRequest{SledId: *sled}
				if len(args) == 1 {
					req.DiskId = args[0]
				}
				if *dry {
					return e.preview(ctx, req)
				}
				return e.expunge(ctx, req)
			}
		},
	}}
}

func (e *env) listDisks(ctx context.Context, sled string) (*allocatorv1.ListPhysicalDisksResponse, error) {
	c, err := e.allocator()
	if err != nil {
		return nil, err
	}
	req := &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000, SledId: sled}
	all := &allocatorv1.ListPhysicalDisksResponse{}
	if err := allPages(func(token string) (*allocatorv1.ListPhysicalDisksResponse, error) {
		req.PageToken = token
		return c.ListPhysicalDisks(ctx, req)
	}, func(resp *allocatorv1.ListPhysicalDisksResponse) { all.Disks = append(all.Disks, resp.Disks...) }); err != nil {
		return nil, e.wrap(svcAllocator, err)
	}
	return all, nil
}

var sledHeader = []string{"SLED", "SERIAL", "POLICY", "STATE", "DISKS", "USED", "CAPACITY", "REGIONS", "SNAPSHOTS"}

func sledRows(ss []*allocatorv1.SledSummary) [][]string {
	var rows [][]string
	for _, s := range ss {
		// DISKS: "2 in_service/active, 1 expunged/active"; "0" for none.
		var disks []string
		for _, c := range s.Disks {
			disks = append(disks, fmt.Sprintf("%d %s/%s", c.Count, enum(c.Policy, prefixPolicy), enum(c.State, prefixHW)))
		}
		if len(disks) == 0 {
			disks = []string{"0"}
		}
		sl := s.GetSled()
		rows = append(rows, []string{
			sl.GetSledId(), sl.GetSerial(), enum(sl.GetPolicy(), prefixPolicy), enum(sl.GetState(), prefixHW), strings.Join(disks, ", "),
			bytesGiB(s.SizeUsedBytes), bytesGiB(s.CapacityBytes), fmt.Sprint(s.RegionCount), fmt.Sprint(s.RegionSnapshotCount),
		})
	}
	return rows
}

var diskHeader = []string{"DISK", "SLED", "POLICY", "STATE", "DATASET", "ADDRESS", "USED", "CAPACITY", "REGIONS", "SNAPSHOTS"}

func diskRows(ds []*allocatorv1.PhysicalDisk) [][]string {
	var rows [][]string
	for _, d := range ds {
		rows = append(rows, []string{
			d.DiskId, d.SledId, enum(d.Policy, prefixPolicy), enum(d.State, prefixHW), d.DatasetId, d.DatasetAddress,
			bytesGiB(d.SizeUsedBytes), bytesGiB(d.CapacityBytes), fmt.Sprint(d.RegionCount), fmt.Sprint(d.RegionSnapshotCount),
		})
	}
	return rows
}

func (e *env) preview(ctx context.Context, req *orchestratorv1.PreviewExpungeRequest) error {
	c, err := e.replacement()
	if err != nil {
		return err
	}
	resp, err := c.PreviewExpunge(ctx, req)
	if err != nil {
		return e.wrap(svcOrchestrator, err)
	}
	if e.json() {
		return e.printJSON(resp)
	}
	return renderPreview(e.stdout, req, resp)
}

func renderPreview(w io.Writer, req *orchestratorv1.PreviewExpungeRequest, p *orchestratorv1.PreviewExpungeResponse) error {
	what := "disk " + req.DiskId
	if req.SledId != "" {
		what = fmt.Sprintf("sled %s (%d in-service disks)", req.SledId, len(p.DiskIds))
	}
	fmt.Fprintf(w, "Dry run: expunging %s would replace (nothing was changed):\n", what)
	fmt.Fprintf(w, "\nRead-only targets (%d):\n", len(p.ReadOnlyTargets))
	if len(p.ReadOnlyTargets) > 0 {
		var rows [][]string
		for _, t := range p.ReadOnlyTargets {
			status := "ok"
			switch {
			case t.Gone:
				status = "gone (no references)"
			case t.DataLoss:
				status = "DATA LOSS"
			case !t.CapacityOk:
				status = "NO ROOM"
			}
			src := t.CloneSourceTargetId
			if src != "" {
				src += " (" + t.CloneSourceKind + ")"
			}
			rows = append(rows, []string{t.TargetId, enum(t.Kind, prefixKind), t.SnapshotId, fmt.Sprint(t.ReferencingVolumes), src, t.NewRegionDiskId, status})
		}
		if err := renderTable(w, []string{"TARGET", "KIND", "SNAPSHOT", "REFS", "CLONE_SOURCE", "NEW_REGION_DISK", "STATUS"}, rows); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "\nRead/write regions (%d):\n", len(p.ReadWriteRegions))
	if len(p.ReadWriteRegions) > 0 {
		var rows [][]string
		for _, r := range p.ReadWriteRegions {
			status := "ok"
			switch {
			case r.VolumeDeleted:
				status = "volume deleted"
			case r.DataLoss:
				status = "DATA LOSS"
			case !r.CapacityOk:
				status = "NO ROOM"
			}
			survive := 0
			for _, m := range r.OtherMembers {
				if !m.Lost {
					survive++
				}
			}
			members := ""
			if !r.VolumeDeleted {
				members = fmt.Sprintf("%d of %d", survive, len(r.OtherMembers))
			}
			rows = append(rows, []string{r.RegionId, r.VolumeId, members, r.NewRegionDiskId, status})
		}
		if err := renderTable(w, []string{"REGION", "VOLUME", "OTHERS_SURVIVING", "NEW_REGION_DISK", "STATUS"}, rows); err != nil {
			return err
		}
	}
	capacity := "ok"
	if !p.CapacityOk {
		capacity = "NOT ENOUGH"
	}
	fmt.Fprintf(w, "\nCapacity: %s — %s\n", capacity, p.CapacityDetail)
	if p.DataLoss {
		fmt.Fprintln(w, "Data loss: YES — some data would have no surviving copy")
	} else {
		fmt.Fprintln(w, "Data loss: none")
	}
	return nil
}

// expunge is the real thing: the allocator marks the disk (or sled)
// expunged, then both detectors are activated so replacements start now.
func (e *env) expunge(ctx context.Context, req *orchestratorv1.PreviewExpungeRequest) error {
	a, err := e.allocator()
	if err != nil {
		return err
	}
	var disks []string
	var out proto.Message
	if req.DiskId != "" {
		resp, err := a.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: req.DiskId})
		if err != nil {
			return e.wrap(svcAllocator, err)
		}
		if !resp.Changed {
			fmt.Fprintf(e.stderr, "storctl: disk %s was already expunged\n", req.DiskId)
		}
		disks = append(disks, resp.Disk.GetDiskId())
		out = resp
	} else {
		resp, err := a.ExpungeSled(ctx, &allocatorv1.ExpungeSledRequest{SledId: req.SledId})
		if err != nil {
			return e.wrap(svcAllocator, err)
		}
		for _, d := range resp.Disks {
			disks = append(disks, d.DiskId)
		}
		out = resp
	}
	adm, err := e.admin()
	if err != nil {
		return err
	}
	for _, t := range detectors {
		if _, err := adm.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: t}); err != nil {
			// The expunge happened; the detectors' period will still find it.
			return fmt.Errorf("expunged, but activating %s failed (it runs on its period anyway): %w", t, e.wrap(svcOrchestrator, err))
		}
	}
	if e.json() {
		return e.printJSON(out)
	}
	fmt.Fprintf(e.stdout, "expunged %s\nactivated %s\nfollow with: storctl replacements watch\n", strings.Join(disks, ", "), strings.Join(detectors, ", "))
	return nil
}
