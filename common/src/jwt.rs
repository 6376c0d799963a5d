//! JWT-SVIDs: signing and validation per the SPIFFE JWT-SVID standard.
//!
//! Tokens are JWS compact serialisation with header exactly `{alg, kid, typ: "JWT"}` and
//! claims `sub`, `aud` (always an array of every requested audience), integer `exp` and
//! `iat` — the profile every real client accepts. Validation follows the standard's order:
//! the algorithm is checked against an allow-list before anything else, then the bundle of
//! the trust domain in `sub` is chosen, the key by `kid`, the signature, and finally the
//! time claims and audience. Keys are ECDSA P-256 (`ES256`); every other algorithm,
//! including `none` and HMAC, is refused. Signatures are accepted only in low-S form (and
//! always made in it), so a token has exactly one valid signature; `nbf` and `iat` in the
//! future beyond [`CLOCK_SKEW`] are refused, as go-jose's validator does.

use std::collections::BTreeMap;

use base64::Engine as _;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Map, Value, json};

use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Largest token accepted for validation (bytes). Real JWT-SVIDs are well under 1 KiB.
pub const MAX_TOKEN_LENGTH: usize = 8 * 1024;
/// The only signing algorithm Tessera issues and accepts.
pub const ALGORITHM: &str = "ES256";
/// How far in the future `nbf` and `iat` may be, for clocks that disagree a little (the
/// leeway go-jose's claim validation allows by default).
pub const CLOCK_SKEW: i64 = 60;
/// The order n of the P-256 group, big-endian.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];
/// ⌊n / 2⌋: a signature's `s` above it is the high-S twin of a valid low-S signature.
const P256_HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// Whether a fixed-width P-256 signature (r ‖ s) has `s` > n/2. Equal-length big-endian
/// byte strings compare as the numbers they encode.
fn is_high_s(sig: &[u8]) -> bool {
    sig.len() == 64 && sig[32..] > P256_HALF_ORDER[..]
}

/// Replaces a high `s` by n − s, which verifies the same: ECDSA cannot tell them apart.
fn to_low_s(sig: &mut [u8]) {
    if is_high_s(sig) {
        negate_s(sig);
    }
}

/// `s` := n − `s` (for 0 < s < n) in a fixed-width r ‖ s signature.
fn negate_s(sig: &mut [u8]) {
    if sig.len() != 64 {
        return;
    }
    let mut borrow = 0u16;
    for i in (0..32).rev() {
        let a = u16::from(P256_ORDER[i]);
        let b = u16::from(sig[32 + i]) + borrow;
        let (digit, next) = if a >= b { (a - b, 0) } else { (a + 256 - b, 1) };
        sig[32 + i] = u8::try_from(digit).unwrap_or(0);
        borrow = next;
    }
}

/// Algorithms the JWT-SVID standard allows; anything else is rejected before parsing on.
const SPEC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

/// Why a JWT-SVID was rejected (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Larger than [`MAX_TOKEN_LENGTH`].
    #[error("token is larger than {MAX_TOKEN_LENGTH} bytes")]
    TooLarge,
    /// Not three base64url segments of JSON.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// `alg` is `none`, HMAC, or otherwise outside the JWT-SVID allow-list.
    #[error("algorithm {0:?} is not allowed for JWT-SVIDs")]
    DisallowedAlgorithm(String),
    /// `alg` is allowed by the standard but not by this trust domain's keys.
    #[error("algorithm {0:?} is not supported (tokens must be ES256)")]
    UnsupportedAlgorithm(String),
    /// The header has a parameter other than alg, kid and typ, or a bad `typ`.
    #[error("token header is not a JWT-SVID header: {0}")]
    BadHeader(&'static str),
    /// `sub` is missing or not a SPIFFE ID with a path.
    #[error("token subject is missing or not a valid SPIFFE ID")]
    BadSubject,
    /// No bundle for the subject's trust domain.
    #[error("token is from trust domain {0}, which is not trusted")]
    UntrustedTrustDomain(String),
    /// `kid` is missing or names no key in the bundle.
    #[error("token is signed with an unknown key {0:?}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is missing or not an integer.
    #[error("token has no valid exp claim")]
    MissingExpiry,
    /// `exp` is in the past.
    #[error("token has expired")]
    Expired,
    /// `nbf` is later than now plus [`CLOCK_SKEW`].
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// `iat` is later than now plus [`CLOCK_SKEW`].
    #[error("token was issued in the future (iat)")]
    IssuedInFuture,
    /// A time claim (`nbf`, `iat`) is present but not a number.
    #[error("token claim {0} is not a NumericDate")]
    BadTimeClaim(&'static str),
    /// The signature's `s` is in the high half: a malleated copy of a valid signature.
    #[error("token signature is not in canonical low-S form")]
    HighS,
    /// `aud` is missing or does not contain the expected audience.
    #[error("token audience does not include {0:?}")]
    AudienceMismatch(String),
    /// Signing failed (bad key).
    #[error("BUG: signing failed: {0}")]
    Signing(String),
}

/// A public JWT signing key as published in a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtKey {
    /// Key id (`kid`).
    pub kid: String,
    /// Uncompressed P-256 point (0x04 || X || Y).
    pub public_key: Vec<u8>,
    /// Unix seconds after which the key is no longer published (0: unknown).
    pub expires_at: i64,
}

