//! Every known way to forge or misuse a JWT, each refused.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use ward_jwt::{verify, Algorithm, JwkSet, JwtError, SigningKey, Validation};

const ISS: &str = "https://ward.example";
const NOW: i64 = 1_800_000_000;

fn setup() -> (SigningKey, JwkSet, Validation) {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let jwks = JwkSet::from_json(&json!({ "keys": [key.public_jwk()] }).to_string()).unwrap();
    (key, jwks, Validation::access_token(ISS, "payments").at(NOW))
}

fn claims() -> Value {
    json!({ "iss": ISS, "sub": "frontend", "aud": "payments", "exp": NOW + 300, "iat": NOW, "jti": "j1", "client_id": "frontend", "scope": "payments:read" })
}

fn enc(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// The signing input of a token with a hand-made header and payload.
fn unsigned(header: Value, payload: &str) -> String {
    format!("{}.{}", enc(&header), URL_SAFE_NO_PAD.encode(payload))
}

fn parts(t: &str) -> Vec<String> {
    t.split('.').map(String::from).collect()
}

#[test]
fn a_valid_token_verifies() {
    let (key, jwks, v) = setup();
    let t = key.sign("at+jwt", &claims()).unwrap();
    let c = verify(&t, &jwks, &v).unwrap();
    assert_eq!(c.client_id(), Some("frontend"));
    assert_eq!(c.scopes(), ["payments:read"]);
}

#[test]
fn alg_none_in_every_spelling() {
    let (_, jwks, v) = setup();
    for alg in ["none", "None", "NONE", "nOnE"] {
        for sig in ["", "AAAA"] {
            let t = format!(
                "{}.{}.{sig}",
                enc(&json!({ "alg": alg, "typ": "at+jwt" })),
                enc(&claims())
            );
            let e = verify(&t, &jwks, &v).unwrap_err();
            assert!(
                matches!(e, JwtError::AlgNone | JwtError::BadSignature),
                "{alg} {sig:?}: {e:?}"
            );
        }
    }
}

#[test]
fn stripped_or_empty_signature() {
    let (key, jwks, v) = setup();
    let t = key.sign("at+jwt", &claims()).unwrap();
    let p = parts(&t);
    assert_eq!(
        verify(&format!("{}.{}.", p[0], p[1]), &jwks, &v),
        Err(JwtError::BadSignature)
    );
    assert!(matches!(
        verify(&format!("{}.{}", p[0], p[1]), &jwks, &v),
        Err(JwtError::Malformed(_))
    ));
    // A signature of zeros (ECDSA r = s = 0).
    let zeros = URL_SAFE_NO_PAD.encode([0u8; 64]);
    assert_eq!(
        verify(&format!("{}.{}.{zeros}", p[0], p[1]), &jwks, &v),
        Err(JwtError::BadSignature)
    );
    // The right signature on altered claims.
    let mut c = claims();
    c["scope"] = json!("payments:write");
    assert_eq!(
        verify(&format!("{}.{}.{}", p[0], enc(&c), p[2]), &jwks, &v),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn hmac_with_the_public_key_as_secret() {
    // RS256/ES256 → HS256 confusion: HMAC over the token with the public
    // key's bytes as the secret. ward accepts no HMAC algorithm at all.
    let (key, jwks, v) = setup();
    let secret = key.public_jwk().to_string();
    for alg in ["HS256", "HS384", "HS512"] {
        let signing_input = format!(
            "{}.{}",
            enc(&json!({ "alg": alg, "kid": "k1", "typ": "at+jwt" })),
            enc(&claims())
        );
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes()),
            signing_input.as_bytes(),
        );
        let t = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert_eq!(
            verify(&t, &jwks, &v),
            Err(JwtError::UnsupportedAlgorithm(alg.into()))
        );
    }
}

#[test]
fn algorithm_bound_to_key_type() {
    // An Ed25519 signature presented as ES256 with the EC key's kid.
    let (_, jwks, v) = setup();
    let ed = SigningKey::generate(Algorithm::EdDSA, "k1").unwrap();
    let t = ed.sign("at+jwt", &claims()).unwrap();
    assert_eq!(
        verify(&t, &jwks, &v),
        Err(JwtError::UnknownKey),
        "EdDSA token, EC key"
    );
    let p = parts(&t);
    let relabelled = format!(
        "{}.{}.{}",
        enc(&json!({ "alg": "ES256", "kid": "k1", "typ": "at+jwt" })),
        p[1],
        p[2]
    );
    assert_eq!(verify(&relabelled, &jwks, &v), Err(JwtError::BadSignature));
}

#[tokio::test]
async fn embedded_keys_are_never_used() {
    // The attacker signs with its own key and embeds it (jwk), points to it
    // (jku, x5u) or ships a certificate (x5c): verification still uses only
    // the verifier's keys. The jku/x5u URLs point at a server this test
    // runs, which must never see a connection, whether verification is
    // one-off or through a fetching JWKS cache.
    let (key, jwks, v) = setup();
    let lure = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    lure.set_nonblocking(true).unwrap();
    let at = lure.local_addr().unwrap();
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cache = {
        let json = json!({ "keys": [key.public_jwk()] }).to_string();
        let fetches = fetches.clone();
        ward_jwt::JwksCache::new(std::sync::Arc::new(move || {
            fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let json = json.clone();
            Box::pin(async move { Ok(json) })
        }))
    };
    let evil = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    for extra in [
        json!({ "jwk": evil.public_jwk() }),
        json!({ "jku": format!("http://{at}/jwks.json") }),
        json!({ "x5u": format!("http://{at}/cert.pem") }),
        json!({ "jku": format!("http://{at}/jwks.json"), "kid": "attacker-key" }),
        json!({ "x5c": ["MIIB"] }),
    ] {
        let mut header = json!({ "alg": "ES256", "kid": "k1", "typ": "at+jwt" });
        for (k, val) in extra.as_object().unwrap() {
            header[k] = val.clone();
        }
        // Signed by the attacker's key, which the header offers.
        let t = sign_raw(&evil, &unsigned(header, &claims().to_string()));
        assert!(verify(&t, &jwks, &v).is_err(), "{extra}");
        assert!(cache.verify(&t, &v).await.is_err(), "{extra}");
    }
    match lure.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the jku/x5u server was contacted: {other:?}"),
    }
    // The cache only ever fetched from its own configured source.
    assert!(fetches.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

/// Signs an arbitrary signing input with `key` (ES256).
fn sign_raw(key: &SigningKey, signing_input: &str) -> String {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.pkcs8()).unwrap();
    let sig = kp
        .sign(
            &aws_lc_rs::rand::SystemRandom::new(),
            signing_input.as_bytes(),
        )
        .unwrap();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

#[test]
fn kid_traversal_and_unknown_kids() {
    let (key, jwks, v) = setup();
    for kid in [
        "../../../../etc/passwd",
        "k1' OR '1'='1",
        "/dev/null",
        "",
        "k1\u{0}",
        "k2",
    ] {
        let input = format!(
            "{}.{}",
            enc(&json!({ "alg": "ES256", "kid": kid, "typ": "at+jwt" })),
            enc(&claims())
        );
        assert_eq!(
            verify(&sign_raw(&key, &input), &jwks, &v),
            Err(JwtError::UnknownKey),
            "{kid:?}"
        );
    }
    let input = format!(
        "{}.{}",
        enc(&json!({ "alg": "ES256", "kid": 7, "typ": "at+jwt" })),
        enc(&claims())
    );
    assert!(matches!(
        verify(&sign_raw(&key, &input), &jwks, &v),
        Err(JwtError::Malformed(_))
    ));
}

#[test]
fn time_claims() {
    let (key, jwks, v) = setup();
    let with = |k: &str, val: Value| {
        let mut c = claims();
        c[k] = val;
        key.sign("at+jwt", &c).unwrap()
    };
    assert_eq!(
        verify(&with("exp", json!(NOW - 31)), &jwks, &v),
        Err(JwtError::Expired)
    );
    assert!(
        verify(&with("exp", json!(NOW - 29)), &jwks, &v).is_ok(),
        "within leeway"
    );
    assert_eq!(
        verify(&with("nbf", json!(NOW + 120)), &jwks, &v),
        Err(JwtError::NotYetValid)
    );
    assert_eq!(
        verify(&with("iat", json!(NOW + 3600)), &jwks, &v),
        Err(JwtError::IssuedInFuture)
    );
    assert_eq!(
        verify(&with("exp", json!((NOW + 300).to_string())), &jwks, &v),
        Err(JwtError::ClaimType("exp"))
    );
    assert_eq!(
        verify(&with("nbf", json!(true)), &jwks, &v),
        Err(JwtError::ClaimType("nbf"))
    );
    assert_eq!(
        verify(&with("iat", json!(null)), &jwks, &v),
        Err(JwtError::ClaimType("iat"))
    );
    // Leeway above 60 s is capped.
    let mut lax = v.clone();
    lax.leeway_secs = 3600;
    assert_eq!(
        verify(&with("exp", json!(NOW - 61)), &jwks, &lax),
        Err(JwtError::Expired)
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        verify(&key.sign("at+jwt", &c).unwrap(), &jwks, &v),
        Err(JwtError::MissingClaim("exp"))
    );
}

#[test]
fn issuer_audience_and_type() {
    let (key, jwks, v) = setup();
    let with = |k: &str, val: Value| {
        let mut c = claims();
        c[k] = val;
        key.sign("at+jwt", &c).unwrap()
    };
    assert_eq!(
        verify(&with("iss", json!("https://ward.example/")), &jwks, &v),
        Err(JwtError::WrongIssuer)
    );
    assert_eq!(
        verify(&with("iss", json!("https://evil.example")), &jwks, &v),
        Err(JwtError::WrongIssuer)
    );
    assert_eq!(
        verify(&with("aud", json!("ledger")), &jwks, &v),
        Err(JwtError::WrongAudience)
    );
    assert!(verify(&with("aud", json!(["ledger", "payments"])), &jwks, &v).is_ok());
    assert_eq!(
        verify(&with("aud", json!(["ledger", 7])), &jwks, &v),
        Err(JwtError::ClaimType("aud"))
    );
    assert_eq!(
        verify(&with("sub", json!(12)), &jwks, &v),
        Err(JwtError::ClaimType("sub"))
    );
    assert_eq!(
        verify(&key.sign("JWT", &claims()).unwrap(), &jwks, &v),
        Err(JwtError::WrongType),
        "an ID token is not an access token"
    );
    assert!(verify(
        &key.sign("application/at+jwt", &claims()).unwrap(),
        &jwks,
        &v
    )
    .is_ok());
}

#[test]
fn duplicate_claims_crit_size_encoding() {
    let (key, jwks, v) = setup();
    let dup = r#"{"iss":"https://ward.example","sub":"frontend","aud":"payments","exp":1800000300,"iat":1800000000,"jti":"j1","client_id":"frontend","sub":"admin"}"#;
    let input = format!(
        "{}.{}",
        enc(&json!({ "alg": "ES256", "kid": "k1", "typ": "at+jwt" })),
        URL_SAFE_NO_PAD.encode(dup)
    );
    assert!(
        matches!(verify(&sign_raw(&key, &input), &jwks, &v), Err(JwtError::Malformed(m)) if m.contains("duplicate"))
    );
    let dup_header = r#"{"alg":"ES256","kid":"k1","typ":"at+jwt","alg":"none"}"#;
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(dup_header), enc(&claims()));
    assert!(matches!(
        verify(&sign_raw(&key, &input), &jwks, &v),
        Err(JwtError::Malformed(_))
    ));

    let input = format!(
        "{}.{}",
        enc(&json!({ "alg": "ES256", "kid": "k1", "typ": "at+jwt", "crit": ["exp"], "exp": 1 })),
        enc(&claims())
    );
    assert_eq!(
        verify(&sign_raw(&key, &input), &jwks, &v),
        Err(JwtError::UnknownCritical)
    );

    let mut big = claims();
    big["pad"] = json!("x".repeat(10_000));
    assert_eq!(
        verify(&key.sign("at+jwt", &big).unwrap(), &jwks, &v),
        Err(JwtError::TooLarge)
    );

    let t = key.sign("at+jwt", &claims()).unwrap();
    let p = parts(&t);
    for bad in [
        format!("{}=.{}.{}", p[0], p[1], p[2]),
        format!("{}.{}.{}+", p[0], p[1], p[2]),
        format!("{}.{}*.{}", p[0], p[1], p[2]),
        format!("{}.{}.{}.{}.{}", p[0], p[1], p[2], p[1], p[2]),
        format!("{}..{}", p[0], p[2]),
        "".to_string(),
        "...".to_string(),
    ] {
        assert!(verify(&bad, &jwks, &v).is_err(), "{bad}");
    }
}

#[test]
fn certificate_binding() {
    let (key, jwks, v) = setup();
    let cert_hash = [7u8; 32];
    let mut c = claims();
    c["cnf"] = json!({ "x5t#S256": URL_SAFE_NO_PAD.encode(cert_hash) });
    let t = key.sign("at+jwt", &c).unwrap();
    let mut with_cert = v.clone();
    with_cert.peer_cert_sha256 = Some(cert_hash);
    assert!(verify(&t, &jwks, &with_cert).is_ok());
    let mut other = v.clone();
    other.peer_cert_sha256 = Some([8u8; 32]);
    assert_eq!(
        verify(&t, &jwks, &other),
        Err(JwtError::CertificateBinding),
        "bound to another certificate"
    );
    assert_eq!(
        verify(&t, &jwks, &v),
        Err(JwtError::CertificateBinding),
        "no certificate presented"
    );
}

#[test]
fn jwks_parsing_is_strict() {
    let (key, _, _) = setup();
    let mut private = key.public_jwk();
    private["d"] = json!("AAAA");
    assert!(JwkSet::from_json(&json!({ "keys": [private] }).to_string())
        .unwrap()
        .keys
        .is_empty());
    let mut enc_key = key.public_jwk();
    enc_key["use"] = json!("enc");
    assert!(JwkSet::from_json(&json!({ "keys": [enc_key] }).to_string())
        .unwrap()
        .keys
        .is_empty());
    let mut wrong_alg = key.public_jwk();
    wrong_alg["alg"] = json!("RS256");
    assert!(
        JwkSet::from_json(&json!({ "keys": [wrong_alg] }).to_string())
            .unwrap()
            .keys
            .is_empty()
    );
    let small_rsa =
        json!({ "kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 128]), "e": "AQAB" });
    assert!(
        JwkSet::from_json(&json!({ "keys": [small_rsa] }).to_string())
            .unwrap()
            .keys
            .is_empty()
    );
    assert!(JwkSet::from_json("not json").is_err());
}
