-- The leader-epoch fence every service database has (platform/fence).
CREATE TABLE fence (
	id    int PRIMARY KEY CHECK (id = 1),
	epoch bigint NOT NULL
);
INSERT INTO fence (id, epoch) VALUES (1, 0);
