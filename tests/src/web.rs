//! The relying-party side of the server's HTTPS listener (`--relying-party-listen`), for the
//! end-to-end suite and the benchmark: a test "web PKI" for the listener's certificate (an
//! rcgen CA, never the SPIFFE bundle, as in a real deployment), a minimal HTTPS client that
//! trusts only that CA, and readers of the CRLs, CRL distribution points and token status
//! lists it serves.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use x509_parser::prelude::{
    DistributionPointName, FromDer as _, GeneralName, ParsedExtension, X509Certificate,
};

/// The listener's web PKI: a CA, and a certificate for `localhost` and 127.0.0.1 signed by
/// it, written as PEM files (the key 0600).
#[derive(Debug)]
pub struct WebPki {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_der: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

impl WebPki {
    /// Generates the CA and the listener's certificate and writes them under `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
            SanType,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "Relying-party test web CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec!["localhost".into()])?;
        leaf.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&ca, &ca_key);
        let cert = leaf.signed_by(&key, &issuer)?;
        let pki = Self {
            ca_file: dir.join("web-ca.pem"),
            cert_file: dir.join("rp.pem"),
            key_file: dir.join("rp.key"),
            ca_der: ca_cert.der().clone(),
            chain: vec![cert.der().clone()],
            key_der: key.serialize_der(),
        };
        std::fs::write(&pki.ca_file, ca_cert.pem())?;
        std::fs::write(&pki.cert_file, cert.pem())?;
        std::fs::write(&pki.key_file, key.serialize_pem())?;
        std::fs::set_permissions(&pki.key_file, std::fs::Permissions::from_mode(0o600))?;
        Ok(pki)
    }

    /// The server flags that serve relying parties at `addr` as `url` with this PKI.
    pub fn server_args(&self, addr: SocketAddr, url: &str) -> Vec<String> {
        vec![
            "--relying-party-listen".into(),
            addr.to_string(),
            "--relying-party-url".into(),
            url.into(),
            "--relying-party-cert-file".into(),
            self.cert_file.display().to_string(),
            "--relying-party-key-file".into(),
            self.key_file.display().to_string(),
        ]
    }
}

/// The crypto provider of the relying-party clients.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An HTTP/1.1 response: status, lowercase header names with values, body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// `METHOD path` over HTTPS to the listener at `addr`, trusting only `ca` (rustls, SNI
/// `localhost`); `extra` is added to the request head as is.
pub async fn https(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    method: &str,
    path: &str,
    extra: &str,
) -> anyhow::Result<HttpResponse> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await
        .map_err(|e| anyhow::anyhow!("TLS handshake with the relying-party listener: {e}"))?;
    // An oversized head may be answered (and the connection closed) before it is all sent.
    let _ = s
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    let mut raw = Vec::new();
    // The server may close without close_notify after an error response.
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP head in {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// The URIs of a certificate's CRL Distribution Points.
pub fn crl_urls(der: &[u8]) -> anyhow::Result<Vec<String>> {
    let (_, cert) = X509Certificate::from_der(der)?;
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() {
            for p in points.iter() {
                if let Some(DistributionPointName::FullName(names)) = &p.distribution_point {
                    for n in names {
                        if let GeneralName::URI(u) = n {
                            out.push((*u).to_owned());
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A certificate's serial number, hex.
pub fn serial_of(der: &[u8]) -> anyhow::Result<String> {
    let (_, cert) = X509Certificate::from_der(der)?;
    Ok(hex_lower(cert.raw_serial()))
}

/// The serial numbers (hex) a DER CRL lists.
pub fn crl_serials(der: &[u8]) -> anyhow::Result<Vec<String>> {
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|rc| hex_lower(rc.raw_serial()))
        .collect())
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Largest inflated status list read (a list of 2^20 one-bit entries is 128 KiB).
const MAX_STATUS_LIST_BYTES: usize = 1 << 20;

/// Whether entry `idx` of a token status list token (`statuslist+jwt`, `bits` 1) is set
/// (INVALID): `lst` inflated (zlib), bit `idx % 8` of byte `idx / 8` (draft §4.1).
pub fn status_bit(list_token: &str, idx: usize) -> anyhow::Result<bool> {
    use anyhow::Context as _;
    use base64::Engine as _;
    let payload = list_token.split('.').nth(1).context("not a JWT")?;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    anyhow::ensure!(
        claims["status_list"]["bits"] == 1,
        "bits is not 1: {claims}"
    );
    let lst = claims["status_list"]["lst"].as_str().context("no lst")?;
    let z = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(lst)?;
    let bits = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&z, MAX_STATUS_LIST_BYTES)
        .map_err(|e| anyhow::anyhow!("lst is not a zlib stream: {e:?}"))?;
    let byte = *bits.get(idx / 8).context("index beyond the list")?;
    Ok(byte >> (idx % 8) & 1 == 1)
}
