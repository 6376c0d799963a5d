//! The X.509 certificate authority: the only place that touches the CA signing key.
//!
//! The CA key (ECDSA P-256) is generated on first start and kept in the data directory
//! (`ca.key`, mode 0600) beside its self-signed certificate (`ca.pem`). Signing takes only
//! the public key from a CSR; the SPIFFE ID, lifetime and DNS names always come from the
//! caller (registration data), never from the CSR. No certificate outlives the CA.

use std::time::{Duration, SystemTime};

use common::svid::parse_leaf;
use common::{Bundle, SpiffeId, TrustDomain};
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
}

/// The CA: key, certificate and trust domain.
pub struct Ca {
    trust_domain: TrustDomain,
    key: KeyPair,
    cert: CertificateDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial_hex: String,
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

impl Ca {
    /// A CA from its PEM key and certificate (as stored by [`rotation::CaSet`]).
    pub fn from_pem(td: &TrustDomain, key_pem: &str, cert_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(io)?;
        let cert = pem::parse(cert_pem).map_err(io)?;
        Self::from_parts(td.clone(), key, CertificateDer::from(cert.into_contents()))
    }

    /// The private key as PEM (for the 0600 state file only).
    pub(crate) fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.cert.to_vec()))
    }

    /// A fresh self-signed CA valid for `ttl`.
    pub fn generate(td: &TrustDomain, ttl: Duration) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let now = SystemTime::now();
        let mut p = ca_params(td)?;
        p.not_before = to_offset(now - BACKDATE);
        p.not_after = to_offset(now + ttl);
        p.serial_number = Some(random_serial());
        let cert = p
            .self_signed(&key)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Self::from_parts(td.clone(), key, cert.der().clone())
    }

    fn from_parts(
        trust_domain: TrustDomain,
        key: KeyPair,
        cert: CertificateDer<'static>,
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
        Ok(Self {
            trust_domain,
            key,
            cert,
            not_before,
            not_after,
            serial_hex,
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

    /// The trust bundle for our trust domain.
    pub fn bundle(&self, sequence: u64) -> Bundle {
        Bundle::new(
            self.trust_domain.clone(),
            vec![self.cert.clone()],
            sequence,
            300,
        )
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
        p.not_before = to_offset(now - BACKDATE.min(ttl / 10));
        p.not_after = to_offset(not_after);
        p.serial_number = Some(random_serial());
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
        let issuer_params = ca_params(&self.trust_domain)?;
        let issuer = Issuer::from_params(&issuer_params, &self.key);
        let cert = p
            .signed_by(&csr.public_key, &issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let der = cert.der().clone();
        let info = parse_leaf(&der).map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(Issued {
            chain: vec![der],
            serial_hex: info.serial_hex,
            not_after: info.not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::svid::{csr_for, generate_key};
    use common::{BundleCell, X509Svid};

    #[test]
    fn signs_profile_conformant_svids_that_verify() {
        let td = TrustDomain::new("example.org").unwrap();
        let ca = Ca::generate(&td, Duration::from_secs(86400)).unwrap();
        let again = Ca::from_pem(&td, &ca.key_pem(), &ca.cert_pem()).unwrap();
        assert_eq!(ca.certificate(), again.certificate());
        let other = Ca::generate(&td, Duration::from_secs(86400)).unwrap();
        assert!(
            Ca::from_pem(&td, &other.key_pem(), &ca.cert_pem()).is_err(),
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
        assert_eq!(svid.leaf().dns_names, vec!["web.example.org".to_owned()]);
        let life = svid
            .leaf()
            .not_after
            .duration_since(svid.leaf().not_before)
            .unwrap();
        assert_eq!(life, Duration::from_secs(610));
        let bundle = BundleCell::new(ca.bundle(1)).get();
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
}
