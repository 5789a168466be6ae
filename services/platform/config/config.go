// Package config gives every flag of a binary three more sources beside
// its command line: a TOML file named by --config, one environment
// variable per flag, and the built-in default. One rule, in one place:
//
//	default < config file < environment < command line
//
// The file's keys are exactly the flag names (listen = "10.0.0.5:7101",
// lease-ttl = "6s", dev = false, max-sagas-per-task = 64); a value is turned
// into the flag's string form (an array of strings is joined with ",") and
// applied with flag.FlagSet.Set, so a file accepts what the command line
// accepts. The environment variable of flag "lease-ttl" under prefix
// STORAGECP_ORCHESTRATOR is STORAGECP_ORCHESTRATOR_LEASE_TTL; a flag may
// have further, shared names (STORAGECP_TLS_CA), consulted after it. An
// empty variable counts as unset.
package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Flag is the name of the flag that names the file.
const Flag = "config"

// Options says where a flag set's values come from besides its command line.
type Options struct {
	// EnvPrefix names the environment variables: flag "db-wait" under
	// "STORAGECP_VOLUME" is STORAGECP_VOLUME_DB_WAIT.
	EnvPrefix string
	// EnvAliases lists further variables per flag name, consulted in order
	// after the generic one (shared names such as STORAGECP_TLS_CA).
	EnvAliases map[string][]string
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
}

// EnvName is the generic environment variable of a flag.
func EnvName(prefix, flagName string) string {
	return prefix + "_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// envNames is every variable of a flag, in the order they are consulted.
func (o Options) envNames(flagName string) []string {
	return append([]string{EnvName(o.EnvPrefix, flagName)}, o.EnvAliases[flagName]...)
}

func (o Options) getenv(key string) string {
	if o.Getenv != nil {
		return o.Getenv(key)
	}
	return os.Getenv(key)
}

// Parse parses args into fs like fs.Parse, then sets every flag the
// command line did not set from its environment variable or, failing
// that, from the file named by --config (or its variable). It registers
// the config flag itself (when fs has none), appends each flag's variables
// to its help text and replaces fs.Usage with one that names the sources. Each flag is set at most once beyond the
// command line, so flags that accumulate (flag.Func) see one source.
//
// Errors name what is wrong: the file and line of an unknown key, the key
// or variable whose value a flag rejects, a file that cannot be read.
// The file is checked whole before any value of it or of the environment
// is applied. Like fs.Parse's own errors (flag.ErrHelp among them, which
// are returned as they are), they are printed to fs.Output().
func Parse(fs *flag.FlagSet, args []string, o Options) error {
	if fs.Lookup(Flag) == nil {
		fs.String(Flag, "", "TOML file of settings, keys named as the flags")
	}
	fs.VisitAll(func(f *flag.Flag) {
		f.Usage += " (env " + strings.Join(o.envNames(f.Name), " or ") + ")"
	})
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage of %s:\n"+
			"Each setting comes from, highest first: its flag, its environment variable,\n"+
			"the --%s file (TOML; keys are the flag names), its default.\n", fs.Name(), Flag)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := apply(fs, o); err != nil {
		fmt.Fprintf(fs.Output(), "%s: %v\n", fs.Name(), err)
		return err
	}
	return nil
}

