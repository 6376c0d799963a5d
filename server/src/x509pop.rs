//! x509pop node attestation: an agent holding a certificate and key issued by one of the
//! organisation's CAs (the server's configured trust anchors) proves possession of the key.
//!
//! Two steps over `AttestAgent`: the agent sends its chain (leaf first); the server verifies
//! it against the anchors (validity, digitalSignature key usage, clientAuth when an EKU is
//! present, path building) and answers with a fresh random nonce kept server-side, single
//! use, short-lived and bound to that leaf. The agent then sends the chain again with the
//! challenge ID and its signature over [`SIGNING_DOMAIN`] followed by the nonce; the server
//! takes the challenge (so a replay finds nothing), re-verifies the chain, checks the
//! signature with the leaf's public key, and issues the agent SVID as for join tokens.
//!
//! The agent ID comes from a template over validated certificate fields only
//! (`{fingerprint}`, `{subject_cn}`, `{serial}`), and must stay under
//! [`NODE_PREFIX`]. Unlike a join token, nothing is consumed by enrolling: an evicted
//! x509pop agent attests again with the same certificate.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use common::selector::{NodeSelector, X509PopKey};
use common::{SpiffeId, TrustDomain};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use sha2::{Digest as _, Sha256};

/// What the agent signs before the nonce, so that the signature can serve no other purpose.
pub const SIGNING_DOMAIN: &[u8] = b"tessera x509pop challenge v1\0";
/// Where x509pop agent IDs must live.
pub const NODE_PREFIX: &str = "/tessera/agent/";
/// The default agent ID template (as SPIRE's `x509pop/<sha1 fingerprint>`).
pub const DEFAULT_TEMPLATE: &str = "/tessera/agent/x509pop/{fingerprint}";
/// How long a challenge may be answered.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Most challenges outstanding at once (older ones are dropped beyond).
const MAX_PENDING: usize = 10_000;

/// Why an x509pop attestation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509PopError {
    /// The server has no x509pop trust anchors.
    #[error("x509pop node attestation is not enabled on this server")]
    Disabled,
    /// No certificate, or one that cannot be parsed.
    #[error("x509pop certificate chain is malformed: {0}")]
    Malformed(String),
    /// The chain does not verify to a configured anchor (other CA, expired, wrong usage).
    #[error("x509pop certificate is not trusted: {0}")]
    Untrusted(String),
    /// The leaf may not sign.
    #[error("x509pop certificate lacks the digitalSignature key usage")]
    NoDigitalSignature,
    /// Unknown, used or expired challenge, or one issued for another certificate.
    #[error("x509pop challenge is unknown, already answered, expired, or for another certificate")]
    BadChallenge,
    /// The signature does not verify with the leaf's key over this challenge's nonce.
    #[error(
        "x509pop signature does not prove possession of the certificate's key for this challenge"
    )]
    BadSignature,
    /// The template gives an unusable agent ID.
    #[error("x509pop agent ID: {0}")]
    BadAgentId(String),
}

/// A configured anchor: the certificate and its SHA-256 fingerprint.
#[derive(Debug, Clone)]
struct Anchor {
    der: CertificateDer<'static>,
    fingerprint: String,
}

/// A verified chain's facts, from which the agent ID and node selectors are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedNode {
    /// SHA-1 of the leaf's DER, lowercase hex (SPIRE's agent ID fingerprint).
    pub fingerprint: String,
    /// The leaf's subject common name, if any.
    pub subject_cn: Option<String>,
    /// The leaf's serial number, lowercase hex.
    pub serial: String,
    /// SHA-256 of the anchor the chain verified to, lowercase hex.
    pub ca_fingerprint: String,
    /// The leaf's DNS subject alternative names.
    pub dns_sans: Vec<String>,
}

impl VerifiedNode {
    /// The node selectors of this node (`x509pop:subject:cn:`, `x509pop:ca:fingerprint:`,
    /// `x509pop:san:dns:`), built through the shared vocabulary; a field that no selector
    /// can state (e.g. a CN with a control character) gives none.
    pub fn selectors(&self) -> Vec<NodeSelector> {
        let mut out = Vec::new();
        if let Some(cn) = &self.subject_cn {
            out.extend(NodeSelector::x509pop(X509PopKey::SubjectCn, cn).ok());
        }
        out.extend(NodeSelector::x509pop(X509PopKey::CaFingerprint, &self.ca_fingerprint).ok());
        for dns in &self.dns_sans {
            out.extend(NodeSelector::x509pop(X509PopKey::SanDns, dns).ok());
        }
        out
    }
}

#[derive(Debug)]
struct Pending {
    nonce: [u8; 32],
    leaf_sha256: [u8; 32],
    expires: Instant,
}

