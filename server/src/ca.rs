//! The X.509 certificate authority: the only place that touches the CA signing key.
//!
//! The CA key (ECDSA P-256) is generated on first start and kept in the data directory
//! (`ca.key`, mode 0600) beside its self-signed certificate (`ca.pem`). Signing takes only
//! the public key from a CSR; the SPIFFE ID, lifetime and DNS names always come from the
//! caller (registration data), never from the CSR. No certificate outlives the CA.

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

pub mod rotation;

/// How far a new certificate's notBefore is back-dated, to absorb clock skew. Short-lived
/// certificates are back-dated by at most a tenth of their TTL, so that the renewal point
/// (a fraction of notAfter - notBefore) stays after the moment of issuance.
const BACKDATE: Duration = Duration::from_secs(10);

/// Why a certificate could not be issued or the CA not loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaError {
    /// The CSR is malformed or its signature does not verify.
    #[error("invalid CSR: {0}")]
    BadCsr(String),
    /// The CSR's key is not ECDSA P-256.
    #[error("CSR key must be ECDSA P-256")]
    UnsupportedKey,
    /// A DNS name or SPIFFE ID could not be encoded.
    #[error("cannot encode certificate name: {0}")]
    BadName(String),
    /// Signing failed.
    #[error("BUG: signing failed: {0}")]
    Signing(String),
    /// The CA files could not be read or written.
    #[error("CA storage: {0}")]
    Storage(String),
    /// The CA has expired.
    #[error("the CA has expired")]
    Expired,
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf first (the CA itself is not included: it is in the bundle).
    pub chain: Vec<CertificateDer<'static>>,
    /// Serial, lowercase hex.
    pub serial_hex: String,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial (hex) of the CA that signed it.
    pub issuer_serial: String,
}

/// A revoked certificate to list on a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Serial, lowercase hex.
    pub serial_hex: String,
    /// When it was revoked.
    pub at: SystemTime,
}

/// The CA: key, certificate and trust domain.
pub struct Ca {
    trust_domain: TrustDomain,
    key: KeyPair,
    cert: CertificateDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial_hex: String,
    /// Certificates appended after each leaf (empty for a self-signed CA).
    chain_tail: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain.name())
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn io(e: impl std::fmt::Display) -> CaError {
    CaError::Storage(e.to_string())
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// `t` without its fraction of a second (as a certificate encodes it).
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and never a leading zero byte: a canonical 16-byte INTEGER.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Serial, notBefore and notAfter of a CA certificate.
fn parse_ca_cert(der: &[u8]) -> Result<(String, SystemTime, SystemTime), CaError> {
    let (_, parsed) = X509Certificate::from_der(der).map_err(io)?;
    let at =
        |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    Ok((
        hex::encode(parsed.raw_serial()),
        at(parsed.validity().not_before.timestamp()),
        at(parsed.validity().not_after.timestamp()),
    ))
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tessera");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(td: &TrustDomain) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(&format!("Tessera CA {}", td.name()));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names =
        vec![SanType::URI(td.id_string().try_into().map_err(
            |e: rcgen::Error| CaError::BadName(e.to_string()),
        )?)];
    Ok(p)
}

/// An existing CA, given as certificate and key files, that signs Tessera's CAs so they
/// become intermediates in the organisation's PKI. The trust bundle then carries the
/// upstream root(s) and every SVID chain carries Tessera's CA certificate.
pub struct UpstreamAuthority {
    cert: CertificateDer<'static>,
    key: KeyPair,
    /// Certificates between the signing certificate and the root (from the cert file).
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    not_after: SystemTime,
}

impl std::fmt::Debug for UpstreamAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamAuthority")
            .field("roots", &self.roots.len())
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn pem_certs(text: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs: Vec<CertificateDer<'static>> = pem::parse_many(text)
        .map_err(|e| CaError::Storage(format!("{what}: {e}")))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(CaError::Storage(format!("{what}: no CERTIFICATE block")));
    }
    Ok(certs)
}