// apply sets the flags the command line left alone from the environment
// and the file.
func apply(fs *flag.FlagSet, o Options) error {
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })

	path := fs.Lookup(Flag).Value.String()
	if !onCommandLine[Flag] {
		if v, _ := o.lookupEnv(Flag); v != "" {
			path = v
		}
	}
	var file map[string]string
	if path != "" {
		var err error
		if file, err = Load(fs, path); err != nil {
			return err
		}
	}

	// Gather first, apply after: a bad variable leaves the flag set as the
	// command line left it, like a bad file does.
	type setting struct{ name, value, from string }
	var apply []setting
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if onCommandLine[f.Name] || f.Name == Flag {
			return
		}
		if v, env := o.lookupEnv(f.Name); env != "" {
			apply = append(apply, setting{f.Name, v, "environment variable " + env})
		} else if v, ok := file[f.Name]; ok {
			apply = append(apply, setting{f.Name, v, fmt.Sprintf("key %q of %s", f.Name, path)})
		}
	})
	for _, s := range apply {
		if err := check(fs.Lookup(s.name), s.value); err != nil {
			errs = append(errs, fmt.Errorf("%s: invalid value %q for --%s: %v", s.from, s.value, s.name, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, s := range apply {
		if err := fs.Set(s.name, s.value); err != nil {
			return fmt.Errorf("%s: invalid value %q for --%s: %v", s.from, s.value, s.name, err)
		}
	}
	return nil
}

// lookupEnv returns the first non-empty variable of a flag and its name.
func (o Options) lookupEnv(flagName string) (value, name string) {
	for _, n := range o.envNames(flagName) {
		if v := o.getenv(n); v != "" {
			return v, n
		}
	}
	return "", ""
}

// check tries a value on the flag types whose parsing has no side effect;
// the rest (flag.Func, custom Values) are checked when set.
func check(f *flag.Flag, v string) error {
	getter, ok := f.Value.(flag.Getter)
	if !ok {
		return nil
	}
	var err error
	switch getter.Get().(type) {
	case bool:
		_, err = strconv.ParseBool(v)
	case int:
		_, err = strconv.ParseInt(v, 0, strconv.IntSize)
	case int64:
		_, err = strconv.ParseInt(v, 0, 64)
	case uint:
		_, err = strconv.ParseUint(v, 0, strconv.IntSize)
	case uint64:
		_, err = strconv.ParseUint(v, 0, 64)
	case float64:
		_, err = strconv.ParseFloat(v, 64)
	case time.Duration:
		_, err = time.ParseDuration(v)
	}
	return err
}

// Load reads a settings file and returns each key's value in its flag's
// string form, without setting anything. Every key must name a flag of fs
// (other than config itself).
func Load(fs *flag.FlagSet, path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	var raw map[string]toml.Primitive
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make(map[string]string, len(raw))
	var errs []error
	for _, k := range keys {
		var v value
		if k == Flag {
			err = md.PrimitiveDecode(raw[k], &refusal{"a config file cannot name another one"})
		} else if fs.Lookup(k) == nil {
			err = md.PrimitiveDecode(raw[k], &refusal{fmt.Sprintf("unknown key %q: %s has no flag --%s", k, fs.Name(), k)})
		} else {
			err = md.PrimitiveDecode(raw[k], &v)
		}
		if err != nil {
			errs = append(errs, fileError(path, k, err))
			continue
		}
		out[k] = string(v)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// fileError says where in the file a key went wrong, as "path:line: why".
func fileError(path, key string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		if pe.Position.Line > 0 {
			return fmt.Errorf("config file %s:%d: %s", path, pe.Position.Line, pe.Message)
		}
		return fmt.Errorf("config file %s: %s", path, pe.Message)
	}
	return fmt.Errorf("config file %s: key %q: %w", path, key, err)
}

// value is one setting in its flag's string form.
type value string

// UnmarshalTOML takes what a flag can be given on a command line: a
// string, a number, a boolean, or an array of strings (joined with ",").
func (v *value) UnmarshalTOML(data any) error {
	switch d := data.(type) {
	case string:
		*v = value(d)
	case bool:
		*v = value(strconv.FormatBool(d))
	case int64:
		*v = value(strconv.FormatInt(d, 10))
	case float64:
		*v = value(strconv.FormatFloat(d, 'g', -1, 64))
	case []any:
		parts := make([]string, len(d))
		for i, e := range d {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("an array must hold strings only; element %d is %T", i, e)
			}
			parts[i] = s
		}
		*v = value(strings.Join(parts, ","))
	case map[string]any:
		return errors.New("tables are not settings: every key is a flag name at the top level")
	default:
		return fmt.Errorf("a %T is not a setting: use a string, number, boolean or array of strings", data)
	}
	return nil
}

// refusal rejects whatever a key holds, so the decoder says on which line.
type refusal struct{ why string }

func (r *refusal) UnmarshalTOML(any) error { return errors.New(r.why) }

// Write saves settings (flag name to value) as a file Parse reads back:
// a value is a string, a []string (an array, for list flags), a bool, an
// int or a time.Duration (written in its string form, "6s"). The file is
// written 0600: it may hold a DSN's password.
func Write(path string, settings map[string]any) error {
	doc := make(map[string]any, len(settings))
	for k, v := range settings {
		switch x := v.(type) {
		case string, []string, bool:
			doc[k] = x
		case int:
			doc[k] = int64(x)
		case int64:
			doc[k] = x
		case time.Duration:
			doc[k] = x.String()
		default:
			return fmt.Errorf("config: setting %q: a %T cannot be written", k, v)
		}
	}
	var b strings.Builder
	if err := toml.NewEncoder(&b).Encode(doc); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}
