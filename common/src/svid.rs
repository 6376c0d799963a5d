//! X.509-SVIDs: a certificate chain with its private key, checked against the SPIFFE
//! X.509-SVID profile when built.
//!
//! An [`X509Svid`] can only be constructed from material that satisfies what every real
//! client checks: exactly one URI SAN holding a SPIFFE ID with a path, `cA=false`,
//! keyUsage present with `digitalSignature` and without `keyCertSign`/`cRLSign`, and a
//! private key that matches the leaf. Its refresh time is a pure function of the
//! certificate, so the rotation schedule can be unit-tested without a clock.

use std::fmt;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// Why certificate material is not a usable X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// The chain has no certificate.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// A certificate is not valid DER X.509.
    #[error("certificate is not valid DER X.509: {0}")]
    BadCertificate(String),
    /// The leaf has no URI SAN.
    #[error("certificate has no URI subject alternative name")]
    NoUriSan,
    /// The leaf has more than one URI SAN.
    #[error("certificate has more than one URI subject alternative name")]
    MultipleUriSans,
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    BadSpiffeId(#[from] SpiffeIdError),
    /// A leaf SVID's SPIFFE ID must have a path.
    #[error("leaf SPIFFE ID has no path")]
    RootPathLeaf,
    /// The leaf is marked as a CA or is missing basicConstraints.
    #[error("leaf certificate must carry basicConstraints with cA=false")]
    LeafIsCa,
    /// keyUsage is missing, lacks digitalSignature, or allows certificate/CRL signing.
    #[error("leaf keyUsage must include digitalSignature and exclude keyCertSign and cRLSign")]
    BadKeyUsage,
    /// The private key is not a P-256 PKCS#8 key or does not match the leaf.
    #[error("private key does not match the leaf certificate")]
    KeyMismatch,
    /// The private key could not be parsed.
    #[error("private key is not valid PKCS#8: {0}")]
    BadKey(String),
    /// Key or CSR generation failed.
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
}

/// What the rest of the code needs to know about a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// The SPIFFE ID in the single URI SAN.
    pub spiffe_id: SpiffeId,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number, lowercase hex without leading zero bytes stripped.
    pub serial_hex: String,
    /// DNS SANs.
    pub dns_names: Vec<String>,
}

fn unix_to_system(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// The single SPIFFE ID in a certificate's URI SANs (leaf or CA).
pub fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let mut found = None;
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name {
                    if found.is_some() {
                        return Err(SvidError::MultipleUriSans);
                    }
                    found = Some(*uri);
                }
            }
        }
    }
    let uri = found.ok_or(SvidError::NoUriSan)?;
    Ok(SpiffeId::new(uri)?)
}

/// Parses a leaf SVID certificate and checks the SPIFFE X.509-SVID leaf profile.
pub fn parse_leaf(der: &[u8]) -> Result<LeafInfo, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::BadCertificate(e.to_string()))?;
    let spiffe_id = spiffe_id_of(&cert)?;
    if spiffe_id.is_trust_domain_id() {
        return Err(SvidError::RootPathLeaf);
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if !bc.value.ca => {}
        _ => return Err(SvidError::LeafIsCa),
    }
    match cert.key_usage() {
        Ok(Some(ku))
            if ku.value.digital_signature()
                && !ku.value.key_cert_sign()
                && !ku.value.crl_sign() => {}
        _ => return Err(SvidError::BadKeyUsage),
    }
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(d) = name {
                dns_names.push((*d).to_owned());
            }
        }
    }
    Ok(LeafInfo {
        spiffe_id,
        not_before: unix_to_system(cert.validity().not_before.timestamp()),
        not_after: unix_to_system(cert.validity().not_after.timestamp()),
        serial_hex: hex_lower(cert.raw_serial()),
        dns_names,
    })
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// An X.509-SVID: leaf-first chain (no root) plus its PKCS#8 private key.
#[derive(Clone, PartialEq, Eq)]
pub struct X509Svid {
    leaf: LeafInfo,
    chain: Vec<CertificateDer<'static>>,
    key_pkcs8: Vec<u8>,
}

impl fmt::Debug for X509Svid {
    // Hand-written so the private key can never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.leaf.spiffe_id.as_str())
            .field("serial", &self.leaf.serial_hex)
            .field("not_after", &self.leaf.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl X509Svid {
    /// Builds an SVID after checking the leaf profile and that `key_pkcs8` matches it.
    pub fn new(chain: Vec<CertificateDer<'static>>, key_pkcs8: Vec<u8>) -> Result<Self, SvidError> {
        let leaf_der = chain.first().ok_or(SvidError::EmptyChain)?;
        let leaf = parse_leaf(leaf_der)?;
        let key = rcgen::KeyPair::try_from(key_pkcs8.as_slice())
            .map_err(|e| SvidError::BadKey(e.to_string()))?;
        let (_, cert) = X509Certificate::from_der(leaf_der)
            .map_err(|e| SvidError::BadCertificate(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(SvidError::KeyMismatch);
        }
        Ok(Self {
            leaf,
            chain,
            key_pkcs8,
        })
    }

    /// The SPIFFE ID of the leaf.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.leaf.spiffe_id
    }

    /// Parsed facts about the leaf.
    pub fn leaf(&self) -> &LeafInfo {
        &self.leaf
    }

    /// Leaf-first DER chain (no root).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// PKCS#8 DER private key.
    pub fn key_pkcs8(&self) -> &[u8] {
        &self.key_pkcs8
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.leaf.not_after
    }

    /// Chain as concatenated DER, the Workload API encoding.
    pub fn chain_der_concat(&self) -> Vec<u8> {
        self.chain
            .iter()
            .flat_map(|c| c.as_ref().iter().copied())
            .collect()
    }

    /// Chain as PEM CERTIFICATE blocks.
    pub fn chain_pem(&self) -> String {
        let blocks: Vec<pem::Pem> = self
            .chain
            .iter()
            .map(|c| pem::Pem::new("CERTIFICATE", c.to_vec()))
            .collect();
        pem::encode_many(&blocks)
    }

    /// Private key as a PEM PRIVATE KEY block (PKCS#8).
    pub fn key_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PRIVATE KEY", self.key_pkcs8.clone()))
    }

    /// Whether the SVID is no longer valid at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.leaf.not_after
    }

