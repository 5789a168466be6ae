package vcr

import (
	"errors"
	"testing"
)

// FuzzDecodeValidate: the decoder and validator never panic and fail only
// with InvalidError; whatever passes re-encodes and decodes to the same JSON
// and keeps passing validation. Seed corpus: testdata/fuzz/FuzzDecodeValidate.
func FuzzDecodeValidate(f *testing.F) {
	f.Add([]byte(`{"type":"volume","id":"6b1e4c2a-6f0d-4f7e-9a5c-3d2b8e9f1a70","block_size":512,"sub_volumes":[],"read_only_parent":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := Decode(data)
		var ie *InvalidError
		if err != nil {
			if !errors.As(err, &ie) {
				t.Fatalf("decode error of the wrong class: %T %v", err, err)
			}
			return
		}
		if err := Validate(v); err != nil {
			if !errors.As(err, &ie) {
				t.Fatalf("validation error of the wrong class: %T %v", err, err)
			}
			return
		}
		// Exercise every helper on a valid tree: none may panic or fail.
		ReadOnlyTargets(v)
		ReadWriteTargets(v)
		RegionSets(v)
		Generation(v)
		if err := CheckShape(v); err != nil && v.Volume != nil {
			t.Fatalf("CheckShape refused a valid volume: %v", err)
		}
		if ch, err := Diff(v, v.Clone()); err != nil || len(ch) != 0 {
			t.Fatalf("Diff of a VCR with its clone: %v %v", ch, err)
		}
		for _, ref := range AllTargets(v) {
			if _, err := RegionInVCR(v, ref.Address); err != nil {
				t.Fatalf("RegionInVCR on a valid VCR: %v", err)
			}
			if _, err := ReadOnlyTargetInVCR(v, ref.Address); err != nil {
				t.Fatalf("ReadOnlyTargetInVCR on a valid VCR: %v", err)
			}
		}
		b, err := Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		v2, err := Decode(b)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		b2, _ := Encode(v2)
		if string(b) != string(b2) {
			t.Fatal("encode/decode not stable")
		}
		if err := Validate(v2); err != nil {
			t.Fatalf("re-validate: %v", err)
		}
		ToProto(v)
		if _, err := FromProto(ToProto(v)); err != nil {
			t.Fatalf("proto round trip: %v", err)
		}
	})
}
