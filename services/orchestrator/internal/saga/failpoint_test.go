package saga

import "testing"

func TestFailPointFromEnv(t *testing.T) {
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
		t.Setenv(FailEnv, c.env)
		if got := failPointFromEnv().fails(c.template, c.node); got != c.want {
			t.Errorf("%s=%q: fails(%q, %q) = %v, want %v", FailEnv, c.env, c.template, c.node, got, c.want)
		}
	}
}