/// A challenge handed to an agent.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// Names the challenge in the answer.
    pub id: String,
    /// What the agent signs, after [`SIGNING_DOMAIN`].
    pub nonce: Vec<u8>,
}

/// The x509pop verifier: anchors, agent ID template and outstanding challenges.
#[derive(Debug)]
pub struct X509Pop {
    anchors: Vec<Anchor>,
    template: String,
    trust_domain: TrustDomain,
    pending: Mutex<HashMap<String, Pending>>,
    ttl: Duration,
}

fn single_segment(name: &str, value: &str) -> Result<String, X509PopError> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(X509PopError::BadAgentId(format!(
            "{{{name}}} = {value:?} is not a single path segment of letters, digits, '.', '-', '_'"
        )))
    }
}

impl X509Pop {
    /// A verifier trusting the certificates of the PEM bundle at `path`.
    pub fn from_pem_file(
        path: &Path,
        template: Option<&str>,
        trust_domain: TrustDomain,
    ) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let blocks = pem::parse_many(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let ders: Vec<Vec<u8>> = blocks
            .into_iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(pem::Pem::into_contents)
            .collect();
        Self::new(ders, template, trust_domain).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A verifier trusting `anchors` (DER), naming agents by `template` (the default
    /// when `None`). The template is checked now with sample values.
    pub fn new(
        anchors: Vec<Vec<u8>>,
        template: Option<&str>,
        trust_domain: TrustDomain,
    ) -> Result<Self, String> {
        if anchors.is_empty() {
            return Err("no CA certificate".to_owned());
        }
        let mut parsed = Vec::new();
        for der in anchors {
            let der = CertificateDer::from(der);
            webpki::anchor_from_trusted_cert(&der).map_err(|e| format!("CA certificate: {e}"))?;
            let fingerprint = hex::encode(Sha256::digest(der.as_ref()));
            parsed.push(Anchor { der, fingerprint });
        }
        let this = Self {
            anchors: parsed,
            template: template.unwrap_or(DEFAULT_TEMPLATE).to_owned(),
            trust_domain,
            pending: Mutex::new(HashMap::new()),
            ttl: CHALLENGE_TTL,
        };
        let sample = VerifiedNode {
            fingerprint: "0".repeat(40),
            subject_cn: Some("node".to_owned()),
            serial: "01".to_owned(),
            ca_fingerprint: "0".repeat(64),
            dns_sans: Vec::new(),
        };
        this.agent_id(&sample)
            .map_err(|e| format!("agent ID template: {e}"))?;
        Ok(this)
    }

    /// Sets how long challenges may be answered (tests).
    #[must_use]
    pub fn with_challenge_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Verifies `chain` (DER, leaf first) to the anchors at `now`.
    pub fn verify_chain(
        &self,
        chain: &[Vec<u8>],
        now: UnixTime,
    ) -> Result<VerifiedNode, X509PopError> {
        let (leaf_der, rest) = chain
            .split_first()
            .ok_or_else(|| X509PopError::Malformed("no certificate".to_owned()))?;
        let leaf_der = CertificateDer::from(leaf_der.as_slice());
        let intermediates: Vec<CertificateDer<'_>> = rest
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let anchors: Vec<TrustAnchor<'_>> = self
            .anchors
            .iter()
            .filter_map(|a| webpki::anchor_from_trusted_cert(&a.der).ok())
            .collect();
        let ee = webpki::EndEntityCert::try_from(&leaf_der)
            .map_err(|e| X509PopError::Malformed(e.to_string()))?;
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        let path = ee
            .verify_for_usage(
                algs.all,
                &anchors,
                &intermediates,
                now,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| X509PopError::Untrusted(format!("{e:?}")))?;
        let anchor = path.anchor();
        let ca_fingerprint = anchors
            .iter()
            .position(|a| {
                a.subject.as_ref() == anchor.subject.as_ref()
                    && a.subject_public_key_info.as_ref() == anchor.subject_public_key_info.as_ref()
            })
            .and_then(|i| self.anchors.get(i))
            .map(|a| a.fingerprint.clone())
            .ok_or_else(|| X509PopError::Untrusted("anchor not found".to_owned()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf_der.as_ref())
            .map_err(|e| X509PopError::Malformed(e.to_string()))?;
        let digital_signature = cert
            .key_usage()
            .map_err(|e| X509PopError::Malformed(e.to_string()))?
            .is_some_and(|ku| ku.value.digital_signature());
        if !digital_signature {
            return Err(X509PopError::NoDigitalSignature);
        }
        let subject_cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut dns_sans = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = name {
                    dns_sans.push((*d).to_owned());
                }
            }
        }
        let fingerprint = hex::encode(ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            leaf_der.as_ref(),
        ));
        Ok(VerifiedNode {
            fingerprint,
            subject_cn,
            serial: hex::encode(cert.raw_serial()),
            ca_fingerprint,
            dns_sans,
        })
    }

