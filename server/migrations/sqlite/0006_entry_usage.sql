-- Schema version 6 (SQLite): how each registration entry is used, per agent, for the
-- access review. The server counts the SVIDs it issues for an entry (`issued`, and when
-- it last did); agents report, in batches, how many X.509-SVID messages and JWT-SVIDs
-- their Workload API delivered for it and how many of its JWT-SVIDs it validated, and
-- when it was last used. No foreign key to `entries`: deleting an entry never waits on
-- its usage, which may outlive it until pruned.

CREATE TABLE entry_usage (
    entry_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    last_issued_at INTEGER,
    issued INTEGER NOT NULL DEFAULT 0,
    last_used_at INTEGER,
    deliveries INTEGER NOT NULL DEFAULT 0,
    validations INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (entry_id, agent_id)
);