impl JwtKey {
    /// The key as a JWK (`kty`, `kid`, `crv`, full-width `x` and `y`).
    pub fn to_jwk(&self) -> Result<Value, JwtError> {
        let (x, y) = match self.public_key.as_slice() {
            [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => {
                return Err(JwtError::Signing(
                    "key is not an uncompressed P-256 point".into(),
                ));
            }
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        Ok(json!({
            "kty": "EC",
            "kid": self.kid,
            "crv": "P-256",
            "x": b64.encode(x),
            "y": b64.encode(y),
        }))
    }
}

/// The JWT authorities of one trust domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtBundle {
    keys: BTreeMap<String, JwtKey>,
}

impl JwtBundle {
    /// A bundle holding `keys`.
    pub fn new(keys: impl IntoIterator<Item = JwtKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (k.kid.clone(), k)).collect(),
        }
    }

    /// The keys, ordered by kid.
    pub fn keys(&self) -> impl Iterator<Item = &JwtKey> {
        self.keys.values()
    }

    /// The RFC 7517 JWK set served by `FetchJWTBundles`: `{"keys": [...]}`.
    pub fn to_jwks(&self) -> Result<Value, JwtError> {
        let keys = self
            .keys
            .values()
            .map(JwtKey::to_jwk)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(json!({ "keys": keys }))
    }
}

/// A private JWT signing key (the server's).
pub struct JwtSigner {
    kid: String,
    pair: EcdsaKeyPair,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigner")
            .field("kid", &self.kid)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl JwtSigner {
    /// A signer from a PKCS#8 P-256 key.
    pub fn from_pkcs8(kid: &str, pkcs8: &[u8]) -> Result<Self, JwtError> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| JwtError::Signing(e.to_string()))?;
        Ok(Self {
            kid: kid.to_owned(),
            pair,
        })
    }

    /// A fresh random PKCS#8 P-256 key.
    pub fn generate_pkcs8() -> Result<Vec<u8>, JwtError> {
        EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .map(|d| d.as_ref().to_vec())
        .map_err(|e| JwtError::Signing(e.to_string()))
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key (uncompressed point).
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs a JWT-SVID for `subject` and `audience`, issued at `iat`, expiring at `exp`;
    /// `extra` claims (e.g. a task id) are added beside the standard ones.
    pub fn sign(
        &self,
        subject: &SpiffeId,
        audience: &[String],
        iat: i64,
        exp: i64,
        extra: &Map<String, Value>,
    ) -> Result<String, JwtError> {
        let mut claims = extra.clone();
        claims.insert("sub".into(), json!(subject.as_str()));
        claims.insert("aud".into(), json!(audience));
        claims.insert("exp".into(), json!(exp));
        claims.insert("iat".into(), json!(iat));
        self.sign_claims("JWT", claims)
    }

    /// Signs `claims` as a compact JWS with header `{alg: ES256, kid, typ}` (low-S), for
    /// tokens other than JWT-SVIDs (e.g. a `statuslist+jwt`).
    pub fn sign_claims(&self, typ: &str, claims: Map<String, Value>) -> Result<String, JwtError> {
        let header = json!({"alg": ALGORITHM, "kid": self.kid, "typ": typ});
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(Value::Object(claims).to_string().as_bytes())
        );
        let sig = self
            .pair
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .map_err(|e| JwtError::Signing(e.to_string()))?;
        let mut sig = sig.as_ref().to_vec();
        to_low_s(&mut sig);
        Ok(format!("{signing_input}.{}", b64(&sig)))
    }
}

