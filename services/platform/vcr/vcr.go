// Package vcr models the volume construction request (docs/architecture.md,
// "Vocabulary"): the tree a Crucible Upstairs is assembled from. It holds the
// JSON shape the volume table stores, the conversion to and from the proto
// message, the traversal helpers and the validation every incoming VCR goes
// through.
//
// A VCR carries encryption keys (CrucibleOpts.Key). Nothing in this package
// ever formats a key into an error; callers must not log VCRs.
//
// It is the one home of VCR traversal for every service: the
// volume-service stores and validates VCRs with it, the upstairs-notifier
// (and its sim-upstairs) reads targets, generations, positions and diffs
// with it, and the replacement-orchestrator's preview finds region sets
// with it. Proto messages go through FromProto first. Target addresses
// follow platform/target.
package vcr

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// VCR is a tagged union: exactly one field is non-nil.
type VCR struct {
	Volume *Volume
	Region *Region
	File   *File
	URL    *URL
}

// Volume is a volume node: its own storage in SubVolumes, and an optional
// read-only parent.
type Volume struct {
	ID             string
	BlockSize      uint64
	SubVolumes     []*VCR
	ReadOnlyParent *VCR
}

// Region is a region set: the targets mirrored by one Upstairs.
type Region struct {
	BlockSize       uint64
	BlocksPerExtent uint64
	ExtentCount     uint64
	Gen             uint64
	Opts            CrucibleOpts
}

// CrucibleOpts are a region set's options.
type CrucibleOpts struct {
	ID           string
	Target       []string
	Lossy        bool
	FlushTimeout *float64
	Key          *string
	CertPEM      *string
	KeyPEM       *string
	RootCertPEM  *string
	Control      *string
	ReadOnly     bool
}

// File is a legacy file-backed image source.
type File struct {
	ID        string
	BlockSize uint64
	Path      string
}

// URL is a deprecated URL image source.
type URL struct {
	ID        string
	BlockSize uint64
	URL       string
}

// JSON shapes, field for field Crucible's: "type" tag in snake_case,
// "gen" for the generation. MarshalJSON writes one per variant, so a node
// carries only its own fields; Decode reads through nodeJSON, their union.
type volumeJSON struct {
	Type           string `json:"type"`
	ID             string `json:"id"`
	BlockSize      uint64 `json:"block_size"`
	SubVolumes     []*VCR `json:"sub_volumes"`
	ReadOnlyParent *VCR   `json:"read_only_parent"`
}

type optsJSON struct {
	ID           string   `json:"id"`
	Target       []string `json:"target"`
	Lossy        bool     `json:"lossy"`
	FlushTimeout *float64 `json:"flush_timeout"`
	Key          *string  `json:"key"`
	CertPEM      *string  `json:"cert_pem"`
	KeyPEM       *string  `json:"key_pem"`
	RootCertPEM  *string  `json:"root_cert_pem"`
	Control      *string  `json:"control"`
	ReadOnly     bool     `json:"read_only"`
}

type regionJSON struct {
	Type            string   `json:"type"`
	BlockSize       uint64   `json:"block_size"`
	BlocksPerExtent uint64   `json:"blocks_per_extent"`
	ExtentCount     uint64   `json:"extent_count"`
	Gen             uint64   `json:"gen"`
	Opts            optsJSON `json:"opts"`
}

type fileJSON struct {
	Type      string `json:"type"`
	ID        string `json:"id"`
	BlockSize uint64 `json:"block_size"`
	Path      string `json:"path"`
}

type urlJSON struct {
	Type      string `json:"type"`
	ID        string `json:"id"`
	BlockSize uint64 `json:"block_size"`
	URL       string `json:"url"`
}

// MarshalJSON writes the tagged shape.
func (v *VCR) MarshalJSON() ([]byte, error) {
	switch {
	case v == nil:
		return []byte("null"), nil
	case v.Volume != nil:
		subs := v.Volume.SubVolumes
		if subs == nil {
			subs = []*VCR{}
		}
		return json.Marshal(volumeJSON{Type: "volume", ID: v.Volume.ID, BlockSize: v.Volume.BlockSize,
			SubVolumes: subs, ReadOnlyParent: v.Volume.ReadOnlyParent})
	case v.Region != nil:
		r := v.Region
		o := r.Opts
		targets := o.Target
		if targets == nil {
			targets = []string{}
		}
		return json.Marshal(regionJSON{Type: "region", BlockSize: r.BlockSize, BlocksPerExtent: r.BlocksPerExtent,
			ExtentCount: r.ExtentCount, Gen: r.Gen, Opts: optsJSON{ID: o.ID, Target: targets, Lossy: o.Lossy,
				FlushTimeout: o.FlushTimeout, Key: o.Key, CertPEM: o.CertPEM, KeyPEM: o.KeyPEM,
				RootCertPEM: o.RootCertPEM, Control: o.Control, ReadOnly: o.ReadOnly}})
	case v.File != nil:
		return json.Marshal(fileJSON{Type: "file", ID: v.File.ID, BlockSize: v.File.BlockSize, Path: v.File.Path})
	case v.URL != nil:
		return json.Marshal(urlJSON{Type: "url", ID: v.URL.ID, BlockSize: v.URL.BlockSize, URL: v.URL.URL})
	}
	return nil, fmt.Errorf("vcr: empty node")
}