impl UpstreamAuthority {
    /// Loads the upstream CA: `cert_file` holds its certificate first (then any
    /// intermediates up to, not including, the root); `key_file` its private key (PKCS#8
    /// PEM); `bundle_file` the root(s) to publish — needed unless the certificate is
    /// itself a self-signed root.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        bundle_file: Option<&Path>,
    ) -> Result<Self, CaError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| CaError::Storage(format!("{}: {e}", p.display())))
        };
        let mut chain = pem_certs(&read(cert_file)?, "upstream certificate")?;
        let cert = chain.remove(0);
        let key = KeyPair::from_pem(&read(key_file)?)
            .map_err(|e| CaError::Storage(format!("upstream key: {e}")))?;
        let (_, parsed) = X509Certificate::from_der(&cert).map_err(io)?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::Storage(
                "upstream key does not match the upstream certificate".into(),
            ));
        }
        let is_ca = matches!(parsed.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        let can_sign = matches!(parsed.key_usage(), Ok(Some(ku)) if ku.value.key_cert_sign())
            || matches!(parsed.key_usage(), Ok(None));
        if !is_ca || !can_sign {
            return Err(CaError::Storage(
                "upstream certificate is not a CA allowed to sign certificates".into(),
            ));
        }
        let self_signed = parsed.subject().as_raw() == parsed.issuer().as_raw();
        let roots = match bundle_file {
            Some(b) => pem_certs(&read(b)?, "upstream bundle")?,
            None if self_signed && chain.is_empty() => vec![cert.clone()],
            None => {
                return Err(CaError::Storage(
                    "upstream certificate is not a self-signed root: give upstream_bundle with the root(s)".into(),
                ));
            }
        };
        let secs = parsed.validity().not_after.timestamp();
        Ok(Self {
            not_after: SystemTime::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(secs).unwrap_or(0)),
            cert,
            key,
            intermediates: chain,
            roots,
        })
    }

    /// The roots published in the trust bundle.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
}