/// A token that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwt {
    /// The `sub` claim.
    pub spiffe_id: SpiffeId,
    /// All claims (with `aud` normalised to an array).
    pub claims: Map<String, Value>,
    /// The `kid` that signed it.
    pub kid: String,
}

fn decode_json(segment: &str, what: &'static str) -> Result<Map<String, Value>, JwtError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::Malformed(what))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed(what)),
    }
}

/// Reads `sub` without verifying anything (to choose the bundle).
fn subject(claims: &Map<String, Value>) -> Result<SpiffeId, JwtError> {
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or(JwtError::BadSubject)?;
    let id = SpiffeId::new(sub).map_err(|_| JwtError::BadSubject)?;
    if id.is_trust_domain_id() {
        return Err(JwtError::BadSubject);
    }
    Ok(id)
}

/// An optional NumericDate claim (seconds, possibly fractional).
fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(JwtError::BadTimeClaim(name)),
    }
}

/// Validates `token` for `audience` at unix time `now` against the JWT bundles by trust
/// domain: [`verify`], then [`VerifiedJwt::check`].
pub fn validate(
    token: &str,
    audience: &str,
    bundles: &BTreeMap<TrustDomain, JwtBundle>,
    now: i64,
) -> Result<ValidatedJwt, JwtError> {
    let verified = verify(token, bundles)?;
    verified.check(audience, now)?;
    Ok(verified.into_validated())
}

/// The checks of [`validate`] that depend on the token and the bundles alone: its form,
/// algorithm and header, its subject, the key named by `kid` in the subject's trust
/// domain, and the signature. What depends on the time and the audience asked for is left
/// to [`VerifiedJwt::check`], so a caller may keep a verified token (keyed by its exact
/// text and the bundles it was verified against) and check only that part again.
pub fn verify(
    token: &str,
    bundles: &BTreeMap<TrustDomain, JwtBundle>,
) -> Result<VerifiedJwt, JwtError> {
    if token.len() > MAX_TOKEN_LENGTH {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated segments"));
    };
    let header = decode_json(h, "header is not base64url JSON")?;
    // 1. Algorithm first, before anything else is trusted.
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if !SPEC_ALGORITHMS.contains(&alg) {
        return Err(JwtError::DisallowedAlgorithm(alg.to_owned()));
    }
    if alg != ALGORITHM {
        return Err(JwtError::UnsupportedAlgorithm(alg.to_owned()));
    }
    if header
        .keys()
        .any(|k| !matches!(k.as_str(), "alg" | "kid" | "typ"))
    {
        return Err(JwtError::BadHeader("unexpected header parameter"));
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if t == "JWT" || t == "JOSE" => {}
        Some(_) => return Err(JwtError::BadHeader("typ must be JWT or JOSE")),
    }
    let claims = decode_json(c, "claims are not base64url JSON")?;
    // 2. The bundle of the subject's trust domain, 3. the key by kid, and its signature.
    let spiffe_id = subject(&claims)?;
    let td = spiffe_id.trust_domain();
    let bundle = bundles
        .get(&td)
        .ok_or_else(|| JwtError::UntrustedTrustDomain(td.to_string()))?;
    let kid = header.get("kid").and_then(Value::as_str).unwrap_or("");
    let key = bundle
        .keys
        .get(kid)
        .ok_or_else(|| JwtError::UnknownKey(kid.to_owned()))?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    let signing_input = token
        .rsplit_once('.')
        .map(|(input, _)| input)
        .ok_or(JwtError::Malformed("not three dot-separated segments"))?;
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &key.public_key)
        .verify(signing_input.as_bytes(), &sig)
        .map_err(|_| JwtError::BadSignature)?;
    if is_high_s(&sig) {
        return Err(JwtError::HighS);
    }
    Ok(VerifiedJwt {
        spiffe_id,
        claims,
        kid: kid.to_owned(),
    })
}

/// A token whose form and signature [`verify`] accepted; its time claims and audience
/// are not checked yet.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedJwt {
    spiffe_id: SpiffeId,
    claims: Map<String, Value>,
    kid: String,
}

