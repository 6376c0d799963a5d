-- Schema version 11 (PostgreSQL): the shared trust bundle. Servers on one database each
-- sign under their own CA and JWT keys, and publish here the public half of every CA
-- certificate and JWT key they hold (from the moment it is prepared, before it signs
-- anything) so that every server serves the union of all of them as the trust bundle.
-- Public material only: keys never enter the database. `server_id` is the publishing
-- server's instance id; `kind` is `x509` (`material`: the PEM certificate, `key_id`: its
-- serial in hex) or `jwt` (`material`: the JWK, `key_id`: its `kid`); `state` is
-- `prepared`, `active` or `retired`; a row is trusted until `not_after` (unix seconds),
-- then pruned. Keys compare as bytes, as on SQLite.

CREATE TABLE bundle_authorities (
    server_id TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL CHECK (kind IN ('x509', 'jwt')),
    key_id TEXT COLLATE "C" NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('prepared', 'active', 'retired')),
    material TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    published_at BIGINT NOT NULL,
    PRIMARY KEY (server_id, kind, key_id)
);
CREATE INDEX bundle_authorities_not_after ON bundle_authorities (not_after);
