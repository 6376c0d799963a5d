-- Schema version 13 (SQLite): shared token status lists (IETF OAuth Token Status List). Each
-- task created from version 13 on holds one entry, `status_idx` (0 to 65535), of list
-- `status_list`, drawn at random among the unused entries of the newest list; its
-- JWT-SVIDs name that entry, and the server publishes each list at /statuslists/<number>.
-- `status_lists` holds one row per list: its number (from 1, never reused), when it was
-- started (unix seconds) and how many entries were allocated in it; a new list starts
-- once the newest is half full, so indices stay unpredictable. No two tasks share an
-- entry (the unique index; NULLs are distinct). Tasks recorded before version 13 have
-- neither column set: they keep the list of their own that their tokens name.

CREATE TABLE status_lists (
    number INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    allocated INTEGER NOT NULL DEFAULT 0
);
ALTER TABLE tasks ADD COLUMN status_list INTEGER;
ALTER TABLE tasks ADD COLUMN status_idx INTEGER;
CREATE UNIQUE INDEX tasks_status_entry ON tasks (status_list, status_idx);
