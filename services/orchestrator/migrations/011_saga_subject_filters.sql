-- ListSagas filters (AdminService/ListSagas: name, subject_id,
-- replacement_id) answered from indexes rather than by scanning every saga.
--
-- subject_parent_id is the record a saga's subject belongs to: for a
-- read-only replacement step's sagas (subject: the step) it is the step's
-- request, so "every saga of one request, its steps' included" is one
-- indexed lookup (subject_id = R OR subject_parent_id = R) however many
-- steps the request has. The engine only stores it; the tasks that create
-- step sagas set it (saga.WithSubjectParent). NULL for every other saga.
ALTER TABLE saga ADD COLUMN subject_parent_id text;

-- Sagas created before this migration: a step saga's subject is its step.
UPDATE saga s SET subject_parent_id = st.request_id::text
FROM ro_replacement_step st
WHERE s.subject_id = st.id::text;

CREATE INDEX saga_by_subject ON saga (subject_id, id) WHERE subject_id IS NOT NULL;
CREATE INDEX saga_by_subject_parent ON saga (subject_parent_id, id) WHERE subject_parent_id IS NOT NULL;
CREATE INDEX saga_by_name ON saga (name, id);
