package redact

import (
	"strings"
	"testing"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
)

func secret(s string) *string { return &s }

func TestVCR(t *testing.T) {
	vcr := &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: &commonv1.VcrVolume{
		Id: "v", SubVolumes: []*commonv1.VolumeConstructionRequest{{Kind: &commonv1.VolumeConstructionRequest_Region{Region: &commonv1.VcrRegion{
			Opts: &commonv1.CrucibleOpts{Target: []string{"[fd00::1]:19000"}, Key: secret("S3CRET"), KeyPem: secret("S3CRET"), CertPem: secret("S3CRET"), RootCertPem: secret("S3CRET")},
		}}}},
	}}}
	red := VCR(vcr)
	o := red.GetVolume().SubVolumes[0].GetRegion().GetOpts()
	if o.Key != nil || o.KeyPem != nil || o.CertPem != nil || o.RootCertPem != nil {
		t.Fatalf("secrets left: %v", o)
	}
	if len(o.Target) != 1 {
		t.Fatalf("targets lost: %v", o)
	}
	if vcr.GetVolume().SubVolumes[0].GetRegion().GetOpts().GetKey() != "S3CRET" {
		t.Fatal("input changed")
	}
}

func TestJSON(t *testing.T) {
	for _, in := range []string{
		`{"vcr":{"region":{"opts":{"key":"S3CRET","target":["a"]}}}}`,
		`[{"keyPem":"S3CRET"}]`,
		`{"output":"{\"opts\":{\"root_cert_pem\":\"S3CRET\"}}"}`,
		`{"cert_pem": "S3CRET"`, // not JSON
	} {
		out := JSON(in)
		if strings.Contains(out, "S3CRET") {
			t.Errorf("JSON(%s) = %s: secret kept", in, out)
		}
	}
	for _, in := range []string{`{"a":1,"b":[1,2]}`, `not json`, ``, `{"key_id":"x"}`} {
		if out := JSON(in); out != in {
			t.Errorf("JSON(%s) = %s, want unchanged", in, out)
		}
	}
}
