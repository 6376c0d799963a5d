//! ValidateJWTSVID refuses every bad token with gRPC InvalidArgument and a message naming
//! the reason, and FetchJWTSVID refuses an over-long audience as InvalidArgument (terminal),
//! never Unavailable (retried forever by clients).
//!
//! Every bad token is built in the test — mostly by mutating a real token, and where a
//! genuine signature matters, signed with a P-256 key of the test's own (`rcgen`).

use std::time::Duration;

use common::proto::workload::JwtsvidRequest;
use rcgen::{PublicKeyData as _, SigningKey as _};
use serde_json::{Value, json};
use spiffe::{JwtBundle, JwtBundleSet, JwtSvid, SpiffeId};
use tests::jwt::{
    b64d, b64e, claims, fetch_all_when_ready, flip_signature_bit, header, kid_of, spiffe_client,
    td, validate_raw,
};
use tests::with_header as req;
use tests::{Cluster, runtime, unix_now, workload_client};

/// Largest token the agent validates (common/src/jwt.rs MAX_TOKEN_LENGTH).
const MAX_TOKEN_LENGTH: usize = 8 * 1024;

/// Re-encodes a token with another header and/or claims, keeping its signature.
fn forge(token: &str, header: Option<&Value>, claims: Option<&Value>) -> String {
    let mut p: Vec<String> = token.split('.').map(str::to_owned).collect();
    if let Some(h) = header {
        p[0] = b64e(h.to_string().as_bytes());
    }
    if let Some(c) = claims {
        p[1] = b64e(c.to_string().as_bytes());
    }
    p.join(".")
}

/// An ECDSA DER signature (SEQUENCE { INTEGER r, INTEGER s }) as JWS `r || s` (32 + 32).
fn der_to_jws_signature(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30, "DER SEQUENCE");
    assert!(der[1] < 0x80, "short-form length for a P-256 signature");
    let mut i = 2;
    let mut out = Vec::with_capacity(64);
    for _ in 0..2 {
        assert_eq!(der[i], 0x02, "DER INTEGER");
        let len = usize::from(der[i + 1]);
        let mut int = &der[i + 2..i + 2 + len];
        while int.len() > 32 && int[0] == 0 {
            int = &int[1..];
        }
        assert!(int.len() <= 32);
        out.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        out.extend_from_slice(int);
        i += 2 + len;
    }
    out
}

/// The same token with its signature's `s` replaced by n − s: a second valid ECDSA
/// signature of the same input (ECDSA is malleable), which only a low-S rule refuses.
fn high_s_twin(token: &str) -> String {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut sig = b64d(sig);
    assert_eq!(sig.len(), 64);
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(N[i]) - i16::from(sig[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        sig[32 + i] = u8::try_from(d).unwrap();
    }
    format!("{input}.{}", b64e(&sig))
}

/// A P-256 key of the test's own, to make genuinely signed ES256 tokens Tessera never
/// issued.
struct ForeignSigner {
    key: rcgen::KeyPair,
}

impl ForeignSigner {
    fn new() -> Self {
        Self {
            key: rcgen::KeyPair::generate().unwrap(),
        }
    }

    /// An ES256 token with this header and claims, signed by this key.
    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64e(header.to_string().as_bytes()),
            b64e(claims.to_string().as_bytes())
        );
        let der = self.key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64e(&der_to_jws_signature(&der)))
    }

    /// The public key as a JWK with `kid`.
    fn jwk(&self, kid: &str) -> Value {
        let point = self.key.der_bytes();
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        json!({
            "kty": "EC", "kid": kid, "crv": "P-256",
            "x": b64e(&point[1..33]), "y": b64e(&point[33..]),
        })
    }
}

/// Asserts gRPC InvalidArgument whose message contains every one of `reasons`.
fn assert_rejected<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, tonic::Status>,
    reasons: &[&str],
) -> String {
    match r {
        Ok(v) => panic!("{what}: accepted: {v:?}"),
        Err(s) => {
            assert_eq!(
                s.code(),
                tonic::Code::InvalidArgument,
                "{what}: wrong code ({s:?})"
            );
            let msg = s.message().to_lowercase();
            for reason in reasons {
                assert!(
                    msg.contains(&reason.to_lowercase()),
                    "{what}: message {:?} does not name {reason:?}",
                    s.message()
                );
            }
            s.message().to_owned()
        }
    }
}

