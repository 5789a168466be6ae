package sagadef_test

import (
	"encoding/json"
	"testing"

	"google.golang.org/grpc"

	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/orchestrator/internal/testenv"
	"storagecp.dev/platform/grpcclient"
	"storagecp.dev/testsupport/stack"
)

func jsonDecode(raw json.RawMessage, out any) error { return json.Unmarshal(raw, out) }

func dialAllocator(t testing.TB, e *testenv.Env) *grpc.ClientConn {
	t.Helper()
	conn, err := grpcclient.Dial(e.Stack.Addr(stack.Allocator), e.Stack.DialOption())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func listAll() *volumev1.ListVolumesRequest {
	return &volumev1.ListVolumesRequest{PageSize: 1000, IncludeDeleted: true}
}
