package console

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/storctl/internal/redact"
)

// Views the console serves; each is one page of the front end.
const (
	viewRack         = "rack"
	viewReplacements = "replacements"
	viewVolume       = "volume"
	viewSaga         = "saga"
	viewHealth       = "health"
)

// maxDetailed bounds how many requests the replacements page shows with
// their steps and estimate (the newest first): each costs a GetReplacement
// per refresh.
const maxDetailed = 50

// listPageSize is the page size of every list call.
const listPageSize = 1000

// pbJSON marshals a message as storctl's -o json does (protojson's
// default names), for the page.
func pbJSON(m proto.Message) json.RawMessage {
	b, err := protojson.Marshal(m)
	if err != nil {
		// protojson fails only on invalid UTF-8 or unknown Any types;
		// the page shows the error rather than nothing.
		b, _ = json.Marshal(map[string]string{"marshalError": err.Error()})
	}
	return b
}

// build returns the data of one view, already redacted.
func (s *Server) build(ctx context.Context, view, id string) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, s.o.CallTimeout)
	defer cancel()
	switch view {
	case viewRack:
		return s.rack(ctx)
	case viewReplacements:
		return s.replacements(ctx)
	case viewVolume:
		if id == "" {
			return s.volumeList(ctx)
		}
		return s.volume(ctx, id)
	case viewSaga:
		if id == "" {
			return s.sagaList(ctx)
		}
		return s.saga(ctx, id)
	case viewHealth:
		if s.o.Health == nil {
			return nil, status.Error(codes.Unimplemented, "no health source")
		}
		b, err := s.o.Health(ctx)
		if err != nil {
			return nil, err
		}
		return s.healthWithAlerts(ctx, b)
	}
	return nil, status.Errorf(codes.InvalidArgument, "view: unknown view %q", view)
}

func (s *Server) disks(ctx context.Context) ([]*allocatorv1.PhysicalDisk, error) {
	var out []*allocatorv1.PhysicalDisk
	for token := ""; ; {
		resp, err := s.o.Reads.Allocator.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: listPageSize, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("ListPhysicalDisks: %w", err)
		}
		out = append(out, resp.Disks...)
		if token = resp.NextPageToken; token == "" {
			return out, nil
		}
	}
}

func (s *Server) listReplacements(ctx context.Context) (*orchestratorv1.ListReplacementsResponse, error) {
	all := &orchestratorv1.ListReplacementsResponse{}
	for token := ""; ; {
		resp, err := s.o.Reads.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: listPageSize, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("ListReplacements: %w", err)
		}
		all.Replacements = append(all.Replacements, resp.Replacements...)
		if all.RackPause == nil {
			all.RackPause = resp.RackPause
		}
		if token = resp.NextPageToken; token == "" {
			return all, nil
		}
	}
}

type rackView struct {
	Disks        json.RawMessage `json:"disks"`
	Replacements json.RawMessage `json:"replacements"`
	// DatasetOf maps each request to the dataset (so the disk) of the
	// target it replaces: a region snapshot's request names it, a region's
	// is the region's (GetRegion).
	DatasetOf map[string]string `json:"datasetOf"`
}

// datasetsOf maps each request to the dataset of the target it replaces,
// where that is known: a region snapshot's request names it; a region's is
// asked of the allocator while the region exists and kept (the region is
// deleted once replaced, so a request the console never saw in flight may
// stay unplaced).
func (s *Server) datasetsOf(ctx context.Context, reps []*orchestratorv1.Replacement) (map[string]string, error) {
	out := map[string]string{}
	for _, r := range reps {
		ds := r.OldDatasetId
		if ds == "" && r.OldRegionId != "" {
			var err error
			if ds, err = s.regionDataset(ctx, r.OldRegionId); err != nil {
				return nil, err
			}
		}
		if ds != "" {
			out[r.ReplacementId] = ds
		}
	}
	return out, nil
}

