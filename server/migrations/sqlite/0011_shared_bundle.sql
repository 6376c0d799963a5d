-- Schema version 11 (SQLite): the shared trust bundle. Servers on one database each sign
-- under their own CA and JWT keys, and publish here the public half of every CA
-- certificate and JWT key they hold (from the moment it is prepared, before it signs
-- anything) so that every server serves the union of all of them as the trust bundle.
-- Public material only: keys never enter the database. `server_id` is the publishing
-- server's instance id; `kind` is `x509` (`material`: the PEM certificate, `key_id`: its
-- serial in hex) or `jwt` (`material`: the JWK, `key_id`: its `kid`); `state` is
-- `prepared`, `active` or `retired`; a row is trusted until `not_after` (unix seconds),
-- then pruned.

CREATE TABLE bundle_authorities (
    server_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('x509', 'jwt')),
    key_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('prepared', 'active', 'retired')),
    material TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    published_at INTEGER NOT NULL,
    PRIMARY KEY (server_id, kind, key_id)
);
CREATE INDEX bundle_authorities_not_after ON bundle_authorities (not_after);