#[test]
fn validate_rejects_bad_tokens_with_a_reason() {
    let c = Cluster::start(&[]);
    let id = "spiffe://example.org/jwt/validate";
    let short = "spiffe://example.org/jwt/short-lived";
    c.server
        .create_entry(id, &["unix:uid:0"], &["--jwt-svid-ttl", "120"]);
    c.server
        .create_entry(short, &["unix:uid:0"], &["--jwt-svid-ttl", "2"]);
    runtime().block_on(async {
        let client = spiffe_client(&c.agent.endpoint()).await;
        let mut raw = workload_client(&c.agent.socket_path).await;
        fetch_all_when_ready(&client, &["a"], 2).await;
        let own = SpiffeId::new(id).unwrap();

        // The short-lived token first, so that it has expired by the end.
        let short_token = client
            .fetch_jwt_svid(&["a"], Some(&SpiffeId::new(short).unwrap()))
            .await
            .expect("short-lived token")
            .token()
            .to_owned();
        let short_exp = claims(&short_token)["exp"].as_i64().unwrap();
        assert!(short_exp - claims(&short_token)["iat"].as_i64().unwrap() == 2);
        validate_raw(&mut raw, "a", &short_token)
            .await
            .expect("short-lived token is valid before it expires");

        let good = client
            .fetch_jwt_svid(&["a", "b"], Some(&own))
            .await
            .unwrap()
            .token()
            .to_owned();
        let kid = kid_of(&good);
        let h = header(&good);
        let cl = claims(&good);
        // Positive controls: the real token validates for each of its audiences.
        for aud in ["a", "b"] {
            let r = validate_raw(&mut raw, aud, &good)
                .await
                .expect("valid token");
            assert_eq!(r.spiffe_id, id);
        }

        // The token's malleated twin verifies under ECDSA but is refused.
        assert_rejected(
            "high-S twin",
            validate_raw(&mut raw, "a", &high_s_twin(&good)).await,
            &["low-S"],
        );

        let with_alg = |alg: &str| json!({"alg": alg, "kid": kid, "typ": "JWT"});
        // The real token with a `pad` claim: the shortest one of at least `len` bytes.
        let padded = |len: usize| {
            let mut padded_claims = cl.clone();
            let mut n = 0;
            loop {
                padded_claims["pad"] = json!("x".repeat(n));
                let t = forge(&good, None, Some(&padded_claims));
                if t.len() >= len {
                    return t;
                }
                n += 1;
            }
        };
        let oversized = padded(9 * 1024);
        assert!((9 * 1024..9 * 1024 + 4).contains(&oversized.len()));
        // Just under the limit: refused for its signature, not its size.
        let at_limit = padded(MAX_TOKEN_LENGTH - 2);
        assert!((MAX_TOKEN_LENGTH - 2..=MAX_TOKEN_LENGTH).contains(&at_limit.len()));

        // Genuinely signed tokens from a key Tessera does not know.
        let attacker = ForeignSigner::new();
        let attacker_same_kid = attacker.sign(&h, &cl);
        let attacker_own_kid = attacker.sign(
            &json!({"alg": "ES256", "kid": "attacker-key", "typ": "JWT"}),
            &cl,
        );
        let mut foreign_claims = cl.clone();
        foreign_claims["sub"] = json!("spiffe://other.org/x");
        let foreign_td_signed = attacker.sign(&h, &foreign_claims);
        // Sanity of the forging code: the attacker tokens verify against the attacker's
        // key, so Tessera refuses them for the key, not for a broken signature encoding.
        let mut attacker_bundle = JwtBundle::new(td());
        attacker_bundle
            .add_jwk_authority_json(attacker.jwk(&kid).to_string().as_bytes())
            .unwrap();
        let mut attacker_set = JwtBundleSet::new();
        attacker_set.add_bundle(attacker_bundle);
        JwtSvid::parse_and_validate(&attacker_same_kid, &attacker_set, &["a"])
            .expect("attacker token is a well-formed ES256 JWS");

        let mut no_exp = cl.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        let mut more_aud = cl.clone();
        more_aud["aud"] = json!(["a", "b", "c"]);
        let mut later_exp = cl.clone();
        later_exp["exp"] = json!(cl["exp"].as_i64().unwrap() + 3600);
        let mut other_sub = cl.clone();
        other_sub["sub"] = json!("spiffe://example.org/jwt/someone-else");
        let (hdr, body) = {
            let p: Vec<&str> = good.split('.').collect();
            (p[0].to_owned(), p[1].to_owned())
        };

        let cases: Vec<(&str, String, &str, Vec<&str>)> = vec![
            (
                "alg none (empty signature)",
                format!(
                    "{}.{body}.",
                    b64e(
                        json!({"alg": "none", "kid": kid, "typ": "JWT"})
                            .to_string()
                            .as_bytes()
                    )
                ),
                "a",
                vec!["not allowed", "\"none\""],
            ),
            (
                "alg none (real signature kept)",
                forge(&good, Some(&with_alg("none")), None),
                "a",
                vec!["not allowed", "\"none\""],
            ),
            (
                "alg HS256",
                forge(&good, Some(&with_alg("HS256")), None),
                "a",
                vec!["not allowed", "HS256"],
            ),
            (
                "alg HS512",
                forge(&good, Some(&with_alg("HS512")), None),
                "a",
                vec!["not allowed", "HS512"],
            ),
            (
                "alg EdDSA",
                forge(&good, Some(&with_alg("EdDSA")), None),
                "a",
                vec!["not allowed", "EdDSA"],
            ),
            (
                "alg missing",
                forge(&good, Some(&json!({"kid": kid, "typ": "JWT"})), None),
                "a",
                vec!["not allowed"],
            ),
            (
                "alg RS256 (in the JWT-SVID list, not Tessera's)",
                forge(&good, Some(&with_alg("RS256")), None),
                "a",
                vec!["not supported", "RS256"],
            ),
            (
                "alg ES384",
                forge(&good, Some(&with_alg("ES384")), None),
                "a",
                vec!["not supported", "ES384"],
            ),
            (
                "unknown kid",
                forge(
                    &good,
                    Some(&json!({"alg": "ES256", "kid": "no-such-key", "typ": "JWT"})),
                    None,
                ),
                "a",
                vec!["unknown key", "no-such-key"],
            ),
            (
                "kid missing",
                forge(&good, Some(&json!({"alg": "ES256", "typ": "JWT"})), None),
                "a",
                vec!["unknown key"],
            ),
            (
                "attacker key under its own kid",
                attacker_own_kid,
                "a",
                vec!["unknown key", "attacker-key"],
            ),
            (
                "extra header parameter (jku)",
                forge(
                    &good,
                    Some(&json!({"alg": "ES256", "kid": kid, "typ": "JWT", "jku": "https://evil"})),
                    None,
                ),
                "a",
                vec!["header"],
            ),
            (
                "typ not JWT/JOSE",
                forge(
                    &good,
                    Some(&json!({"alg": "ES256", "kid": kid, "typ": "at+jwt"})),
                    None,
                ),
                "a",
                vec!["header", "typ"],
            ),
            (
                "flipped signature bit",
                flip_signature_bit(&good),
                "a",
                vec!["signature"],
            ),
            (
                "truncated signature",
                format!(
                    "{hdr}.{body}.{}",
                    &b64e(&b64d(good.rsplit('.').next().unwrap())[..32])
                ),
                "a",
                vec!["signature"],
            ),
            (
                "attacker key under Tessera's kid",
                attacker_same_kid,
                "a",
                vec!["signature"],
            ),
            (
                "claims changed: audience added",
                forge(&good, None, Some(&more_aud)),
                "c",
                vec!["signature"],
            ),
            (
                "claims changed: exp extended",
                forge(&good, None, Some(&later_exp)),
                "a",
                vec!["signature"],
            ),
            (
                "claims changed: other subject",
                forge(&good, None, Some(&other_sub)),
                "a",
                vec!["signature"],
            ),
            (
                "claims changed: exp removed",
                forge(&good, None, Some(&no_exp)),
                "a",
                vec!["signature"],
            ),
            (
                "wrong audience",
                good.clone(),
                "c",
                vec!["audience", "\"c\""],
            ),
            (
                "audience differing in case",
                good.clone(),
                "A",
                vec!["audience"],
            ),
            (
                "foreign trust domain (signature kept)",
                forge(&good, None, Some(&foreign_claims)),
                "a",
                vec!["not trusted", "other.org"],
            ),
            (
                "foreign trust domain (genuinely signed)",
                foreign_td_signed,
                "a",
                vec!["not trusted", "other.org"],
            ),
            (
                "malformed: two segments",
                "a.b".into(),
                "a",
                vec!["malformed"],
            ),
            (
                "malformed: four segments",
                format!("{good}.x"),
                "a",
                vec!["malformed"],
            ),
            (
                "malformed: header not base64url",
                format!("!!!.{body}.x"),
                "a",
                vec!["malformed"],
            ),
            (
                "malformed: header not JSON",
                format!("{}.{body}.x", b64e(b"not json")),
                "a",
                vec!["malformed"],
            ),
            (
                "malformed: claims not JSON",
                format!("{hdr}.{}.x", b64e(b"[1,2")),
                "a",
                vec!["malformed"],
            ),
            (
                "malformed: signature not base64url",
                format!("{hdr}.{body}.***"),
                "a",
                vec!["malformed"],
            ),
            (
                "malformed: not a JWT at all",
                "hello".into(),
                "a",
                vec!["malformed"],
            ),
            (
                "subject not a SPIFFE ID",
                forge(
                    &good,
                    None,
                    Some(&json!({"sub": "https://example.org/x", "aud": ["a"], "exp": cl["exp"]})),
                ),
                "a",
                vec!["subject"],
            ),
            ("oversized (9 KiB)", oversized, "a", vec!["larger than"]),
            (
                "just under the size limit",
                at_limit,
                "a",
                vec!["signature"],
            ),
        ];
        let mut reasons = Vec::new();
        for (what, token, audience, want) in &cases {
            let r = validate_raw(&mut raw, audience, token).await;
            let msg = assert_rejected(what, r, want);
            // The real client sees the same: InvalidArgument, with the reason.
            let e = client
                .validate_jwt_token(audience, token)
                .await
                .expect_err(what);
            assert!(e.is_invalid_argument(), "{what}: spiffe crate: {e:?}");
            assert!(e.to_string().contains(&msg), "{what}: {e}");
            reasons.push(format!("{what}: {msg}"));
        }

        // Empty request fields.
        assert_rejected(
            "empty audience",
            validate_raw(&mut raw, "", &good).await,
            &["audience"],
        );
        assert_rejected(
            "empty svid",
            validate_raw(&mut raw, "a", "").await,
            &["svid"],
        );

        // Expired: the 2 s token, once its exp has passed.
        while unix_now() <= short_exp {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let msg = assert_rejected(
            "expired",
            validate_raw(&mut raw, "a", &short_token).await,
            &["expired"],
        );
        let e = client
            .validate_jwt_token("a", &short_token)
            .await
            .expect_err("expired");
        assert!(e.is_invalid_argument(), "{e:?}");
        reasons.push(format!("expired: {msg}"));
        // The long-lived real token is still fine afterwards.
        validate_raw(&mut raw, "a", &good)
            .await
            .expect("valid token still valid");
        println!("{} rejections:\n  {}", reasons.len(), reasons.join("\n  "));
    });
}

/// An audience longer than the server accepts is a bad request, not a transient failure:
/// InvalidArgument (terminal for clients), never Unavailable (which clients retry forever).
#[test]
fn overlong_audience_is_invalid_argument() {
    let c = Cluster::start(&[]);
    c.server
        .create_entry("spiffe://example.org/jwt/aud", &["unix:uid:0"], &[]);
    runtime().block_on(async {
        let client = spiffe_client(&c.agent.endpoint()).await;
        let mut raw = workload_client(&c.agent.socket_path).await;
        fetch_all_when_ready(&client, &["a"], 1).await;
        // 1024 bytes is the limit: accepted, and the token carries it whole.
        let max = "m".repeat(1024);
        let svid = client
            .fetch_jwt_svid([max.as_str()], None)
            .await
            .expect("a 1024-byte audience is accepted");
        assert_eq!(claims(svid.token())["aud"], json!([max]));
        for len in [1025, 2000] {
            let s = raw
                .fetch_jwtsvid(req(JwtsvidRequest {
                    audience: vec!["a".into(), "x".repeat(len)],
                    spiffe_id: String::new(),
                }))
                .await
                .expect_err("over-long audience refused");
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{len} bytes: {s:?}");
            assert!(s.message().contains("audience"), "{s:?}");
            let e = client
                .fetch_jwt_svid(["x".repeat(len)], None)
                .await
                .expect_err("over-long audience refused");
            assert!(e.is_invalid_argument(), "spiffe crate, {len} bytes: {e:?}");
        }
    });
}