impl Ca {
    /// A CA from its PEM key and certificate (as stored by [`rotation::CaSet`]).
    pub fn from_pem(
        td: &TrustDomain,
        key_pem: &str,
        cert_pem: &str,
        upstream: Option<&UpstreamAuthority>,
    ) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(io)?;
        let cert = pem::parse(cert_pem).map_err(io)?;
        Self::from_parts(
            td.clone(),
            key,
            CertificateDer::from(cert.into_contents()),
            upstream,
        )
    }

    /// Whether this CA was issued the way the configuration asks: self-signed without an
    /// upstream, signed by the upstream certificate with one.
    pub fn matches(&self, upstream: Option<&UpstreamAuthority>) -> bool {
        let Ok((_, parsed)) = X509Certificate::from_der(&self.cert) else {
            return false;
        };
        match upstream {
            None => parsed.subject().as_raw() == parsed.issuer().as_raw(),
            Some(up) => X509Certificate::from_der(&up.cert)
                .is_ok_and(|(_, u)| u.subject().as_raw() == parsed.issuer().as_raw()),
        }
    }

    /// The private key as PEM (for the 0600 state file only).
    pub(crate) fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.cert.to_vec()))
    }

    /// A fresh CA valid for `ttl`: self-signed, or signed by `upstream` (and then never
    /// outliving it).
    pub fn generate(
        td: &TrustDomain,
        ttl: Duration,
        upstream: Option<&UpstreamAuthority>,
    ) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let now = SystemTime::now();
        let mut p = ca_params(td)?;
        p.not_before = to_offset(now - BACKDATE);
        let mut not_after = now + ttl;
        p.serial_number = Some(random_serial());
        let cert = match upstream {
            None => {
                p.not_after = to_offset(not_after);
                p.self_signed(&key)
            }
            Some(up) => {
                if not_after > up.not_after {
                    tracing::warn!("CA lifetime cut short by the upstream certificate's expiry");
                    not_after = up.not_after;
                }
                p.not_after = to_offset(not_after);
                p.use_authority_key_identifier_extension = true;
                let issuer = Issuer::from_ca_cert_der(&up.cert, &up.key)
                    .map_err(|e| CaError::Signing(e.to_string()))?;
                p.signed_by(&key, &issuer)
            }
        }
        .map_err(|e| CaError::Signing(e.to_string()))?;
        Self::from_parts(td.clone(), key, cert.der().clone(), upstream)
    }

    fn from_parts(
        trust_domain: TrustDomain,
        key: KeyPair,
        cert: CertificateDer<'static>,
        upstream: Option<&UpstreamAuthority>,
    ) -> Result<Self, CaError> {
        let (_, parsed) = X509Certificate::from_der(&cert).map_err(io)?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::Storage("ca.key does not match ca.pem".to_owned()));
        }
        let at = |secs: i64| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
        };
        let not_after = at(parsed.validity().not_after.timestamp());
        let not_before = at(parsed.validity().not_before.timestamp());
        let serial_hex = hex::encode(parsed.raw_serial());
        // Below an upstream CA, SVID chains must carry our certificate (and any upstream
        // intermediates) so relying parties can build the path to the published root.
        let chain_tail = match upstream {
            None => Vec::new(),
            Some(up) => std::iter::once(cert.clone())
                .chain(up.intermediates.iter().cloned())
                .collect(),
        };
        Ok(Self {
            trust_domain,
            key,
            cert,
            not_before,
            not_after,
            serial_hex,
            chain_tail,
        })
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// When the CA expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Start of validity (back-dated a little at creation).
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// Serial number, lowercase hex.
    pub fn serial_hex(&self) -> &str {
        &self.serial_hex
    }

    /// Signs an X.509-SVID for `spiffe_id` with the public key of `csr_der`.
    ///
    /// The lifetime is `ttl`, cut to the CA's own expiry (a warning is logged when that
    /// happens; start-up validation keeps configured TTLs below the CA lifetime).
    pub fn sign_svid(
        &self,
        csr_der: &[u8],
        spiffe_id: &SpiffeId,
        ttl: Duration,
        dns_names: &[String],
    ) -> Result<Issued, CaError> {
        self.sign_svid_for_task(csr_der, spiffe_id, ttl, dns_names, None)
    }

    /// [`Ca::sign_svid`] for an SVID issued under a task: the Subject names the task
    /// (`OU=task:<id>`, see [`common::task`]) so a relying party can tie a call to it.
    pub fn sign_svid_for_task(
        &self,
        csr_der: &[u8],
        spiffe_id: &SpiffeId,
        ttl: Duration,
        dns_names: &[String],
        task_id: Option<&common::TaskId>,
    ) -> Result<Issued, CaError> {
        self.sign_svid_with_crl(csr_der, spiffe_id, ttl, dns_names, task_id, None)
    }

    /// [`Ca::sign_svid_for_task`], with a CRL Distribution Points extension naming
    /// `crl_url` when given: where relying parties fetch this CA's CRL, so TLS stacks that
    /// check CRLs refuse the SVID once its task has ended.
    pub fn sign_svid_with_crl(
        &self,
        csr_der: &[u8],
        spiffe_id: &SpiffeId,
        ttl: Duration,
        dns_names: &[String],
        task_id: Option<&common::TaskId>,
        crl_url: Option<&str>,
    ) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::UnsupportedKey);
        }
        let now = SystemTime::now();
        if now >= self.not_after {
            return Err(CaError::Expired);
        }
        let mut not_after = now + ttl;
        if not_after > self.not_after {
            tracing::warn!(
                spiffe_id = %spiffe_id,
                requested_ttl_secs = ttl.as_secs(),
                "SVID lifetime cut short by the CA's expiry"
            );
            not_after = self.not_after;
        }
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(dns_names.first().map_or("", String::as_str));
        if dns_names.is_empty() {
            p.distinguished_name.remove(DnType::CommonName);
        }
        if let Some(task_id) = task_id {
            p.distinguished_name.push(
                DnType::OrganizationalUnitName,
                common::task::subject_ou(task_id.as_str()),
            );
        }
        // Certificates carry whole seconds: what is encoded, and so what is returned.
        let not_after = whole_seconds(not_after);
        p.not_before = to_offset(now - BACKDATE.min(ttl / 10));
        p.not_after = to_offset(not_after);
        let serial = random_serial();
        let serial_hex = hex::encode(serial.as_ref());
        p.serial_number = Some(serial);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let mut sans =
            vec![SanType::URI(spiffe_id.to_string().try_into().map_err(
                |e: rcgen::Error| CaError::BadName(e.to_string()),
            )?)];
        for name in dns_names {
            sans.push(SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|e: rcgen::Error| CaError::BadName(e.to_string()))?,
            ));
        }
        p.subject_alt_names = sans;
        if let Some(url) = crl_url {
            p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                uris: vec![url.to_owned()],
            }];
        }
        let issuer_params = ca_params(&self.trust_domain)?;
        let issuer = Issuer::from_params(&issuer_params, &self.key);
        let cert = p
            .signed_by(&csr.public_key, &issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        // The serial and notAfter are the ones just encoded (the serial is a canonical
        // positive INTEGER, see `random_serial`): the leaf need not be parsed back.
        let mut chain = Vec::with_capacity(1 + self.chain_tail.len());
        chain.push(cert.der().clone());
        chain.extend(self.chain_tail.iter().cloned());
        Ok(Issued {
            chain,
            serial_hex,
            not_after,
            issuer_serial: self.serial_hex.clone(),
        })
    }

    /// A DER CRL signed by this CA listing `revoked` (certificates this CA issued), valid
    /// until `next_update`.
    pub fn sign_crl(
        &self,
        revoked: &[Revoked],
        crl_number: u64,
        next_update: SystemTime,
    ) -> Result<Vec<u8>, CaError> {
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                let bytes =
                    hex::decode(&r.serial_hex).map_err(|e| CaError::Signing(e.to_string()))?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: to_offset(r.at),
                    reason_code: Some(rcgen::RevocationReason::CessationOfOperation),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: to_offset(SystemTime::now() - BACKDATE),
            next_update: to_offset(next_update),
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let issuer_params = ca_params(&self.trust_domain)?;
        let issuer = Issuer::from_params(&issuer_params, &self.key);
        let crl = params
            .signed_by(&issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(crl.der().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::svid::{csr_for, generate_key, parse_leaf};
    use common::{Bundle, BundleCell, X509Svid};

    #[test]
    fn signs_profile_conformant_svids_that_verify() {
        let td = TrustDomain::new("example.org").unwrap();
        let ca = Ca::generate(&td, Duration::from_secs(86400), None).unwrap();
        let again = Ca::from_pem(&td, &ca.key_pem(), &ca.cert_pem(), None).unwrap();
        assert_eq!(ca.certificate(), again.certificate());
        let other = Ca::generate(&td, Duration::from_secs(86400), None).unwrap();
        assert!(
            Ca::from_pem(&td, &other.key_pem(), &ca.cert_pem(), None).is_err(),
            "key must match"
        );
        assert!(!format!("{ca:?}").contains("PRIVATE"));

        let key = generate_key().unwrap();
        let csr = csr_for(&key).unwrap();
        let id = SpiffeId::new("spiffe://example.org/web").unwrap();
        let issued = ca
            .sign_svid(
                &csr,
                &id,
                Duration::from_secs(600),
                &["web.example.org".into()],
            )
            .unwrap();
        let svid = X509Svid::new(issued.chain.clone(), key.serialize_der()).unwrap();
        assert_eq!(svid.spiffe_id(), &id);
        // What is returned is what the certificate says.
        assert_eq!(issued.serial_hex, svid.leaf().serial_hex);
        assert_eq!(issued.not_after, svid.leaf().not_after);
        assert_eq!(issued.issuer_serial, ca.serial_hex());
        assert_eq!(svid.leaf().dns_names, vec!["web.example.org".to_owned()]);
        let life = svid
            .leaf()
            .not_after
            .duration_since(svid.leaf().not_before)
            .unwrap();
        assert_eq!(life, Duration::from_secs(610));
        let bundle = BundleCell::new(Bundle::new(td, vec![ca.certificate().clone()], 1, 0)).get();
        let got = common::tls::verify_svid_chain(
            &issued.chain[0],
            &[],
            &bundle,
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
        )
        .unwrap();
        assert_eq!(got, id);

        // A short TTL is back-dated by a tenth only, so renewal falls after issuance.
        let short = ca
            .sign_svid(&csr, &id, Duration::from_secs(6), &[])
            .unwrap();
        let leaf = parse_leaf(&short.chain[0]).unwrap();
        let life = leaf.not_after.duration_since(leaf.not_before).unwrap();
        assert!(
            life <= Duration::from_secs(7) && life >= Duration::from_secs(6),
            "{life:?}"
        );
        assert!(common::svid::refresh_at(&leaf) > SystemTime::now() - Duration::from_secs(1));

        // Lifetime never exceeds the CA's.
        let long = ca
            .sign_svid(&csr, &id, Duration::from_secs(10 * 86400), &[])
            .unwrap();
        assert!(long.not_after <= ca.not_after());

        // Garbage CSR and a CSR with a tampered signature are refused.
        assert!(matches!(
            ca.sign_svid(b"junk", &id, Duration::from_secs(60), &[]),
            Err(CaError::BadCsr(_))
        ));
        let mut tampered = csr;
        let n = tampered.len();
        tampered[n - 3] ^= 0x01;
        assert!(matches!(
            ca.sign_svid(&tampered, &id, Duration::from_secs(60), &[]),
            Err(CaError::BadCsr(_))
        ));
    }

    /// Many CSRs are signed on several threads; each answer is in its request's place,
    /// each refusal too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_is_signed_in_request_order_with_refusals_in_place() {
        let td = TrustDomain::new("example.org").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let set = std::sync::Arc::new(
            rotation::CaSet::load_or_create(
                dir.path(),
                &td,
                Duration::from_secs(86400),
                None,
                SystemTime::now(),
            )
            .unwrap(),
        );
        assert!(set.sign_svids(Vec::new()).await.is_empty());
        let key = generate_key().unwrap();
        let csr = csr_for(&key).unwrap();
        let request = |i: usize| rotation::SvidRequest {
            // Every seventh CSR is garbage.
            csr: if i % 7 == 3 {
                b"junk".to_vec()
            } else {
                csr.clone()
            },
            spiffe_id: SpiffeId::new(&format!("spiffe://example.org/w/{i}")).unwrap(),
            ttl: Duration::from_secs(600 + u64::try_from(i).unwrap()),
            dns_names: vec![format!("w{i}.example.org")],
            task_id: None,
        };
        for n in [1, 2, 37] {
            let results = set.sign_svids((0..n).map(request).collect()).await;
            assert_eq!(results.len(), n);
            for (i, r) in results.iter().enumerate() {
                if i % 7 == 3 {
                    assert!(matches!(r, Err(CaError::BadCsr(_))), "{i}: {r:?}");
                    continue;
                }
                let issued = r.as_ref().unwrap();
                let leaf = parse_leaf(&issued.chain[0]).unwrap();
                assert_eq!(
                    leaf.spiffe_id.as_str(),
                    format!("spiffe://example.org/w/{i}")
                );
                assert_eq!(leaf.dns_names, [format!("w{i}.example.org")]);
                assert_eq!(leaf.serial_hex, issued.serial_hex);
                assert_eq!(leaf.not_after, issued.not_after);
            }
        }
    }

    fn write_root(
        dir: &Path,
        pathlen: BasicConstraints,
    ) -> (
        std::path::PathBuf,
        std::path::PathBuf,
        CertificateDer<'static>,
    ) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = dn("Example Corp Root");
        p.is_ca = IsCa::Ca(pathlen);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        let (c, k) = (dir.join("root.pem"), dir.join("root.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, cert.der().clone())
    }

    #[test]
    fn upstream_authority_makes_the_ca_an_intermediate() {
        let td = TrustDomain::new("example.org").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file, root) = write_root(dir.path(), BasicConstraints::Unconstrained);
        let up = std::sync::Arc::new(UpstreamAuthority::load(&cert_file, &key_file, None).unwrap());
        assert_eq!(up.roots(), std::slice::from_ref(&root));
        let set = rotation::CaSet::load_or_create(
            dir.path(),
            &td,
            Duration::from_secs(3600),
            Some(std::sync::Arc::clone(&up)),
            SystemTime::now(),
        )
        .unwrap();
        assert!(set.active().matches(Some(&up)));
        assert!(!set.active().matches(None));
        let bundle = set.bundle(1);
        assert_eq!(
            bundle.x509_authorities(),
            &[root],
            "the bundle carries the upstream root"
        );

        let key = generate_key().unwrap();
        let id = SpiffeId::new("spiffe://example.org/web").unwrap();
        let issued = set
            .sign_svid(&csr_for(&key).unwrap(), &id, Duration::from_secs(60), &[])
            .unwrap();
        assert_eq!(issued.chain.len(), 2, "leaf + Tessera's intermediate CA");
        assert_eq!(&issued.chain[1], set.active().certificate());
        let got = common::tls::verify_svid_chain(
            &issued.chain[0],
            &issued.chain[1..],
            &bundle,
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
        )
        .unwrap();
        assert_eq!(got, id);
        // Without the intermediate the path cannot be built.
        assert!(
            common::tls::verify_svid_chain(
                &issued.chain[0],
                &[],
                &bundle,
                rustls_pki_types::UnixTime::now(),
                webpki::KeyUsage::client_auth(),
            )
            .is_err()
        );

        // Dropping the upstream later re-issues a self-signed CA at start-up.
        let plain = rotation::CaSet::load_or_create(
            dir.path(),
            &td,
            Duration::from_secs(3600),
            None,
            SystemTime::now(),
        )
        .unwrap();
        assert!(plain.active().matches(None));

        // Mismatched key, missing files and a non-root without a bundle are refused.
        let (_, other_key, _) = {
            let d2 = tempfile::tempdir().unwrap();
            let r = write_root(d2.path(), BasicConstraints::Unconstrained);
            let k = dir.path().join("other.key");
            std::fs::copy(&r.1, &k).unwrap();
            (r.0, k, r.2)
        };
        assert!(UpstreamAuthority::load(&cert_file, &other_key, None).is_err());
        assert!(UpstreamAuthority::load(&dir.path().join("missing.pem"), &key_file, None).is_err());
    }
}
