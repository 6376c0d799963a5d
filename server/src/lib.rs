//! tessera-server: the CA, node attestation, registration entries, the datastore and the
//! node and admin APIs.
//!
//! The server is the only holder of CA keys and the only place identities are decided: a
//! CSR contributes only its public key; SPIFFE ID, lifetime and SANs always come from
//! registration data. The binary (`main.rs`) only parses arguments and sets exit codes;
//! everything else lives here so tests can drive it.

pub(crate) mod api;
pub mod app;
pub mod audit;
pub mod bundle;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod config;
pub mod datastore;
pub mod domains;
pub mod events;
pub mod feed;
pub mod issuance;
pub mod jwt_keys;
pub mod metrics;
pub mod node_attestation;
pub mod node_groups;
pub mod policy;
pub mod rate_limit;
pub mod readiness;
pub mod registration;
pub mod relying_party;
pub mod review;
pub mod server_identity;
pub mod set_push;
pub mod status_list;
pub mod tasks;
pub mod templates;
pub mod tenants;
pub mod usage;
pub mod x509pop;
