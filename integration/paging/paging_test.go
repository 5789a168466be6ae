// Package paging drives every List RPC of every storagecp service, found by
// reflection on the running processes, through the one paging rule
// (services/platform/paging): a negative page_size and a page_token the
// service did not issue are InvalidArgument naming the field, and paging
// with page_size 1 returns every item once. A List RPC added tomorrow is
// driven the same way without touching this test.
package paging

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	// Every storage.* descriptor in protoregistry.GlobalFiles.
	_ "storagecp.dev/gen/go/storage/agent/v1"
	_ "storagecp.dev/gen/go/storage/allocator/v1"
	_ "storagecp.dev/gen/go/storage/common/v1"
	_ "storagecp.dev/gen/go/storage/notifier/v1"
	_ "storagecp.dev/gen/go/storage/orchestrator/v1"
	_ "storagecp.dev/gen/go/storage/upstairs/v1"
	_ "storagecp.dev/gen/go/storage/volume/v1"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/platform/paging"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// served lists the paged methods a process serves, by its reflection
// service.
func served(t *testing.T, conn *grpc.ClientConn, proc string) []protoreflect.MethodDescriptor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("%s: reflection: %v", proc, err)
	}
	_ = stream.CloseSend()
	var out []protoreflect.MethodDescriptor
	for _, s := range resp.GetListServicesResponse().GetService() {
		if !strings.HasPrefix(s.Name, "storage.") {
			continue
		}
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(s.Name))
		if err != nil {
			t.Fatalf("%s serves %s, which no generated package declares: %v", proc, s.Name, err)
		}
		ms := d.(protoreflect.ServiceDescriptor).Methods()
		for i := 0; i < ms.Len(); i++ {
			if paging.Paged(ms.Get(i)) {
				out = append(out, ms.Get(i))
			}
		}
	}
	return out
}

func path(m protoreflect.MethodDescriptor) string {
	return "/" + string(m.Parent().FullName()) + "/" + string(m.Name())
}

// call invokes m with req (built by fill, then page_size and page_token).
func call(conn *grpc.ClientConn, m protoreflect.MethodDescriptor, fill func(protoreflect.Message), size int32, token string) (protoreflect.Message, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := dynamicpb.NewMessage(m.Input())
	if fill != nil {
		fill(req)
	}
	req.Set(m.Input().Fields().ByName("page_size"), protoreflect.ValueOfInt32(size))
	req.Set(m.Input().Fields().ByName("page_token"), protoreflect.ValueOfString(token))
	resp := dynamicpb.NewMessage(m.Output())
	return resp, conn.Invoke(ctx, path(m), req, resp)
}

// items are the elements of a response's repeated message fields, each
// keyed by its field and its first string field found depth first (an id
// or a name), which is what tells two items apart.
func items(resp protoreflect.Message) []string {
	var out []string
	fs := resp.Descriptor().Fields()
	for i := 0; i < fs.Len(); i++ {
		f := fs.Get(i)
		if !f.IsList() || f.Kind() != protoreflect.MessageKind {
			continue
		}
		l := resp.Get(f).List()
		for j := 0; j < l.Len(); j++ {
			out = append(out, string(f.Name())+"/"+firstString(l.Get(j).Message()))
		}
	}
	return out
}

func firstString(m protoreflect.Message) string {
	fs := m.Descriptor().Fields()
	for i := 0; i < fs.Len(); i++ {
		f := fs.Get(i)
		switch {
		case f.IsList() || f.IsMap():
		case f.Kind() == protoreflect.StringKind && m.Has(f):
			return m.Get(f).String()
		case f.Kind() == protoreflect.MessageKind && m.Has(f):
			if s := firstString(m.Get(f).Message()); s != "" {
				return s
			}
		}
	}
	return ""
}

func wantInvalid(t *testing.T, m protoreflect.MethodDescriptor, what string, err error, field string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), field) {
		t.Errorf("%s with %s: got %v, want InvalidArgument naming %s", m.FullName(), what, err, field)
	}
}

