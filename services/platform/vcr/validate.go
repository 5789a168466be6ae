package vcr

import (
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/target"
)

// InvalidError is a malformed VCR: Path names the offending node, e.g.
// "vcr.volume.read_only_parent.volume.sub_volumes[0].region.opts.target[1]".
// Messages never contain key material. Its kind is apierr.Invalid.
type InvalidError struct {
	Path string
	Msg  string
}

func (e *InvalidError) Error() string { return e.Path + ": " + e.Msg }

// Unwrap is the error's kind, apierr.Invalid (InvalidArgument).
func (e *InvalidError) Unwrap() error { return apierr.Invalid }

func invalidf(path, format string, args ...any) *InvalidError {
	return &InvalidError{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// MaxDepth bounds nesting; deeper trees are rejected rather than recursed.
const MaxDepth = 32

// Validate checks an incoming VCR (root path "vcr"): the top level is a
// Volume, File or Url (a bare Region is invalid); ids are UUIDs; every
// target is a well-formed IPv6 socket address; no Region lists a target
// twice; no read-only target appears twice anywhere (each occurrence is one
// usage row, and two would break soft delete); no target is both rw and
// read-only or rw in two places; nothing under a read-only parent is rw.
// Every failure is an *InvalidError.
func Validate(v *VCR) error {
	if v == nil {
		return invalidf("vcr", "missing")
	}
	if v.Region != nil {
		return invalidf("vcr.region", "a top-level region is invalid; wrap it in a volume")
	}
	val := validator{seen: map[string]seen{}}
	return val.node(v, "vcr", false, 0)
}

type seen struct {
	path     string
	readOnly bool
}

type validator struct {
	seen map[string]seen
}

func (val *validator) node(v *VCR, path string, underROP bool, depth int) error {
	if depth > MaxDepth {
		return invalidf(path, "nested deeper than %d levels", MaxDepth)
	}
	kinds := 0
	for _, set := range []bool{v.Volume != nil, v.Region != nil, v.File != nil, v.URL != nil} {
		if set {
			kinds++
		}
	}
	if kinds != 1 {
		return invalidf(path, "exactly one of volume, region, file, url must be set")
	}
	switch {
	case v.Volume != nil:
		p := path + ".volume"
		if err := checkID(p+".id", v.Volume.ID); err != nil {
			return err
		}
		for i, s := range v.Volume.SubVolumes {
			sp := fmt.Sprintf("%s.sub_volumes[%d]", p, i)
			if s == nil {
				return invalidf(sp, "null sub-volume")
			}
			if err := val.node(s, sp, underROP, depth+1); err != nil {
				return err
			}
		}
		if v.Volume.ReadOnlyParent != nil {
			if err := val.node(v.Volume.ReadOnlyParent, p+".read_only_parent", true, depth+1); err != nil {
				return err
			}
		}
	case v.Region != nil:
		return val.region(v.Region, path+".region", underROP)
	case v.File != nil:
		return checkID(path+".file.id", v.File.ID)
	case v.URL != nil:
		return checkID(path+".url.id", v.URL.ID)
	}
	return nil
}

func (val *validator) region(r *Region, path string, underROP bool) error {
	if err := checkID(path+".opts.id", r.Opts.ID); err != nil {
		return err
	}
	if underROP && !r.Opts.ReadOnly {
		return invalidf(path+".opts.read_only", "a read/write region under a read-only parent is invalid")
	}
	if len(r.Opts.Target) == 0 {
		return invalidf(path+".opts.target", "a region needs at least one target")
	}
	inRegion := map[string]bool{}
	for i, t := range r.Opts.Target {
		tp := fmt.Sprintf("%s.opts.target[%d]", path, i)
		canon, err := Canonical(t)
		switch {
		case errors.Is(err, ErrIPv4Target):
			return invalidf(tp, "IPv4 target %s is invalid; targets must be IPv6", quoteShort(t))
		case errors.Is(err, target.ErrMalformed):
			return invalidf(tp, "malformed target %s; want \"[ipv6]:port\"", quoteShort(t))
		case err != nil:
			return invalidf(tp, "%v", err)
		}
		if inRegion[canon] {
			return invalidf(tp, "duplicate target %s inside one region", canon)
		}
		inRegion[canon] = true
		if prev, ok := val.seen[canon]; ok {
			switch {
			case prev.readOnly && r.Opts.ReadOnly:
				return invalidf(tp, "read-only target %s already appears at %s; a VCR may name a read-only target once", canon, prev.path)
			default:
				return invalidf(tp, "target %s already appears at %s; a rw region belongs to one place", canon, prev.path)
			}
		}
		val.seen[canon] = seen{path: tp, readOnly: r.Opts.ReadOnly}
	}
	return nil
}

func checkID(path, id string) error {
	if _, err := uuid.Parse(id); err != nil {
		return invalidf(path, "not a UUID: %s", quoteShort(id))
	}
	return nil
}

// quoteShort quotes user input, truncated, for an error message.
func quoteShort(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return fmt.Sprintf("%q", strings.ToValidUTF8(s, "?"))
}
