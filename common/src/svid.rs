//! X.509-SVIDs: a certificate chain with its private key, checked against the SPIFFE
//! X.509-SVID profile when built.
//!
//! An [`X509Svid`] can only be constructed from material that satisfies what every real
//! client checks: exactly one URI SAN holding a SPIFFE ID with a path, `cA=false`,
//! keyUsage present with `digitalSignature` and without `keyCertSign`/`cRLSign`, and a
//! private key that matches the leaf. Its refresh time is a pure function of the
//! certificate, so the rotation schedule can be unit-tested without a clock.

use once_cell::race::OnceBox;
use std::fmt;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// The threads the machine runs at once, read once per process: how many chunks a batch
/// of keys, CSRs or signatures is split into. (`available_parallelism` reads the cgroup's
/// CPU quota files on every call, which showed in profiles of the signing path.)
pub fn parallel_chunks() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS
        .get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

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
    Ok(SpiffeId::new(uri_san(cert)?)?)
}

/// The single URI SAN, borrowed from the certificate's DER.
fn uri_san<'a>(cert: &X509Certificate<'a>) -> Result<&'a str, SvidError> {
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
    found.ok_or(SvidError::NoUriSan)
}

/// Parses a leaf SVID certificate and checks the SPIFFE X.509-SVID leaf profile.
pub fn parse_leaf(der: &[u8]) -> Result<LeafInfo, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::BadCertificate(e.to_string()))?;
    leaf_info(&cert)
}

fn leaf_info(cert: &X509Certificate<'_>) -> Result<LeafInfo, SvidError> {
    let spiffe_id = spiffe_id_of(cert)?;
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

/// The length of the DER element (tag, length and contents) at the start of `der`, if its
/// header is well formed and the element fits: how a concatenated chain is split again.
fn der_element_len(der: &[u8]) -> Option<usize> {
    let first = *der.get(1)?;
    let (header, contents) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        // Certificates are far below 4 GiB; indefinite (0x80) lengths are not DER.
        if n == 0 || n > 4 {
            return None;
        }
        let len = der
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (2 + n, len)
    };
    let total = header.checked_add(contents)?;
    (total <= der.len()).then_some(total)
}

/// Whether `chain` is a sequence of whole DER elements, ending exactly at its end.
fn splits_into_certificates(chain: &[u8]) -> bool {
    let mut rest = chain;
    while !rest.is_empty() {
        match der_element_len(rest) {
            Some(len) => rest = rest.get(len..).unwrap_or_default(),
            None => return false,
        }
    }
    true
}

/// The refresh jitter (0–99 ‰) derived from a serial number: see [`refresh_at`].
fn jitter_permille(serial_hex: &str) -> u16 {
    let h = serial_hex.bytes().fold(0u32, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(u32::from(b))
    }) % 100;
    // Below 100, so it always fits.
    u16::try_from(h).unwrap_or_default()
}

/// An X.509-SVID: leaf-first chain (no root) plus its PKCS#8 private key.
///
/// A cache holds thousands of these, so the representation is compact: the chain DER and
/// the key DER share one allocation, the few facts the rotation schedule and the Workload
/// API need on every pass (validity, refresh jitter, where the SPIFFE ID sits in the DER)
/// are kept as plain numbers, and the rest of the leaf ([`LeafInfo`]) is parsed on first
/// use only. Construction checks everything, so the later parse cannot fail.
#[derive(Clone)]
pub struct X509Svid {
    /// The chain DER (leaf first, certificates back to back), then the key DER.
    der: Box<[u8]>,
    /// Where the key starts in `der` (= the length of the chain DER).
    key_start: u32,
    /// Where the leaf's SPIFFE ID (its URI SAN, ASCII) sits in `der`.
    id_start: u32,
    id_len: u16,
    /// Refresh jitter from the serial number, in ‰ (see [`refresh_at`]).
    jitter_permille: u16,
    /// Validity, Unix seconds.
    not_before: i64,
    not_after: i64,
    /// The leaf's parsed facts, on first use. One pointer (a `OnceLock<Box<_>>` would be
    /// two words): with it the whole struct is 56 bytes, so an `Arc<X509Svid>` takes an
    /// 80-byte allocation instead of a 96-byte one, per cached SVID. Two threads asking at
    /// once may both parse; one result is kept and the other dropped (the parse is
    /// deterministic).
    leaf: OnceBox<LeafInfo>,
}

impl PartialEq for X509Svid {
    fn eq(&self, other: &Self) -> bool {
        // Everything else is derived from these bytes.
        self.key_start == other.key_start && self.der == other.der
    }
}

