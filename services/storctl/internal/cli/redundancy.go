package cli

// Redundancy views: volumes degraded (which volumes have fewer than three
// live copies of some region set, and what each is waiting for) and disks
// ok-to-expunge (which disks can go together without losing data).

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

const prefixLeftOut = "LEFT_OUT_REASON_"

func redundancyCommands() []command {
	return []command{{
		path: "volumes degraded", summary: "live volumes with fewer than 3 live copies of some region set, worst first, and what each waits for",
		max: 0,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			below := fs.Int("below", 3, "list volumes whose redundancy is below this (4: every live volume)")
			return func(ctx context.Context, e *env, _ []string) error {
				if *below < 1 || *below > 4 {
					return usagef("volumes degraded: --below must be 1..4")
				}
				return e.degraded(ctx, int32(*below))
			}
		},
	}, {
		path: "disks ok-to-expunge", summary: "the largest set of disks (or sleds) that can be expunged together without losing data",
		max: 0,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			max := fs.Int("max", 1, "expunge at most this many candidates together")
			cands := fs.String("candidates", "", "comma-separated disk or sled ids to choose from (default: every in-service disk)")
			return func(ctx context.Context, e *env, _ []string) error {
				if *max < 1 {
					return usagef("disks ok-to-expunge: --max must be at least 1")
				}
				return e.okToExpunge(ctx, *max, *cands)
			}
		},
	}}
}

// degraded lists the degraded volumes with what each waits for, from the
// replacement requests (and, for read-only targets, the volume's step)
// working on its copies that are not live.
func (e *env) degraded(ctx context.Context, below int32) error {
	vc, err := e.volumes()
	if err != nil {
		return err
	}
	req := &volumev1.ListDegradedVolumesRequest{Below: below, PageSize: 1000}
	all := &volumev1.ListDegradedVolumesResponse{}
	if err := allPages(func(token string) (*volumev1.ListDegradedVolumesResponse, error) {
		req.PageToken = token
		return vc.ListDegradedVolumes(ctx, req)
	}, func(resp *volumev1.ListDegradedVolumesResponse) {
		all.Volumes = append(all.Volumes, resp.Volumes...)
		all.VolumesAtRedundancy, all.DisksReadAt = resp.VolumesAtRedundancy, resp.DisksReadAt
	}); err != nil {
		return e.wrap(svcVolume, err)
	}
	waits, err := e.waitingFor(ctx, all.Volumes)
	if err != nil {
		return err
	}
	if e.json() {
		// The response as the API has it, each volume with what it waits
		// for beside it.
		type entry struct {
			Volume     json.RawMessage `json:"volume"`
			WaitingFor []string        `json:"waitingFor"`
		}
		out := struct {
			Volumes             []entry `json:"volumes"`
			VolumesAtRedundancy []int64 `json:"volumesAtRedundancy"`
		}{Volumes: []entry{}, VolumesAtRedundancy: all.VolumesAtRedundancy}
		for _, v := range all.Volumes {
			b, err := marshalJSON(v)
			if err != nil {
				return err
			}
			out.Volumes = append(out.Volumes, entry{Volume: b, WaitingFor: waits[v.VolumeId]})
		}
		b, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			return err
		}
		_, err = e.stdout.Write(append(b, '\n'))
		return err
	}
	return renderDegraded(e.stdout, all, waits)
}

func renderDegraded(w io.Writer, all *volumev1.ListDegradedVolumesResponse, waits map[string][]string) error {
	var levels []string
	for r, n := range all.VolumesAtRedundancy {
		levels = append(levels, fmt.Sprintf("%d: %d", r, n))
	}
	fmt.Fprintf(w, "Live volumes by redundancy (live copies of their weakest region set): %s\n", strings.Join(levels, ", "))
	fmt.Fprintf(w, "\nDegraded (%d):\n", len(all.Volumes))
	if len(all.Volumes) == 0 {
		return nil
	}
	var rows [][]string
	for _, v := range all.Volumes {
		weakest := "-"
		if v.WeakestSet >= 0 && int(v.WeakestSet) < len(v.Sets) {
			s := v.Sets[v.WeakestSet]
			weakest = fmt.Sprintf("%s (%s, depth %d)", s.Path, setMode(s), s.Depth)
		}
		rows = append(rows, []string{v.VolumeId, fmt.Sprint(v.Redundancy), weakest, strings.Join(waits[v.VolumeId], "; ")})
	}
	return renderTable(w, []string{"VOLUME", "REDUNDANCY", "WEAKEST_SET", "WAITING_FOR"}, rows)
}

