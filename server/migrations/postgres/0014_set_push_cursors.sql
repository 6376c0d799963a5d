-- Schema version 14 (PostgreSQL): one SET push cursor per receiver, shared by the servers
-- on the datastore, so each security event reaches each receiver once across them rather
-- than once per server. `seq` is the last audit record delivered to the receiver or given
-- up; `holder` is the instance id of the server pushing to it and `lease_until_ms` when
-- its lease ends (unix milliseconds). A server takes the receiver only when it holds the
-- lease already or the lease ran out, renews it while it pushes, and moves `seq` only
-- while it holds it (compare-and-set on holder and `seq`, in the transaction that appends
-- the `set.delivered` or `set.abandoned` record).

CREATE TABLE set_push_cursors (
    receiver TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    holder TEXT NOT NULL,
    lease_until_ms BIGINT NOT NULL
);
