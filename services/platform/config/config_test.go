package config

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// flags is a flag set of each kind a service uses.
type flags struct {
	fs      *flag.FlagSet
	listen  *string
	db      *string
	ttl     *time.Duration
	dev     *bool
	max     *int
	tlsCA   *string
	pantry  *[]string
	monitor *string
}

func newFlags() *flags {
	f := &flags{fs: flag.NewFlagSet("test-service", flag.ContinueOnError)}
	f.fs.SetOutput(io.Discard)
	f.listen = f.fs.String("listen", "127.0.0.1:7104", "")
	f.db = f.fs.String("db", "", "")
	f.ttl = f.fs.Duration("lease-ttl", 6*time.Second, "")
	f.dev = f.fs.Bool("dev", false, "")
	f.max = f.fs.Int("max-sagas-per-task", 64, "")
	f.tlsCA = f.fs.String("tls-ca", "", "")
	f.monitor = f.fs.String("db-monitor", "", "")
	var pantry []string
	f.pantry = &pantry
	f.fs.Func("pantry-addrs", "", func(v string) error {
		for _, a := range strings.Split(v, ",") {
			if a = strings.TrimSpace(a); a != "" {
				pantry = append(pantry, a)
			}
		}
		return nil
	})
	return f
}

func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "service.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

const prefix = "STORAGECP_TEST"

func TestFileTypes(t *testing.T) {
	f := newFlags()
	p := writeFile(t, `
# every kind of value a flag takes
listen = "10.0.0.5:7104"
lease-ttl = "2s"
dev = true
max-sagas-per-task = 8
pantry-addrs = ["10.0.1.1:7110", "10.0.1.2:7110"]
`)
	if err := Parse(f.fs, []string{"--config", p}, Options{EnvPrefix: prefix, Getenv: env(nil)}); err != nil {
		t.Fatal(err)
	}
	if *f.listen != "10.0.0.5:7104" || *f.ttl != 2*time.Second || !*f.dev || *f.max != 8 {
		t.Fatalf("listen %q ttl %v dev %v max %d", *f.listen, *f.ttl, *f.dev, *f.max)
	}
	if got := strings.Join(*f.pantry, " "); got != "10.0.1.1:7110 10.0.1.2:7110" {
		t.Fatalf("pantry-addrs %q", got)
	}
	if *f.db != "" {
		t.Fatalf("db %q: a key the file does not name keeps its default", *f.db)
	}
}

// default < file < environment < command line, flag by flag.
func TestPrecedence(t *testing.T) {
	p := writeFile(t, `
listen = "file:1"
db = "file-db"
lease-ttl = "1s"
max-sagas-per-task = 1
pantry-addrs = ["file-pantry"]
`)
	e := env(map[string]string{
		prefix + "_CONFIG":       p,
		prefix + "_DB":           "env-db",
		prefix + "_LEASE_TTL":    "2s",
		prefix + "_PANTRY_ADDRS": "env-pantry",
	})
	f := newFlags()
	if err := Parse(f.fs, []string{"--lease-ttl", "3s", "--pantry-addrs=flag-pantry"}, Options{EnvPrefix: prefix, Getenv: e}); err != nil {
		t.Fatal(err)
	}
	if *f.listen != "file:1" { // file over default
		t.Errorf("listen %q", *f.listen)
	}
	if *f.db != "env-db" { // environment over file
		t.Errorf("db %q", *f.db)
	}
	if *f.ttl != 3*time.Second { // flag over environment and file
		t.Errorf("lease-ttl %v", *f.ttl)
	}
	if *f.max != 1 {
		t.Errorf("max-sagas-per-task %d", *f.max)
	}
	if *f.dev {
		t.Errorf("dev: default is false")
	}
	// A flag that accumulates sees one source only: the winning one.
	if got := strings.Join(*f.pantry, " "); got != "flag-pantry" {
		t.Errorf("pantry-addrs %q", got)
	}

	// --config on the command line beats the variable naming a file.
	other := writeFile(t, `listen = "other:2"`)
	f = newFlags()
	if err := Parse(f.fs, []string{"--config", other}, Options{EnvPrefix: prefix, Getenv: e}); err != nil {
		t.Fatal(err)
	}
	if *f.listen != "other:2" || *f.db != "env-db" {
		t.Errorf("listen %q db %q", *f.listen, *f.db)
	}
}