// regionDataset is the dataset a region lives on. A region never moves,
// so the answer is kept for the server's life; a region the allocator no
// longer knows (deleted once replaced) maps to "".
func (s *Server) regionDataset(ctx context.Context, regionID string) (string, error) {
	if v, ok := s.regionDatasets.Load(regionID); ok {
		return v.(string), nil
	}
	resp, err := s.o.Reads.Allocator.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: regionID})
	if status.Code(err) == codes.NotFound {
		s.regionDatasets.Store(regionID, "")
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("GetRegion %s: %w", regionID, err)
	}
	ds := resp.GetRegion().GetDatasetId()
	s.regionDatasets.Store(regionID, ds)
	return ds, nil
}

func (s *Server) rack(ctx context.Context) (any, error) {
	disks, err := s.disks(ctx)
	if err != nil {
		return nil, err
	}
	reps, err := s.listReplacements(ctx)
	if err != nil {
		return nil, err
	}
	datasetOf, err := s.datasetsOf(ctx, reps.Replacements)
	if err != nil {
		return nil, err
	}
	return rackView{
		Disks:        pbJSON(&allocatorv1.ListPhysicalDisksResponse{Disks: disks}),
		Replacements: pbJSON(reps),
		DatasetOf:    datasetOf,
	}, nil
}

type replacementsView struct {
	// Requests are GetReplacement's answers (request, steps, drive
	// steps), the newest first.
	Requests  []json.RawMessage `json:"requests"`
	RackPause json.RawMessage   `json:"rackPause,omitempty"`
	Total     int               `json:"total"`
	JaegerURL string            `json:"jaegerUrl,omitempty"`
	// DatasetOf: as the rack's; resolved here too so that a request seen
	// in flight keeps its disk once its region is gone.
	DatasetOf map[string]string `json:"datasetOf"`
}

func (s *Server) replacements(ctx context.Context) (any, error) {
	list, err := s.listReplacements(ctx)
	if err != nil {
		return nil, err
	}
	reps := list.Replacements
	sort.SliceStable(reps, func(i, j int) bool {
		a, b := reps[i].GetRequestTime().AsTime(), reps[j].GetRequestTime().AsTime()
		if !a.Equal(b) {
			return a.After(b)
		}
		return reps[i].ReplacementId < reps[j].ReplacementId
	})
	datasetOf, err := s.datasetsOf(ctx, reps)
	if err != nil {
		return nil, err
	}
	v := replacementsView{Total: len(reps), JaegerURL: s.o.JaegerURL, Requests: []json.RawMessage{}, DatasetOf: datasetOf}
	if list.RackPause != nil {
		v.RackPause = pbJSON(list.RackPause)
	}
	for i, r := range reps {
		if i == maxDetailed {
			break
		}
		resp, err := s.o.Reads.Replacement.GetReplacement(ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: r.ReplacementId})
		if status.Code(err) == codes.NotFound {
			continue // finished and forgotten between the two calls
		}
		if err != nil {
			return nil, fmt.Errorf("GetReplacement %s: %w", r.ReplacementId, err)
		}
		v.Requests = append(v.Requests, pbJSON(resp))
	}
	return v, nil
}

type volumeListView struct {
	Volumes json.RawMessage `json:"volumes"`
}

// maxVolumes bounds the volume picker.
const maxVolumes = 500

func (s *Server) volumeList(ctx context.Context) (any, error) {
	resp, err := s.o.Reads.Volume.ListVolumes(ctx, &volumev1.ListVolumesRequest{PageSize: maxVolumes})
	if err != nil {
		return nil, fmt.Errorf("ListVolumes: %w", err)
	}
	// The picker needs no VCR: none is sent, redacted or not.
	for _, v := range resp.Volumes {
		v.Vcr = nil
	}
	resp.NextPageToken = ""
	return volumeListView{Volumes: pbJSON(resp)}, nil
}