    /// When this SVID should be renewed: see [`refresh_at`].
    pub fn refresh_at(&self) -> SystemTime {
        refresh_at(&self.leaf)
    }
}

/// When a certificate should be renewed: between 40 % and 50 % of its lifetime, with the
/// exact point derived from the serial number so that a fleet of SVIDs issued at the same
/// moment does not renew in lock-step (and so the schedule is a pure function).
pub fn refresh_at(leaf: &LeafInfo) -> SystemTime {
    let lifetime = leaf
        .not_after
        .duration_since(leaf.not_before)
        .unwrap_or(Duration::ZERO);
    let jitter_permille = leaf.serial_hex.bytes().fold(0u32, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(u32::from(b))
    }) % 100;
    // 500‰ minus up to 99‰ of jitter.
    let fraction = 500 - jitter_permille;
    leaf.not_before + lifetime.mul_f64(f64::from(fraction) / 1000.0)
}

/// A fresh ECDSA P-256 key pair for an SVID.
pub fn generate_key() -> Result<rcgen::KeyPair, SvidError> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| SvidError::KeyGeneration(e.to_string()))
}

/// A PKCS#10 CSR for `key`. It carries no names: the server decides the identity.
pub fn csr_for(key: &rcgen::KeyPair) -> Result<Vec<u8>, SvidError> {
    let params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| SvidError::KeyGeneration(e.to_string()))?;
    let csr = params
        .serialize_request(key)
        .map_err(|e| SvidError::KeyGeneration(e.to_string()))?;
    Ok(csr.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};

    fn leaf(
        uris: &[&str],
        is_ca: IsCa,
        usages: Vec<KeyUsagePurpose>,
    ) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let key = generate_key().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        p.is_ca = is_ca;
        p.key_usages = usages;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        (p.self_signed(&key).unwrap().der().clone(), key)
    }

    #[test]
    fn profile_checks() {
        let ds = || vec![KeyUsagePurpose::DigitalSignature];
        let (c, k) = leaf(&["spiffe://example.org/a"], IsCa::ExplicitNoCa, ds());
        let svid = X509Svid::new(vec![c.clone()], k.serialize_der()).unwrap();
        assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/a");
        assert!(!format!("{svid:?}").contains("BEGIN"));

        let other = generate_key().unwrap();
        assert_eq!(
            X509Svid::new(vec![c], other.serialize_der()),
            Err(SvidError::KeyMismatch)
        );
        let (c, _) = leaf(
            &["spiffe://example.org/a", "https://x"],
            IsCa::ExplicitNoCa,
            ds(),
        );
        assert_eq!(parse_leaf(&c), Err(SvidError::MultipleUriSans));
        let (c, _) = leaf(&["spiffe://example.org"], IsCa::ExplicitNoCa, ds());
        assert_eq!(parse_leaf(&c), Err(SvidError::RootPathLeaf));
        let (c, _) = leaf(&["spiffe://example.org/a"], IsCa::NoCa, ds());
        assert_eq!(parse_leaf(&c), Err(SvidError::LeafIsCa));
        let (c, _) = leaf(
            &["spiffe://example.org/a"],
            IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
            ds(),
        );
        assert_eq!(parse_leaf(&c), Err(SvidError::LeafIsCa));
        let (c, _) = leaf(
            &["spiffe://example.org/a"],
            IsCa::ExplicitNoCa,
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ],
        );
        assert_eq!(parse_leaf(&c), Err(SvidError::BadKeyUsage));
        let (c, _) = leaf(&[], IsCa::ExplicitNoCa, ds());
        assert_eq!(parse_leaf(&c), Err(SvidError::NoUriSan));
        assert_eq!(X509Svid::new(vec![], vec![]), Err(SvidError::EmptyChain));
    }

    #[test]
    fn refresh_between_forty_and_fifty_percent() {
        for i in 0..200u32 {
            let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
            let info = LeafInfo {
                spiffe_id: SpiffeId::new("spiffe://example.org/a").unwrap(),
                not_before: nb,
                not_after: nb + Duration::from_secs(3600),
                serial_hex: format!("{i:x}"),
                dns_names: vec![],
            };
            let at = refresh_at(&info).duration_since(nb).unwrap().as_secs();
            assert!((1440..=1800).contains(&at), "refresh at {at}s");
        }
    }

    #[test]
    fn csr_round_trips_public_key() {
        let key = generate_key().unwrap();
        let der = csr_for(&key).unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_der(&der.into()).unwrap();
        use rcgen::PublicKeyData as _;
        assert_eq!(parsed.public_key.der_bytes(), key.public_key_raw());
    }
}
