-- Schema version 12 (SQLite): the change feed's table, as on PostgreSQL (see
-- `migrations/postgres/0012_change_feed.sql`). A SQLite datastore belongs to one server,
-- which publishes every change to its agents in-process, so no trigger fills it here and
-- no one tails it: it keeps the schema one across both backends.

CREATE TABLE changes (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    entry_id TEXT,
    parent_id TEXT,
    previous_parent TEXT,
    origin TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX changes_at ON changes (at_ms);
