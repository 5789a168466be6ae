// Package redact removes key material from what storctl shows: the VCR
// tree's CrucibleOpts secrets (the volume-service already redacts by
// default; storctl and its console redact again so that no server default,
// flag or future view can make them show a key), and the same fields
// wherever they appear in free-form JSON (saga parameters, outputs, log
// events), whose shape no schema pins down.
package redact

import (
	"bytes"
	"encoding/json"

	"google.golang.org/protobuf/proto"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
)

// VCR returns a copy of vcr without key material; vcr is untouched.
func VCR(vcr *commonv1.VolumeConstructionRequest) *commonv1.VolumeConstructionRequest {
	if vcr == nil {
		return nil
	}
	out := proto.Clone(vcr).(*commonv1.VolumeConstructionRequest)
	var walk func(v *commonv1.VolumeConstructionRequest)
	walk = func(v *commonv1.VolumeConstructionRequest) {
		switch k := v.GetKind().(type) {
		case *commonv1.VolumeConstructionRequest_Volume:
			for _, sv := range k.Volume.SubVolumes {
				walk(sv)
			}
			if k.Volume.ReadOnlyParent != nil {
				walk(k.Volume.ReadOnlyParent)
			}
		case *commonv1.VolumeConstructionRequest_Region:
			if o := k.Region.Opts; o != nil {
				o.Key, o.KeyPem, o.CertPem, o.RootCertPem = nil, nil, nil, nil
			}
		}
	}
	walk(out)
	return out
}

// secretFields are CrucibleOpts' secret fields, in the spellings JSON may
// carry them: proto names (the sagas' own encoding) and protojson's
// lowerCamelCase.
var secretFields = map[string]bool{
	"key": true, "key_pem": true, "cert_pem": true, "root_cert_pem": true,
	"keyPem": true, "certPem": true, "rootCertPem": true,
}

// Placeholder replaces a removed secret, so that a reader sees that there
// was one.
const Placeholder = "[redacted]"

// JSON returns raw with the value of every secret field, at any depth,
// replaced by Placeholder. JSON strings that themselves hold JSON (a VCR
// serialised into a saga's output) are redacted too. Input that is not JSON
// is returned as it is when it names no secret field, else replaced whole:
// what cannot be parsed cannot be shown to be clean.
func JSON(raw string) string {
	if raw == "" {
		return raw
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader([]byte(raw)))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		for f := range secretFields {
			if bytes.Contains([]byte(raw), []byte(`"`+f+`"`)) {
				return Placeholder
			}
		}
		return raw
	}
	v, changed := redactValue(v)
	if !changed {
		return raw
	}
	b, err := json.Marshal(v)
	if err != nil {
		return Placeholder
	}
	return string(b)
}

func redactValue(v any) (any, bool) {
	changed := false
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if secretFields[k] {
				if e != nil {
					x[k] = Placeholder
					changed = true
				}
				continue
			}
			if n, c := redactValue(e); c {
				x[k], changed = n, true
			}
		}
	case []any:
		for i, e := range x {
			if n, c := redactValue(e); c {
				x[i], changed = n, true
			}
		}
	case string:
		if len(x) > 1 && (x[0] == '{' || x[0] == '[') {
			if r := JSON(x); r != x {
				return r, true
			}
		}
	}
	return v, changed
}
