-- A step's stash is its own (a fresh id per step saga), so the stash index
-- can say so. Declared unique and without the NULL rows of steps not yet
-- Complete, the planner knows a stash lookup finds at most one row and no
-- longer prefers a LIMIT 1 sequential scan for it (a cached generic plan
-- made when the table was small did that for every candidate of every step
-- insert batch: quadratic in a fan-out). It also spares the index the
-- entries of the updates that leave the stash NULL.
DROP INDEX ro_replacement_step_by_stash;
CREATE UNIQUE INDEX ro_replacement_step_by_stash ON ro_replacement_step (old_snapshot_volume_id)
	WHERE old_snapshot_volume_id IS NOT NULL;
