//! The JWS examples of RFC 7515 Appendix A and RFC 7520 section 4: those
//! that use an algorithm ward accepts verify with their published keys;
//! MACs, `none` and algorithms outside ward's set are refused.
use serde_json::{json, Value};
use ward_jwt::{verify, verify_jws, JwkSet, JwtError, Validation};

fn loose(now: i64) -> Validation {
    let mut v = Validation::access_token("joe", "");
    v.audience = None;
    v.typ = Vec::new();
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

#[test]
fn rfc7520_section_4() {
    let data: Value = serde_json::from_str(include_str!("vectors/rfc7520.json")).unwrap();
    // 4.1: RSASSA-PKCS1-v1_5 (RS256) with the RSA key of 3.4.
    let keys =
        JwkSet::from_json(&json!({ "keys": [data["s4_1_rs256"]["jwk"]] }).to_string()).unwrap();
    let jws = data["s4_1_rs256"]["jws"].as_str().unwrap();
    let ok = verify_jws(jws, &keys, 8192).expect("4.1 verifies");
    assert_eq!(
        String::from_utf8(ok.payload).unwrap(),
        data["payload_text"].as_str().unwrap()
    );
    assert_eq!(ok.header["kid"], "bilbo.baggins@hobbiton.example");
    // Its payload is text, not claims: as a JWT it is malformed.
    assert!(matches!(
        verify(jws, &keys, &loose(0)),
        Err(JwtError::Malformed(_))
    ));
    let (head, sig) = jws.rsplit_once('.').unwrap();
    let mut flipped = sig.as_bytes().to_vec();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = format!("{head}.{}", String::from_utf8(flipped).unwrap());
    assert_eq!(
        verify_jws(&flipped, &keys, 8192).unwrap_err(),
        JwtError::BadSignature
    );
    // The same token with a kid the set does not have.
    let other = JwkSet::from_json(
        &json!({ "keys": [{ "kty": "RSA", "kid": "someone-else",
            "n": data["s4_1_rs256"]["jwk"]["n"], "e": "AQAB" }] })
        .to_string(),
    )
    .unwrap();
    assert_eq!(
        verify_jws(jws, &other, 8192).unwrap_err(),
        JwtError::UnknownKey
    );

    // 4.4: HMAC-SHA256 with the symmetric key of 3.5. Symmetric keys are
    // not usable verification keys, so the key set is empty and the
    // algorithm is refused before any key is looked up.
    let hs = &data["s4_4_hs256"];
    let sym = JwkSet::from_json(&json!({ "keys": [hs["jwk"]] }).to_string()).unwrap();
    assert!(sym.keys.is_empty());
    for set in [&sym, &keys] {
        assert_eq!(
            verify_jws(hs["jws"].as_str().unwrap(), set, 8192).unwrap_err(),
            JwtError::UnsupportedAlgorithm("HS256".into())
        );
    }

    // 4.2 (PS384) and 4.3 (ES512) use algorithms ward does not accept.
    let payload = jws.split('.').nth(1).unwrap();
    for (field, alg) in [
        ("s4_2_ps384_header", "PS384"),
        ("s4_3_es512_header", "ES512"),
    ] {
        let token = format!("{}.{payload}.AAAA", data[field].as_str().unwrap());
        assert_eq!(
            verify_jws(&token, &keys, 8192).unwrap_err(),
            JwtError::UnsupportedAlgorithm(alg.into())
        );
    }
}
