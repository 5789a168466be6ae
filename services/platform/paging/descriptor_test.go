package paging_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	// Every generated package, so that every storage.* service is in
	// protoregistry.GlobalFiles (deploy/authz's TestEveryProtoIsRegistered
	// checks that the list of packages is complete).
	_ "storagecp.dev/gen/go/storage/agent/v1"
	_ "storagecp.dev/gen/go/storage/allocator/v1"
	_ "storagecp.dev/gen/go/storage/common/v1"
	_ "storagecp.dev/gen/go/storage/notifier/v1"
	_ "storagecp.dev/gen/go/storage/orchestrator/v1"
	_ "storagecp.dev/gen/go/storage/upstairs/v1"
	_ "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/platform/paging"
)

// pagedMethods are the RPCs paging.Paged selects.
func pagedMethods(t *testing.T) []protoreflect.MethodDescriptor {
	t.Helper()
	var out []protoreflect.MethodDescriptor
	protoregistry.GlobalFiles.RangeFiles(func(f protoreflect.FileDescriptor) bool {
		for i := 0; i < f.Services().Len(); i++ {
			ms := f.Services().Get(i).Methods()
			for j := 0; j < ms.Len(); j++ {
				if m := ms.Get(j); paging.Paged(m) {
					out = append(out, m)
				}
			}
		}
		return true
	})
	if len(out) < 15 {
		t.Fatalf("only %d paged RPCs found: are the generated packages imported?", len(out))
	}
	return out
}

// rpcComment is the comment above `rpc Name(` in the method's .proto file
// (the generated descriptors carry no comments).
func rpcComment(m protoreflect.MethodDescriptor) (string, error) {
	path := filepath.Join("..", "..", "..", "proto", filepath.FromSlash(m.ParentFile().Path()))
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	lines := strings.Split(string(raw), "\n")
	re := regexp.MustCompile(`^\s*rpc\s+` + string(m.Name()) + `\s*\(`)
	for i, l := range lines {
		if !re.MatchString(l) {
			continue
		}
		var c []string
		for j := i - 1; j >= 0 && strings.HasPrefix(strings.TrimSpace(lines[j]), "//"); j-- {
			c = append([]string{strings.TrimPrefix(strings.TrimSpace(lines[j]), "//")}, c...)
		}
		return strings.Join(c, " "), nil
	}
	return "", fmt.Errorf("%s: no `rpc %s(` line", path, m.Name())
}

// shapeProblems lists how m breaks the paging shape: request int32
// page_size and string page_token, response string next_page_token, and a
// comment that says it is paginated and what the limits are.
func shapeProblems(m protoreflect.MethodDescriptor, comment string) []string {
	var out []string
	field := func(md protoreflect.MessageDescriptor, name string, kind protoreflect.Kind) {
		f := md.Fields().ByName(protoreflect.Name(name))
		switch {
		case f == nil:
			out = append(out, fmt.Sprintf("%s has no %s", md.FullName(), name))
		case f.Kind() != kind || f.Cardinality() == protoreflect.Repeated:
			out = append(out, fmt.Sprintf("%s.%s is %v, want a single %v", md.FullName(), name, f.Kind(), kind))
		}
	}
	field(m.Input(), "page_size", protoreflect.Int32Kind)
	field(m.Input(), "page_token", protoreflect.StringKind)
	field(m.Output(), "next_page_token", protoreflect.StringKind)
	if !strings.Contains(comment, "Paginated") {
		out = append(out, "its comment does not say \"Paginated\"")
	}
	for _, limit := range []string{fmt.Sprint(paging.DefaultSize), fmt.Sprint(paging.MaxSize), "INVALID_ARGUMENT"} {
		if !strings.Contains(comment, limit) {
			out = append(out, fmt.Sprintf("its comment does not state the paging rule (no %q)", limit))
		}
	}
	return out
}

// Every List RPC of every storage.* service has the paging shape, and its
// comment says it is paginated with this package's limits.
func TestEveryListRPCIsPaginated(t *testing.T) {
	ms := pagedMethods(t)
	for _, m := range ms {
		comment, err := rpcComment(m)
		if err != nil {
			t.Error(err)
			continue
		}
		for _, p := range shapeProblems(m, comment) {
			t.Errorf("%s: %s (services/platform/paging says how every List RPC pages)", m.FullName(), p)
		}
	}
	t.Logf("%d paged RPCs checked", len(ms))
}

// The check bites: the Upstairs' unpaged ListVolumes, the RPC we exempt,
// breaks every part of it.
func TestShapeCheckFailsAnUnpagedList(t *testing.T) {
	d, err := protoregistry.GlobalFiles.FindDescriptorByName("storage.upstairs.v1.UpstairsService.ListVolumes")
	if err != nil {
		t.Fatal(err)
	}
	m := d.(protoreflect.MethodDescriptor)
	comment, err := rpcComment(m)
	if err != nil {
		t.Fatal(err)
	}
	got := shapeProblems(m, comment)
	if len(got) != 7 {
		t.Fatalf("got %d problems, want 7 (three fields, the word and three limits): %q", len(got), got)
	}
	// And a comment alone is checked: ListSagas' shape with an empty comment.
	d, err = protoregistry.GlobalFiles.FindDescriptorByName("storage.orchestrator.v1.AdminService.ListSagas")
	if err != nil {
		t.Fatal(err)
	}
	if got := shapeProblems(d.(protoreflect.MethodDescriptor), ""); len(got) != 4 {
		t.Fatalf("ListSagas without a comment: got %q, want 4 problems", got)
	}
}