// nodeJSON is every variant's fields at once, so that a whole tree decodes
// in one pass of encoding/json. (A custom UnmarshalJSON per node, reading
// the tag first, made encoding/json scan each subtree again at every level
// — twice per node: a fifth of the volume-service's CPU in a fan-out.)
type nodeJSON struct {
	Type            string      `json:"type"`
	ID              string      `json:"id"`
	BlockSize       uint64      `json:"block_size"`
	SubVolumes      []*nodeJSON `json:"sub_volumes"`
	ReadOnlyParent  *nodeJSON   `json:"read_only_parent"`
	BlocksPerExtent uint64      `json:"blocks_per_extent"`
	ExtentCount     uint64      `json:"extent_count"`
	Gen             uint64      `json:"gen"`
	Opts            optsJSON    `json:"opts"`
	Path            string      `json:"path"`
	URL             string      `json:"url"`
}

// vcr converts a decoded node, keeping only its variant's fields.
func (n *nodeJSON) vcr() (*VCR, error) {
	switch n.Type {
	case "volume":
		vol := &Volume{ID: n.ID, BlockSize: n.BlockSize}
		if n.SubVolumes != nil {
			vol.SubVolumes = make([]*VCR, len(n.SubVolumes))
		}
		for i, s := range n.SubVolumes {
			if s == nil {
				return nil, fmt.Errorf("sub_volumes[%d] is null", i)
			}
			sub, err := s.vcr()
			if err != nil {
				return nil, err
			}
			vol.SubVolumes[i] = sub
		}
		if n.ReadOnlyParent != nil {
			rop, err := n.ReadOnlyParent.vcr()
			if err != nil {
				return nil, err
			}
			vol.ReadOnlyParent = rop
		}
		return &VCR{Volume: vol}, nil
	case "region":
		o := n.Opts
		return &VCR{Region: &Region{BlockSize: n.BlockSize, BlocksPerExtent: n.BlocksPerExtent, ExtentCount: n.ExtentCount,
			Gen: n.Gen, Opts: CrucibleOpts{ID: o.ID, Target: o.Target, Lossy: o.Lossy, FlushTimeout: o.FlushTimeout,
				Key: o.Key, CertPEM: o.CertPEM, KeyPEM: o.KeyPEM, RootCertPEM: o.RootCertPEM, Control: o.Control,
				ReadOnly: o.ReadOnly}}}, nil
	case "file":
		return &VCR{File: &File{ID: n.ID, BlockSize: n.BlockSize, Path: n.Path}}, nil
	case "url":
		return &VCR{URL: &URL{ID: n.ID, BlockSize: n.BlockSize, URL: n.URL}}, nil
	}
	// The tag value is attacker-controlled but cannot be a key; still, keep
	// it short.
	t := n.Type
	if len(t) > 32 {
		t = t[:32] + "…"
	}
	return nil, fmt.Errorf("unknown type %q", t)
}

// UnmarshalJSON reads the tagged shape.
func (v *VCR) UnmarshalJSON(data []byte) error {
	var n nodeJSON
	if err := json.Unmarshal(data, &n); err != nil {
		return err
	}
	out, err := n.vcr()
	if err != nil {
		return err
	}
	*v = *out
	return nil
}

// Decode parses a stored or incoming VCR. Every failure is an *InvalidError.
func Decode(data []byte) (*VCR, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var n *nodeJSON
	if err := dec.Decode(&n); err != nil {
		return nil, invalidf("vcr", "undecodable JSON: %s", sanitizeJSONError(err))
	}
	if dec.More() {
		return nil, invalidf("vcr", "trailing data after the JSON value")
	}
	if n == nil {
		return nil, invalidf("vcr", "null")
	}
	v, err := n.vcr()
	if err != nil {
		return nil, invalidf("vcr", "undecodable JSON: %s", sanitizeJSONError(err))
	}
	return v, nil
}

// sanitizeJSONError keeps the error's class but never echoes input values
// (which may be keys).
func sanitizeJSONError(err error) string {
	switch e := err.(type) {
	case *json.SyntaxError:
		return fmt.Sprintf("syntax error at offset %d", e.Offset)
	case *json.UnmarshalTypeError:
		return fmt.Sprintf("field %q has the wrong type", e.Field)
	}
	return "malformed"
}

// Encode writes the stored JSON.
func Encode(v *VCR) ([]byte, error) { return json.Marshal(v) }

// Clone returns a deep copy.
func (v *VCR) Clone() *VCR {
	if v == nil {
		return nil
	}
	switch {
	case v.Volume != nil:
		c := *v.Volume
		c.SubVolumes = make([]*VCR, len(v.Volume.SubVolumes))
		for i, s := range v.Volume.SubVolumes {
			c.SubVolumes[i] = s.Clone()
		}
		c.ReadOnlyParent = v.Volume.ReadOnlyParent.Clone()
		return &VCR{Volume: &c}
	case v.Region != nil:
		c := *v.Region
		c.Opts.Target = append([]string(nil), v.Region.Opts.Target...)
		c.Opts.FlushTimeout = clonePtr(c.Opts.FlushTimeout)
		c.Opts.Key = clonePtr(c.Opts.Key)
		c.Opts.CertPEM = clonePtr(c.Opts.CertPEM)
		c.Opts.KeyPEM = clonePtr(c.Opts.KeyPEM)
		c.Opts.RootCertPEM = clonePtr(c.Opts.RootCertPEM)
		c.Opts.Control = clonePtr(c.Opts.Control)
		return &VCR{Region: &c}
	case v.File != nil:
		c := *v.File
		return &VCR{File: &c}
	case v.URL != nil:
		c := *v.URL
		return &VCR{URL: &c}
	}
	return &VCR{}
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	c := *p
	return &c
}

// Redacted returns a copy without key material (key and TLS fields).
func (v *VCR) Redacted() *VCR {
	c := v.Clone()
	walk(c, true, func(n *VCR, _ bool) error {
		if n.Region != nil {
			n.Region.Opts.Key = nil
			n.Region.Opts.CertPEM = nil
			n.Region.Opts.KeyPEM = nil
			n.Region.Opts.RootCertPEM = nil
		}
		return nil
	})
	return c
}
