package db

import "testing"

func TestRedactDSN(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:secret@h:5432/db?sslmode=disable":                        "postgres://u:xxxxx@h:5432/db?sslmode=disable",
		"postgres://u@h1:1,h2:2/db?target_session_attrs=read-write":            "postgres://u@h1:1,h2:2/db?target_session_attrs=read-write",
		"postgres://u@h/db?password=secret":                                    "postgres://u@h/db?password=xxxxx",
		"host=h user=u password=secret dbname=db":                              "host=h user=u password=xxxxx dbname=db",
		"host=h password = 'se cret' dbname=db":                                "host=h password = xxxxx dbname=db",
		"postgres://autoctl_node@127.0.0.1:5/pg_auto_failover?sslmode=disable": "postgres://autoctl_node@127.0.0.1:5/pg_auto_failover?sslmode=disable",
	} {
		if got := RedactDSN(in); got != want {
			t.Errorf("RedactDSN(%q) = %q, want %q", in, got, want)
		}
	}
}
