package server

import (
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"time"

	"storagecp.dev/platform/config"
)

// commonFlags are the settings every service shares.
type commonFlags struct {
	listen      *string
	metricsAddr *string
	dev         *bool
	sec         *securityFlags
	// dsn and dbWait are nil for a service without a database.
	dsn    *string
	dbWait *time.Duration
}

// newFlagSet registers every flag of svc. Their environment variables and
// the --config file are config.Parse's: one rule for every flag.
func newFlagSet(svc Service) (*flag.FlagSet, *commonFlags) {
	fset := flag.NewFlagSet(svc.Name, flag.ContinueOnError)
	f := &commonFlags{}
	f.listen = fset.String("listen", svc.DefaultAddr, "gRPC listen address")
	f.metricsAddr = fset.String("metrics-addr", "", "serve Prometheus metrics on http://ADDR/metrics; empty: no metrics")
	f.dev = fset.Bool("dev", false, "serve development-only RPCs such as fault injection")
	f.sec = registerSecurityFlags(fset)
	if svc.Migrations != nil {
		f.dsn = fset.String("db", "", "PostgreSQL DSN")
		f.dbWait = fset.Duration("db-wait", 15*time.Second, "how long to wait for the database at start")
	}
	if svc.Flags != nil {
		svc.Flags(fset)
	}
	return fset, f
}

// sharedEnv are the variables some flags have always also read, shared by
// every service of a deployment; each service's own variable
// (STORAGECP_VOLUME_TLS_CA) comes first.
var sharedEnv = map[string][]string{
	"tls-ca":       {"STORAGECP_TLS_CA"},
	"trust-domain": {"STORAGECP_TRUST_DOMAIN"},
	"authz-policy": {"STORAGECP_AUTHZ_POLICY"},
	"dev":          {"STORAGECP_DEV"},
}

func (svc Service) configOptions() config.Options {
	return config.Options{EnvPrefix: svc.EnvPrefix, EnvAliases: sharedEnv}
}

// CheckConfig loads a --config file against svc's flags as Run would,
// ignoring the environment, and says what is wrong with it: a key no flag
// has, a value its flag rejects. For tests of shipped example files.
func CheckConfig(svc Service, path string) error {
	fset, _ := newFlagSet(svc)
	fset.SetOutput(io.Discard)
	opts := svc.configOptions()
	opts.Getenv = func(string) string { return "" }
	return config.Parse(fset, []string{"--" + config.Flag, path}, opts)
}

// CheckExampleConfig is CheckConfig of an example file an operator
// installs (deploy/config), and again with every setting it shows
// commented out ("# key = value", at its default) uncommented: no key the
// binary does not know, no value a flag rejects, in either.
func CheckExampleConfig(svc Service, path string) error {
	if err := CheckConfig(svc, path); err != nil {
		return err
	}
	text, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp("", "storagecp-config-*.toml")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(commentedSetting.ReplaceAll(text, []byte("$1")))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := CheckConfig(svc, f.Name()); err != nil {
		return fmt.Errorf("a commented-out setting of %s: %w", path, err)
	}
	return nil
}

// commentedSetting is a setting an example file shows commented out.
var commentedSetting = regexp.MustCompile(`(?m)^# ([a-z][a-z0-9-]* = .*)$`)