impl Eq for X509Svid {}

impl fmt::Debug for X509Svid {
    // Hand-written so the private key can never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("X509Svid");
        d.field("spiffe_id", &self.spiffe_id_str());
        if let Some(leaf) = self.leaf.get() {
            d.field("serial", &leaf.serial_hex);
        }
        d.field("not_after", &self.not_after())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The certificates of an SVID's chain, leaf first, borrowed from it.
#[derive(Debug, Clone)]
pub struct Chain<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Chain<'a> {
    type Item = CertificateDer<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        // The chain was split the same way when the SVID was built.
        let len = der_element_len(self.rest)?;
        let (cert, rest) = self.rest.split_at_checked(len)?;
        self.rest = rest;
        Some(CertificateDer::from(cert))
    }
}

impl Chain<'_> {
    /// The certificates as owned values, e.g. for a TLS client configuration.
    pub fn to_vec(&self) -> Vec<CertificateDer<'static>> {
        self.clone().map(CertificateDer::into_owned).collect()
    }
}

impl X509Svid {
    /// Builds an SVID after checking the leaf profile and that `key_pkcs8` matches it.
    pub fn new(chain: Vec<CertificateDer<'static>>, key_pkcs8: Vec<u8>) -> Result<Self, SvidError> {
        let chain_len: usize = chain.iter().map(|c| c.len()).sum();
        let mut der = Vec::with_capacity(chain_len + key_pkcs8.len());
        for cert in &chain {
            // Each certificate must be exactly one DER element, so that the chain can be
            // split again from the concatenation.
            if der_element_len(cert) != Some(cert.len()) {
                return Err(SvidError::BadCertificate(
                    "certificate is not exactly one DER element".into(),
                ));
            }
            der.extend_from_slice(cert);
        }
        der.extend_from_slice(&key_pkcs8);
        Self::build(der.into_boxed_slice(), chain_len)
    }

    /// Builds an SVID from the chain as concatenated DER (leaf first, the Workload API
    /// encoding) and the PKCS#8 DER key, with the checks of [`X509Svid::new`].
    pub fn from_der(chain_der: &[u8], key_pkcs8: &[u8]) -> Result<Self, SvidError> {
        let mut der = Vec::with_capacity(chain_der.len() + key_pkcs8.len());
        der.extend_from_slice(chain_der);
        der.extend_from_slice(key_pkcs8);
        Self::build(der.into_boxed_slice(), chain_der.len())
    }

    fn build(der: Box<[u8]>, key_start: usize) -> Result<Self, SvidError> {
        let (chain, key_pkcs8) = der
            .split_at_checked(key_start)
            .ok_or(SvidError::EmptyChain)?;
        if chain.is_empty() {
            return Err(SvidError::EmptyChain);
        }
        if !splits_into_certificates(chain) {
            return Err(SvidError::BadCertificate(
                "chain is not a sequence of DER certificates".into(),
            ));
        }
        let leaf_len = der_element_len(chain).ok_or(SvidError::EmptyChain)?;
        let leaf_der = chain.get(..leaf_len).ok_or(SvidError::EmptyChain)?;
        let (_, cert) = X509Certificate::from_der(leaf_der)
            .map_err(|e| SvidError::BadCertificate(e.to_string()))?;
        let leaf = leaf_info(&cert)?;
        let key =
            rcgen::KeyPair::try_from(key_pkcs8).map_err(|e| SvidError::BadKey(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(SvidError::KeyMismatch);
        }
        // The URI SAN is borrowed from `der`: its place there lets the ID be served without
        // keeping a parsed copy. SpiffeId keeps the URI verbatim, so the bytes are the ID.
        let uri = uri_san(&cert)?;
        let id_start = (uri.as_ptr() as usize).wrapping_sub(der.as_ptr() as usize);
        let too_big = || SvidError::BadCertificate("certificate too large".into());
        let (id_start, id_len) = (
            u32::try_from(id_start).map_err(|_| too_big())?,
            u16::try_from(uri.len()).map_err(|_| too_big())?,
        );
        let key_start = u32::try_from(key_start).map_err(|_| too_big())?;
        let svid = Self {
            der,
            key_start,
            id_start,
            id_len,
            jitter_permille: jitter_permille(&leaf.serial_hex),
            not_before: system_to_unix(leaf.not_before),
            not_after: system_to_unix(leaf.not_after),
            leaf: OnceBox::new(),
        };
        if svid.spiffe_id_str() != leaf.spiffe_id.as_str() {
            return Err(SvidError::BadCertificate(
                "URI SAN is not borrowed from the certificate".into(),
            ));
        }
        Ok(svid)
    }

    /// The SPIFFE ID of the leaf.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.leaf().spiffe_id
    }