func setMode(s *volumev1.RegionSetRedundancy) string {
	if s.ReadOnly {
		return "read-only"
	}
	return "rw"
}

// waitingFor says, for each volume, what works on each of its copies that
// is not live in a set below 3: the request for that target (its state
// and wait) and, for a read-only target, this volume's step; or that no
// request exists yet. One ListReplacements scan, and one ListSteps per
// read-only request involved.
func (e *env) waitingFor(ctx context.Context, vols []*volumev1.VolumeRedundancy) (map[string][]string, error) {
	out := map[string][]string{}
	if len(vols) == 0 {
		return out, nil
	}
	rc, err := e.replacement()
	if err != nil {
		return nil, err
	}
	byTarget := map[string]*orchestratorv1.Replacement{}
	lreq := &orchestratorv1.ListReplacementsRequest{PageSize: 1000}
	if err := allPages(func(token string) (*orchestratorv1.ListReplacementsResponse, error) {
		lreq.PageToken = token
		return rc.ListReplacements(ctx, lreq)
	}, func(resp *orchestratorv1.ListReplacementsResponse) {
		for _, r := range resp.Replacements {
			// The newest request for a target tells its story.
			if prev := byTarget[r.OldTargetId]; prev == nil || r.RequestTime.AsTime().After(prev.RequestTime.AsTime()) {
				byTarget[r.OldTargetId] = r
			}
		}
	}); err != nil {
		return nil, e.wrap(svcOrchestrator, err)
	}
	steps := map[string]map[string]*orchestratorv1.Step{} // request -> volume -> step
	stepOf := func(reqID, volume string) (*orchestratorv1.Step, error) {
		if m, ok := steps[reqID]; ok {
			return m[volume], nil
		}
		m := map[string]*orchestratorv1.Step{}
		sreq := &orchestratorv1.ListStepsRequest{ReplacementId: reqID, PageSize: 1000}
		if err := allPages(func(token string) (*orchestratorv1.ListStepsResponse, error) {
			sreq.PageToken = token
			return rc.ListSteps(ctx, sreq)
		}, func(resp *orchestratorv1.ListStepsResponse) {
			for _, s := range resp.Steps {
				m[s.VolumeId] = s
			}
		}); err != nil {
			return nil, e.wrap(svcOrchestrator, err)
		}
		steps[reqID] = m
		return m[volume], nil
	}
	for _, v := range vols {
		seen := map[string]bool{}
		for _, s := range v.Sets {
			if s.LiveCopies >= 3 {
				continue
			}
			for _, c := range s.Copies {
				if c.Live {
					continue
				}
				key := c.TargetId
				if key == "" {
					key = c.Address
				}
				if seen[key] {
					continue
				}
				seen[key] = true
				r := byTarget[c.TargetId]
				if c.TargetId == "" || r == nil {
					out[v.VolumeId] = append(out[v.VolumeId], fmt.Sprintf("no request yet for %s (%s)", orDash(key), c.NotLiveReason))
					continue
				}
				text := fmt.Sprintf("%s request %s %s, %s", enum(r.Kind, prefixKind), r.ReplacementId, replacementState(r), waitText(r.Wait))
				if r.Kind != orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
					st, err := stepOf(r.ReplacementId, v.VolumeId)
					if err != nil {
						return nil, err
					}
					if st != nil {
						text += fmt.Sprintf("; step %s %s, %s", st.StepId, enum(st.State, prefixStep), waitText(st.Wait))
					} else {
						text += "; no step for this volume yet"
					}
				}
				out[v.VolumeId] = append(out[v.VolumeId], text)
			}
		}
	}
	return out, nil
}

// okToExpunge asks PreviewExpunge's ok-to-expunge mode and prints the
// answer. Each candidate is a disk or a sled id; storctl tells them apart
// from the allocator's disk list.
func (e *env) okToExpunge(ctx context.Context, max int, candidates string) error {
	req := &orchestratorv1.PreviewExpungeRequest{OkToExpungeMax: int32(max)}
	if strings.TrimSpace(candidates) != "" {
		disks, err := e.listDisks(ctx, "")
		if err != nil {
			return err
		}
		isDisk, isSled := map[string]bool{}, map[string]bool{}
		for _, d := range disks.Disks {
			isDisk[d.DiskId], isSled[d.SledId] = true, true
		}
		for _, c := range strings.Split(candidates, ",") {
			c = strings.TrimSpace(c)
			switch {
			case c == "":
			case isDisk[c]:
				req.DiskIds = append(req.DiskIds, c)
			case isSled[c]:
				req.SledIds = append(req.SledIds, c)
			default:
				return usagef("disks ok-to-expunge: --candidates: %q is neither a disk nor a sled", c)
			}
		}
	}
	rc, err := e.replacement()
	if err != nil {
		return err
	}
	resp, err := rc.PreviewExpunge(ctx, req)
	if err != nil {
		return e.wrap(svcOrchestrator, err)
	}
	if resp.OkToExpunge == nil {
		return e.wrap(svcOrchestrator, status.Error(codes.Unimplemented, "this orchestrator has no ok-to-expunge mode"))
	}
	if e.json() {
		return e.printJSON(resp)
	}
	return renderOkToExpunge(e.stdout, max, resp)
}

