package cli

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"strconv"

	"google.golang.org/protobuf/proto"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

// budgetCommands show and change the rebuild budgets
// (AdminService/GetRebuildBudgets, SetRebuildBudgets) and a request's
// priority (ReplacementService/SetReplacementPriority).
func budgetCommands() []command {
	return []command{{
		path: "budgets show", summary: "rebuild budgets: each limit, where it comes from, use now and work held back",
		max: 0,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, _ []string) error {
				c, err := e.admin()
				if err != nil {
					return err
				}
				resp, err := c.GetRebuildBudgets(ctx, &orchestratorv1.GetRebuildBudgetsRequest{})
				if err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				return e.renderBudgets(resp.Budgets, resp)
			}
		},
	}, {
		path: "budgets set", summary: "change rebuild budgets at runtime (0: unlimited; kept in the database across restarts and leaders)",
		max: 0,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			limits := map[string]*string{}
			for _, name := range []string{"rack-rebuilds", "source-sled-rebuilds", "dest-sled-rebuilds", "rack-steps"} {
				limits[name] = fs.String(name, "", "new limit for "+name+" (0: unlimited; absent: unchanged)")
			}
			reset := fs.Bool("reset", false, "drop every runtime value first: the orchestrators' configured limits apply again")
			return func(ctx context.Context, e *env, _ []string) error {
				req := &orchestratorv1.SetRebuildBudgetsRequest{Reset_: *reset}
				dst := map[string]**int32{
					"rack-rebuilds": &req.RackRebuilds, "source-sled-rebuilds": &req.SourceSledRebuilds,
					"dest-sled-rebuilds": &req.DestSledRebuilds, "rack-steps": &req.RackSteps,
				}
				for name, v := range limits {
					if *v == "" {
						continue
					}
					n, err := strconv.ParseInt(*v, 10, 32)
					if err != nil {
						return usagef("--%s: not a number: %q", name, *v)
					}
					*dst[name] = proto.Int32(int32(n))
				}
				if !*reset && req.RackRebuilds == nil && req.SourceSledRebuilds == nil && req.DestSledRebuilds == nil && req.RackSteps == nil {
					return usagef("set at least one of --rack-rebuilds, --source-sled-rebuilds, --dest-sled-rebuilds, --rack-steps, or --reset")
				}
				c, err := e.admin()
				if err != nil {
					return err
				}
				resp, err := c.SetRebuildBudgets(ctx, req)
				if err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				return e.renderBudgets(resp.Budgets, resp)
			}
		},
	}, {
		path: "replacements priority", args: "ID N", summary: "set a request's priority (higher is admitted first under the rebuild budgets; default 0)",
		min: 2, max: 2,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, args []string) error {
				p, err := strconv.ParseInt(args[1], 10, 32)
				if err != nil {
					return usagef("N: not a number: %q", args[1])
				}
				c, err := e.replacement()
				if err != nil {
					return err
				}
				resp, err := c.SetReplacementPriority(ctx, &orchestratorv1.SetReplacementPriorityRequest{ReplacementId: args[0], Priority: int32(p)})
				if err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				if e.json() {
					return e.printJSON(resp)
				}
				_, err = fmt.Fprintf(e.stdout, "request %s: priority %d (%d live copies when last counted; %s)\n", resp.Replacement.ReplacementId,
					resp.Replacement.Priority, resp.Replacement.LiveCopies, replacementState(resp.Replacement))
				return err
			}
		},
	}}
}

func (e *env) renderBudgets(budgets []*orchestratorv1.RebuildBudget, resp proto.Message) error {
	if e.json() {
		return e.printJSON(resp)
	}
	var rows [][]string
	for _, b := range budgets {
		limit := strconv.Itoa(int(b.Limit))
		if b.Limit == 0 {
			limit = "unlimited"
		}
		var sleds []string
		for sled, n := range b.InUseBySled {
			sleds = append(sleds, fmt.Sprintf("%s=%d", sled, n))
		}
		slices.Sort(sleds)
		by := ""
		for i, s := range sleds {
			if i > 0 {
				by += " "
			}
			by += s
		}
		rows = append(rows, []string{b.Name, limit, b.Source, strconv.Itoa(int(b.InUse)), strconv.Itoa(int(b.Waiting)), by})
	}
	return renderTable(e.stdout, []string{"BUDGET", "LIMIT", "FROM", "IN USE", "WAITING", "BY SLED"}, rows)
}
