package saga

import "testing"

func TestParseFailPoint(t *testing.T) {
	for _, c := range []struct {
		env, template, node string
		want                bool
	}{
		{"rr-start/update_request", "rr-start", "update_request", true},
		{"rr-start/update_request", "rr-drive", "update_request", false},
		{"rr-start/update_request", "rr-start", "replace_region", false},
		{"", "rr-start", "", false},
		{"rr-start", "rr-start", "", false},
		{"a/b/c", "a", "b", false},
	} {
		if got := parseFailPoint(c.env).fails(c.template, c.node); got != c.want {
			t.Errorf("%s=%q: fails(%q, %q) = %v, want %v", FailEnv, c.env, c.template, c.node, got, c.want)
		}
	}
}
