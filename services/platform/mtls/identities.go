package mtls

// Identity paths of a deployment: a process's SPIFFE ID is
// spiffe://<trust domain>/<path>. The authorization policy
// (deploy/authz/policy.json) is written in these, and clients name them to
// say which server they expect (Transport.DialOption).
const (
	VolumeService           = "volume-service"
	RegionAllocator         = "region-allocator"
	UpstairsNotifier        = "upstairs-notifier"
	ReplacementOrchestrator = "replacement-orchestrator"
	// CrucibleAgents is the prefix of the agents' identities, one per sled
	// (crucible-agent/<sled>); the simulated agents are crucible-agent/sim.
	CrucibleAgents = "crucible-agent"
	// Upstairs is the prefix of Upstairs identities (Propolis instances and
	// Pantries): upstairs/<instance>.
	Upstairs = "upstairs"
	// Operators may run replacements and the lifecycle (operator/<name>).
	Operators = "operator"
	// Viewers may only read (viewer/<name>).
	Viewers = "viewer"
	// Tests may call the development-only fault RPCs (test/<name>).
	Tests = "test"
)
