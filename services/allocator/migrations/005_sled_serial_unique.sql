-- A sled is known by its serial: AddSled requires one and is idempotent on
-- it (a second AddSled with the same serial returns the first sled). This
-- index is what makes that hold under concurrent calls.
--
-- Databases from before may hold sleds that break it: the same AddSled (no
-- sled_id) run twice made two sleds with one serial, and AddSled({}) made
-- sleds with none. Of each repeated serial the oldest sled keeps it and the
-- others get their id appended ("sled-0#<id>"), so the index can be built
-- and every sled stays distinguishable; empty serials, which AddSled no
-- longer accepts, stay as they are, outside the index.
UPDATE sled s SET serial = s.serial || '#' || s.id::text
WHERE s.serial <> ''
  AND EXISTS (SELECT 1 FROM sled o
              WHERE o.serial = s.serial AND (o.time_created, o.id) < (s.time_created, s.id));

CREATE UNIQUE INDEX sled_serial_unique ON sled (serial) WHERE serial <> '';
