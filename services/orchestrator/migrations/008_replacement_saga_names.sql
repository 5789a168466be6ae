-- The replacement sagas take the vocabulary of their tables and tasks:
-- ro-replacement-* for read-only targets (region snapshots and read-only
-- regions), rw-replacement-* for read-write regions. A saga row and its DAG
-- name its template, and every action node names "<template>.<action>", so
-- an unfinished saga written under an old name is renamed here and resumes
-- under the new one. Quoting each name with what follows it ('"' or '.')
-- keeps "rsr-step" from matching inside "rsr-step-garbage-collect".
WITH renamed(old, new) AS (VALUES
	('rsr-start', 'ro-replacement-start'),
	('rsr-garbage-collect', 'ro-replacement-garbage-collect'),
	('rsr-step', 'ro-replacement-step'),
	('rsr-step-garbage-collect', 'ro-replacement-step-garbage-collect'),
	('rsr-finish', 'ro-replacement-finish'),
	('rr-start', 'rw-replacement-start'),
	('rr-drive', 'rw-replacement-drive'),
	('rr-finish', 'rw-replacement-finish'))
UPDATE saga s SET
	name = r.new,
	dag = replace(replace(s.dag::text,
		'"' || r.old || '"', '"' || r.new || '"'),
		'"' || r.old || '.', '"' || r.new || '.')::jsonb
FROM renamed r
WHERE s.name = r.old;
