// Package security checks, over real processes, what the mutual-TLS
// transport and the authorization policy promise: a connection without a
// certificate of the deployment's authority is refused at the handshake,
// a caller whose identity the policy does not name is refused every call it
// may not make (and the refusal is audited and counted) without anything
// changing, and the policy can be changed without a restart.
package security

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
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

	policy "storagecp.dev/deploy/authz"
	"storagecp.dev/integration/harness"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// spiffeID is the full ID of an identity path ("viewer/x").
func spiffeID(path string) string { return mtls.ServiceID(mtls.DefaultTrustDomain, path) }

// dialAs connects to addr with an identity issued by the stack's CA.
func dialAs(t *testing.T, st *stack.Stack, path, addr string) *grpc.ClientConn {
	t.Helper()
	id, err := st.Identity(path)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := st.Transport(id)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, tr.DialOption())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// servedMethods lists the storage.* methods a process serves, from its
// reflection service (asked as the harness) and the generated descriptors.
func servedMethods(t *testing.T, st *stack.Stack, proc string) []policy.Method {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := reflectionpb.NewServerReflectionClient(harness.Dial(t, st, st.Addr(proc))).ServerReflectionInfo(ctx)
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
	var out []policy.Method
	for _, s := range resp.GetListServicesResponse().GetService() {
		if !strings.HasPrefix(s.Name, "storage.") {
			continue
		}
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(s.Name))
		if err != nil {
			t.Fatalf("%s serves %s, which no generated package declares: %v", proc, s.Name, err)
		}
		out = append(out, policy.ServiceMethods(d.(protoreflect.ServiceDescriptor))...)
	}
	if len(out) == 0 {
		t.Fatalf("%s serves no storage.* service", proc)
	}
	return out
}

// invoke calls a method with an empty request of its type, as a unary call
// or a stream (one message sent, one awaited), and returns the status.
func invoke(conn *grpc.ClientConn, m policy.Method) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := dynamicpb.NewMessage(m.Descriptor.Input())
	resp := dynamicpb.NewMessage(m.Descriptor.Output())
	if !m.Streaming() {
		return conn.Invoke(ctx, m.Path, req, resp)
	}
	cs, err := conn.NewStream(ctx, &grpc.StreamDesc{
		StreamName:    string(m.Descriptor.Name()),
		ServerStreams: m.Descriptor.IsStreamingServer(),
		ClientStreams: m.Descriptor.IsStreamingClient(),
	}, m.Path)
	if err != nil {
		return err
	}
	if err := cs.SendMsg(req); err != nil && err != io.EOF {
		return err
	}
	_ = cs.CloseSend()
	return cs.RecvMsg(resp)
}

// refusal is the error the authorization guard answers a refused call with.
func refusal(caller, path string) string { return spiffeID(caller) + " may not call " + path }

// wantRefused fails unless err is the guard's refusal of caller calling
// path: PermissionDenied naming both.
func wantRefused(t *testing.T, proc, caller, path string, err error) bool {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != codes.PermissionDenied || st.Message() != refusal(caller, path) {
		t.Errorf("%s: %s calling %s: got %v, want PermissionDenied %q", proc, caller, path, err, refusal(caller, path))
		return false
	}
	return true
}

// refused reports whether err is the guard's refusal (not a handler's
// own PermissionDenied).
func refused(caller, path string, err error) bool {
	st, _ := status.FromError(err)
	return st.Code() == codes.PermissionDenied && st.Message() == refusal(caller, path)
}

// auditLine is one "audit" log line of a process.
type auditLine struct {
	Msg     string         `json:"msg"`
	Caller  string         `json:"caller"`
	Method  string         `json:"method"`
	Outcome string         `json:"outcome"`
	Code    string         `json:"code"`
	IDs     map[string]any `json:"ids"`
	TraceID string         `json:"trace_id"`
}

// auditLines reads every audit line of a process's log.
func auditLines(t *testing.T, p *stack.Proc) []auditLine {
	t.Helper()
	f, err := os.Open(p.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []auditLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		if !strings.Contains(sc.Text(), `"msg":"audit"`) {
			continue
		}
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Errorf("%s: unparsable audit line %q: %v", p.Name, sc.Text(), err)
			continue
		}
		if l.Msg == "audit" {
			out = append(out, l)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// scrape fetches a process's /metrics and returns the samples named name.
func scrape(t *testing.T, url, name string) []harness.Sample {
	t.Helper()
	all, err := harness.Scrape(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	var out []harness.Sample
	for _, s := range all {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// processes are the serving processes of a stack started with one
// sim-upstairs, each checked by every test here.
var processes = []string{stack.Volume, stack.Allocator, stack.Notifier, stack.Orchestrator, stack.SimAgent, "sim-upstairs-0"}

// wantProcesses fails unless the stack runs exactly the processes above
// (a new process must be added to these tests).
func wantProcesses(t *testing.T, st *stack.Stack) {
	t.Helper()
	var names []string
	for _, p := range st.Procs() {
		names = append(names, p.Name)
	}
	if !slices.Equal(slices.Sorted(slices.Values(names)), slices.Sorted(slices.Values(processes))) {
		t.Fatalf("stack runs %v; these tests cover %v", names, processes)
	}
}

func loadPolicy(t *testing.T) *policy.Policy {
	t.Helper()
	p, err := policy.Load()
	if err != nil {
		t.Fatal(err)
	}
	return p
}