type volumeView struct {
	Volume json.RawMessage `json:"volume"`
	// RedundancyError says why the redundancy is missing (the volume
	// without it beats nothing, as in `storctl volumes show`).
	RedundancyError string          `json:"redundancyError,omitempty"`
	Disks           json.RawMessage `json:"disks"`
}

func (s *Server) volume(ctx context.Context, id string) (any, error) {
	resp, err := s.o.Reads.Volume.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: id, IncludeReferenceCounts: true, IncludeRedundancy: true})
	noRedundancy := ""
	if code := status.Code(err); code == codes.FailedPrecondition || code == codes.Unavailable || code == codes.Unimplemented {
		noRedundancy = status.Convert(err).Message()
		resp, err = s.o.Reads.Volume.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: id, IncludeReferenceCounts: true})
	}
	if err != nil {
		return nil, fmt.Errorf("GetVolume: %w", err)
	}
	resp.Volume.Vcr = redact.VCR(resp.Volume.Vcr)
	disks, err := s.disks(ctx)
	if err != nil {
		return nil, err
	}
	return volumeView{
		Volume:          pbJSON(resp),
		RedundancyError: noRedundancy,
		Disks:           pbJSON(&allocatorv1.ListPhysicalDisksResponse{Disks: disks}),
	}, nil
}

// maxSagas bounds the saga list.
const maxSagas = 200

type sagaListView struct {
	Sagas json.RawMessage `json:"sagas"`
}

func (s *Server) sagaList(ctx context.Context) (any, error) {
	resp, err := s.o.Reads.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{PageSize: maxSagas})
	if err != nil {
		return nil, fmt.Errorf("ListSagas: %w", err)
	}
	resp.NextPageToken = ""
	return sagaListView{Sagas: pbJSON(resp)}, nil
}

func (s *Server) saga(ctx context.Context, id string) (any, error) {
	resp, err := s.o.Reads.Admin.GetSaga(ctx, &orchestratorv1.GetSagaRequest{SagaId: id})
	if err != nil {
		return nil, fmt.Errorf("GetSaga: %w", err)
	}
	redactSaga(resp)
	return json.RawMessage(pbJSON(resp)), nil
}

// redactSaga removes key material from a saga's free-form JSON: its
// parameters, each node's output and each log event's data.
func redactSaga(resp *orchestratorv1.GetSagaResponse) {
	resp.ParamsJson = redact.JSON(resp.ParamsJson)
	for _, n := range resp.Nodes {
		n.DataJson = redact.JSON(n.DataJson)
	}
	for _, e := range resp.Events {
		e.DataJson = redact.JSON(e.DataJson)
	}
}

// envelope is one server-sent event's data.
type envelope struct {
	View string `json:"view"`
	ID   string `json:"id,omitempty"`
	// At is when the server built the data (Unix milliseconds).
	At    int64          `json:"at"`
	Data  any            `json:"data,omitempty"`
	Error *errorEnvelope `json:"error,omitempty"`
	// Identity is who the console reads as, ActionsIdentity who it acts as.
	Identity        string `json:"identity"`
	ActionsIdentity string `json:"actionsIdentity"`
}

type errorEnvelope struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func errorOf(err error) *errorEnvelope {
	st, ok := status.FromError(unwrapStatus(err))
	if !ok {
		return &errorEnvelope{Code: "Unknown", Message: err.Error()}
	}
	return &errorEnvelope{Code: st.Code().String(), Message: st.Message()}
}

// unwrapStatus finds the gRPC status in a wrapped error (status.FromError
// looks through wrapping only for errors that implement GRPCStatus).
func unwrapStatus(err error) error {
	type grpcStatus interface{ GRPCStatus() *status.Status }
	for e := err; e != nil; {
		if _, ok := e.(grpcStatus); ok {
			return e
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	return err
}

// sameData reports whether two encoded data parts are equal.
func sameData(a, b []byte) bool { return bytes.Equal(a, b) }