func TestEnvAliasesAndEmpty(t *testing.T) {
	opts := func(m map[string]string) Options {
		return Options{EnvPrefix: prefix, Getenv: env(m), EnvAliases: map[string][]string{
			"tls-ca": {"STORAGECP_TLS_CA"},
			"dev":    {"STORAGECP_DEV"},
		}}
	}
	f := newFlags()
	if err := Parse(f.fs, nil, opts(map[string]string{"STORAGECP_TLS_CA": "shared.pem", "STORAGECP_DEV": "1"})); err != nil {
		t.Fatal(err)
	}
	if *f.tlsCA != "shared.pem" || !*f.dev {
		t.Fatalf("tls-ca %q dev %v", *f.tlsCA, *f.dev)
	}
	// The service's own variable beats the shared one; an empty one is unset.
	f = newFlags()
	if err := Parse(f.fs, nil, opts(map[string]string{"STORAGECP_TLS_CA": "shared.pem", prefix + "_TLS_CA": "own.pem", prefix + "_LISTEN": ""})); err != nil {
		t.Fatal(err)
	}
	if *f.tlsCA != "own.pem" || *f.listen != "127.0.0.1:7104" {
		t.Fatalf("tls-ca %q listen %q", *f.tlsCA, *f.listen)
	}
	// The help text names every variable.
	if u := f.fs.Lookup("tls-ca").Usage; !strings.Contains(u, prefix+"_TLS_CA or STORAGECP_TLS_CA") {
		t.Fatalf("usage %q", u)
	}
}

func TestUnknownKey(t *testing.T) {
	p := writeFile(t, "listen = \"10.0.0.5:7104\"\n\nlisten-addr = \"x\"\n")
	f := newFlags()
	err := Parse(f.fs, []string{"--config", p}, Options{EnvPrefix: prefix, Getenv: env(nil)})
	if err == nil {
		t.Fatal("unknown key accepted")
	}
	for _, want := range []string{p + ":3:", `unknown key "listen-addr"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if *f.listen != "127.0.0.1:7104" {
		t.Errorf("a rejected file changed listen to %q", *f.listen)
	}
}

func TestBadValues(t *testing.T) {
	for _, tc := range []struct{ name, file, want string }{
		{"duration", `lease-ttl = "6 seconds"`, `key "lease-ttl"`},
		{"duration without unit", `lease-ttl = 6`, `key "lease-ttl"`},
		{"bool", `dev = "maybe"`, `key "dev"`},
		{"int", `max-sagas-per-task = "many"`, `key "max-sagas-per-task"`},
		{"array of numbers", "\npantry-addrs = [1, 2]", ":3: an array must hold strings"},
		{"table", "[db]\nhost = \"x\"", "tables are not settings"},
		{"unknown table", "[orchestrator]\nlisten = \"x\"", `unknown key "orchestrator"`},
		{"config in config", `config = "/etc/other.toml"`, "cannot name another"},
		{"syntax", `listen = `, "config file "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, "listen = \"10.0.0.5:7104\"\n"+tc.file+"\n")
			f := newFlags()
			err := Parse(f.fs, []string{"--config", p}, Options{EnvPrefix: prefix, Getenv: env(nil)})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
			if *f.listen != "127.0.0.1:7104" {
				t.Errorf("a rejected file changed listen to %q", *f.listen)
			}
		})
	}
}

func TestBadEnv(t *testing.T) {
	f := newFlags()
	err := Parse(f.fs, nil, Options{EnvPrefix: prefix, Getenv: env(map[string]string{
		prefix + "_LISTEN": "10.0.0.5:7104", prefix + "_LEASE_TTL": "soon",
	})})
	if err == nil || !strings.Contains(err.Error(), prefix+"_LEASE_TTL") {
		t.Fatalf("error %v", err)
	}
	if *f.listen != "127.0.0.1:7104" {
		t.Errorf("a rejected environment changed listen to %q", *f.listen)
	}
}

func TestUnreadableFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "missing.toml")
	err := Parse(newFlags().fs, []string{"--config", p}, Options{EnvPrefix: prefix, Getenv: env(nil)})
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("error %v does not name %s", err, p)
	}
}

func TestWriteRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "w.toml")
	if err := Write(p, map[string]any{
		"listen":             "10.0.0.5:7104",
		"db":                 `postgres://u:p"w@h1:5432,h2:5432/orch?target_session_attrs=read-write`,
		"lease-ttl":          3 * time.Second,
		"dev":                true,
		"max-sagas-per-task": 16,
		"pantry-addrs":       []string{"a:1", "b:2"},
	}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("stat %v, mode %v", err, st.Mode())
	}
	f := newFlags()
	if err := Parse(f.fs, []string{"--config", p}, Options{EnvPrefix: prefix, Getenv: env(nil)}); err != nil {
		t.Fatal(err)
	}
	if *f.listen != "10.0.0.5:7104" || !strings.Contains(*f.db, `p"w@h1`) || *f.ttl != 3*time.Second || !*f.dev || *f.max != 16 ||
		strings.Join(*f.pantry, " ") != "a:1 b:2" {
		t.Fatalf("read back listen %q db %q ttl %v dev %v max %d pantry %v", *f.listen, *f.db, *f.ttl, *f.dev, *f.max, *f.pantry)
	}
	if err := Write(p, map[string]any{"x": 1.5}); err == nil {
		t.Fatal("wrote a float")
	}
}
