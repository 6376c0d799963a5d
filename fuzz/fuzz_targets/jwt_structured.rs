//! ValidateJWTSVID on mutations of a real signed JWT-SVID.
//!
//! A token signed by the bundle's key is decoded; the fuzzer removes or replaces its
//! header parameters and claims (with arbitrary JSON and with values that matter: the real
//! kid, other algorithms, times around now, the trust domain), then the token is either
//! re-signed with the real key (in low-S or high-S form), kept with its original
//! signature, or given arbitrary signature bytes. Properties:
//! - the original signature validates only the original token;
//! - a high-S signature and arbitrary signature bytes never validate;
//! - a re-signed token validates only if it is a JWT-SVID profile token: ES256, the
//!   bundle's kid, `typ` absent or JWT/JOSE, no other header parameter, a `sub` with a path
//!   in the trusted domain, an integer `exp` after now, numeric `nbf`/`iat` not beyond the
//!   skew, and the audience asked for; and then the result reports that subject and kid.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use base64::Engine as _;
use common::jwt::{CLOCK_SKEW, JwtBundle, JwtKey, JwtSigner, validate};
use common::{SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Map, Value, json};

const NOW: i64 = 1_800_000_000;
const KID: &str = "k1";
const AUDIENCE: &str = "fuzz";
const SUBJECT: &str = "spiffe://example.org/workload";
/// ⌊n / 2⌋ of P-256: `s` above it is high-S.
const HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

struct Fixture {
    pair: EcdsaKeyPair,
    bundles: BTreeMap<TrustDomain, JwtBundle>,
    original: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let pkcs8 = JwtSigner::generate_pkcs8().expect("key");
    let signer = JwtSigner::from_pkcs8(KID, &pkcs8).expect("signer");
    let rng = ring::rand::SystemRandom::new();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).expect("pair");
    let key = JwtKey {
        kid: KID.to_owned(),
        public_key: signer.public_key(),
        expires_at: 0,
    };
    let td = TrustDomain::new("example.org").expect("trust domain");
    let subject = SpiffeId::new(SUBJECT).expect("subject");
    let original = signer
        .sign(
            &subject,
            &[AUDIENCE.to_owned()],
            NOW - 10,
            NOW + 300,
            &Map::new(),
        )
        .expect("sign");
    let bundles = BTreeMap::from([(td, JwtBundle::new([key]))]);
    assert!(validate(&original, AUDIENCE, &bundles, NOW).is_ok());
    Fixture {
        pair,
        bundles,
        original,
    }
});

/// A JSON value, biased towards the ones validation looks at.
#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    /// Seconds from now.
    Time(i16),
    /// A fractional time from now.
    FracTime(f32),
    Str(String),
    Known(Known),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Known {
    Es256,
    Rs256,
    Hs256,
    None,
    Kid,
    Jwt,
    Jose,
    Subject,
    OtherDomainSubject,
    TrustDomainId,
    Audience,
}

impl Json {
    fn value(&self, depth: u8) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => json!(b),
            Self::Int(i) => json!(i),
            Self::Time(d) => json!(NOW + i64::from(*d)),
            Self::FracTime(d) => json!(NOW as f64 + f64::from(*d)),
            Self::Str(s) => json!(s),
            Self::Known(k) => json!(match k {
                Known::Es256 => "ES256",
                Known::Rs256 => "RS256",
                Known::Hs256 => "HS256",
                Known::None => "none",
                Known::Kid => KID,
                Known::Jwt => "JWT",
                Known::Jose => "JOSE",
                Known::Subject => SUBJECT,
                Known::OtherDomainSubject => "spiffe://other.org/workload",
                Known::TrustDomainId => "spiffe://example.org",
                Known::Audience => AUDIENCE,
            }),
            Self::Array(_) | Self::Object(_) if depth > 3 => Value::Null,
            Self::Array(items) => Value::Array(items.iter().map(|v| v.value(depth + 1)).collect()),
            Self::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value(depth + 1)))
                    .collect(),
            ),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Edit {
    Remove(Name),
    Set(Name, Json),
    SetOther(String, Json),
}

/// The names validation reads, in the header and in the claims.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Name {
    Alg,
    Kid,
    Typ,
    Sub,
    Aud,
    Exp,
    Iat,
    Nbf,
}

