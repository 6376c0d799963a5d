-- Schema version 15 (SQLite): identity templates (see
-- `migrations/postgres/0015_entry_templates.sql`).

CREATE TABLE entry_templates (
    id TEXT PRIMARY KEY,
    spiffe_id_template TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    selectors TEXT NOT NULL,
    identity TEXT NOT NULL UNIQUE,
    x509_svid_ttl INTEGER NOT NULL,
    jwt_svid_ttl INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    owner TEXT NOT NULL,
    grace_seconds INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX entry_templates_parent ON entry_templates (parent_id);

ALTER TABLE entries ADD COLUMN template_id TEXT;
CREATE INDEX entries_template ON entries (template_id) WHERE template_id IS NOT NULL;

CREATE TABLE instances_seen (
    entry_id TEXT PRIMARY KEY,
    seen_at INTEGER NOT NULL
);
