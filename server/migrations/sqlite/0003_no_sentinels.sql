-- Schema version 3 (SQLite): what is unknown or not yet set is NULL, not 0 or '': a
-- task's approver (none yet), activation time (not active yet), end time and end reason
-- (still open); an agent's previous serial (never renewed).
--
-- SQLite cannot drop NOT NULL: both tables are rebuilt, converting the old placeholders.
-- An open task keeps no end; a final task keeps its end time and reason (possibly '').

CREATE TABLE tasks_v3 (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    spiffe_id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    provisioned INTEGER NOT NULL,
    requester TEXT NOT NULL,
    approver TEXT,
    reason TEXT NOT NULL,
    ticket TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    activated_at INTEGER,
    deadline INTEGER NOT NULL,
    ended_at INTEGER,
    end_reason TEXT,
    decision TEXT NOT NULL
);
INSERT INTO tasks_v3 (id, state, entry_id, spiffe_id, parent_id, provisioned, requester,
        approver, reason, ticket, scopes, created_at, activated_at, deadline, ended_at,
        end_reason, decision)
    SELECT id, state, entry_id, spiffe_id, parent_id, provisioned, requester,
        NULLIF(approver, ''), reason, ticket, scopes, created_at, NULLIF(activated_at, 0),
        deadline,
        CASE WHEN state IN ('pending_approval', 'active') THEN NULL ELSE ended_at END,
        CASE WHEN state IN ('pending_approval', 'active') THEN NULL ELSE end_reason END,
        decision
    FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_v3 RENAME TO tasks;
-- At most one open task per entry: the SVID of an entry names exactly one task.
CREATE UNIQUE INDEX tasks_open_entry ON tasks (entry_id)
    WHERE state IN ('pending_approval', 'active');
CREATE INDEX tasks_state ON tasks (state, deadline);

CREATE TABLE agents_v3 (
    spiffe_id TEXT PRIMARY KEY,
    serial TEXT NOT NULL,
    previous_serial TEXT,
    expires_at INTEGER NOT NULL,
    attested_at INTEGER NOT NULL,
    banned INTEGER NOT NULL,
    attestation_type TEXT NOT NULL
);
INSERT INTO agents_v3 (spiffe_id, serial, previous_serial, expires_at, attested_at, banned,
        attestation_type)
    SELECT spiffe_id, serial, NULLIF(previous_serial, ''), expires_at, attested_at, banned,
        attestation_type
    FROM agents;
DROP TABLE agents;
ALTER TABLE agents_v3 RENAME TO agents;