    /// The SPIFFE ID of the leaf as text, read from the DER without parsing the leaf.
    pub fn spiffe_id_str(&self) -> &str {
        let start = self.id_start as usize;
        self.der
            .get(start..start + usize::from(self.id_len))
            .and_then(|b| std::str::from_utf8(b).ok())
            // Unreachable: checked against the parsed ID when built.
            .unwrap_or_default()
    }

    /// Parsed facts about the leaf (parsed on first use, then kept).
    pub fn leaf(&self) -> &LeafInfo {
        self.leaf.get_or_init(|| {
            #[expect(
                clippy::expect_used,
                reason = "the same bytes passed parse_leaf when the SVID was built"
            )]
            Box::new(parse_leaf(self.leaf_der()).expect("leaf was checked when built"))
        })
    }

    fn leaf_der(&self) -> &[u8] {
        let chain = self.chain_der();
        der_element_len(chain)
            .and_then(|len| chain.get(..len))
            .unwrap_or_default()
    }

    /// Leaf-first DER chain (no root), borrowed.
    pub fn chain(&self) -> Chain<'_> {
        Chain {
            rest: self.chain_der(),
        }
    }

    /// Chain as concatenated DER, leaf first: the Workload API encoding.
    pub fn chain_der(&self) -> &[u8] {
        self.der.get(..self.key_start as usize).unwrap_or_default()
    }

    /// PKCS#8 DER private key.
    pub fn key_pkcs8(&self) -> &[u8] {
        self.der.get(self.key_start as usize..).unwrap_or_default()
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        unix_to_system(self.not_before)
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        unix_to_system(self.not_after)
    }

    /// Chain as PEM CERTIFICATE blocks.
    pub fn chain_pem(&self) -> String {
        let blocks: Vec<pem::Pem> = self
            .chain()
            .map(|c| pem::Pem::new("CERTIFICATE", c.to_vec()))
            .collect();
        pem::encode_many(&blocks)
    }

    /// Private key as a PEM PRIVATE KEY block (PKCS#8).
    pub fn key_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PRIVATE KEY", self.key_pkcs8().to_vec()))
    }

    /// Whether the SVID is no longer valid at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after()
    }

    /// When this SVID should be renewed: see [`refresh_at`].
    pub fn refresh_at(&self) -> SystemTime {
        refresh_within(self.not_before(), self.not_after(), self.jitter_permille)
    }
}

fn system_to_unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// When a certificate should be renewed: between 40 % and 50 % of its lifetime, with the
/// exact point derived from the serial number so that a fleet of SVIDs issued at the same
/// moment does not renew in lock-step (and so the schedule is a pure function).
pub fn refresh_at(leaf: &LeafInfo) -> SystemTime {
    refresh_within(
        leaf.not_before,
        leaf.not_after,
        jitter_permille(&leaf.serial_hex),
    )
}

