// Package formation reads the replicated database as one orchestrator sees
// it, for AdminService.GetDatabaseFormation and the replication gauges.
// There are two sources, read side by side and each within readTimeout:
//
//   - the orchestrator's own pool: the node it reached (with the multi-host
//     DSN and target_session_attrs=read-write, the primary), and the
//     standbys that node streams to, from pg_stat_replication;
//   - pg_auto_failover's monitor (--db-monitor), through its SQL API
//     (pgautofailover.current_state): every node with its reported and
//     assigned state, health and last reported WAL position.
//
// A source that cannot be read is reported in its error field: the view
// matters most while the database is failing over, which is when one of
// them does not answer.
package formation

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	"storagecp.dev/platform/db"
)

// Name is the pg_auto_failover formation read: the one `pg_autoctl create`
// makes unless told otherwise, and the one platform/pgformation uses.
const Name = "default"

// readTimeout bounds each source: the RPC answers within it even when the
// database is failing over or the monitor is gone.
const readTimeout = 3 * time.Second

// primaryStates are pg_auto_failover's states of a node that takes writes.
var primaryStates = []string{"single", "wait_primary", "primary", "join_primary", "apply_settings"}

// Reader reads both sources.
type Reader struct {
	pool *pgxpool.Pool
	// monitor is nil without --db-monitor.
	monitor    *pgxpool.Pool
	monitorURI string // redacted, for the answer
}

// New returns a reader of pool and, when monitorURI is not empty, of the
// pg_auto_failover monitor there. It does not connect: an unreachable
// monitor is reported by Read, not a reason for the process not to start.
func New(pool *pgxpool.Pool, monitorURI string) (*Reader, error) {
	r := &Reader{pool: pool}
	if monitorURI == "" {
		return r, nil
	}
	cfg, err := pgxpool.ParseConfig(monitorURI)
	if err != nil {
		return nil, fmt.Errorf("--db-monitor: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > 2*time.Second {
		cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	}
	// A scrape and an RPC at once at most; the monitor serves every keeper
	// of the formation and needs no more of us.
	cfg.MaxConns = 2
	cfg.MinConns = 0
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "replacement-orchestrator"
	}
	if r.monitor, err = pgxpool.NewWithConfig(context.Background(), cfg); err != nil {
		return nil, fmt.Errorf("--db-monitor: %w", err)
	}
	r.monitorURI = db.RedactDSN(monitorURI)
	return r, nil
}

// Close closes the monitor's connections.
func (r *Reader) Close() {
	if r.monitor != nil {
		r.monitor.Close()
	}
}

// HasMonitor reports whether a monitor is configured.
func (r *Reader) HasMonitor() bool { return r.monitor != nil }

// Read reads every source. It never fails: what a source could not say is
// in its error field.
func (r *Reader) Read(ctx context.Context) *orchestratorv1.GetDatabaseFormationResponse {
	out := &orchestratorv1.GetDatabaseFormationResponse{ObservedTime: timestamppb.Now()}
	var wg sync.WaitGroup
	wg.Go(func() { out.Connection = r.ReadConnection(ctx) })
	if r.monitor != nil {
		wg.Go(func() { out.Monitor = r.ReadMonitor(ctx) })
	}
	wg.Wait()
	return out
}

// ReadConnection asks the node the pool reaches about itself and its
// standbys, on one connection so that the standbys are that node's.
func (r *Reader) ReadConnection(ctx context.Context) *orchestratorv1.DatabaseConnection {
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	out := &orchestratorv1.DatabaseConnection{}
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		out.Error = describe("connect", err)
		return out
	}
	defer conn.Release()
	// On a standby pg_current_wal_lsn() fails; its position is what it
	// replayed.
	err = conn.QueryRow(ctx, `SELECT coalesce(host(inet_server_addr()), ''), coalesce(inet_server_port(), current_setting('port')::int),
			current_database(), NOT pg_is_in_recovery(),
			coalesce((CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, ''),
			current_setting('synchronous_standby_names')`).
		Scan(&out.Host, &out.Port, &out.Database, &out.Primary, &out.WalLsn, &out.SynchronousStandbyNames)
	if err != nil {
		return &orchestratorv1.DatabaseConnection{Error: describe("read the node", err)}
	}
	out.Standbys, out.StandbysError = readStandbys(ctx, conn.Conn())
	return out
}

