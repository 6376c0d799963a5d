//! rustls verifiers that authenticate peers by X.509-SVID.
//!
//! Both directions check the same thing: the presented chain verifies (RFC 5280, via
//! webpki) to the authorities of *our* trust domain's bundle, and the leaf carries exactly
//! one SPIFFE ID in that trust domain. Host names play no part; the SPIFFE ID is the
//! identity. The bundle is read through a [`BundleCell`] at every handshake, so a bundle
//! refresh takes effect without rebuilding TLS configs.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::bundle::{Bundle, BundleCell};
use crate::spiffe_id::SpiffeId;
use crate::svid::{SvidError, parse_leaf};

/// Why a peer's SVID was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerSvidError {
    /// The leaf does not satisfy the X.509-SVID profile.
    #[error("peer certificate is not an X.509-SVID: {0}")]
    NotAnSvid(#[from] SvidError),
    /// Path validation to the bundle failed (bad signature, expired, unknown issuer...).
    #[error("peer certificate does not chain to the trust bundle: {0}")]
    Untrusted(String),
    /// The SPIFFE ID is in another trust domain.
    #[error("peer SPIFFE ID {0} is not in trust domain {1}")]
    WrongTrustDomain(String, String),
    /// The SPIFFE ID is not the one required.
    #[error("peer SPIFFE ID {got} is not the expected {expected}")]
    UnexpectedId {
        /// What the peer presented.
        got: String,
        /// What was required.
        expected: String,
    },
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Verifies `end_entity` (+ `intermediates`) to `bundle` at `now` for `usage`, and returns
/// the leaf's SPIFFE ID, which must be in the bundle's trust domain.
pub fn verify_svid_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &Bundle,
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<SpiffeId, PeerSvidError> {
    let leaf = parse_leaf(end_entity)?;
    let anchors: Vec<_> = bundle
        .x509_authorities()
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
        .collect();
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| PeerSvidError::Untrusted(e.to_string()))?;
    cert.verify_for_usage(
        algorithms().all,
        &anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| PeerSvidError::Untrusted(e.to_string()))?;
    if !leaf.spiffe_id.is_member_of(bundle.trust_domain()) {
        return Err(PeerSvidError::WrongTrustDomain(
            leaf.spiffe_id.to_string(),
            bundle.trust_domain().to_string(),
        ));
    }
    Ok(leaf.spiffe_id)
}

fn to_rustls(e: PeerSvidError) -> rustls::Error {
    rustls::Error::General(e.to_string())
}

/// Client side: accepts the server only if it presents an SVID for exactly `expected`.
pub struct SpiffeServerVerifier {
    bundle: BundleCell,
    expected: SpiffeId,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("expected", &self.expected.as_str())
            .finish_non_exhaustive()
    }
}

impl SpiffeServerVerifier {
    /// A verifier requiring the server to be `expected`, authenticated by `bundle`.
    pub fn new(bundle: BundleCell, expected: SpiffeId) -> Arc<Self> {
        Arc::new(Self { bundle, expected })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundle = self.bundle.get();
        let id = verify_svid_chain(
            end_entity,
            intermediates,
            &bundle,
            now,
            webpki::KeyUsage::server_auth(),
        )
        .map_err(to_rustls)?;
        if id != self.expected {
            return Err(to_rustls(PeerSvidError::UnexpectedId {
                got: id.to_string(),
                expected: self.expected.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Server side: asks for a client SVID but does not require one (first contact with a join
/// token has none). Any presented certificate must be a valid SVID of our trust domain;
/// which identity may do what is decided by the service, not here.
pub struct SpiffeClientVerifier {
    bundle: BundleCell,
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .finish_non_exhaustive()
    }
}

impl SpiffeClientVerifier {
    /// A verifier authenticating clients by `bundle`.
    pub fn new(bundle: BundleCell) -> Arc<Self> {
        Arc::new(Self { bundle })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = self.bundle.get();
        verify_svid_chain(
            end_entity,
            intermediates,
            &bundle,
            now,
            webpki::KeyUsage::client_auth(),
        )
        .map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}
