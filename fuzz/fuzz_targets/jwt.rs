//! ValidateJWTSVID's token checks (`common::jwt::validate`) on arbitrary token strings.
//!
//! The bundle holds one real ES256 key; the fuzzer cannot forge a signature with it, so
//! nothing it produces may validate, and nothing may panic. The input's first byte picks
//! the audience asked for, the rest is the token.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use common::TrustDomain;
use common::jwt::{JwtBundle, JwtKey, JwtSigner, validate};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_800_000_000;
const AUDIENCES: [&str; 2] = ["fuzz", ""];

static BUNDLES: LazyLock<BTreeMap<TrustDomain, JwtBundle>> = LazyLock::new(|| {
    let pkcs8 = JwtSigner::generate_pkcs8().expect("key");
    let signer = JwtSigner::from_pkcs8("k1", &pkcs8).expect("signer");
    let key = JwtKey {
        kid: signer.kid().to_owned(),
        public_key: signer.public_key(),
        expires_at: 0,
    };
    let td = TrustDomain::new("example.org").expect("trust domain");
    BTreeMap::from([(td, JwtBundle::new([key]))])
});

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(token) = std::str::from_utf8(rest) else {
        return;
    };
    let audience = AUDIENCES[usize::from(pick) % AUDIENCES.len()];
    if let Ok(v) = validate(token, audience, &BUNDLES, NOW) {
        panic!("a token nobody signed validated: {v:?}");
    }
});
