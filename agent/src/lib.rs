//! tessera-agent: the node agent. It attests to the server with a join token (then its
//! persisted SVID), keeps one push-based sync stream of the entries parented to it, signs
//! and rotates an SVID per entry (keys generated locally; only CSRs leave the node), and
//! serves the SPIFFE Workload API on a Unix socket to callers attested from the kernel's
//! view of them.
//!
//! The agent never signs anything and never decides identities: it only delivers what the
//! server issued, to the callers whose kernel-reported selectors match.

pub mod app;
pub(crate) mod attestation;
#[doc(hidden)]
pub use attestation::ProcessAttestor;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod holders;
pub(crate) mod metrics;
pub mod node_api;
pub mod node_identity;
pub(crate) mod rotation;
pub mod server_client;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod usage;
pub(crate) mod workload_api;