impl VerifiedJwt {
    /// The `sub` claim.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// All claims, as in the token.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// The `exp` claim (0 if absent, which [`Self::check`] refuses).
    pub fn expires_at(&self) -> i64 {
        self.claims.get("exp").and_then(Value::as_i64).unwrap_or(0)
    }

    /// The rest of [`validate`]: expiry, `nbf` and `iat` against `now` (with the allowed
    /// clock skew), and `audience` among the token's audiences.
    pub fn check(&self, audience: &str, now: i64) -> Result<(), JwtError> {
        let claims = &self.claims;
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(JwtError::MissingExpiry)?;
        if exp <= now {
            return Err(JwtError::Expired);
        }
        if time_claim(claims, "nbf")?.is_some_and(|nbf| nbf > (now + CLOCK_SKEW) as f64) {
            return Err(JwtError::NotYetValid);
        }
        if time_claim(claims, "iat")?.is_some_and(|iat| iat > (now + CLOCK_SKEW) as f64) {
            return Err(JwtError::IssuedInFuture);
        }
        let listed = match claims.get("aud") {
            Some(Value::String(a)) => a == audience,
            Some(Value::Array(list)) => list.iter().any(|v| v.as_str() == Some(audience)),
            _ => false,
        };
        if audience.is_empty() || !listed {
            return Err(JwtError::AudienceMismatch(audience.to_owned()));
        }
        Ok(())
    }

    /// The validated token, its `aud` claim normalised to an array (call after
    /// [`Self::check`] accepted it).
    pub fn into_validated(self) -> ValidatedJwt {
        let Self {
            spiffe_id,
            mut claims,
            kid,
        } = self;
        let aud = audiences(&claims);
        claims.insert("aud".into(), json!(aud));
        ValidatedJwt {
            spiffe_id,
            claims,
            kid,
        }
    }
}

