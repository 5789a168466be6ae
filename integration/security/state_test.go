package security

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/rack"
)

// state is everything a refused call could have changed, as the harness
// lists it: each record in its deterministic wire form, by kind.
type state map[string][]string

// listAll pages through a List RPC.
func listAll[T proto.Message](t *testing.T, what string, page func(ctx context.Context, token string) ([]T, string, error)) []string {
	t.Helper()
	var out []string
	token := ""
	for {
		items, next, err := page(context.Background(), token)
		if err != nil {
			t.Fatalf("list %s: %v", what, err)
		}
		for _, it := range items {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(it)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, protojson.MarshalOptions{}.Format(it)+"\x00"+string(b))
		}
		if next == "" {
			break
		}
		token = next
	}
	sort.Strings(out)
	return out
}

const pageSize = 500

// takeState lists volumes (with deleted ones, VCRs with their
// generations), targets, physical disks, regions, region snapshots,
// replacements, their steps and locks, sagas, attachments, notifications
// and the volumes each sim-upstairs runs.
func takeState(t *testing.T, r *rack.Rack) state {
	t.Helper()
	s := state{}
	s["volumes"] = listAll(t, "volumes", func(ctx context.Context, tok string) ([]*volumev1.Volume, string, error) {
		resp, err := r.Volumes.ListVolumes(ctx, &volumev1.ListVolumesRequest{PageSize: pageSize, PageToken: tok, IncludeDeleted: true})
		return resp.GetVolumes(), resp.GetNextPageToken(), err
	})
	s["targets"] = listAll(t, "targets", func(ctx context.Context, tok string) ([]*commonv1.Target, string, error) {
		resp, err := r.Volumes.ListTargets(ctx, &volumev1.ListTargetsRequest{PageSize: pageSize, PageToken: tok})
		return resp.GetTargets(), resp.GetNextPageToken(), err
	})
	s["physical disks"] = listAll(t, "physical disks", func(ctx context.Context, tok string) ([]*allocatorv1.PhysicalDisk, string, error) {
		resp, err := r.Allocator.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: pageSize, PageToken: tok})
		return resp.GetDisks(), resp.GetNextPageToken(), err
	})
	s["regions"] = listAll(t, "regions", func(ctx context.Context, tok string) ([]*allocatorv1.Region, string, error) {
		resp, err := r.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{PageSize: pageSize, PageToken: tok})
		return resp.GetRegions(), resp.GetNextPageToken(), err
	})
	s["region snapshots"] = listAll(t, "region snapshots", func(ctx context.Context, tok string) ([]*allocatorv1.RegionSnapshot, string, error) {
		resp, err := r.Allocator.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{PageSize: pageSize, PageToken: tok})
		return resp.GetRegionSnapshots(), resp.GetNextPageToken(), err
	})
	s["replacements"] = listAll(t, "replacements", func(ctx context.Context, tok string) ([]*orchestratorv1.Replacement, string, error) {
		resp, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: pageSize, PageToken: tok})
		return resp.GetReplacements(), resp.GetNextPageToken(), err
	})
	s["steps"] = listAll(t, "steps", func(ctx context.Context, tok string) ([]*orchestratorv1.Step, string, error) {
		resp, err := r.Replacement.ListSteps(ctx, &orchestratorv1.ListStepsRequest{PageSize: pageSize, PageToken: tok})
		return resp.GetSteps(), resp.GetNextPageToken(), err
	})
	s["locks"] = listAll(t, "locks", func(ctx context.Context, tok string) ([]*orchestratorv1.Lock, string, error) {
		resp, err := r.Replacement.ListLocks(ctx, &orchestratorv1.ListLocksRequest{PageSize: pageSize, PageToken: tok})
		return resp.GetLocks(), resp.GetNextPageToken(), err
	})
	s["sagas"] = listAll(t, "sagas", func(ctx context.Context, tok string) ([]*orchestratorv1.Saga, string, error) {
		resp, err := r.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{PageSize: pageSize, PageToken: tok})
		return resp.GetSagas(), resp.GetNextPageToken(), err
	})
	s["attachments"] = listAll(t, "attachments", func(ctx context.Context, tok string) ([]*notifierv1.Attachment, string, error) {
		resp, err := r.Notifier.ListAttachments(ctx, &notifierv1.ListAttachmentsRequest{PageSize: pageSize, PageToken: tok})
		return resp.GetAttachments(), resp.GetNextPageToken(), err
	})
	s["notifications"] = listAll(t, "notifications", func(ctx context.Context, tok string) ([]*notifierv1.Notification, string, error) {
		resp, err := r.Notifier.ListNotifications(ctx, &notifierv1.ListNotificationsRequest{PageSize: pageSize, PageToken: tok})
		return resp.GetNotifications(), resp.GetNextPageToken(), err
	})
	// A sim-upstairs's volume status carries its probe counters, which
	// move on their own: only which volumes it runs, at which
	// generation, on which targets, is state here.
	for i, sim := range r.Sims {
		resp, err := sim.ListVolumes(context.Background(), &upstairsv1.ListVolumesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var runs []string
		for _, v := range resp.Volumes {
			var addrs []string
			for _, d := range v.GetDownstairs() {
				addrs = append(addrs, d.GetAddress())
			}
			slices.Sort(addrs)
			runs = append(runs, fmt.Sprintf("%s gen %d on %s", v.GetVolumeId(), v.GetGeneration(), strings.Join(addrs, ",")))
		}
		sort.Strings(runs)
		s[fmt.Sprintf("sim-upstairs-%d volumes", i)] = runs
	}
	return s
}

// counts summarises a state for the log.
func (s state) counts() string {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", len(s[k]), k))
	}
	return strings.Join(parts, ", ")
}

// diff reports every record of one state missing from the other.
func (s state) diff(t *testing.T, after state) {
	t.Helper()
	for kind, was := range s {
		now := after[kind]
		if slices.Equal(was, now) {
			continue
		}
		gone, added := minus(was, now), minus(now, was)
		t.Errorf("%s changed: %d before, %d after", kind, len(was), len(now))
		for _, g := range gone {
			t.Logf("  %s gone or changed: %s", kind, readable(g))
		}
		for _, a := range added {
			t.Logf("  %s new or changed: %s", kind, readable(a))
		}
	}
}

func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func readable(rec string) string {
	j, _, _ := strings.Cut(rec, "\x00")
	return j
}
