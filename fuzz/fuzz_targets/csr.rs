//! The CA's CSR handling (`server::ca::Ca::sign_svid`): a CSR contributes only its public
//! key.
//!
//! Input: the first byte chooses the mode: arbitrary DER as the CSR, or a CSR that rcgen
//! builds and signs (so it passes the signature check) from fuzzer-chosen contents: URI and
//! DNS SANs (another SPIFFE ID, the entry's own), a subject, CA and key-usage requests,
//! raw extensions, and the key's algorithm. Properties: nothing panics; a refused CSR gets
//! an error; an accepted one yields a leaf that verifies to the CA's bundle, whose SPIFFE ID
//! and DNS names are the entry's, whose key is the CSR's, and whose subject and extensions
//! are exactly those of an SVID issued for the same entry from a CSR carrying nothing.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use common::svid::{csr_for, generate_key, parse_leaf};
use common::{Bundle, SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use server::ca::Ca;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const ENTRY_ID: &str = "spiffe://example.org/entry";
const ENTRY_DNS: &str = "entry.example.org";

struct Fixture {
    ca: Ca,
    bundle: Bundle,
    entry: SpiffeId,
    p256: KeyPair,
    ed25519: KeyPair,
    /// What an SVID for the entry looks like, without and with its DNS name, from a CSR
    /// that asks for nothing: (subject, extension OIDs in order).
    reference: [(String, Vec<String>); 2],
}

fn shape(der: &[u8]) -> (String, Vec<String>) {
    let (_, cert) = X509Certificate::from_der(der).expect("issued certificate parses");
    let oids = cert
        .extensions()
        .iter()
        .map(|e| e.oid.to_id_string())
        .collect();
    (cert.subject().to_string(), oids)
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let td = TrustDomain::new("example.org").expect("trust domain");
    let ca = Ca::generate(&td, Duration::from_secs(86_400), None).expect("CA");
    let bundle = Bundle::new(td, vec![ca.certificate().clone()], 1, 0);
    let entry = SpiffeId::new(ENTRY_ID).expect("entry ID");
    let plain = csr_for(&generate_key().expect("key")).expect("CSR");
    let reference = [&[][..], &[ENTRY_DNS.to_owned()][..]].map(|dns| {
        let issued = ca
            .sign_svid(&plain, &entry, Duration::from_secs(600), dns)
            .expect("reference SVID");
        shape(&issued.chain[0])
    });
    Fixture {
        ca,
        bundle,
        entry,
        p256: generate_key().expect("key"),
        ed25519: KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key"),
        reference,
    }
});

#[derive(Arbitrary, Debug)]
enum San {
    Uri(String),
    OtherSpiffeId,
    EntrySpiffeId,
    Dns(String),
    Email(String),
}

#[derive(Arbitrary, Debug)]
struct Request {
    sans: Vec<San>,
    common_name: Option<String>,
    organization: Option<String>,
    is_ca: bool,
    cert_sign: bool,
    extensions: Vec<(Vec<u8>, bool, Vec<u8>)>,
    ed25519: bool,
}

/// A CSR built and signed by rcgen from `req`, or `None` when rcgen refuses the contents.
fn build(req: Request) -> Option<Vec<u8>> {
    let f = &*FIXTURE;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    if let Some(cn) = req.common_name {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    if let Some(o) = req.organization {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    for san in req.sans {
        p.subject_alt_names.push(match san {
            San::Uri(u) => SanType::URI(u.try_into().ok()?),
            San::OtherSpiffeId => SanType::URI("spiffe://example.org/admin".try_into().ok()?),
            San::EntrySpiffeId => SanType::URI(ENTRY_ID.try_into().ok()?),
            San::Dns(d) => SanType::DnsName(d.try_into().ok()?),
            San::Email(e) => SanType::Rfc822Name(e.try_into().ok()?),
        });
    }
    if req.is_ca {
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    if req.cert_sign {
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    }
    for (oid, critical, content) in req.extensions {
        // An OID of 2..=8 arcs under the private-enterprise arc.
        let arcs: Vec<u64> = [1, 3, 6, 1, 4, 1]
            .into_iter()
            .chain(oid.iter().take(4).map(|&b| u64::from(b)))
            .collect();
        let mut ext = CustomExtension::from_oid_content(&arcs, content);
        ext.set_criticality(critical);
        p.custom_extensions.push(ext);
    }
    let key = if req.ed25519 { &f.ed25519 } else { &f.p256 };
    p.serialize_request(key).ok().map(|csr| csr.der().to_vec())
}

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let with_dns = mode & 2 != 0;
    let csr = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let Ok(req) = Request::arbitrary_take_rest(Unstructured::new(rest)) else {
            return;
        };
        let Some(csr) = build(req) else {
            return;
        };
        csr
    };
    let dns: &[String] = if with_dns {
        &[ENTRY_DNS.to_owned()]
    } else {
        &[]
    };
    let Ok(issued) =
        f.ca.sign_svid(&csr, &f.entry, Duration::from_secs(600), dns)
    else {
        return;
    };
    let leaf = &issued.chain[0];
    let info = parse_leaf(leaf).expect("an issued SVID passes the leaf profile");
    assert_eq!(info.spiffe_id, f.entry, "the SPIFFE ID is the entry's");
    assert_eq!(info.dns_names, dns, "the DNS names are the entry's");
    let (_, cert) = X509Certificate::from_der(leaf).expect("issued certificate parses");
    let uris = cert
        .subject_alternative_name()
        .expect("one SAN extension")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter(|n| matches!(n, GeneralName::URI(_)))
                .count()
        });
    assert_eq!(uris, Some(1), "exactly one URI SAN");
    let (_, req) = X509CertificationRequest::from_der(&csr).expect("an accepted CSR parses");
    assert_eq!(
        cert.public_key().raw,
        req.certification_request_info.subject_pki.raw,
        "the key is the CSR's"
    );
    assert_eq!(
        shape(leaf),
        f.reference[usize::from(with_dns)],
        "subject and extensions come from the entry, never the CSR"
    );
    let verified = common::tls::verify_svid_chain(
        &CertificateDer::from(leaf.to_vec()),
        &[],
        &f.bundle,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
    )
    .expect("an issued SVID verifies to the bundle");
    assert_eq!(verified, f.entry);
});
