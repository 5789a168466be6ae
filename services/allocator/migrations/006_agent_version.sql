-- A version per simulated agent (dataset), changed by every change to
-- what the agent serves, so that a probe can tell "nothing on this agent
-- changed since I last read it" from one row instead of re-reading every
-- address. Versions come from one sequence: equal versions mean the same
-- agent in the same state, even across agents. A dataset with no row has
-- version 0 and has never had a change. The sequence starts at a random
-- point, so that versions read from an earlier database (one lost and
-- rebuilt) do not come back meaning something else.
--
-- The trigger covers every writer, the agents and anyone editing these
-- tables by hand. The agents' own transactions also take their versions
-- first, in dataset order (simagent.lockAgents), so that transactions
-- reaching several agents cannot deadlock on them.

CREATE SEQUENCE agent_version_seq;
SELECT setval('agent_version_seq', 1 + floor(random() * 4e15)::bigint);

CREATE TABLE agent_dataset_version (
	dataset_id uuid PRIMARY KEY REFERENCES crucible_dataset (id),
	version    bigint NOT NULL
);

INSERT INTO agent_dataset_version (dataset_id, version)
SELECT id, nextval('agent_version_seq') FROM crucible_dataset;

CREATE FUNCTION agent_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF TG_OP <> 'INSERT' THEN
		INSERT INTO agent_dataset_version (dataset_id, version)
		VALUES (OLD.dataset_id, nextval('agent_version_seq'))
		ON CONFLICT (dataset_id) DO UPDATE SET version = EXCLUDED.version;
	END IF;
	IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.dataset_id IS DISTINCT FROM OLD.dataset_id) THEN
		INSERT INTO agent_dataset_version (dataset_id, version)
		VALUES (NEW.dataset_id, nextval('agent_version_seq'))
		ON CONFLICT (dataset_id) DO UPDATE SET version = EXCLUDED.version;
	END IF;
	RETURN NULL;
END $$;

CREATE TRIGGER agent_region_version AFTER INSERT OR UPDATE OR DELETE ON agent_region
	FOR EACH ROW EXECUTE FUNCTION agent_bump_version();
CREATE TRIGGER agent_snapshot_version AFTER INSERT OR UPDATE OR DELETE ON agent_snapshot
	FOR EACH ROW EXECUTE FUNCTION agent_bump_version();
CREATE TRIGGER agent_port_version AFTER INSERT OR UPDATE OR DELETE ON agent_port
	FOR EACH ROW EXECUTE FUNCTION agent_bump_version();

-- TRUNCATE fires no row trigger: it changes every agent.
CREATE FUNCTION agent_bump_all_versions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO agent_dataset_version (dataset_id, version)
	SELECT id, nextval('agent_version_seq') FROM crucible_dataset
	ON CONFLICT (dataset_id) DO UPDATE SET version = EXCLUDED.version;
	RETURN NULL;
END $$;

CREATE TRIGGER agent_region_truncated AFTER TRUNCATE ON agent_region
	FOR EACH STATEMENT EXECUTE FUNCTION agent_bump_all_versions();
CREATE TRIGGER agent_snapshot_truncated AFTER TRUNCATE ON agent_snapshot
	FOR EACH STATEMENT EXECUTE FUNCTION agent_bump_all_versions();
CREATE TRIGGER agent_port_truncated AFTER TRUNCATE ON agent_port
	FOR EACH STATEMENT EXECUTE FUNCTION agent_bump_all_versions();
