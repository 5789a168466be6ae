package paging

import (
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func wantInvalid(t *testing.T, err error, field string) {
	t.Helper()
	if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), field+":") {
		t.Fatalf("got %v, want InvalidArgument naming %s", err, field)
	}
}

func TestSize(t *testing.T) {
	for in, want := range map[int32]int{0: DefaultSize, 1: 1, 999: 999, MaxSize: MaxSize, MaxSize + 1: MaxSize, 1 << 30: MaxSize} {
		if got, err := Size(in); err != nil || got != want {
			t.Errorf("Size(%d) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []int32{-1, -1 << 31} {
		_, err := Size(in)
		wantInvalid(t, err, "page_size")
	}
}

func TestTokens(t *testing.T) {
	id := uuid.New()
	if got, err := UUID(id.String()); err != nil || got != id {
		t.Fatalf("UUID(%s) = %v, %v", id, got, err)
	}
	if got, err := UUID(""); err != nil || got != uuid.Nil {
		t.Fatalf("UUID(\"\") = %v, %v", got, err)
	}
	for _, bad := range []string{"x", "!!garbage!!", id.String() + "0"} {
		_, err := UUID(bad)
		wantInvalid(t, err, "page_token")
	}
	if n, err := Offset(OffsetToken(42)); err != nil || n != 42 {
		t.Fatalf("Offset round trip: %d, %v", n, err)
	}
	for _, bad := range []string{"-1", "x", "01", "+3", " 3"} {
		_, err := Offset(bad)
		wantInvalid(t, err, "page_token")
	}
}
