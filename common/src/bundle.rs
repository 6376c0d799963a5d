//! Trust bundles: the X.509 authorities of one trust domain.
//!
//! A [`Bundle`] never stores its trust domain implicitly: the `<trust domain, bundle>`
//! binding is kept together end to end, as the SPIFFE bundle spec requires.

use rustls_pki_types::CertificateDer;

use crate::jwt::{JwtBundle, JwtKey};
use crate::spiffe_id::TrustDomain;

/// The X.509 authorities of one trust domain, with a sequence number that increases on
/// every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    trust_domain: TrustDomain,
    x509_authorities: Vec<CertificateDer<'static>>,
    sequence: u64,
    refresh_hint_seconds: i64,
    jwt_authorities: Vec<JwtKey>,
}

/// A PEM bundle that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundlePemError {
    /// The text is not valid PEM.
    #[error("bundle is not valid PEM: {0}")]
    Pem(String),
    /// A PEM block is something other than a CERTIFICATE.
    #[error("bundle contains a PEM block of type {0:?}; only CERTIFICATE is allowed")]
    UnexpectedBlock(String),
    /// No certificate at all.
    #[error("bundle contains no certificate")]
    Empty,
}

impl Bundle {
    /// A bundle for `trust_domain` holding `x509_authorities` (DER root certificates).
    pub fn new(
        trust_domain: TrustDomain,
        x509_authorities: Vec<CertificateDer<'static>>,
        sequence: u64,
        refresh_hint_seconds: i64,
    ) -> Self {
        Self {
            trust_domain,
            x509_authorities,
            sequence,
            refresh_hint_seconds,
            jwt_authorities: Vec::new(),
        }
    }

    /// The same bundle with `keys` as its JWT authorities.
    pub fn with_jwt_authorities(mut self, keys: Vec<JwtKey>) -> Self {
        self.jwt_authorities = keys;
        self
    }

    /// Public keys that verify JWT-SVIDs of this trust domain.
    pub fn jwt_authorities(&self) -> &[JwtKey] {
        &self.jwt_authorities
    }

    /// The JWT authorities as a [`JwtBundle`].
    pub fn jwt_bundle(&self) -> JwtBundle {
        JwtBundle::new(self.jwt_authorities.iter().cloned())
    }

    /// Parses PEM CERTIFICATE blocks (e.g. the output of `tessera-server bundle show`).
    pub fn from_pem(trust_domain: TrustDomain, text: &str) -> Result<Self, BundlePemError> {
        let blocks = pem::parse_many(text).map_err(|e| BundlePemError::Pem(e.to_string()))?;
        let mut certs = Vec::with_capacity(blocks.len());
        for block in blocks {
            if block.tag() != "CERTIFICATE" {
                return Err(BundlePemError::UnexpectedBlock(block.tag().to_owned()));
            }
            certs.push(CertificateDer::from(block.into_contents()));
        }
        if certs.is_empty() {
            return Err(BundlePemError::Empty);
        }
        Ok(Self::new(trust_domain, certs, 0, 0))
    }

    /// The trust domain these authorities speak for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// DER root certificates.
    pub fn x509_authorities(&self) -> &[CertificateDer<'static>] {
        &self.x509_authorities
    }

    /// Increases whenever the contents change.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Suggested consumer refresh interval in seconds (0 when unknown).
    pub fn refresh_hint_seconds(&self) -> i64 {
        self.refresh_hint_seconds
    }

    /// The authorities as concatenated DER, the Workload API's X.509 bundle encoding.
    pub fn der_concat(&self) -> Vec<u8> {
        self.x509_authorities
            .iter()
            .flat_map(|c| c.as_ref().iter().copied())
            .collect()
    }

    /// The authorities as PEM CERTIFICATE blocks.
    pub fn to_pem(&self) -> String {
        let blocks: Vec<pem::Pem> = self
            .x509_authorities
            .iter()
            .map(|c| pem::Pem::new("CERTIFICATE", c.to_vec()))
            .collect();
        pem::encode_many(&blocks)
    }
}

/// A bundle shared between a TLS verifier and whoever refreshes it.
///
/// Readers take a cheap `Arc` snapshot; the writer swaps the whole bundle, so a verifier
/// never sees a half-updated set of authorities.
#[derive(Debug, Clone)]
pub struct BundleCell(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Bundle>>>);

impl BundleCell {
    /// A cell holding `bundle`.
    pub fn new(bundle: Bundle) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(
            std::sync::Arc::new(bundle),
        )))
    }

    /// The current bundle.
    pub fn get(&self) -> std::sync::Arc<Bundle> {
        match self.0.read() {
            Ok(g) => std::sync::Arc::clone(&g),
            // A writer panicked mid-swap; the value itself is always a complete Arc.
            Err(poisoned) => std::sync::Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the bundle.
    pub fn set(&self, bundle: Bundle) {
        let new = std::sync::Arc::new(bundle);
        match self.0.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_rejections() {
        let td = TrustDomain::new("example.org").unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let bundle = Bundle::new(td.clone(), vec![cert.der().clone()], 3, 0);
        let back = Bundle::from_pem(td.clone(), &bundle.to_pem()).unwrap();
        assert_eq!(back.x509_authorities(), bundle.x509_authorities());
        assert_eq!(bundle.der_concat(), cert.der().to_vec());
        assert_eq!(Bundle::from_pem(td.clone(), ""), Err(BundlePemError::Empty));
        let key_pem = key.serialize_pem();
        assert!(matches!(
            Bundle::from_pem(td.clone(), &key_pem),
            Err(BundlePemError::UnexpectedBlock(_))
        ));
        assert!(matches!(
            Bundle::from_pem(
                td,
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"
            ),
            Err(BundlePemError::Pem(_))
        ));
    }
}
