package server

import (
	"context"
	"net"
	"sync"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

// TEMPORARY development stand-in for the volume-service, used only until
// the real one serves CreateVolume; then the fixture switches to the real
// process.
type fakeVolumes struct {
	volumev1.UnimplementedVolumeServiceServer
	mu   sync.Mutex
	vcrs map[string]*commonv1.VolumeConstructionRequest
	a    string
}

func startFakeVolumes(t testing.TB) *fakeVolumes {
	f := &fakeVolumes{vcrs: map[string]*commonv1.VolumeConstructionRequest{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	volumev1.RegisterVolumeServiceServer(gs, f)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	f.a = lis.Addr().String()
	return f
}

func (f *fakeVolumes) addr() string { return f.a }

func (f *fakeVolumes) GetVolume(_ context.Context, req *volumev1.GetVolumeRequest) (*volumev1.GetVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vcrs[req.GetVolumeId()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no volume")
	}
	return &volumev1.GetVolumeResponse{Volume: &volumev1.Volume{VolumeId: req.GetVolumeId(), Vcr: proto.Clone(v).(*commonv1.VolumeConstructionRequest)}}, nil
}

func (f *fakeVolumes) CheckoutVolume(_ context.Context, req *volumev1.CheckoutVolumeRequest) (*volumev1.CheckoutVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vcrs[req.GetVolumeId()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no volume")
	}
	out := proto.Clone(v).(*commonv1.VolumeConstructionRequest)
	for _, sv := range v.GetVolume().GetSubVolumes() {
		if r := sv.GetRegion(); r != nil {
			r.Gen++
		}
	}
	return &volumev1.CheckoutVolumeResponse{Vcr: out}, nil
}

func (f *fakeVolumes) create(t testing.TB, rw, ro []string) string {
	v := testVCR(1, rw, ro)
	f.mu.Lock()
	defer f.mu.Unlock()
	id := uuid.NewString()
	f.vcrs[id] = proto.Clone(v).(*commonv1.VolumeConstructionRequest)
	return id
}

func (f *fakeVolumes) replace(t testing.TB, vol, oldAddr, newAddr string, rw bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var walk func(n *commonv1.VolumeConstructionRequest)
	found := false
	walk = func(n *commonv1.VolumeConstructionRequest) {
		switch k := n.GetKind().(type) {
		case *commonv1.VolumeConstructionRequest_Volume:
			for _, sv := range k.Volume.GetSubVolumes() {
				walk(sv)
			}
			if k.Volume.GetReadOnlyParent() != nil && !rw {
				walk(k.Volume.GetReadOnlyParent())
			}
		case *commonv1.VolumeConstructionRequest_Region:
			if k.Region.GetOpts().GetReadOnly() == rw {
				return
			}
			for i, a := range k.Region.GetOpts().GetTarget() {
				if a == oldAddr {
					k.Region.Opts.Target[i] = newAddr
					found = true
				}
			}
			if rw {
				k.Region.Gen++
			}
		}
	}
	walk(f.vcrs[vol])
	if !found {
		t.Fatalf("fake: %s not in volume", oldAddr)
	}
}

func (f *fakeVolumes) replaceRO(t testing.TB, vol, oldAddr, newAddr string) {
	f.replace(t, vol, oldAddr, newAddr, false)
}

func (f *fakeVolumes) replaceRW(t testing.TB, vol, oldAddr, newAddr string) {
	f.replace(t, vol, oldAddr, newAddr, true)
}

func newVolumes(t testing.TB) volumeFixture { return startFakeVolumes(t) }