// readStandbys reads pg_stat_replication. Without superuser or pg_monitor
// (pg_read_all_stats), PostgreSQL shows the rows but leaves every column
// past usename NULL: that is said, not shown as standbys in no state.
func readStandbys(ctx context.Context, conn *pgx.Conn) ([]*orchestratorv1.DatabaseStandby, string) {
	rows, err := conn.Query(ctx, `SELECT coalesce(application_name, ''), coalesce(host(client_addr), ''),
			state, coalesce(sync_state, ''),
			coalesce(sent_lsn::text, ''), coalesce(write_lsn::text, ''), coalesce(flush_lsn::text, ''), coalesce(replay_lsn::text, ''),
			pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, replay_lsn)::bigint,
			extract(epoch FROM write_lag)::float8, extract(epoch FROM flush_lag)::float8, extract(epoch FROM replay_lag)::float8,
			reply_time
		FROM pg_stat_replication ORDER BY application_name, pid`)
	if err != nil {
		return nil, describe("read pg_stat_replication", err)
	}
	defer rows.Close()
	var out []*orchestratorv1.DatabaseStandby
	hidden := 0
	for rows.Next() {
		var s orchestratorv1.DatabaseStandby
		var state *string
		var lag *int64
		var writeLag, flushLag, replayLag *float64
		var reply *time.Time
		if err := rows.Scan(&s.ApplicationName, &s.ClientAddr, &state, &s.SyncState,
			&s.SentLsn, &s.WriteLsn, &s.FlushLsn, &s.ReplayLsn, &lag, &writeLag, &flushLag, &replayLag, &reply); err != nil {
			return out, describe("read pg_stat_replication", err)
		}
		if state == nil {
			hidden++
		} else {
			s.State = *state
		}
		if lag != nil {
			s.ReplayLagBytes = *lag
		}
		s.WriteLag, s.FlushLag, s.ReplayLag = seconds(writeLag), seconds(flushLag), seconds(replayLag)
		if reply != nil {
			s.ReplyTime = timestamppb.New(*reply)
		}
		out = append(out, &s)
	}
	if err := rows.Err(); err != nil {
		return out, describe("read pg_stat_replication", err)
	}
	if hidden > 0 {
		return out, fmt.Sprintf("pg_stat_replication: %d standby(s) shown without state or positions: "+
			"the orchestrator's database role needs pg_monitor (or superuser) to read them", hidden)
	}
	return out, ""
}

func seconds(s *float64) *durationpb.Duration {
	if s == nil {
		return nil
	}
	return durationpb.New(time.Duration(*s * float64(time.Second)))
}

// ReadMonitor asks the monitor for every node of the formation. The lag
// is each node's last reported LSN behind its group's primary's.
func (r *Reader) ReadMonitor(ctx context.Context) *orchestratorv1.DatabaseMonitor {
	out := &orchestratorv1.DatabaseMonitor{Uri: r.monitorURI, Formation: Name}
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	rows, err := r.monitor.Query(ctx, `WITH s AS (
			SELECT *, current_group_state::text = ANY($2) AND assigned_group_state::text = ANY($2) AS is_primary
			FROM pgautofailover.current_state($1)
		)
		SELECT nodename, node_id, group_id, nodehost, nodeport,
			current_group_state::text, assigned_group_state::text, health,
			reported_lsn::text, reported_tli, candidate_priority, replication_quorum, is_primary,
			pg_wal_lsn_diff((SELECT max(p.reported_lsn) FROM s p WHERE p.group_id = s.group_id AND p.is_primary), reported_lsn)::bigint
		FROM s ORDER BY group_id, node_id`, Name, primaryStates)
	if err != nil {
		out.Error = describe("query the monitor", err)
		return out
	}
	defer rows.Close()
	for rows.Next() {
		var n orchestratorv1.DatabaseNode
		var health int
		if err := rows.Scan(&n.Name, &n.NodeId, &n.GroupId, &n.Host, &n.Port, &n.ReportedState, &n.AssignedState, &health,
			&n.ReportedLsn, &n.ReportedTimeline, &n.CandidatePriority, &n.ReplicationQuorum, &n.Primary, &n.LagBytes); err != nil {
			out.Error = describe("query the monitor", err)
			return out
		}
		n.Health = healthOf(health)
		out.Nodes = append(out.Nodes, &n)
	}
	if err := rows.Err(); err != nil {
		out.Error = describe("query the monitor", err)
		out.Nodes = nil
	}
	return out
}

// healthOf maps pgautofailover.node.health: 1 good, 0 bad, -1 unknown.
func healthOf(h int) orchestratorv1.DatabaseNodeHealth {
	switch h {
	case 1:
		return orchestratorv1.DatabaseNodeHealth_DATABASE_NODE_HEALTH_HEALTHY
	case 0:
		return orchestratorv1.DatabaseNodeHealth_DATABASE_NODE_HEALTH_UNHEALTHY
	}
	return orchestratorv1.DatabaseNodeHealth_DATABASE_NODE_HEALTH_UNSPECIFIED
}

// describe is a source's error as the answer shows it: what was being
// done, and why it failed, with a deadline said as one.
func describe(what string, err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("%s: no answer in time: %v", what, err)
	}
	return fmt.Sprintf("%s: %v", what, err)
}
