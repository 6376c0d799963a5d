-- Schema version 2 (PostgreSQL): the text keys listings are ordered by compare as bytes,
-- as SQLite's BINARY collation does, so one ORDER BY gives one order on both backends
-- whatever the database's default collation. Equality is unchanged (a deterministic
-- collation compares equal only identical bytes); the indexes on these columns are
-- rebuilt, the rows are not rewritten.

ALTER TABLE entries ALTER COLUMN id TYPE TEXT COLLATE "C";
ALTER TABLE agents ALTER COLUMN spiffe_id TYPE TEXT COLLATE "C";
ALTER TABLE tasks ALTER COLUMN id TYPE TEXT COLLATE "C";
ALTER TABLE task_svids ALTER COLUMN serial TYPE TEXT COLLATE "C";
