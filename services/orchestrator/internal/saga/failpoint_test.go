package saga

import "testing"

func TestParseFailPoint(t *testing.T) {
	for _, c := range []struct {
		env, template, node string
		want                bool
	}{
		{"rw-replacement-start/update_request", "rw-replacement-start", "update_request", true},
		{"rw-replacement-start/update_request", "rw-replacement-drive", "update_request", false},
		{"rw-replacement-start/update_request", "rw-replacement-start", "replace_region", false},
		{"", "rw-replacement-start", "", false},
		{"rw-replacement-start", "rw-replacement-start", "", false},
		{"a/b/c", "a", "b", false},
	} {
		if got := parseFailPoint(c.env).fails(c.template, c.node); got != c.want {
			t.Errorf("%s=%q: fails(%q, %q) = %v, want %v", FailEnv, c.env, c.template, c.node, got, c.want)
		}
	}
}