impl Name {
    fn as_str(self) -> &'static str {
        match self {
            Self::Alg => "alg",
            Self::Kid => "kid",
            Self::Typ => "typ",
            Self::Sub => "sub",
            Self::Aud => "aud",
            Self::Exp => "exp",
            Self::Iat => "iat",
            Self::Nbf => "nbf",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Signature {
    Original,
    LowS,
    HighS,
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    header_edits: Vec<Edit>,
    claim_edits: Vec<Edit>,
    signature: Signature,
    /// Ask for the audience the token was minted for, or another one.
    other_audience: Option<String>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn decode(segment: &str) -> Map<String, Value> {
    let bytes = b64().decode(segment).expect("base64");
    serde_json::from_slice(&bytes).expect("JSON object")
}

fn apply(map: &mut Map<String, Value>, edits: &[Edit]) {
    for edit in edits {
        match edit {
            Edit::Remove(name) => {
                map.remove(name.as_str());
            }
            Edit::Set(name, v) => {
                map.insert(name.as_str().to_owned(), v.value(0));
            }
            Edit::SetOther(name, v) => {
                map.insert(name.clone(), v.value(0));
            }
        }
    }
}

fn is_high_s(sig: &[u8]) -> bool {
    sig[32..] > HALF_ORDER[..]
}

/// Signs `input` with the bundle's key until the signature has the `high` form wanted
/// (each try is a coin flip).
fn sign(input: &str, high: bool) -> Vec<u8> {
    let rng = ring::rand::SystemRandom::new();
    loop {
        let sig = FIXTURE.pair.sign(&rng, input.as_bytes()).expect("sign");
        if is_high_s(sig.as_ref()) == high {
            return sig.as_ref().to_vec();
        }
    }
}

fn profile_ok(header: &Map<String, Value>, claims: &Map<String, Value>, audience: &str) -> bool {
    let header_ok = header.get("alg") == Some(&json!("ES256"))
        && header.get("kid") == Some(&json!(KID))
        && matches!(header.get("typ"), None | Some(Value::String(_)))
        && header.get("typ").is_none_or(|t| t == "JWT" || t == "JOSE")
        && header
            .keys()
            .all(|k| matches!(k.as_str(), "alg" | "kid" | "typ"));
    let subject_ok = claims
        .get("sub")
        .and_then(Value::as_str)
        .and_then(|s| SpiffeId::new(s).ok())
        .is_some_and(|id| id.trust_domain_name() == "example.org" && !id.is_trust_domain_id());
    let exp_ok = claims
        .get("exp")
        .and_then(Value::as_i64)
        .is_some_and(|exp| exp > NOW);
    let time_ok = |name: &str| match claims.get(name) {
        None => true,
        Some(v) => v.as_f64().is_some_and(|t| t <= (NOW + CLOCK_SKEW) as f64),
    };
    let aud_ok = !audience.is_empty()
        && match claims.get("aud") {
            Some(Value::String(a)) => a == audience,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
    header_ok && subject_ok && exp_ok && time_ok("nbf") && time_ok("iat") && aud_ok
}

fuzz_target!(|input: Input| {
    let fixture = &*FIXTURE;
    let mut parts = fixture.original.split('.');
    let (Some(h), Some(c)) = (parts.next(), parts.next()) else {
        unreachable!("the original token has three segments");
    };
    let mut header = decode(h);
    let mut claims = decode(c);
    apply(&mut header, &input.header_edits);
    apply(&mut claims, &input.claim_edits);
    let signing_input = format!(
        "{}.{}",
        b64().encode(Value::Object(header.clone()).to_string()),
        b64().encode(Value::Object(claims.clone()).to_string())
    );
    let original_sig = fixture.original.rsplit('.').next().unwrap_or_default();
    let sig = match &input.signature {
        Signature::Original => original_sig.to_owned(),
        Signature::LowS => b64().encode(sign(&signing_input, false)),
        Signature::HighS => b64().encode(sign(&signing_input, true)),
        Signature::Bytes(bytes) => b64().encode(bytes),
    };
    let token = format!("{signing_input}.{sig}");
    let audience = input.other_audience.as_deref().unwrap_or(AUDIENCE);
    let result = validate(&token, audience, &fixture.bundles, NOW);
    match (&input.signature, &result) {
        (_, Err(_)) => {}
        (Signature::Original, Ok(_)) => assert_eq!(
            token, fixture.original,
            "the original signature validated another token"
        ),
        (Signature::LowS, Ok(v)) => {
            assert!(
                profile_ok(&header, &claims, audience),
                "validated a token outside the profile: header {header:?} claims {claims:?}"
            );
            assert_eq!(Some(v.spiffe_id.as_str()), claims["sub"].as_str());
            assert_eq!(v.kid, KID);
        }
        (Signature::HighS, Ok(_)) => panic!("a high-S signature validated"),
        (Signature::Bytes(_), Ok(_)) if sig == original_sig && token == fixture.original => {}
        (Signature::Bytes(_), Ok(v)) => panic!("arbitrary signature bytes validated: {v:?}"),
    }
    if let (Signature::LowS, Err(e)) = (&input.signature, &result) {
        assert!(
            !profile_ok(&header, &claims, audience),
            "a profile token signed by the bundle's key was refused: {e}: header {header:?} claims {claims:?}"
        );
    }
});