func candidateText(c *orchestratorv1.ExpungeCandidate) string {
	if c.SledId != "" {
		return "sled " + c.SledId
	}
	return "disk " + c.DiskId
}

func renderOkToExpunge(w io.Writer, max int, resp *orchestratorv1.PreviewExpungeResponse) error {
	ok := resp.OkToExpunge
	total := len(ok.Chosen) + len(ok.LeftOut)
	fmt.Fprintf(w, "Ok to expunge together: %d of %d candidates (at most %d asked); nothing was changed.\n", len(ok.Chosen), total, max)
	fmt.Fprintf(w, "Search: %s\n", ok.Method)
	if !ok.Exact {
		fmt.Fprintln(w, "NOTE: greedy answer — safe to expunge, but a larger safe set may exist.")
	}
	if len(ok.Chosen) > 0 {
		var rows [][]string
		for _, c := range ok.Chosen {
			rows = append(rows, []string{candidateText(c), strings.Join(c.DiskIds, ",")})
		}
		fmt.Fprintln(w)
		if err := renderTable(w, []string{"CANDIDATE", "DISKS"}, rows); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "\nLeft out (%d):\n", len(ok.LeftOut))
	if len(ok.LeftOut) > 0 {
		var rows [][]string
		for _, l := range ok.LeftOut {
			rows = append(rows, []string{candidateText(l.Candidate), enum(l.Reason, prefixLeftOut),
				fmt.Sprint(len(l.VolumeIds)), fmt.Sprint(len(l.SnapshotIds))})
		}
		if err := renderTable(w, []string{"CANDIDATE", "REASON", "VOLUMES", "SNAPSHOTS"}, rows); err != nil {
			return err
		}
		// Who would lose what, one candidate at a time.
		for _, l := range ok.LeftOut {
			fmt.Fprintf(w, "\n%s (%s): %s\n", candidateText(l.Candidate), enum(l.Reason, prefixLeftOut), l.Detail)
			if len(l.VolumeIds) > 0 {
				fmt.Fprintf(w, "  volumes:   %s\n", strings.Join(l.VolumeIds, " "))
			}
			if len(l.SnapshotIds) > 0 {
				fmt.Fprintf(w, "  snapshots: %s\n", strings.Join(l.SnapshotIds, " "))
			}
		}
	}
	capacity := "ok"
	if !resp.CapacityOk {
		capacity = "NOT ENOUGH"
	}
	loss := "none"
	if resp.DataLoss {
		loss = "YES"
	}
	fmt.Fprintf(w, "\nExpunging the answer replaces %d read-only targets and %d rw regions; capacity: %s — %s; data loss: %s\n",
		len(resp.ReadOnlyTargets), len(resp.ReadWriteRegions), capacity, resp.CapacityDetail, loss)
	return nil
}

// renderRedundancy is volumes show's redundancy section.
func renderRedundancy(w io.Writer, r *volumev1.VolumeRedundancy) error {
	fmt.Fprintf(w, "\nRedundancy: %d (live copies of the weakest region set, read-only parents included)\n", r.Redundancy)
	var rows [][]string
	for i, s := range r.Sets {
		var missing []string
		for _, c := range s.Copies {
			if !c.Live {
				missing = append(missing, c.Address+" ("+c.NotLiveReason+")")
			}
		}
		mark := "-"
		if int32(i) == r.WeakestSet {
			mark = "yes"
		}
		rows = append(rows, []string{s.Path, setMode(s), strconv.Itoa(int(s.Depth)), fmt.Sprintf("%d of %d", s.LiveCopies, len(s.Copies)),
			orDash(strings.Join(missing, ", ")), mark})
	}
	return renderTable(w, []string{"REGION_SET", "MODE", "DEPTH", "LIVE", "NOT_LIVE", "WEAKEST"}, rows)
}
