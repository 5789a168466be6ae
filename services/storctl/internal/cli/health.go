package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

// Each call of `health` has its own deadline, shorter than the command's,
// and all run at once: a service that does not answer is a row of the
// answer, not the end of it. GetDatabaseFormation bounds each of its
// sources at 3 s itself.
const (
	healthCheckTimeout = 3 * time.Second
	formationTimeout   = 8 * time.Second
)

// standbyPrefix is how pg_auto_failover names a standby's replication
// connection: the prefix and the node's id at the monitor.
const standbyPrefix = "pgautofailover_standby_"

const prefixNodeHealth = "DATABASE_NODE_HEALTH_"

func healthCommands() []command {
	return []command{{
		path: "health", summary: "every service's health, the leader, the database formation (primary, standbys, lag)",
		max: 0,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, _ []string) error {
				h, err := e.health(ctx)
				if err != nil {
					return err
				}
				if e.json() {
					if err := h.printJSON(e.stdout); err != nil {
						return err
					}
				} else if err := h.render(e.stdout); err != nil {
					return err
				}
				return h.verdict()
			}
		},
	}}
}

// serviceHealth is one service's answer to grpc.health.v1.Health/Check.
type serviceHealth struct {
	Service string `json:"service"`
	Address string `json:"address"`
	// Status is the health status ("SERVING", "NOT_SERVING", …), or
	// "UNREACHABLE" / "ERROR" when the check itself failed.
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
}

// healthReport is everything `health` found.
type healthReport struct {
	services      []serviceHealth
	leadership    *orchestratorv1.GetLeadershipResponse
	leadershipErr string
	formation     *orchestratorv1.GetDatabaseFormationResponse
	formationErr  string
	// problems are what makes the database degraded (exit 3).
	problems []string
}

// health makes every call at once and gathers the answers; it fails only
// when storctl cannot even dial (no credentials, a bad address).
func (e *env) health(ctx context.Context) (*healthReport, error) {
	h := &healthReport{services: make([]serviceHealth, len(endpoints))}
	clients := make([]healthpb.HealthClient, len(endpoints))
	for i, ep := range endpoints {
		c, err := e.conn(ep.service)
		if err != nil {
			return nil, err
		}
		clients[i] = healthpb.NewHealthClient(c)
		h.services[i] = serviceHealth{Service: ep.service, Address: *e.opts.addrs[ep.service]}
	}
	admin, err := e.admin()
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	for i := range endpoints {
		wg.Go(func() {
			c, cancel := context.WithTimeout(ctx, healthCheckTimeout)
			defer cancel()
			// The server's overall status (""): every service of the
			// process shares it, and TLS already made sure who answers.
			resp, err := clients[i].Check(c, &healthpb.HealthCheckRequest{})
			s := &h.services[i]
			switch {
			case err == nil:
				s.Status = resp.Status.String()
			case status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded:
				s.Status, s.Error = "UNREACHABLE", e.describe(e.wrap(s.Service, err))
			default:
				s.Status, s.Error = "ERROR", e.describe(e.wrap(s.Service, err))
			}
		})
	}
	wg.Go(func() {
		c, cancel := context.WithTimeout(ctx, healthCheckTimeout)
		defer cancel()
		resp, err := admin.GetLeadership(c, &orchestratorv1.GetLeadershipRequest{})
		if err != nil {
			h.leadershipErr = e.describe(e.wrap(svcOrchestrator, err))
			return
		}
		h.leadership = resp
	})
	wg.Go(func() {
		c, cancel := context.WithTimeout(ctx, formationTimeout)
		defer cancel()
		resp, err := admin.GetDatabaseFormation(c, &orchestratorv1.GetDatabaseFormationRequest{})
		if err != nil {
			h.formationErr = e.describe(e.wrap(svcOrchestrator, err))
			return
		}
		h.formation = resp
	})
	wg.Wait()
	if h.formation != nil {
		h.problems = formationProblems(h.formation)
	}
	return h, nil
}

// verdict is the exit: 1 when a service does not serve or the
// orchestrator's views could not be had, 3 when all serve but the database
// is degraded.
func (h *healthReport) verdict() error {
	var down []string
	for _, s := range h.services {
		if s.Status != healthpb.HealthCheckResponse_SERVING.String() {
			down = append(down, s.Service+" "+s.Status)
		}
	}
	if len(down) > 0 {
		return fmt.Errorf("%d of %d services not serving: %s", len(down), len(h.services), strings.Join(down, ", "))
	}
	if h.leadershipErr != "" || h.formationErr != "" {
		return fmt.Errorf("the orchestrator serves but did not answer every view: %s", strings.Join(nonEmpty(h.leadershipErr, h.formationErr), "; "))
	}
	if len(h.problems) > 0 {
		return violationsError{n: len(h.problems), msg: fmt.Sprintf("database formation degraded: %d problem(s)", len(h.problems))}
	}
	return nil
}

