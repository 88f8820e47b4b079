//! JWT verification cost, each figure next to the bare ES256 signature
//! verification measured in the same run:
//!
//! - `bare_es256_signature`: aws-lc-rs ECDSA P-256 verification of the
//!   token's signing input, nothing else;
//! - `uncached_es256`: `ward_jwt::verify` of a whole RFC 9068 access
//!   token (split, base64, header rules, key lookup, signature, claims);
//! - `cached_token`: `JwksCache::verify_now` of a token it has verified
//!   before (lookup plus the per-call claim checks).
//!
//! `cargo bench -p ward-bench --bench jwt`
use std::hint::black_box;

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use ward_jwt::{Algorithm, JwkSet, JwksCache, SigningKey, Validation};

fn bench(c: &mut Criterion) {
    let key = SigningKey::generate(Algorithm::ES256, "k1").expect("key");
    let jwk = key.public_jwk();
    let keys = JwkSet::from_json(&json!({ "keys": [jwk.clone()] }).to_string()).expect("jwks");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    // The shape of a token ward's server issues.
    let token = key
        .sign(
            "at+jwt",
            &json!({
                "iss": "https://127.0.0.1:8443", "sub": "spiffe://ward.internal/ns/default/sa/checkout",
                "aud": "payments", "exp": now + 300, "iat": now, "nbf": now,
                "jti": "8d5e7a1c-5b8a-4b1e-9d0a-3f1f0c9a2b11", "client_id": "checkout",
                "scope": "payments:read payments:write",
                "cnf": { "x5t#S256": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc" },
            }),
        )
        .expect("sign");
    let mut v = Validation::access_token("https://127.0.0.1:8443", "payments");
    v.peer_cert_sha256 = Some([7; 32]);

    let point: Vec<u8> = [4u8]
        .into_iter()
        .chain(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap())
        .chain(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap())
        .collect();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point);

    let mut g = c.benchmark_group("jwt");
    g.bench_function("bare_es256_signature", |b| {
        b.iter(|| {
            public
                .verify(black_box(input.as_bytes()), black_box(&sig))
                .unwrap()
        })
    });
    g.bench_function("uncached_es256", |b| {
        b.iter(|| ward_jwt::verify(black_box(&token), &keys, &v).unwrap())
    });
    let cache = JwksCache::fixed(keys.clone());
    cache.verify_now(&token, &v).unwrap();
    g.bench_function("cached_token", |b| {
        b.iter(|| cache.verify_now(black_box(&token), &v).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
