package vcr

import (
	"fmt"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
)

// FromProto converts the proto message. A node with no kind set is an
// *InvalidError naming its path; everything else is checked by Validate.
func FromProto(p *commonv1.VolumeConstructionRequest) (*VCR, error) {
	return fromProto(p, "vcr", 0)
}

func fromProto(p *commonv1.VolumeConstructionRequest, path string, depth int) (*VCR, error) {
	if depth > MaxDepth {
		return nil, invalidf(path, "nested deeper than %d levels", MaxDepth)
	}
	if p == nil {
		return nil, invalidf(path, "missing")
	}
	switch k := p.GetKind().(type) {
	case *commonv1.VolumeConstructionRequest_Volume:
		if k.Volume == nil {
			return nil, invalidf(path+".volume", "missing")
		}
		v := &Volume{ID: k.Volume.GetId(), BlockSize: k.Volume.GetBlockSize()}
		for i, s := range k.Volume.GetSubVolumes() {
			c, err := fromProto(s, fmt.Sprintf("%s.volume.sub_volumes[%d]", path, i), depth+1)
			if err != nil {
				return nil, err
			}
			v.SubVolumes = append(v.SubVolumes, c)
		}
		if rop := k.Volume.GetReadOnlyParent(); rop != nil {
			c, err := fromProto(rop, path+".volume.read_only_parent", depth+1)
			if err != nil {
				return nil, err
			}
			v.ReadOnlyParent = c
		}
		return &VCR{Volume: v}, nil
	case *commonv1.VolumeConstructionRequest_Region:
		r := k.Region
		if r == nil {
			return nil, invalidf(path+".region", "missing")
		}
		o := r.GetOpts()
		if o == nil {
			return nil, invalidf(path+".region.opts", "missing")
		}
		return &VCR{Region: &Region{BlockSize: r.GetBlockSize(), BlocksPerExtent: r.GetBlocksPerExtent(),
			ExtentCount: r.GetExtentCount(), Gen: r.GetGen(), Opts: CrucibleOpts{
				ID: o.GetId(), Target: append([]string(nil), o.GetTarget()...), Lossy: o.GetLossy(),
				FlushTimeout: clonePtr(o.FlushTimeout), Key: clonePtr(o.Key), CertPEM: clonePtr(o.CertPem),
				KeyPEM: clonePtr(o.KeyPem), RootCertPEM: clonePtr(o.RootCertPem), Control: clonePtr(o.Control),
				ReadOnly: o.GetReadOnly()}}}, nil
	case *commonv1.VolumeConstructionRequest_File:
		if k.File == nil {
			return nil, invalidf(path+".file", "missing")
		}
		return &VCR{File: &File{ID: k.File.GetId(), BlockSize: k.File.GetBlockSize(), Path: k.File.GetPath()}}, nil
	case *commonv1.VolumeConstructionRequest_Url:
		if k.Url == nil {
			return nil, invalidf(path+".url", "missing")
		}
		return &VCR{URL: &URL{ID: k.Url.GetId(), BlockSize: k.Url.GetBlockSize(), URL: k.Url.GetUrl()}}, nil
	}
	return nil, invalidf(path, "no kind set (want volume, region, file or url)")
}

// ToProto converts to the proto message.
func ToProto(v *VCR) *commonv1.VolumeConstructionRequest {
	switch {
	case v == nil:
		return nil
	case v.Volume != nil:
		pv := &commonv1.VcrVolume{Id: v.Volume.ID, BlockSize: v.Volume.BlockSize,
			ReadOnlyParent: ToProto(v.Volume.ReadOnlyParent)}
		for _, s := range v.Volume.SubVolumes {
			pv.SubVolumes = append(pv.SubVolumes, ToProto(s))
		}
		return &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: pv}}
	case v.Region != nil:
		r := v.Region
		o := r.Opts
		return &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Region{Region: &commonv1.VcrRegion{
			BlockSize: r.BlockSize, BlocksPerExtent: r.BlocksPerExtent, ExtentCount: r.ExtentCount, Gen: r.Gen,
			Opts: &commonv1.CrucibleOpts{Id: o.ID, Target: append([]string(nil), o.Target...), Lossy: o.Lossy,
				FlushTimeout: clonePtr(o.FlushTimeout), Key: clonePtr(o.Key), CertPem: clonePtr(o.CertPEM),
				KeyPem: clonePtr(o.KeyPEM), RootCertPem: clonePtr(o.RootCertPEM), Control: clonePtr(o.Control),
				ReadOnly: o.ReadOnly}}}}
	case v.File != nil:
		return &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_File{File: &commonv1.VcrFile{
			Id: v.File.ID, BlockSize: v.File.BlockSize, Path: v.File.Path}}}
	case v.URL != nil:
		return &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Url{Url: &commonv1.VcrUrl{
			Id: v.URL.ID, BlockSize: v.URL.BlockSize, Url: v.URL.URL}}}
	}
	return &commonv1.VolumeConstructionRequest{}
}
