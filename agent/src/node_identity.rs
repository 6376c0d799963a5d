//! The agent's own identity: bootstrapped with a join token or x509pop, persisted (key 0600) so a
//! restart needs no new token, and renewed over mutual TLS at half-life.
//!
//! Files in the data directory: `agent_svid.pem` (chain), `agent_svid.key` (PKCS#8, 0600)
//! and `bundle.pem` (the latest trust bundle, which authenticates the server after the
//! first contact).

use std::path::Path;
use std::time::SystemTime;

use common::proto::tessera::{AttestAgentRequest, RenewAgentRequest};
use common::{Bundle, BundleCell, TrustDomain, X509Svid};
use rustls_pki_types::CertificateDer;

use crate::node_api::{GrpcConnector, NodeApi, NodeConnector};
use daemon::state_file;

const SVID_FILE: &str = "agent_svid.pem";
const KEY_FILE: &str = "agent_svid.key";
const BUNDLE_FILE: &str = "bundle.pem";

/// Why the agent has no usable identity.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeIdentityError {
    /// No persisted SVID and no join token.
    #[error(
        "no agent SVID in {0} and no join token: run with --join-token (from `tessera-server token generate`) or --x509pop-cert and --x509pop-key"
    )]
    NeedToken(String),
    /// The persisted SVID expired.
    #[error("the persisted agent SVID expired at {0:?}; re-attest with a new --join-token")]
    Expired(SystemTime),
    /// No bundle to authenticate the server with.
    #[error(
        "no trust bundle: pass --trust-bundle (from `tessera-server bundle show`) for the first start"
    )]
    NoBundle,
    /// State files could not be read or written.
    #[error("agent state in {dir}: {message}")]
    Storage {
        /// The data directory.
        dir: String,
        /// What failed.
        message: String,
    },
    /// The server refused (bad token, evicted, banned).
    #[error("the server refused the agent: {0}")]
    Refused(String),
    /// The server could not be reached or failed.
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// The server's answer is unusable.
    #[error("invalid answer from the server: {0}")]
    BadResponse(String),
}

fn storage(dir: &Path, e: impl std::fmt::Display) -> NodeIdentityError {
    NodeIdentityError::Storage {
        dir: dir.display().to_string(),
        message: e.to_string(),
    }
}

/// Maps a node API error: refusals are final, everything else is worth retrying.
pub(crate) fn from_status(s: &tonic::Status) -> NodeIdentityError {
    match s.code() {
        tonic::Code::PermissionDenied
        | tonic::Code::Unauthenticated
        | tonic::Code::InvalidArgument => NodeIdentityError::Refused(s.message().to_owned()),
        _ => NodeIdentityError::Unreachable(format!("{}: {}", s.code(), s.message())),
    }
}

fn parse_chain(pem_text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let blocks = pem::parse_many(pem_text).map_err(|e| e.to_string())?;
    Ok(blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect())
}

/// Reads the persisted agent SVID, if any.
pub fn load_svid(dir: &Path) -> Result<Option<X509Svid>, NodeIdentityError> {
    let (cert, key) = (dir.join(SVID_FILE), dir.join(KEY_FILE));
    if !cert.exists() || !key.exists() {
        return Ok(None);
    }
    let chain = parse_chain(&std::fs::read_to_string(&cert).map_err(|e| storage(dir, e))?)
        .map_err(|e| storage(dir, e))?;
    let key_pem = pem::parse(std::fs::read(&key).map_err(|e| storage(dir, e))?)
        .map_err(|e| storage(dir, e))?;
    let svid = X509Svid::new(chain, key_pem.into_contents()).map_err(|e| storage(dir, e))?;
    Ok(Some(svid))
}

/// Persists the agent SVID (key 0600, written atomically).
pub fn save_svid(dir: &Path, svid: &X509Svid) -> Result<(), NodeIdentityError> {
    state_file::write_atomic(&dir.join(KEY_FILE), svid.key_pem().as_bytes(), 0o600)
        .map_err(|e| storage(dir, e))?;
    state_file::write_atomic(&dir.join(SVID_FILE), svid.chain_pem().as_bytes(), 0o644)
        .map_err(|e| storage(dir, e))
}

/// Removes the persisted SVID and cache (after the server evicted or banned us): nothing
/// this agent was given may be served again without a new attestation.
pub fn forget_svid(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(KEY_FILE));
    let _ = std::fs::remove_file(dir.join(SVID_FILE));
    let _ = std::fs::remove_file(dir.join(crate::cache::CACHE_FILE));
}

/// Whether an agent SVID is persisted.
pub fn has_svid(dir: &Path) -> bool {
    dir.join(KEY_FILE).exists()
}

/// Reads the persisted bundle, if any.
pub fn load_bundle(dir: &Path, td: &TrustDomain) -> Result<Option<Bundle>, NodeIdentityError> {
    let path = dir.join(BUNDLE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| storage(dir, e))?;
    Bundle::from_pem(td.clone(), &text)
        .map(Some)
        .map_err(|e| storage(dir, e))
}

/// Persists the bundle atomically.
pub fn save_bundle(dir: &Path, bundle: &Bundle) -> Result<(), NodeIdentityError> {
    state_file::write_atomic(&dir.join(BUNDLE_FILE), bundle.to_pem().as_bytes(), 0o644)
        .map_err(|e| storage(dir, e))
}

fn svid_from_response(
    chain: Vec<Vec<u8>>,
    key: &rcgen::KeyPair,
) -> Result<X509Svid, NodeIdentityError> {
    let chain = chain.into_iter().map(CertificateDer::from).collect();
    X509Svid::new(chain, key.serialize_der())
        .map_err(|e| NodeIdentityError::BadResponse(e.to_string()))
}