func TestEveryListRPCPages(t *testing.T) {
	start := time.Now()
	r := rack.Start(t, 4, 1, stack.Config{})
	// Something in every list: volumes, targets, regions, region snapshots,
	// an attachment with its repair reports, a finished replacement with a
	// step, its expunged target and its notification, sagas and tasks.
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	clone := r.Clone(t, snap)
	r.Construct(t, clone, 0)
	victim := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	r.Expunge(t, r.DiskOf(t, victim.DatasetId))
	r.WaitRequests(t, time.Minute)
	cloneRegion := r.Targets(t, clone, commonv1.TargetKind_TARGET_KIND_RW_REGION)[0].TargetId

	// The filters an RPC cannot be called without, for the paging part.
	required := map[protoreflect.FullName]func(protoreflect.Message){
		"storage.notifier.v1.UpstairsNotifierService.ListRepairNotifications": func(m protoreflect.Message) {
			m.Set(m.Descriptor().Fields().ByName("region_id"), protoreflect.ValueOfString(cloneRegion))
		},
		"storage.volume.v1.VolumeService.FindVolumesReferencingTarget": func(m protoreflect.Message) {
			m.Set(m.Descriptor().Fields().ByName("target_id"), protoreflect.ValueOfString(r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[1].TargetId))
		},
	}

	var checked, multi []string
	for _, p := range r.Stack.Procs() {
		conn := harness.Dial(t, r.Stack, p.Addr)
		for _, m := range served(t, conn, p.Name) {
			checked = append(checked, string(m.FullName()))
			// The rule's errors, whatever the request's other fields hold.
			_, err := call(conn, m, nil, -1, "")
			wantInvalid(t, m, "page_size -1", err, "page_size")
			_, err = call(conn, m, nil, 0, "!!not-a-token!!")
			wantInvalid(t, m, "a garbage page_token", err, "page_token")
			_, err = call(conn, m, required[m.FullName()], 1<<30, "")
			if err != nil {
				t.Errorf("%s with page_size 2^30: %v, want the largest page", m.FullName(), err)
			}

			// One page of everything, then page_size 1: the same items, each once.
			whole, err := call(conn, m, required[m.FullName()], paging.MaxSize, "")
			if err != nil {
				t.Errorf("%s: %v", m.FullName(), err)
				continue
			}
			want := items(whole)
			var got []string
			token := ""
			for pages := 0; ; pages++ {
				if pages > len(want)+1 {
					t.Errorf("%s: %d pages of 1 for %d items and still a next_page_token", m.FullName(), pages, len(want))
					break
				}
				resp, err := call(conn, m, required[m.FullName()], 1, token)
				if err != nil {
					t.Errorf("%s page %d: %v", m.FullName(), pages, err)
					break
				}
				got = append(got, items(resp)...)
				if token = resp.Get(m.Output().Fields().ByName("next_page_token")).String(); token == "" {
					break
				}
			}
			if !slices.Equal(sorted(got), sorted(want)) {
				t.Errorf("%s: pages of 1 gave %v; one page gave %v", m.FullName(), got, want)
			}
			if len(want) > 1 {
				multi = append(multi, fmt.Sprintf("%s(%d)", m.Name(), len(want)))
			}
		}
	}
	// Every paged RPC of the API was reached on some process.
	var all []string
	protoregistry.GlobalFiles.RangeFiles(func(f protoreflect.FileDescriptor) bool {
		for i := 0; i < f.Services().Len(); i++ {
			ms := f.Services().Get(i).Methods()
			for j := 0; j < ms.Len(); j++ {
				if paging.Paged(ms.Get(j)) {
					all = append(all, string(ms.Get(j).FullName()))
				}
			}
		}
		return true
	})
	for _, m := range all {
		if !slices.Contains(checked, m) {
			t.Errorf("%s: no process of the stack serves it", m)
		}
	}
	// Paging was exercised, not vacuous: most lists held several items.
	if len(multi) < len(checked)/2 {
		t.Errorf("only %v of %d lists held more than one item", multi, len(checked))
	}
	t.Logf("%d List RPCs driven; paged through several items: %v (%.1fs)", len(checked), multi, time.Since(start).Seconds())
	r.Invariants(t)
	r.Validate(t)
}

func sorted(s []string) []string { return slices.Sorted(slices.Values(slices.Clone(s))) }
