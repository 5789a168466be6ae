package ids

import (
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestParse(t *testing.T) {
	good := uuid.New()
	for _, v := range []string{good.String(), strings.ToUpper(good.String()), "urn:uuid:" + good.String(), "{" + good.String() + "}"} {
		id, err := Parse("volume_id", v)
		if err != nil || id != good {
			t.Errorf("Parse(%q) = %v, %v; want %v", v, id, err, good)
		}
	}
	for v, why := range map[string]string{
		"":                                     "required",
		"not-a-uuid":                           "not a UUID",
		"00000000-0000-0000-0000-000000000000": "nil UUID",
		good.String() + "0":                    "not a UUID",
	} {
		id, err := Parse("volume_id", v)
		st := status.Convert(err)
		if err == nil || id != uuid.Nil || st.Code() != codes.InvalidArgument ||
			!strings.HasPrefix(st.Message(), "volume_id: ") || !strings.Contains(st.Message(), why) {
			t.Errorf("Parse(%q) = %v, %v; want InvalidArgument naming volume_id (%s)", v, id, err, why)
		}
	}
}
