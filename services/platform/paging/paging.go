// Package paging is the one rule every List RPC of every storagecp service
// applies to its page_size and page_token, so that an operator with grpcurl
// meets the same answers everywhere:
//
//   - page_size < 0 is InvalidArgument naming page_size;
//   - page_size 0 means DefaultSize;
//   - page_size above MaxSize means MaxSize (a client asking for more is
//     served a full page and a next_page_token, never an error);
//   - a page_token the service did not issue is InvalidArgument naming
//     page_token; "" is the first page;
//   - an empty next_page_token is the last page.
//
// Every handler validates paging before anything else, so a bad page_size or
// page_token is reported as such whatever the request's other fields hold.
// A token's form is each handler's own (a cursor: the last item's key); this
// package parses the forms that are shared. The proto comment of every List
// RPC says "Paginated" and the limits; a test over the descriptors
// (paging_test.go) and one over the running services
// (integration/paging) hold every List RPC to this rule.
package paging

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
)

const (
	// DefaultSize is the page size of a request that gives none.
	DefaultSize = 100
	// MaxSize is the largest page any List RPC serves.
	MaxSize = 1000
)

// Request is what every paginated request has.
type Request interface {
	GetPageSize() int32
	GetPageToken() string
}

// Size is the number of items a page holds for the page_size asked.
func Size(n int32) (int, error) {
	switch {
	case n < 0:
		return 0, status.Errorf(codes.InvalidArgument, "page_size: must not be negative (0 means %d, at most %d)", DefaultSize, MaxSize)
	case n == 0:
		return DefaultSize, nil
	case n > MaxSize:
		return MaxSize, nil
	}
	return int(n), nil
}

// BadToken is the error for a page_token the service did not issue.
func BadToken(token string) error {
	return status.Errorf(codes.InvalidArgument, "page_token: not a token this service issued: %q", token)
}

// UUID reads a token that is the last item's UUID; "" is uuid.Nil, where a
// listing ordered by id starts.
func UUID(token string) (uuid.UUID, error) {
	if token == "" {
		return uuid.Nil, nil
	}
	id, err := uuid.Parse(token)
	if err != nil {
		return uuid.Nil, BadToken(token)
	}
	return id, nil
}

// UUIDRequest validates a request whose token is the last item's UUID: the
// page size, and the cursor to list after.
func UUIDRequest(req Request) (limit int, after uuid.UUID, err error) {
	if limit, err = Size(req.GetPageSize()); err != nil {
		return 0, uuid.Nil, err
	}
	if after, err = UUID(req.GetPageToken()); err != nil {
		return 0, uuid.Nil, err
	}
	return limit, after, nil
}

// Offset reads a token that is a non-negative offset; "" is 0.
func Offset(token string) (int, error) {
	if token == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(token)
	if err != nil || n < 0 || strconv.Itoa(n) != token {
		return 0, BadToken(token)
	}
	return n, nil
}

// OffsetToken is the token of the page that starts at offset n.
func OffsetToken(n int) string { return fmt.Sprint(n) }

// Paged says whether m must follow this rule: every List RPC of a
// storage.* service and every other one whose request has a page_size,
// except those Exempt names. The descriptor test and the integration test
// over the running services both select RPCs with it, so a new List RPC is
// checked the day it is added.
func Paged(m protoreflect.MethodDescriptor) bool {
	if !strings.HasPrefix(string(m.FullName()), "storage.") || Exempt(m) != "" {
		return false
	}
	return strings.HasPrefix(string(m.Name()), "List") || m.Input().Fields().ByName("page_size") != nil
}

// Exempt says why m, a List RPC, is not paginated ("" when it must be).
// The list is short on purpose; each entry says why.
func Exempt(m protoreflect.MethodDescriptor) string {
	switch m.ParentFile().Package() {
	case "storage.agent.v1":
		return "the Crucible agent's API, simulated: hardware answers as it does"
	case "storage.upstairs.v1":
		return "the Upstairs' API (Propolis/Pantry), simulated: hardware answers as it does"
	}
	switch m.FullName() {
	case "storage.allocator.v1.RegionAllocatorService.ListCloneSources":
		// Read whole by the saga choosing a source.
		return "bounded: the surviving copies of one region set"
	}
	return ""
}
