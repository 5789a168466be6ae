-- PLACEHOLDER, to be deleted when branch i22-budgets is merged: migration
-- numbers are contiguous (tern refuses a gap), 010 is reserved for the
-- budgets work (010_rebuild_budgets.sql) and 011 is this branch's. Merging
-- both with this file left in makes tern fail loudly ("Duplicate migration
-- 10") at every start, so it cannot be forgotten silently.
SELECT 1;
