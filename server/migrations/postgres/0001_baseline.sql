-- Schema version 1: the schema of the releases before versioned migrations, which
-- created it with `CREATE TABLE IF NOT EXISTS` at every start. A database holding these
-- tables but no version table is recorded as version 1 without running this script.
-- The same tables as SQLite's, with integers as BIGINT and flags as BOOLEAN.

-- `identity` is SHA-256 over (spiffe_id, parent_id, selectors): the rule "no two entries
-- with the same SPIFFE ID, parent and selectors" without PostgreSQL's limit on the size
-- of an index row (an entry may carry 64 selectors of 1 KiB).
CREATE TABLE entries (
    id TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    selectors TEXT NOT NULL,
    identity TEXT NOT NULL,
    x509_svid_ttl BIGINT NOT NULL,
    jwt_svid_ttl BIGINT NOT NULL,
    dns_names TEXT NOT NULL,
    jit BOOLEAN NOT NULL,
    hint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revision BIGINT NOT NULL,
    CONSTRAINT entries_identity UNIQUE (identity)
);
CREATE INDEX entries_parent ON entries (parent_id);
CREATE INDEX entries_spiffe ON entries (spiffe_id);

CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    task_id TEXT,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_task ON audit_log (task_id);

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    spiffe_id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    provisioned BOOLEAN NOT NULL,
    requester TEXT NOT NULL,
    approver TEXT NOT NULL,
    reason TEXT NOT NULL,
    ticket TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    activated_at BIGINT NOT NULL,
    deadline BIGINT NOT NULL,
    ended_at BIGINT NOT NULL,
    end_reason TEXT NOT NULL,
    decision TEXT NOT NULL
);
-- At most one open task per entry: the SVID of an entry names exactly one task.
CREATE UNIQUE INDEX tasks_open_entry ON tasks (entry_id)
    WHERE state IN ('pending_approval', 'active');
CREATE INDEX tasks_state ON tasks (state, deadline);

CREATE TABLE task_svids (
    serial TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    issuer_serial TEXT NOT NULL,
    not_after BIGINT NOT NULL
);
CREATE INDEX task_svids_task ON task_svids (task_id);

CREATE TABLE agents (
    spiffe_id TEXT PRIMARY KEY,
    serial TEXT NOT NULL,
    previous_serial TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    attested_at BIGINT NOT NULL,
    banned BOOLEAN NOT NULL,
    attestation_type TEXT NOT NULL
);