fn bundle_from_response(
    td: &TrustDomain,
    b: Option<common::proto::tessera::Bundle>,
) -> Result<Bundle, NodeIdentityError> {
    let b = b.ok_or_else(|| NodeIdentityError::BadResponse("no bundle".into()))?;
    let bundle = Bundle::try_from(b).map_err(|e| NodeIdentityError::BadResponse(e.to_string()))?;
    if bundle.trust_domain() != td || bundle.x509_authorities().is_empty() {
        return Err(NodeIdentityError::BadResponse(
            "bundle is empty or for another trust domain".into(),
        ));
    }
    Ok(bundle)
}

fn new_key_and_csr() -> Result<(rcgen::KeyPair, Vec<u8>), NodeIdentityError> {
    let key =
        common::svid::generate_key().map_err(|e| NodeIdentityError::BadResponse(e.to_string()))?;
    let csr =
        common::svid::csr_for(&key).map_err(|e| NodeIdentityError::BadResponse(e.to_string()))?;
    Ok((key, csr))
}

/// First contact: presents the join token and a CSR over server-authenticated TLS.
pub async fn attest_with_token(
    address: &str,
    td: &TrustDomain,
    bundle: &BundleCell,
    token: &str,
) -> Result<(X509Svid, Bundle), NodeIdentityError> {
    let connector = GrpcConnector {
        addresses: vec![address.to_owned()],
        preferred: Default::default(),
        trust_domain: td.clone(),
        bundle: bundle.clone(),
    };
    attest(&connector, td, token).await
}

/// [`attest_with_token`] through any connector.
pub async fn attest(
    connector: &dyn NodeConnector,
    td: &TrustDomain,
    token: &str,
) -> Result<(X509Svid, Bundle), NodeIdentityError> {
    let (key, csr) = new_key_and_csr()?;
    let node = connector
        .connect(None)
        .map_err(|e| NodeIdentityError::Unreachable(e.to_string()))?;
    let resp = node
        .attest_agent(AttestAgentRequest {
            join_token: token.to_owned(),
            csr,
            ..Default::default()
        })
        .await
        .map_err(|s| from_status(&s))?;
    let svid = svid_from_response(resp.svid_chain, &key)?;
    let bundle = bundle_from_response(td, resp.bundle)?;
    Ok((svid, bundle))
}

/// The message signed for an x509pop challenge (as the server's `x509pop` module).
const X509POP_SIGNING_DOMAIN: &[u8] = b"tessera x509pop challenge v1\0";

/// First contact with x509pop: sends the certificate chain at `cert_path`, signs the
/// server's challenge with the key at `key_path`, and sends the answer with a CSR (for a
/// new key: the certificate's key never becomes the SVID's).
pub async fn attest_x509pop(
    connector: &dyn NodeConnector,
    td: &TrustDomain,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(X509Svid, Bundle), NodeIdentityError> {
    use rcgen::SigningKey as _;
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| NodeIdentityError::Storage {
            dir: p.display().to_string(),
            message: e.to_string(),
        })
    };
    let chain: Vec<Vec<u8>> = parse_chain(&read(cert_path)?)
        .map_err(|e| NodeIdentityError::Storage {
            dir: cert_path.display().to_string(),
            message: e,
        })?
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    if chain.is_empty() {
        return Err(NodeIdentityError::Storage {
            dir: cert_path.display().to_string(),
            message: "no CERTIFICATE block".to_owned(),
        });
    }
    let pop_key =
        rcgen::KeyPair::from_pem(&read(key_path)?).map_err(|e| NodeIdentityError::Storage {
            dir: key_path.display().to_string(),
            message: e.to_string(),
        })?;
    let node = connector
        .connect(None)
        .map_err(|e| NodeIdentityError::Unreachable(e.to_string()))?;
    let challenge = node
        .attest_agent(AttestAgentRequest {
            x509pop_chain: chain.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| from_status(&s))?;
    if challenge.x509pop_challenge_id.is_empty() || challenge.x509pop_nonce.is_empty() {
        return Err(NodeIdentityError::BadResponse(
            "no x509pop challenge".to_owned(),
        ));
    }
    let mut message = X509POP_SIGNING_DOMAIN.to_vec();
    message.extend_from_slice(&challenge.x509pop_nonce);
    let signature = pop_key
        .sign(&message)
        .map_err(|e| NodeIdentityError::BadResponse(format!("signing the challenge: {e}")))?;
    let (key, csr) = new_key_and_csr()?;
    let resp = node
        .attest_agent(AttestAgentRequest {
            csr,
            x509pop_chain: chain,
            x509pop_challenge_id: challenge.x509pop_challenge_id,
            x509pop_signature: signature,
            ..Default::default()
        })
        .await
        .map_err(|s| from_status(&s))?;
    let svid = svid_from_response(resp.svid_chain, &key)?;
    let bundle = bundle_from_response(td, resp.bundle)?;
    Ok((svid, bundle))
}

/// Renews the agent SVID through `node`, a session authenticated by the current one.
pub async fn renew(
    node: &dyn NodeApi,
    td: &TrustDomain,
) -> Result<(X509Svid, Bundle), NodeIdentityError> {
    let (key, csr) = new_key_and_csr()?;
    let resp = node
        .renew_agent(RenewAgentRequest { csr })
        .await
        .map_err(|s| from_status(&s))?;
    let svid = svid_from_response(resp.svid_chain, &key)?;
    let bundle = bundle_from_response(td, resp.bundle)?;
    Ok((svid, bundle))
}
