-- Rebuild budgets and the order of admission (docs/operations.md, "Rebuild
-- budgets"; docs/replacement.md, "Budgets and the order of admission").

-- The operator's priority of a request (higher first; default 0), and the
-- live copies of its data its task last counted (fewer first; -1: not
-- counted yet). Both only order admission; neither changes what a request
-- does.
ALTER TABLE ro_replacement ADD COLUMN priority integer NOT NULL DEFAULT 0;
ALTER TABLE ro_replacement ADD COLUMN live_copies integer NOT NULL DEFAULT -1;
ALTER TABLE rw_replacement ADD COLUMN priority integer NOT NULL DEFAULT 0;
ALTER TABLE rw_replacement ADD COLUMN live_copies integer NOT NULL DEFAULT -1;

-- Limits set at runtime (AdminService/SetRebuildBudgets). A budget with no
-- row here takes the orchestrator's configured value. 0 is unlimited.
CREATE TABLE rebuild_budget (
	name          text PRIMARY KEY CHECK (name IN
		('rack_rebuilds', 'source_sled_rebuilds', 'dest_sled_rebuilds', 'rack_steps')),
	value         integer NOT NULL CHECK (value >= 0),
	time_modified timestamptz NOT NULL DEFAULT now()
);

-- One row per rebuild admitted: a read-only request's region clone
-- (kind 'clone', from its ro-replacement-start's allocation until that
-- saga commits or unwinds) or a rw request's repair (kind 'repair', from
-- its rw-replacement-start's allocation until the request reaches
-- ReplacementDone). A row counts only while its record is still in the
-- state that holds it (see store/budgets.go, slotHeldSQL): use is derived
-- from durable state, so it survives a change of leader, and a record that
-- moved on frees its slot in the same transaction that moved it, whichever
-- path it took. Rows that no longer count are deleted lazily.
CREATE TABLE rebuild_slot (
	record_id       uuid PRIMARY KEY,
	kind            text NOT NULL CHECK (kind IN ('clone', 'repair')),
	-- The saga that admitted it (its alloc_new_region node).
	saga_id         uuid NOT NULL,
	dest_sled_id    uuid NOT NULL,
	source_sled_ids uuid[] NOT NULL DEFAULT '{}',
	time_acquired   timestamptz NOT NULL DEFAULT now()
);
