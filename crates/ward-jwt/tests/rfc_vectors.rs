//! The RFC 7515 Appendix A examples: the ES256 example verifies with its
//! published key; the HS256 and unsecured examples are refused, since ward
//! accepts neither MACs nor `none`.
use serde_json::{json, Value};
use ward_jwt::{verify, JwkSet, JwtError, Validation};

fn loose(now: i64) -> Validation {
    let mut v = Validation::access_token("joe", "");
    v.audience = None;
    v.typ = None;
    v.required = vec!["iss", "exp"];
    v.at(now)
}

#[test]
fn rfc7515_appendix_a() {
    let data: Value = serde_json::from_str(include_str!("vectors/rfc7515.json")).unwrap();
    let exp = data["payload_claims_exp"].as_i64().unwrap();
    let keys =
        JwkSet::from_json(&json!({ "keys": [data["a3_es256"]["jwk"]] }).to_string()).unwrap();
    let jws = data["a3_es256"]["jws"].as_str().unwrap();
    let claims = verify(jws, &keys, &loose(exp - 10)).expect("A.3 verifies");
    assert_eq!(claims.iss(), Some("joe"));
    assert_eq!(claims.get("http://example.com/is_root"), Some(&json!(true)));
    assert_eq!(
        verify(jws, &keys, &loose(exp + 3600)),
        Err(JwtError::Expired)
    );
    // One flipped bit anywhere in the signature breaks it.
    let mut bad = jws.to_string();
    let last = bad.pop().unwrap();
    bad.push(if last == 'Q' { 'R' } else { 'Q' });
    assert!(verify(&bad, &keys, &loose(exp - 10)).is_err());

    assert_eq!(
        verify(data["a1_hs256"].as_str().unwrap(), &keys, &loose(exp - 10)),
        Err(JwtError::UnsupportedAlgorithm("HS256".into()))
    );
    assert!(matches!(
        verify(data["a5_none"].as_str().unwrap(), &keys, &loose(exp - 10)),
        Err(JwtError::AlgNone | JwtError::BadSignature)
    ));
}
