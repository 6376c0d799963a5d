-- Schema version 16 (SQLite): node groups, as on PostgreSQL (see
-- `migrations/postgres/0016_node_groups.sql`). An agent keeps the node selectors its last
-- attestation verified (a sorted JSON array of strings; `[]` for join tokens and agents
-- attested before this version), and an entry may be a node entry: its SPIFFE ID names the
-- agents whose node selectors include all of its `selectors` (then node selectors).

ALTER TABLE agents ADD COLUMN selectors TEXT NOT NULL DEFAULT '[]';
ALTER TABLE entries ADD COLUMN node INTEGER NOT NULL DEFAULT 0;
