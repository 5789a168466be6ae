package server

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
