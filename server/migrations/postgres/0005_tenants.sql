-- Schema version 5: organisation controls. A tenant is an organisation inside the trust
-- domain: the SPIFFE ID path prefixes it owns (whole segments; never overlapping another
-- tenant's, except the root prefix of `default`), its verified DNS domains, its admins and
-- quotas. Every entry and task belongs to exactly one tenant; what existed before goes to
-- `default`, which owns `/` (everything no other tenant owns), so an upgrade changes
-- nothing a user sees. Entries gain an owner, an optional expiry, an optional review period
-- (re-certified by `entry certify`) and a disabled state (not issued, kept for review).
-- Audit records gain their actor and tenant; both are covered by the record's hash when
-- present (records written before version 5 have neither).

CREATE TABLE tenants (
    name TEXT COLLATE "C" PRIMARY KEY,
    path_prefixes TEXT NOT NULL,
    admin_users TEXT NOT NULL,
    admin_groups TEXT NOT NULL,
    max_entries BIGINT,
    max_open_tasks BIGINT,
    review_every BIGINT,
    policy TEXT,
    created_at BIGINT NOT NULL,
    revision BIGINT NOT NULL
);
INSERT INTO tenants (name, path_prefixes, admin_users, admin_groups, created_at, revision)
    VALUES ('default', '["/"]', '[]', '[]', 0, 1);

-- One tenant per domain: a domain verified by one organisation cannot be claimed by another.
CREATE TABLE tenant_domains (
    domain TEXT COLLATE "C" PRIMARY KEY,
    tenant TEXT NOT NULL,
    challenge TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    verified_at BIGINT,
    checked_at BIGINT,
    failing_since BIGINT,
    last_error TEXT
);
CREATE INDEX tenant_domains_tenant ON tenant_domains (tenant);

ALTER TABLE entries ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE entries ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE entries ADD COLUMN expires_at BIGINT;
ALTER TABLE entries ADD COLUMN review_every BIGINT;
ALTER TABLE entries ADD COLUMN certified_at BIGINT;
ALTER TABLE entries ADD COLUMN disabled_at BIGINT;
ALTER TABLE entries ADD COLUMN disabled_reason TEXT;
CREATE INDEX entries_tenant ON entries (tenant);

ALTER TABLE tasks ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
CREATE INDEX tasks_tenant ON tasks (tenant);

ALTER TABLE audit_log ADD COLUMN actor TEXT;
ALTER TABLE audit_log ADD COLUMN tenant TEXT;
CREATE INDEX audit_tenant ON audit_log (tenant);
