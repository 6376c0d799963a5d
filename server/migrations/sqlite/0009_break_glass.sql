-- Schema version 9 (SQLite): break-glass tasks. `break_glass` marks a task that skipped
-- approval because policy allows break-glass for its requester; it stays flagged for
-- after-the-fact review until someone other than the requester acknowledges it:
-- `acknowledged_by` (`user:NAME`), `acknowledged_uid`, `acknowledged_at` (unix seconds) and
-- `acknowledgement_note` are all set together, and only on break-glass tasks. Tasks recorded
-- before version 9 were not break-glass.

ALTER TABLE tasks ADD COLUMN break_glass INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN acknowledged_by TEXT;
ALTER TABLE tasks ADD COLUMN acknowledged_uid INTEGER;
ALTER TABLE tasks ADD COLUMN acknowledged_at INTEGER;
ALTER TABLE tasks ADD COLUMN acknowledgement_note TEXT;
