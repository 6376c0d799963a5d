-- Schema version 2 (SQLite): entries are unique by their `identity` hash, as on
-- PostgreSQL, instead of by UNIQUE (spiffe_id, parent_id, selectors), so both backends
-- run the same statements and report a duplicate the same way; and entries are indexed
-- by SPIFFE ID, as on PostgreSQL.
--
-- SQLite cannot drop a table constraint: the table is rebuilt. `identity` is computed in
-- Rust (SQLite has no SHA-256): the copy holds a placeholder that cannot collide (the
-- entry's id), which the migration replaces in the same transaction.

CREATE TABLE entries_v2 (
    id TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    selectors TEXT NOT NULL,
    identity TEXT NOT NULL,
    x509_svid_ttl INTEGER NOT NULL,
    jwt_svid_ttl INTEGER NOT NULL,
    dns_names TEXT NOT NULL,
    jit INTEGER NOT NULL,
    hint TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    CONSTRAINT entries_identity UNIQUE (identity)
);
INSERT INTO entries_v2 (id, spiffe_id, parent_id, selectors, identity, x509_svid_ttl,
        jwt_svid_ttl, dns_names, jit, hint, created_at, revision)
    SELECT id, spiffe_id, parent_id, selectors, 'pending:' || id, x509_svid_ttl,
        jwt_svid_ttl, dns_names, jit, hint, created_at, revision
    FROM entries;
DROP TABLE entries;
ALTER TABLE entries_v2 RENAME TO entries;
CREATE INDEX entries_parent ON entries (parent_id);
CREATE INDEX entries_spiffe ON entries (spiffe_id);
