//! gRPC services and the one place domain errors become `tonic::Status`.
//!
//! Classification is by whose fault it is: the caller's (`InvalidArgument`,
//! `PermissionDenied`, `NotFound`, `AlreadyExists`, `Unauthenticated`) gets a precise
//! message, and so does a rate limit (`ResourceExhausted`, naming the limit), and a
//! datastore that does not answer (`Unavailable`, naming it); ours (`Internal`) gets a
//! generic one while the details go to the log.

pub(crate) mod admin;
pub(crate) mod node;
pub(crate) mod wire;

use tonic::Status;

use crate::bundle::RotateError;
use crate::datastore::DatastoreError;
use crate::issuance::IssuanceError;
use crate::node_attestation::NodeAttestationError;
use crate::registration::RegistrationError;
use crate::usage::UsageError;
use crate::x509pop::X509PopError;

/// Metadata of a `ResourceExhausted` answer: milliseconds until asking again can succeed.
pub(crate) const RETRY_AFTER_MS: &str = "retry-after-ms";

fn internal(what: &str, e: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %e, "{what} failed");
    Status::internal(format!("{what} failed; see the server log"))
}

impl From<DatastoreError> for Status {
    fn from(e: DatastoreError) -> Self {
        match e {
            DatastoreError::Conflict(m) => Self::already_exists(m),
            DatastoreError::NotFound(m) => Self::not_found(m),
            DatastoreError::Corrupt(_) | DatastoreError::Backend(_) => internal("datastore", &e),
            // Not the caller's fault nor a bug: say so, and that asking again may succeed.
            DatastoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "datastore unavailable");
                Self::unavailable(format!("{e}; retry when it answers again"))
            }
        }
    }
}

impl From<RegistrationError> for Status {
    fn from(e: RegistrationError) -> Self {
        match e {
            RegistrationError::InvalidSpiffeId { .. }
            | RegistrationError::ForeignTrustDomain { .. }
            | RegistrationError::ReservedSpiffeId(_)
            | RegistrationError::InvalidSelector { .. }
            | RegistrationError::InvalidNodeSelector { .. }
            | RegistrationError::NodeSelectorOnWorkload(_)
            | RegistrationError::BadNodeEntry(_)
            | RegistrationError::NoSelectors
            | RegistrationError::TooMany(..)
            | RegistrationError::BadTtl { .. }
            | RegistrationError::BadDnsName(_)
            | RegistrationError::HintTooLong
            | RegistrationError::BadHint
            | RegistrationError::BadTemplate(_) => Self::invalid_argument(e.to_string()),
            RegistrationError::NotEntitled(m) => Self::permission_denied(m),
            RegistrationError::NotFound(_) => Self::not_found(e.to_string()),
            RegistrationError::Duplicate(_) | RegistrationError::OtherTenant(_) => {
                Self::already_exists(e.to_string())
            }
            RegistrationError::OutsideTenant(_)
            | RegistrationError::BadGovernance(_)
            | RegistrationError::UnverifiedDnsName { .. } => Self::invalid_argument(e.to_string()),
            RegistrationError::Quota(m) => Self::resource_exhausted(m),
            RegistrationError::Forbidden(m) => Self::permission_denied(m),
            RegistrationError::Tenant(t) => t.into(),
            RegistrationError::Datastore(d) => d.into(),
        }
    }
}

impl From<crate::tenants::TenantError> for Status {
    fn from(e: crate::tenants::TenantError) -> Self {
        use crate::tenants::TenantError as T;
        match e {
            T::BadName(_)
            | T::BadPrefix { .. }
            | T::TooMany(_)
            | T::BadSetting(..)
            | T::Ambiguous(_)
            | T::BadPolicy(_) => Self::invalid_argument(e.to_string()),
            T::Overlap { .. }
            | T::RootPrefix
            | T::WouldMoveEntries(_)
            | T::StillOwns(_)
            | T::Changed(_) => Self::failed_precondition(e.to_string()),
            T::NotFound(_) => Self::not_found(e.to_string()),
            T::Exists(_) => Self::already_exists(e.to_string()),
            T::PlatformOnly(_) => Self::permission_denied(e.to_string()),
            T::Datastore(d) => d.into(),
        }
    }
}

