//! Generated wire types and their conversions to domain types.
//!
//! The bindings under `proto/gen/` are produced from `proto/*.proto` by
//! `tests/bootstrap.rs` (never edited by hand; that test fails on drift). Wire types stay
//! here: the rest of the code converts them into validated domain types at the edge.

/// The SPIFFE Workload API (no protobuf package: paths are `/SpiffeWorkloadAPI/<Method>`).
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    missing_debug_implementations,
    clippy::all,
    clippy::use_self,
    clippy::allow_attributes_without_reason,
    clippy::clone_on_ref_ptr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::redundant_clone,
    clippy::manual_let_else,
    reason = "generated code"
)]
pub mod workload {
    include!("proto/gen/_.rs");
}

/// Tessera's node API (agent ↔ server) and admin API (operator ↔ server).
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    missing_debug_implementations,
    clippy::all,
    clippy::use_self,
    clippy::allow_attributes_without_reason,
    clippy::clone_on_ref_ptr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::redundant_clone,
    clippy::manual_let_else,
    reason = "generated code"
)]
pub mod tessera {
    include!("proto/gen/tessera.v1.rs");
}

use crate::bundle::Bundle;
use crate::jwt::JwtKey;
use crate::spiffe_id::{SpiffeIdError, TrustDomain};

impl From<&Bundle> for tessera::Bundle {
    fn from(b: &Bundle) -> Self {
        Self {
            trust_domain: b.trust_domain().name().to_owned(),
            x509_authorities: b.x509_authorities().iter().map(|c| c.to_vec()).collect(),
            sequence: b.sequence(),
            refresh_hint_seconds: b.refresh_hint_seconds(),
            jwt_authorities: b
                .jwt_authorities()
                .iter()
                .map(|k| tessera::JwtKey {
                    kid: k.kid.clone(),
                    public_key: k.public_key.clone(),
                    expires_at: k.expires_at,
                })
                .collect(),
        }
    }
}

impl TryFrom<tessera::Bundle> for Bundle {
    type Error = SpiffeIdError;

    fn try_from(b: tessera::Bundle) -> Result<Self, Self::Error> {
        let td = TrustDomain::new(&b.trust_domain)?;
        let jwt = b
            .jwt_authorities
            .into_iter()
            .map(|k| JwtKey {
                kid: k.kid,
                public_key: k.public_key,
                expires_at: k.expires_at,
            })
            .collect();
        Ok(Self::new(
            td,
            b.x509_authorities.into_iter().map(Into::into).collect(),
            b.sequence,
            b.refresh_hint_seconds,
        )
        .with_jwt_authorities(jwt))
    }
}
