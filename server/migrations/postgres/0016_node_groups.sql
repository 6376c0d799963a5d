-- Schema version 16 (PostgreSQL): node groups. An agent keeps the node selectors its last
-- attestation verified (`selectors`: a sorted JSON array of strings such as
-- `x509pop:subject:cn:web1`; `[]` for join tokens and agents attested before this
-- version), written with each attestation. An entry may be a node entry (`node`): its
-- parent is the server, its `selectors` are node selectors, and its SPIFFE ID names the
-- group of agents whose node selectors include all of them; workload entries parented to
-- that ID are served by every agent in the group.

ALTER TABLE agents ADD COLUMN selectors TEXT NOT NULL DEFAULT '[]';
ALTER TABLE entries ADD COLUMN node BOOLEAN NOT NULL DEFAULT FALSE;