impl From<crate::tasks::TaskError> for Status {
    fn from(e: crate::tasks::TaskError) -> Self {
        use crate::tasks::TaskError;
        match e {
            TaskError::Invalid(m) => Self::invalid_argument(m),
            TaskError::NotFound(m) => Self::not_found(m),
            TaskError::Denied(m) | TaskError::Forbidden(m) => Self::permission_denied(m),
            TaskError::WrongState(m) => Self::failed_precondition(m),
            TaskError::Conflict(m) => Self::already_exists(m),
            TaskError::Quota(m) => Self::resource_exhausted(m),
            TaskError::Registration(r) => r.into(),
            TaskError::Datastore(d) => d.into(),
        }
    }
}

impl From<RotateError> for Status {
    fn from(e: RotateError) -> Self {
        match e {
            RotateError::Ca(_) => internal("CA rotation", &e),
            RotateError::Datastore(d) => d.into(),
        }
    }
}

impl From<IssuanceError> for Status {
    fn from(e: IssuanceError) -> Self {
        match e {
            IssuanceError::TooManyCsrs | IssuanceError::NoAudience | IssuanceError::BadAudience => {
                Self::invalid_argument(e.to_string())
            }
            IssuanceError::NotEntitled | IssuanceError::NoGrant(_) => {
                Self::permission_denied(e.to_string())
            }
            // Nobody's fault, and it passes: the agent hands it to the workload as is, and
            // asks again for that identity only after `retry-after-ms`.
            IssuanceError::RateLimited(ref t) => {
                let mut status = Self::resource_exhausted(e.to_string());
                // Rounded up: asking after this is never too early.
                let ms =
                    u64::try_from(t.retry_after.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
                status
                    .metadata_mut()
                    .insert(RETRY_AFTER_MS, tonic::metadata::MetadataValue::from(ms));
                status
            }
            IssuanceError::Signing(_) => internal("JWT-SVID signing", &e),
            IssuanceError::Datastore(d) => d.into(),
        }
    }
}

impl From<UsageError> for Status {
    fn from(e: UsageError) -> Self {
        match e {
            UsageError::TooManyItems(_) | UsageError::BadTime { .. } => {
                Self::invalid_argument(e.to_string())
            }
            UsageError::Datastore(d) => d.into(),
        }
    }
}

impl From<NodeAttestationError> for Status {
    fn from(e: NodeAttestationError) -> Self {
        use crate::ca::CaError;
        match e {
            NodeAttestationError::UnknownToken | NodeAttestationError::ExpiredToken => {
                Self::permission_denied(e.to_string())
            }
            NodeAttestationError::BadAgentId(_) | NodeAttestationError::BadTtl(_) => {
                Self::invalid_argument(e.to_string())
            }
            NodeAttestationError::Banned(_) | NodeAttestationError::NotAttested(_) => {
                Self::permission_denied(e.to_string())
            }
            NodeAttestationError::NoClientCertificate => Self::unauthenticated(e.to_string()),
            NodeAttestationError::X509Pop(
                X509PopError::Malformed(_) | X509PopError::BadAgentId(_),
            ) => Self::invalid_argument(e.to_string()),
            NodeAttestationError::X509Pop(_) => Self::permission_denied(e.to_string()),
            NodeAttestationError::Ca(CaError::BadCsr(_) | CaError::UnsupportedKey) => {
                Self::invalid_argument(e.to_string())
            }
            NodeAttestationError::Ca(
                ref c @ (CaError::BadName(_)
                | CaError::Signing(_)
                | CaError::Storage(_)
                | CaError::Expired),
            ) => internal("signing", c),
            NodeAttestationError::Datastore(d) => d.into(),
        }
    }
}
