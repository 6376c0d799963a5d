-- Schema version 8 (SQLite): what a task's credentials are bound to on its node. `bind_kind`
-- is 'selectors' (every process matching the entry's selectors), 'process' (one process
-- instance) or 'tree' (that process and its descendants); for the last two `bind_pid`,
-- `bind_start_time` (clock ticks since boot, as the agent read it) and `bind_agent` (the
-- SPIFFE ID of the agent whose node runs the process) name the holder, and are NULL
-- otherwise. Tasks recorded before version 8 were bound by selectors.

ALTER TABLE tasks ADD COLUMN bind_kind TEXT NOT NULL DEFAULT 'selectors';
ALTER TABLE tasks ADD COLUMN bind_pid INTEGER;
ALTER TABLE tasks ADD COLUMN bind_start_time INTEGER;
ALTER TABLE tasks ADD COLUMN bind_agent TEXT;

-- Several tasks may be open on one entry at once, one per holder: the one-per-entry index
-- gives way to one per (entry, holder), a task bound by selectors counting as holder
-- ('', 0, 0). The server keeps a selectors-bound task alone on its entry and bounds how
-- many are open per entry (max_parallel_tasks_per_entry).
DROP INDEX tasks_open_entry;
CREATE UNIQUE INDEX tasks_open_holder ON tasks (entry_id, COALESCE(bind_agent, ''),
    COALESCE(bind_pid, 0), COALESCE(bind_start_time, 0))
    WHERE state IN ('pending_approval', 'active');
