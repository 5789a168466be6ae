// Package vcr models the volume construction request (spec/volumes.md §2):
// the tree a Crucible Upstairs is assembled from. It holds the JSON shape the
// volume table stores, the conversion to and from the proto message, the
// traversal helpers of §2.3 and the validation every incoming VCR goes
// through.
//
// A VCR carries encryption keys (CrucibleOpts.Key). Nothing in this package
// ever formats a key into an error; callers must not log VCRs.
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

// JSON shapes, field for field the spec's (§2.1): "type" tag in snake_case,
// "gen" for the generation.
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

// MarshalJSON writes the spec's tagged shape.
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

// UnmarshalJSON reads the spec's tagged shape.
func (v *VCR) UnmarshalJSON(data []byte) error {
	var tag struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(data, &tag); err != nil {
		return err
	}
	*v = VCR{}
	switch tag.Type {
	case "volume":
		var j volumeJSON
		if err := json.Unmarshal(data, &j); err != nil {
			return err
		}
		for i, s := range j.SubVolumes {
			if s == nil {
				return fmt.Errorf("sub_volumes[%d] is null", i)
			}
		}
		v.Volume = &Volume{ID: j.ID, BlockSize: j.BlockSize, SubVolumes: j.SubVolumes, ReadOnlyParent: j.ReadOnlyParent}
	case "region":
		var j regionJSON
		if err := json.Unmarshal(data, &j); err != nil {
			return err
		}
		o := j.Opts
		v.Region = &Region{BlockSize: j.BlockSize, BlocksPerExtent: j.BlocksPerExtent, ExtentCount: j.ExtentCount,
			Gen: j.Gen, Opts: CrucibleOpts{ID: o.ID, Target: o.Target, Lossy: o.Lossy, FlushTimeout: o.FlushTimeout,
				Key: o.Key, CertPEM: o.CertPEM, KeyPEM: o.KeyPEM, RootCertPEM: o.RootCertPEM, Control: o.Control,
				ReadOnly: o.ReadOnly}}
	case "file":
		var j fileJSON
		if err := json.Unmarshal(data, &j); err != nil {
			return err
		}
		v.File = &File{ID: j.ID, BlockSize: j.BlockSize, Path: j.Path}
	case "url":
		var j urlJSON
		if err := json.Unmarshal(data, &j); err != nil {
			return err
		}
		v.URL = &URL{ID: j.ID, BlockSize: j.BlockSize, URL: j.URL}
	default:
		// The tag value is attacker-controlled but cannot be a key; still,
		// keep it short.
		t := tag.Type
		if len(t) > 32 {
			t = t[:32] + "…"
		}
		return fmt.Errorf("unknown type %q", t)
	}
	return nil
}

// Decode parses a stored or incoming VCR. Every failure is an *InvalidError.
func Decode(data []byte) (*VCR, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var v VCR
	if err := dec.Decode(&v); err != nil {
		return nil, invalidf("vcr", "undecodable JSON: %s", sanitizeJSONError(err))
	}
	if dec.More() {
		return nil, invalidf("vcr", "trailing data after the JSON value")
	}
	if v.Volume == nil && v.Region == nil && v.File == nil && v.URL == nil {
		return nil, invalidf("vcr", "null")
	}
	return &v, nil
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
