//! How the shared trust bundle's published material is stored (schema version 11):
//! statements and row mapping, as `records` does for the older tables.

use super::io::{Cells, Param};
use crate::datastore::{AuthorityKind, DatastoreError, PublishedAuthority};

pub(super) const PUT_AUTHORITY: &str = "INSERT INTO bundle_authorities (server_id, kind,
        key_id, state, material, not_after, published_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (server_id, kind, key_id) DO UPDATE SET state = excluded.state,
        material = excluded.material, not_after = excluded.not_after,
        published_at = excluded.published_at";
pub(super) const LIST_AUTHORITIES: &str = "SELECT * FROM bundle_authorities
    WHERE not_after > $1 ORDER BY server_id, kind, key_id";
pub(super) const PRUNE_AUTHORITIES: &str = "DELETE FROM bundle_authorities WHERE not_after <= $1";

pub(super) fn params(a: &PublishedAuthority) -> [Param<'_>; 7] {
    [
        Param::Text(&a.server_id),
        Param::Text(a.kind.as_str()),
        Param::Text(&a.key_id),
        Param::Text(&a.state),
        Param::Text(&a.material),
        Param::Int(a.not_after),
        Param::Int(a.published_at),
    ]
}

pub(super) fn authority(row: &impl Cells) -> Result<PublishedAuthority, DatastoreError> {
    let kind = row.text("kind")?;
    Ok(PublishedAuthority {
        server_id: row.text("server_id")?,
        kind: AuthorityKind::parse(&kind)
            .ok_or_else(|| DatastoreError::Corrupt(format!("authority kind {kind:?}")))?,
        key_id: row.text("key_id")?,
        state: row.text("state")?,
        material: row.text("material")?,
        not_after: row.int("not_after")?,
        published_at: row.int("published_at")?,
    })
}