/// The `aud` claim as a list (a single string is a list of one; anything else, none).
fn audiences(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn setup() -> (JwtSigner, BTreeMap<TrustDomain, JwtBundle>) {
        let pkcs8 = JwtSigner::generate_pkcs8().unwrap();
        let signer = JwtSigner::from_pkcs8("k1", &pkcs8).unwrap();
        let key = JwtKey {
            kid: "k1".into(),
            public_key: signer.public_key(),
            expires_at: 0,
        };
        let mut bundles = BTreeMap::new();
        bundles.insert(
            TrustDomain::new("example.org").unwrap(),
            JwtBundle::new([key]),
        );
        (signer, bundles)
    }

    fn id() -> SpiffeId {
        SpiffeId::new("spiffe://example.org/web").unwrap()
    }

    fn token(signer: &JwtSigner, exp: i64) -> String {
        signer
            .sign(&id(), &["a".into(), "b".into()], NOW, exp, &Map::new())
            .unwrap()
    }

    /// Re-encodes a token with a modified header/claims, keeping (now invalid) signature.
    fn forge(tok: &str, header: Option<Value>, claims: Option<Value>) -> String {
        let mut p: Vec<String> = tok.split('.').map(str::to_owned).collect();
        if let Some(h) = header {
            p[0] = b64(h.to_string().as_bytes());
        }
        if let Some(c) = claims {
            p[1] = b64(c.to_string().as_bytes());
        }
        p.join(".")
    }

    #[test]
    fn a_verified_token_is_checked_again_for_each_time_and_audience() {
        let (signer, bundles) = setup();
        let t = token(&signer, NOW + 300);
        let v = verify(&t, &bundles).unwrap();
        assert_eq!(v.spiffe_id(), &id());
        assert_eq!(v.expires_at(), NOW + 300);
        assert_eq!(v.check("a", NOW), Ok(()));
        assert_eq!(v.check("b", NOW + 299), Ok(()));
        assert_eq!(v.check("a", NOW + 300), Err(JwtError::Expired));
        assert_eq!(
            v.check("c", NOW),
            Err(JwtError::AudienceMismatch("c".into()))
        );
        assert_eq!(v.check("", NOW), Err(JwtError::AudienceMismatch("".into())));
        // Time claims that verify alone does not look at.
        let early = signer
            .sign(&id(), &["a".into()], NOW + 120, NOW + 300, &Map::new())
            .unwrap();
        let v = verify(&early, &bundles).unwrap();
        assert_eq!(v.check("a", NOW), Err(JwtError::IssuedInFuture));
        assert_eq!(v.check("a", NOW + 120 - CLOCK_SKEW), Ok(()));
        let v = validate(&t, "a", &bundles, NOW).unwrap();
        assert_eq!(v.claims["aud"], json!(["a", "b"]));
        // Everything verify refuses, validate refuses the same way.
        let forged = forge(
            &t,
            None,
            Some(json!({"sub": id().as_str(), "aud": ["a"], "exp": NOW + 900})),
        );
        assert_eq!(verify(&forged, &bundles), Err(JwtError::BadSignature));
        assert_eq!(
            validate(&forged, "a", &bundles, NOW),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn valid_token_round_trips() {
        let (signer, bundles) = setup();
        let t = token(&signer, NOW + 300);
        let v = validate(&t, "b", &bundles, NOW).unwrap();
        assert_eq!(v.spiffe_id, id());
        assert_eq!(v.claims["aud"], json!(["a", "b"]));
        assert_eq!(v.claims["exp"], json!(NOW + 300));
        assert_eq!(v.kid, "k1");
        let header = decode_json(t.split('.').next().unwrap(), "h").unwrap();
        assert_eq!(
            Value::Object(header),
            json!({"alg": "ES256", "kid": "k1", "typ": "JWT"})
        );
    }

    #[test]
    fn rejections_are_specific() {
        let (signer, bundles) = setup();
        let good = token(&signer, NOW + 300);
        let claims = json!({"sub": "spiffe://example.org/web", "aud": ["a"], "exp": NOW + 300});
        let (other, _) = setup();
        let cases: Vec<(String, &str, JwtError)> = vec![
            (
                forge(&good, Some(json!({"alg": "none", "kid": "k1"})), None),
                "a",
                JwtError::DisallowedAlgorithm("none".into()),
            ),
            (
                forge(&good, Some(json!({"alg": "HS256", "kid": "k1"})), None),
                "a",
                JwtError::DisallowedAlgorithm("HS256".into()),
            ),
            (
                forge(&good, Some(json!({"alg": "RS256", "kid": "k1"})), None),
                "a",
                JwtError::UnsupportedAlgorithm("RS256".into()),
            ),
            (
                forge(&good, Some(json!({"alg": "ES256", "kid": "nope"})), None),
                "a",
                JwtError::UnknownKey("nope".into()),
            ),
            (
                forge(
                    &good,
                    Some(json!({"alg": "ES256", "kid": "k1", "jku": "x"})),
                    None,
                ),
                "a",
                JwtError::BadHeader("unexpected header parameter"),
            ),
            (
                forge(&good, None, Some(claims)),
                "a",
                JwtError::BadSignature,
            ),
            // Signed by a key that is not in the bundle but claims the bundle's kid.
            (token(&other, NOW + 300), "a", JwtError::BadSignature),
            (token(&signer, NOW - 1), "a", JwtError::Expired),
            (token(&signer, NOW), "a", JwtError::Expired),
            (good.clone(), "c", JwtError::AudienceMismatch("c".into())),
            (good.clone(), "", JwtError::AudienceMismatch(String::new())),
            (
                signer
                    .sign(
                        &SpiffeId::new("spiffe://other.org/web").unwrap(),
                        &["a".into()],
                        NOW,
                        NOW + 60,
                        &Map::new(),
                    )
                    .unwrap(),
                "a",
                JwtError::UntrustedTrustDomain("other.org".into()),
            ),
            (
                "a.b".into(),
                "a",
                JwtError::Malformed("not three dot-separated segments"),
            ),
            (
                "a.b.c.d".into(),
                "a",
                JwtError::Malformed("not three dot-separated segments"),
            ),
            (
                "!!.b.c".into(),
                "a",
                JwtError::Malformed("header is not base64url JSON"),
            ),
            ("x".repeat(MAX_TOKEN_LENGTH + 1), "a", JwtError::TooLarge),
            (
                forge(&good, None, Some(json!({"aud": ["a"], "exp": NOW + 9}))),
                "a",
                JwtError::BadSubject,
            ),
        ];
        for (tok, aud, want) in cases {
            assert_eq!(
                validate(&tok, aud, &bundles, NOW),
                Err(want.clone()),
                "{want}"
            );
        }
        // Missing exp with a valid signature.
        let no_exp = signed(
            &signer,
            json!({"sub": "spiffe://example.org/web", "aud": ["a"]}),
        );
        assert_eq!(
            validate(&no_exp, "a", &bundles, NOW),
            Err(JwtError::MissingExpiry)
        );
    }

    /// A token with exactly these header and claims, validly signed by `signer`.
    fn signed(signer: &JwtSigner, claims: Value) -> String {
        let h = b64(json!({"alg": "ES256", "kid": "k1", "typ": "JWT"})
            .to_string()
            .as_bytes());
        let input = format!("{h}.{}", b64(claims.to_string().as_bytes()));
        let mut sig = signer
            .pair
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        to_low_s(&mut sig);
        format!("{input}.{}", b64(&sig))
    }

    #[test]
    fn time_claims_in_the_future_are_refused_beyond_the_skew() {
        let (signer, bundles) = setup();
        let with = |extra: Value| {
            let mut c = json!({"sub": "spiffe://example.org/web", "aud": ["a"], "exp": NOW + 300});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            validate(&signed(&signer, c), "a", &bundles, NOW)
        };
        assert!(with(json!({"nbf": NOW - 10, "iat": NOW - 10})).is_ok());
        assert!(with(json!({"nbf": NOW + CLOCK_SKEW, "iat": NOW + CLOCK_SKEW})).is_ok());
        assert!(with(json!({"nbf": 1_800_000_000.5})).is_ok(), "fractional");
        assert_eq!(
            with(json!({"nbf": NOW + CLOCK_SKEW + 1})),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(
            with(json!({"iat": NOW + CLOCK_SKEW + 1})),
            Err(JwtError::IssuedInFuture)
        );
        assert_eq!(
            with(json!({"nbf": "soon"})),
            Err(JwtError::BadTimeClaim("nbf"))
        );
        assert_eq!(
            with(json!({"iat": null})),
            Err(JwtError::BadTimeClaim("iat"))
        );
    }

    #[test]
    fn high_s_twins_verify_but_are_refused_and_never_issued() {
        let (signer, bundles) = setup();
        for _ in 0..32 {
            let tok = token(&signer, NOW + 300);
            let (input, sig) = tok.rsplit_once('.').unwrap();
            let mut sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(sig)
                .unwrap();
            assert!(!is_high_s(&sig), "issued tokens are low-S");
            assert!(validate(&tok, "a", &bundles, NOW).is_ok());
            negate_s(&mut sig);
            assert!(is_high_s(&sig));
            // The twin is a valid ECDSA signature of the same input...
            signature::UnparsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_FIXED,
                signer.public_key(),
            )
            .verify(input.as_bytes(), &sig)
            .unwrap();
            // ...and still refused.
            let twin = format!("{input}.{}", b64(&sig));
            assert_eq!(validate(&twin, "a", &bundles, NOW), Err(JwtError::HighS));
        }
    }

    #[test]
    fn s_is_negated_modulo_the_group_order() {
        let mut sig = [0u8; 64];
        sig[32..].copy_from_slice(&P256_ORDER);
        sig[63] -= 1; // s = n − 1
        to_low_s(&mut sig);
        let mut one = [0u8; 32];
        one[31] = 1;
        assert_eq!(sig[32..], one);
        // The half order itself is low; one above it is high.
        sig[32..].copy_from_slice(&P256_HALF_ORDER);
        assert!(!is_high_s(&sig));
        sig[63] += 1;
        assert!(is_high_s(&sig));
        negate_s(&mut sig);
        assert_eq!(
            sig[32..],
            P256_HALF_ORDER,
            "n − (⌊n/2⌋ + 1) = ⌊n/2⌋ for odd n"
        );
        assert!(
            !is_high_s(&[0xff; 63]),
            "only 64-byte signatures are judged"
        );
    }

    #[test]
    fn jwks_has_full_width_coordinates_and_kids() {
        let (signer, bundles) = setup();
        let jwks = bundles.values().next().unwrap().to_jwks().unwrap();
        let key = &jwks["keys"][0];
        assert_eq!(key["kid"], "k1");
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(key["x"].as_str().unwrap())
            .unwrap();
        assert_eq!(x.len(), 32);
        assert!(key.get("use").is_none());
        assert_eq!(signer.kid(), "k1");
    }
}
