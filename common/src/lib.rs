//! Tessera's shared identity vocabulary.
//!
//! `common` owns the types both sides of the trust boundary agree on: SPIFFE IDs and trust
//! domains, selectors and the subset-match rule, X.509-SVIDs and bundles, the rustls
//! verifiers that check a peer's SVID against a bundle, and the generated wire protocol
//! (the SPIFFE Workload API and Tessera's own node and admin APIs).
//!
//! It never opens sockets or files and never spawns tasks: everything here is pure, so both
//! the agent and the server (and fuzzers) can use it without dragging I/O along.
#![warn(missing_docs)]

pub mod bundle;
pub mod duration;
pub mod entry;
pub mod ids;
pub mod jwt;
pub mod proto;
pub mod selector;
pub mod spiffe_id;
pub mod svid;
pub mod task;
pub mod template;
pub mod tls;

pub use bundle::{Bundle, BundleCell};
pub use entry::RegistrationEntry;
pub use ids::{EntryId, TaskId, TemplateId};
pub use selector::{
    CgroupKey, ContainerKey, ContainerRuntime, K8sKey, NodeSelector, Selector, SelectorError,
    SelectorKey, SelectorKind, SelectorSet, SystemdKey, UnixKey,
};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{SvidError, X509Svid};
pub use template::{SpiffeIdTemplate, TemplateError};
