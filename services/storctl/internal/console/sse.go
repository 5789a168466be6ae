package console

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

// heartbeat keeps idle streams open through proxies and lets the server
// notice a client that went away.
const heartbeat = 15 * time.Second

// events streams one view as server-sent events: a "snapshot" event with
// the view's data whenever it changes (and at once on connect), or with an
// error when the data cannot be read; the stream itself stays open, so the
// page recovers by itself when the service comes back.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	view, id := r.URL.Query().Get("view"), r.URL.Query().Get("id")
	if !knownView(view) {
		http.Error(w, fmt.Sprintf("view: unknown view %q", view), http.StatusBadRequest)
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()

	ctx := r.Context()
	wake := make(chan struct{}, 1)
	if view == viewReplacements || view == viewRack {
		go s.watch(ctx, wake)
	}
	tick := time.NewTicker(s.o.Poll)
	defer tick.Stop()
	beat := time.NewTicker(heartbeat)
	defer beat.Stop()
	var last []byte
	for {
		data, err := s.encode(ctx, view, id)
		if ctx.Err() != nil {
			return
		}
		if err == nil && !sameData(data.key, last) {
			last = data.key
			if _, err := fmt.Fprintf(w, "event: snapshot\ndata: %s\n\n", data.full); err != nil {
				return
			}
			flusher.Flush()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-wake:
		case <-beat.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

func knownView(v string) bool {
	switch v {
	case viewRack, viewReplacements, viewVolume, viewSaga, viewHealth:
		return true
	}
	return false
}

// encoded is one event: full is what is sent, key what decides whether
// anything changed (the data or the error, without the time).
type encoded struct{ full, key []byte }

func (s *Server) encode(ctx context.Context, view, id string) (encoded, error) {
	env := envelope{View: view, ID: id, Identity: s.o.Identity, ActionsIdentity: s.o.ActionsIdentity}
	data, err := s.build(ctx, view, id)
	env.At = time.Now().UnixMilli()
	if err != nil {
		env.Error = errorOf(err)
		env.Error.Message = err.Error()
		s.o.Logger.Warn("console: view failed", "view", view, "id", id, "err", err)
	} else {
		env.Data = data
	}
	full, err := json.Marshal(env)
	if err != nil {
		return encoded{}, err
	}
	keyEnv := env
	keyEnv.At = 0
	key, err := json.Marshal(keyEnv)
	if err != nil {
		return encoded{}, err
	}
	return encoded{full: full, key: key}, nil
}

// snapshotOnce answers one view once, as JSON: for scripts and for the
// tests that read exactly what the browser would get.
func (s *Server) snapshotOnce(w http.ResponseWriter, r *http.Request) {
	view, id := r.URL.Query().Get("view"), r.URL.Query().Get("id")
	if !knownView(view) {
		http.Error(w, fmt.Sprintf("view: unknown view %q", view), http.StatusBadRequest)
		return
	}
	e, err := s.encode(r.Context(), view, id)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(e.full)
}

// watch follows WatchReplacement for every request and wakes the stream on
// each message, so progress shows as soon as the orchestrator reports it
// rather than on the next poll. The RPC ends once every request is
// terminal; watch then waits a poll period and asks again, for the next
// expunge.
func (s *Server) watch(ctx context.Context, wake chan<- struct{}) {
	for ctx.Err() == nil {
		stream, err := s.o.Reads.Replacement.WatchReplacement(ctx, &orchestratorv1.WatchReplacementRequest{})
		if err == nil {
			for {
				if _, err := stream.Recv(); err != nil {
					break
				}
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(s.o.Poll):
		}
	}
}
