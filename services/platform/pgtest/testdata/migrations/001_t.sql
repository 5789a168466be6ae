CREATE TABLE widget (id int PRIMARY KEY, name text NOT NULL);
