//! Tokens minted by PyJWT for every supported algorithm verify from a JWKS
//! file, and are refused when any checked claim is wrong.
use std::process::Command;

use serde_json::Value;
use ward_jwt::{verify, JwkSet, JwtError, Validation};

#[test]
fn pyjwt_tokens_for_every_algorithm() {
    let now = 1_800_000_000i64;
    let python = std::env::var("WARD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/mint_pyjwt.py");
    let out = Command::new(python)
        .arg(script)
        .arg(now.to_string())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dir = tempfile_dir();
    let jwks_file = dir.join("jwks.json");
    std::fs::write(&jwks_file, v["jwks"].to_string()).unwrap();
    let jwks = JwkSet::from_json(&std::fs::read_to_string(&jwks_file).unwrap()).unwrap();
    assert_eq!(jwks.keys.len(), 5, "every key of the JWKS file is usable");
    let val = Validation::access_token("https://issuer.example", "payments").at(now);
    for alg in ["ES256", "ES384", "EdDSA", "RS256", "PS256"] {
        let tok = |name: &str| {
            v["tokens"][format!("{alg}/{name}")]
                .as_str()
                .unwrap()
                .to_string()
        };
        let claims = verify(&tok("valid"), &jwks, &val).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(claims.sub(), Some("svc"));
        for (name, want) in [
            ("wrong_iss", JwtError::WrongIssuer),
            ("wrong_aud", JwtError::WrongAudience),
            ("expired", JwtError::Expired),
            ("not_yet", JwtError::NotYetValid),
            ("future_iat", JwtError::IssuedInFuture),
            ("exp_string", JwtError::ClaimType("exp")),
            ("wrong_typ", JwtError::WrongType),
        ] {
            assert_eq!(verify(&tok(name), &jwks, &val), Err(want), "{alg}/{name}");
        }
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ward-jwt-pyjwt-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
