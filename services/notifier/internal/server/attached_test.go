package server

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
)

// FindAttachedVolumes lists a volume with an attachment in any state —
// running, or left STOPPING by an unreachable Upstairs — and never one
// without, nor one whose attachment was detached.
func TestFindAttachedVolumes(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	s, dead := w.sim(), w.sim()
	running := w.vols.create(t, addrs("170", 3), nil)
	stopping := w.vols.create(t, addrs("171", 3), nil)
	detached := w.vols.create(t, addrs("172", 3), nil)
	none := w.vols.create(t, addrs("173", 3), nil)
	w.mustConstruct(running, s, false)
	att := w.mustConstruct(detached, s, false)
	if _, err := w.n.client.DetachUpstairs(w.ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: att.GetAttachmentId()}); err != nil {
		t.Fatal(err)
	}
	att = w.mustConstruct(stopping, dead, false)
	dead.kill()
	if _, err := w.n.client.DetachUpstairs(w.ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: att.GetAttachmentId()}); err == nil {
		t.Fatal("detach from a dead endpoint succeeded")
	}
	unknown := uuid.NewString()
	resp, err := w.n.client.FindAttachedVolumes(w.ctx, &notifierv1.FindAttachedVolumesRequest{
		VolumeIds: []string{none, running, detached, stopping, unknown, running},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := resp.GetVolumeIds()
	slices.Sort(got)
	want := []string{running, stopping}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("attached %v, want %v", got, want)
	}
	if resp, err := w.n.client.FindAttachedVolumes(w.ctx, &notifierv1.FindAttachedVolumesRequest{}); err != nil || len(resp.GetVolumeIds()) != 0 {
		t.Fatalf("empty query: %v %v", resp, err)
	}
	_, err = w.n.client.FindAttachedVolumes(w.ctx, &notifierv1.FindAttachedVolumesRequest{VolumeIds: []string{running, "v"}})
	wantCode(t, err, codes.InvalidArgument, "malformed id")
	wantContains(t, err, "volume_ids[1]")
	_, err = w.n.client.FindAttachedVolumes(w.ctx, &notifierv1.FindAttachedVolumesRequest{VolumeIds: make([]string, maxAttachedQuery+1)})
	wantCode(t, err, codes.InvalidArgument, "too many ids")
}

func wantContains(t testing.TB, err error, sub string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), sub) {
		t.Fatalf("error %v does not name %q", err, sub)
	}
}