fn refresh_within(not_before: SystemTime, not_after: SystemTime, jitter: u16) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    // 500‰ minus up to 99‰ of jitter.
    let fraction = 500 - u32::from(jitter.min(99));
    not_before + lifetime.mul_f64(f64::from(fraction) / 1000.0)
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

    /// A CA and a leaf it signed, as DER, with the leaf's key.
    fn signed_chain(id: &str) -> (Vec<CertificateDer<'static>>, rcgen::KeyPair) {
        let ca_key = generate_key().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.subject_alt_names = vec![SanType::URI("spiffe://example.org".try_into().unwrap())];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, &ca_key);
        let key = generate_key().unwrap();
        let mut p = CertificateParams::new(vec!["web.example.org".to_owned()]).unwrap();
        p.subject_alt_names
            .push(SanType::URI(id.try_into().unwrap()));
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf = p.signed_by(&key, &issuer).unwrap();
        (vec![leaf.der().clone(), ca_cert.der().clone()], key)
    }

    #[test]
    fn one_buffer_keeps_chain_key_and_facts() {
        let (chain, key) = signed_chain("spiffe://example.org/web");
        let svid = X509Svid::new(chain.clone(), key.serialize_der()).unwrap();
        // The chain comes back certificate by certificate, and concatenated.
        assert_eq!(svid.chain().to_vec(), chain);
        assert_eq!(svid.chain().count(), 2);
        assert_eq!(svid.chain_der(), [&chain[0][..], &chain[1][..]].concat());
        assert_eq!(svid.key_pkcs8(), key.serialize_der());
        assert_eq!(svid.spiffe_id_str(), "spiffe://example.org/web");
        // Validity and refresh need no parse; the leaf is parsed on first use only.
        assert!(svid.leaf.get().is_none());
        let parsed = parse_leaf(&chain[0]).unwrap();
        assert_eq!(svid.not_before(), parsed.not_before);
        assert_eq!(svid.not_after(), parsed.not_after);
        assert_eq!(svid.refresh_at(), refresh_at(&parsed));
        assert!(svid.leaf.get().is_none(), "no accessor above parses");
        assert_eq!(svid.leaf(), &parsed);
        assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/web");
        assert_eq!(svid.leaf().dns_names, vec!["web.example.org".to_owned()]);
        // The Workload API encoding builds the same SVID.
        let again = X509Svid::from_der(svid.chain_der(), svid.key_pkcs8()).unwrap();
        assert_eq!(again, svid);
        assert_eq!(again.chain().to_vec(), chain);
        // The key never shows in Debug, parsed or not.
        for s in [&svid, &again] {
            let shown = format!("{s:?}");
            assert!(shown.contains("spiffe://example.org/web"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
            let key_hex = hex_lower(s.key_pkcs8());
            assert!(!shown.contains(&key_hex[key_hex.len() - 16..]), "{shown}");
        }
    }

    /// A cache holds one SVID per identity behind an `Arc`: at 56 bytes that allocation is
    /// 80 bytes with glibc (16 of counts, 56, 8 of chunk header), one size class below the
    /// 96 a 64-byte struct takes. The parsed leaf is made once however many threads ask,
    /// and a clone keeps it.
    #[test]
    fn an_svid_stays_small_and_parses_its_leaf_once_for_all_threads() {
        assert_eq!(size_of::<X509Svid>(), 56);
        let (chain, key) = signed_chain("spiffe://example.org/web");
        let svid = std::sync::Arc::new(X509Svid::new(chain.clone(), key.serialize_der()).unwrap());
        let seen: Vec<&LeafInfo> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4).map(|_| s.spawn(|| svid.leaf())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            seen.iter().all(|l| std::ptr::eq(*l, seen[0])),
            "one kept leaf"
        );
        assert_eq!(svid.leaf(), &parse_leaf(&chain[0]).unwrap());
        let copy = X509Svid::clone(&svid);
        assert_eq!(copy.leaf.get(), Some(svid.leaf()));
    }

    #[test]
    fn a_chain_must_split_into_whole_certificates() {
        let (chain, key) = signed_chain("spiffe://example.org/web");
        let der = [&chain[0][..], &chain[1][..]].concat();
        let k = key.serialize_der();
        // Truncated, or trailing bytes that are not a certificate.
        assert!(matches!(
            X509Svid::from_der(&der[..der.len() - 1], &k),
            Err(SvidError::BadCertificate(_))
        ));
        let mut trailing = der.clone();
        trailing.push(0x30);
        assert!(matches!(
            X509Svid::from_der(&trailing, &k),
            Err(SvidError::BadCertificate(_))
        ));
        let mut padded = chain[0].to_vec();
        padded.push(0);
        assert!(matches!(
            X509Svid::new(vec![CertificateDer::from(padded)], k.clone()),
            Err(SvidError::BadCertificate(_))
        ));
        assert_eq!(X509Svid::from_der(&[], &k), Err(SvidError::EmptyChain));
        // The wrong key is still refused when built from DER.
        let other = generate_key().unwrap().serialize_der();
        assert_eq!(
            X509Svid::from_der(&der, &other),
            Err(SvidError::KeyMismatch)
        );
    }

    #[test]
    fn der_element_lengths() {
        assert_eq!(der_element_len(&[0x30, 0x01, 0xaa]), Some(3));
        assert_eq!(der_element_len(&[0x30, 0x02, 0xaa]), None);
        assert_eq!(der_element_len(&[0x30, 0x81, 0x01, 0xaa]), Some(4));
        assert_eq!(der_element_len(&[0x30, 0x80, 0xaa]), None);
        assert_eq!(der_element_len(&[0x30]), None);
        let mut long = vec![0x30, 0x82, 0x01, 0x00];
        long.resize(4 + 256, 0);
        assert_eq!(der_element_len(&long), Some(260));
        assert!(splits_into_certificates(&[0x30, 0x00, 0x30, 0x01, 0x05]));
        assert!(!splits_into_certificates(&[0x30, 0x00, 0x30]));
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
