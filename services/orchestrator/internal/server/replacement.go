package server

import (
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

type replacement struct {
	orchestratorv1.UnimplementedReplacementServiceServer
	s *Server
}