    /// The agent ID of `node` by the template; refused unless it is a valid SPIFFE ID of
    /// this trust domain under [`NODE_PREFIX`].
    pub fn agent_id(&self, node: &VerifiedNode) -> Result<SpiffeId, X509PopError> {
        let mut path = String::new();
        let mut rest = self.template.as_str();
        while let Some(open) = rest.find('{') {
            path.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| X509PopError::BadAgentId("unclosed '{' in template".to_owned()))?;
            let name = &after[..close];
            let value = match name {
                "fingerprint" => node.fingerprint.clone(),
                "serial" => node.serial.clone(),
                "subject_cn" => node.subject_cn.clone().ok_or_else(|| {
                    X509PopError::BadAgentId("the certificate has no subject CN".to_owned())
                })?,
                other => {
                    return Err(X509PopError::BadAgentId(format!(
                        "unknown template field {{{other}}} (known: fingerprint, subject_cn, serial)"
                    )));
                }
            };
            path.push_str(&single_segment(name, &value)?);
            rest = &after[close + 1..];
        }
        path.push_str(rest);
        if !path.starts_with(NODE_PREFIX) || path.len() == NODE_PREFIX.len() {
            return Err(X509PopError::BadAgentId(format!(
                "{path:?} is not under {NODE_PREFIX}"
            )));
        }
        SpiffeId::from_parts(&self.trust_domain, &path)
            .map_err(|e| X509PopError::BadAgentId(e.to_string()))
    }

    /// Step one: verifies `chain` and returns a fresh challenge bound to its leaf.
    pub fn challenge(&self, chain: &[Vec<u8>], now: UnixTime) -> Result<Challenge, X509PopError> {
        self.verify_chain(chain, now)?;
        let leaf = chain.first().map(Vec::as_slice).unwrap_or_default();
        let nonce: [u8; 32] = rand::random();
        let id = uuid::Uuid::new_v4().to_string();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let at = Instant::now();
        pending.retain(|_, p| p.expires > at);
        if pending.len() >= MAX_PENDING {
            // Drop the challenge closest to expiry, so one flood cannot block attestation
            // for more than a challenge lifetime.
            if let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, p)| p.expires)
                .map(|(k, _)| k.clone())
            {
                pending.remove(&oldest);
            }
        }
        pending.insert(
            id.clone(),
            Pending {
                nonce,
                leaf_sha256: Sha256::digest(leaf).into(),
                expires: at + self.ttl,
            },
        );
        Ok(Challenge {
            id,
            nonce: nonce.to_vec(),
        })
    }

    /// Step two: takes the challenge `challenge_id` (whatever the outcome: single use),
    /// re-verifies `chain`, checks `signature` over [`SIGNING_DOMAIN`] + nonce with the
    /// leaf's key, and returns the node and its agent ID.
    pub fn answer(
        &self,
        chain: &[Vec<u8>],
        challenge_id: &str,
        signature: &[u8],
        now: UnixTime,
    ) -> Result<(VerifiedNode, SpiffeId), X509PopError> {
        let taken = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(challenge_id)
            .ok_or(X509PopError::BadChallenge)?;
        let leaf = chain
            .first()
            .ok_or_else(|| X509PopError::Malformed("no certificate".to_owned()))?;
        let leaf_sha256: [u8; 32] = Sha256::digest(leaf).into();
        if taken.expires <= Instant::now() || taken.leaf_sha256 != leaf_sha256 {
            return Err(X509PopError::BadChallenge);
        }
        let node = self.verify_chain(chain, now)?;
        let leaf_der = CertificateDer::from(leaf.as_slice());
        let ee = webpki::EndEntityCert::try_from(&leaf_der)
            .map_err(|e| X509PopError::Malformed(e.to_string()))?;
        let mut message = SIGNING_DOMAIN.to_vec();
        message.extend_from_slice(&taken.nonce);
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        let verified = algs
            .all
            .iter()
            .any(|alg| ee.verify_signature(*alg, &message, signature).is_ok());
        if !verified {
            return Err(X509PopError::BadSignature);
        }
        let id = self.agent_id(&node)?;
        Ok((node, id))
    }

    /// The message an agent signs for `nonce`.
    pub fn signed_message(nonce: &[u8]) -> Vec<u8> {
        let mut message = SIGNING_DOMAIN.to_vec();
        message.extend_from_slice(nonce);
        message
    }
}

#[cfg(test)]
pub(crate) mod tests;
