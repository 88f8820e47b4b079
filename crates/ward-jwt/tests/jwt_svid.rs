//! JWT-SVID verification (SPIFFE JWT-SVID standard): what passes, and
//! what is refused.
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use ward_jwt::{verify_jwt_svid, Algorithm, JwkSet, JwtError, SigningKey};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn setup() -> (SigningKey, JwkSet) {
    let key = SigningKey::generate(Algorithm::ES256, "svid-1").unwrap();
    let jwks = JwkSet::from_json(&json!({ "keys": [key.public_jwk()] }).to_string()).unwrap();
    (key, jwks)
}

fn claims() -> Value {
    let t = now();
    json!({ "sub": "spiffe://ward.internal/ns/default/sa/frontend", "aud": ["payments"], "iat": t, "exp": t + 300 })
}

#[test]
fn a_jwt_svid_verifies_for_its_audience() {
    let (key, jwks) = setup();
    for typ in ["JWT", "JOSE"] {
        let t = key.sign(typ, &claims()).unwrap();
        let c = verify_jwt_svid(&t, &jwks, "payments").unwrap();
        assert_eq!(
            c.sub(),
            Some("spiffe://ward.internal/ns/default/sa/frontend")
        );
    }
}

#[test]
fn another_audience_expiry_typ_or_key_is_refused() {
    let (key, jwks) = setup();
    let t = key.sign("JWT", &claims()).unwrap();
    assert!(matches!(
        verify_jwt_svid(&t, &jwks, "ledger"),
        Err(JwtError::WrongAudience)
    ));
    let mut old = claims();
    old["exp"] = json!(now() - 120);
    let t = key.sign("JWT", &old).unwrap();
    assert!(verify_jwt_svid(&t, &jwks, "payments").is_err());
    // An OAuth access token is not a JWT-SVID.
    let t = key.sign("at+jwt", &claims()).unwrap();
    assert!(matches!(
        verify_jwt_svid(&t, &jwks, "payments"),
        Err(JwtError::WrongType)
    ));
    let mut no_sub = claims();
    no_sub.as_object_mut().unwrap().remove("sub");
    let t = key.sign("JWT", &no_sub).unwrap();
    assert!(verify_jwt_svid(&t, &jwks, "payments").is_err());
    // Signed by a key the trust domain does not publish.
    let other = SigningKey::generate(Algorithm::ES256, "svid-1").unwrap();
    let t = other.sign("JWT", &claims()).unwrap();
    assert!(verify_jwt_svid(&t, &jwks, "payments").is_err());
}
