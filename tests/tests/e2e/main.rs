//! One end-to-end test binary; each module is a suite run against real processes.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code"
)]

mod attestation;
mod attestation_reuse;
mod audit;
mod break_glass;
mod ca_rotation;
mod cgroups;
mod cli;
mod client_python;
mod conn_limits;
mod deploy;
mod example_agentic;
mod failover;
mod frame_limits;
mod ha;
mod ha_outage;
mod interop_python;
mod interop_rust;
mod jwt_cli;
mod jwt_clients;
mod jwt_keys;
mod jwt_limits;
mod jwt_validate;
mod lifecycle;
mod metrics;
mod offboard;
mod postgres;
mod postgres_tls;
mod readiness;
mod relying_party;
mod resilience_health;
mod resilience_mtls;
mod resilience_outage;
mod resilience_shutdown;
mod resume;
mod set_push;
mod shared_authority;
mod smoke;
mod snapshot_parts;
mod socket_squatting;
mod task_binding;
mod task_scope;
mod tasks;
mod templates;
mod tenants;
mod upstream;
mod usage;
mod x509pop;
