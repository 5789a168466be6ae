package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

// Bad input to the redundancy reads is refused naming the field, before
// anything is read; a service without an allocator says it cannot count.
func TestRedundancyRequestsRefused(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	for _, c := range []struct {
		req   *volumev1.ListDegradedVolumesRequest
		code  codes.Code
		field string
	}{
		{&volumev1.ListDegradedVolumesRequest{Below: 5}, codes.InvalidArgument, "below"},
		{&volumev1.ListDegradedVolumesRequest{Below: -1}, codes.InvalidArgument, "below"},
		{&volumev1.ListDegradedVolumesRequest{PageToken: "x"}, codes.InvalidArgument, "page_token"},
		{&volumev1.ListDegradedVolumesRequest{PageToken: "7/" + uuid.NewString()}, codes.InvalidArgument, "page_token"},
		{&volumev1.ListDegradedVolumesRequest{PageSize: -1}, codes.InvalidArgument, "page_size"},
		{&volumev1.ListDegradedVolumesRequest{PageToken: "1/" + uuid.NewString()}, codes.FailedPrecondition, "allocator"},
	} {
		_, err := s.ListDegradedVolumes(ctx, c.req)
		if status.Code(err) != c.code || !strings.Contains(status.Convert(err).Message(), c.field) {
			t.Errorf("ListDegradedVolumes(%v) = %v, want %v naming %s", c.req, err, c.code, c.field)
		}
	}
	_, err := s.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: uuid.NewString(), IncludeRedundancy: true})
	if status.Code(err) != codes.NotFound {
		t.Errorf("GetVolume of an unknown volume with redundancy: %v, want NotFound", err)
	}
}

// diskList stands in for the allocator's ListPhysicalDisks: one page of
// whatever disks the test put in, counting the calls.
type diskList struct {
	disks []*allocatorv1.PhysicalDisk
	calls int
}

func (l *diskList) ListPhysicalDisks(context.Context, *allocatorv1.ListPhysicalDisksRequest, ...grpc.CallOption) (*allocatorv1.ListPhysicalDisksResponse, error) {
	l.calls++
	return &allocatorv1.ListPhysicalDisksResponse{Disks: l.disks}, nil
}

// The disk cache answers from its last read only when that read knows
// every dataset asked about: a disk added since (a rack seeded after the
// service's first read) is read again at once, not shown as "disk unknown"
// until the cache expires.
func TestDiskCacheRereadsForAnUnknownDataset(t *testing.T) {
	l := &diskList{}
	d := NewDisks(l, time.Hour)
	ctx := context.Background()
	if m, _, err := d.states(ctx); err != nil || len(m) != 0 || l.calls != 1 {
		t.Fatalf("first read: %v %v, %d calls", m, err, l.calls)
	}
	ds := uuid.NewString()
	l.disks = []*allocatorv1.PhysicalDisk{{DiskId: "disk-1", DatasetId: ds, Policy: allocatorv1.Policy_POLICY_IN_SERVICE}}
	m, _, err := d.states(ctx, ds)
	if err != nil || l.calls != 2 || m[ds].diskID != "disk-1" || !m[ds].inService {
		t.Fatalf("read for a dataset added since: %v %v, %d calls", m, err, l.calls)
	}
	if _, _, err := d.states(ctx, ds); err != nil || l.calls != 2 {
		t.Fatalf("a known dataset read again (%d calls): %v", l.calls, err)
	}
	if _, _, err := d.states(ctx); err != nil || l.calls != 2 {
		t.Fatalf("no dataset named, read again (%d calls): %v", l.calls, err)
	}
}

// The gauge's survey keeps its period while it is quick, and spaces itself
// to twenty times its own length when it is not: a survey of a full rack
// under load must not take a fifth of the database's time.
func TestSurveyWaitBoundsTheSurveysShare(t *testing.T) {
	period := 15 * time.Second
	for _, c := range []struct{ took, wait time.Duration }{
		{10 * time.Millisecond, period - 10*time.Millisecond},
		{750 * time.Millisecond, period - 750*time.Millisecond},
		{2 * time.Second, 38 * time.Second},
		{20 * time.Second, 380 * time.Second},
	} {
		if got := surveyWait(period, c.took); got != c.wait {
			t.Errorf("a survey of %v: next after %v, want %v", c.took, got, c.wait)
		}
	}
}