func nonEmpty(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// formationProblems lists what is wrong with the formation as the answer
// shows it. One PostgreSQL without a monitor and without standbys is no
// problem: that is a deployment without replication, not a broken one.
func formationProblems(f *orchestratorv1.GetDatabaseFormationResponse) []string {
	var out []string
	c := f.GetConnection()
	switch {
	case c.GetError() != "":
		out = append(out, "the orchestrator cannot read its database: "+c.GetError())
	case !c.GetPrimary():
		out = append(out, fmt.Sprintf("the orchestrator is connected to %s, which is not the primary", hostPort(c.GetHost(), c.GetPort())))
	}
	if c.GetStandbysError() != "" {
		out = append(out, "standbys: "+c.GetStandbysError())
	}
	m := f.GetMonitor()
	if m == nil {
		return out
	}
	if m.Error != "" {
		return append(out, "monitor: "+m.Error)
	}
	primaries := 0
	for _, n := range m.Nodes {
		if n.Primary {
			primaries++
		}
		if n.Health == orchestratorv1.DatabaseNodeHealth_DATABASE_NODE_HEALTH_UNHEALTHY {
			out = append(out, fmt.Sprintf("node %s is unhealthy (the monitor cannot reach its PostgreSQL)", n.Name))
		}
		if n.ReportedState != n.AssignedState {
			out = append(out, fmt.Sprintf("node %s is %s, assigned %s: the formation is changing", n.Name, n.ReportedState, n.AssignedState))
		}
	}
	if primaries != 1 {
		out = append(out, fmt.Sprintf("the monitor names %d primaries", primaries))
	}
	if len(m.Nodes) > 1 && c.GetError() == "" && c.GetStandbysError() == "" && !hasSyncStandby(c) {
		out = append(out, "no standby is streaming synchronously: a commit is on one node only")
	}
	return out
}

func hasSyncStandby(c *orchestratorv1.DatabaseConnection) bool {
	for _, s := range c.Standbys {
		if s.State == "streaming" && (s.SyncState == "sync" || s.SyncState == "quorum") {
			return true
		}
	}
	return false
}

func hostPort(host string, port int32) string {
	if host == "" {
		host = "(socket)"
	}
	return fmt.Sprintf("%s:%d", host, port)
}

func (h *healthReport) render(w io.Writer) error {
	var rows [][]string
	for _, s := range h.services {
		rows = append(rows, []string{s.Service, s.Address, s.Status, s.Error})
	}
	if err := renderTable(w, []string{"SERVICE", "ADDRESS", "STATUS", "DETAIL"}, rows); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nLeadership:")
	if l := h.leadership; l != nil {
		asked := "standby"
		if l.IsLeader {
			asked = "the leader, ready"
		} else if l.Self == l.Holder {
			asked = "the lease holder, not ready yet"
		}
		if err := renderFields(w, [][2]string{
			{"  leader", orDash(l.Holder)}, {"  epoch", fmt.Sprint(l.Epoch)}, {"  lease expiry", orDash(ts(l.LeaseExpiry))},
			{"  asked", fmt.Sprintf("%s (%s)", l.Self, asked)},
		}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(w, "  unknown: %s\n", h.leadershipErr)
	}

	fmt.Fprintln(w, "\nDatabase:")
	f := h.formation
	if f == nil {
		fmt.Fprintf(w, "  unknown: %s\n", h.formationErr)
		return nil
	}
	if err := renderFormation(w, f); err != nil {
		return err
	}
	if len(h.problems) > 0 {
		fmt.Fprintln(w, "\nProblems:")
		for _, p := range h.problems {
			fmt.Fprintf(w, "  %s\n", p)
		}
	}
	return nil
}

// renderFormation is the formation's table: the monitor's nodes when there
// is a monitor, else the connected node; the standbys the primary streams
// to joined to their node (pg_auto_failover names them after its node
// id), any other standby on a row of its own.
func renderFormation(w io.Writer, f *orchestratorv1.GetDatabaseFormationResponse) error {
	c := f.GetConnection()
	connected := "-"
	if c.GetError() != "" {
		connected = "unknown: " + c.GetError()
	} else {
		role := "primary"
		if !c.Primary {
			role = "standby"
		}
		connected = fmt.Sprintf("%s, database %s, %s, WAL %s", hostPort(c.Host, c.Port), c.Database, role, orDash(c.WalLsn))
	}
	fields := [][2]string{{"  seen by", orDash(f.Orchestrator)}, {"  connected to", connected}}
	if c.GetSynchronousStandbyNames() != "" {
		fields = append(fields, [2]string{"  synchronous standbys", c.SynchronousStandbyNames})
	}
	if c.GetStandbysError() != "" {
		fields = append(fields, [2]string{"  standbys", "unknown: " + c.StandbysError})
	}
	m := f.GetMonitor()
	switch {
	case m == nil:
		fields = append(fields, [2]string{"  monitor", "none (the orchestrator has no --db-monitor)"})
	case m.Error != "":
		fields = append(fields, [2]string{"  monitor", fmt.Sprintf("%s, unknown: %s", m.Uri, m.Error)})
	default:
		fields = append(fields, [2]string{"  monitor", fmt.Sprintf("%s (formation %s)", m.Uri, m.Formation)})
	}
	if err := renderFields(w, fields); err != nil {
		return err
	}

	standbys := map[string]*orchestratorv1.DatabaseStandby{}
	for _, s := range c.GetStandbys() {
		standbys[s.ApplicationName] = s
	}
	isConnected := func(host string, port int32) bool {
		return c.GetError() == "" && port == c.GetPort() && (c.GetHost() == "" || host == c.GetHost())
	}
	var rows [][]string
	standbyCells := func(s *orchestratorv1.DatabaseStandby) []string {
		return []string{s.SyncState, fmt.Sprint(s.ReplayLagBytes), dur(s.WriteLag), dur(s.FlushLag), dur(s.ReplayLag)}
	}
	marked := false
	if m != nil && m.Error == "" && len(m.Nodes) > 0 {
		for _, n := range m.Nodes {
			name := n.Name
			if isConnected(n.Host, n.Port) {
				name += "*"
				marked = true
			}
			role := "standby"
			if n.Primary {
				role = "primary"
			}
			state := n.ReportedState
			if n.AssignedState != n.ReportedState {
				state += " → " + n.AssignedState
			}
			lsn := n.ReportedLsn
			tail := []string{"", "", "", "", ""}
			key := standbyPrefix + strconv.FormatInt(n.NodeId, 10)
			if s, ok := standbys[key]; ok {
				delete(standbys, key)
				tail = standbyCells(s)
				lsn = orDash(s.ReplayLsn)
			} else if n.Primary && isConnected(n.Host, n.Port) {
				lsn = c.WalLsn
			} else if !n.Primary && n.LagBytes != nil {
				// Only the monitor's (coarse) figure: said as such.
				tail[1] = fmt.Sprintf("~%d", *n.LagBytes)
			}
			rows = append(rows, append([]string{name, hostPort(n.Host, n.Port), role, state, enum(n.Health, prefixNodeHealth), lsn}, tail...))
		}
	} else if c.GetError() == "" {
		role := "primary"
		if !c.Primary {
			role = "standby"
		}
		rows = append(rows, []string{"(connected)", hostPort(c.Host, c.Port), role, "", "", c.WalLsn, "", "", "", "", ""})
	}
	for _, s := range c.GetStandbys() {
		if _, left := standbys[s.ApplicationName]; !left {
			continue
		}
		rows = append(rows, append([]string{s.ApplicationName, s.ClientAddr, "standby", s.State, "", orDash(s.ReplayLsn)}, standbyCells(s)...))
	}
	if len(rows) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	if err := renderTable(w, []string{"NODE", "ADDRESS", "ROLE", "STATE", "HEALTH", "LSN", "SYNC", "LAG_BYTES", "WRITE_LAG", "FLUSH_LAG", "REPLAY_LAG"}, rows); err != nil {
		return err
	}
	if marked {
		fmt.Fprintln(w, "* the node the orchestrator is connected to")
	}
	return nil
}

// printJSON writes the report as one object: the services' checks, and
// the orchestrator's two answers as their RPCs' protojson.
func (h *healthReport) printJSON(w io.Writer) error {
	out := struct {
		Services          []serviceHealth `json:"services"`
		Leadership        json.RawMessage `json:"leadership,omitempty"`
		LeadershipError   string          `json:"leadershipError,omitempty"`
		DatabaseFormation json.RawMessage `json:"databaseFormation,omitempty"`
		FormationError    string          `json:"databaseFormationError,omitempty"`
		Problems          []string        `json:"problems"`
	}{Services: h.services, LeadershipError: h.leadershipErr, FormationError: h.formationErr, Problems: h.problems}
	if out.Problems == nil {
		out.Problems = []string{}
	}
	var err error
	if h.leadership != nil {
		if out.Leadership, err = protojson.Marshal(h.leadership); err != nil {
			return err
		}
	}
	if h.formation != nil {
		if out.DatabaseFormation, err = protojson.Marshal(h.formation); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
