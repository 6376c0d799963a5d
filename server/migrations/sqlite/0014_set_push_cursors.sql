-- Schema version 14 (SQLite): one SET push cursor per receiver, as on PostgreSQL (see
-- `migrations/postgres/0014_set_push_cursors.sql`). A SQLite datastore belongs to one
-- server; the table keeps the schema one across both backends and the cursor with the
-- audit log it points into.

CREATE TABLE set_push_cursors (
    receiver TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    holder TEXT NOT NULL,
    lease_until_ms INTEGER NOT NULL
);
