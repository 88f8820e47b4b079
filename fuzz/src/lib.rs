//! What each fuzz target does with its input. The same functions replay
//! the committed corpus and crash reproducers in the workspace's tests
//! (each crate's `tests/fuzz_regressions.rs` does the same calls), so a
//! case found here stays fixed.
use std::sync::LazyLock;

use ward_jwt::{JwkSet, Validation};

/// An EC P-256 key (RFC 7515 A.3) and an Ed25519 key, as a verifier holds
/// them.
static KEYS: LazyLock<JwkSet> = LazyLock::new(|| {
    JwkSet::from_json(
        r#"{"keys":[
          {"kty":"EC","crv":"P-256","kid":"ec","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
          {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
    )
    .expect("the fuzz keys parse")
});

/// A JWS or JWT from a hostile client, and a JWK set from a hostile issuer.
pub fn jws(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ward_jwt::verify_jws(text, &KEYS, 64 * 1024);
    let mut v = Validation::access_token("joe", "payments");
    v.now = Some(1_300_819_300);
    let _ = ward_jwt::verify(text, &KEYS, &v);
    let _ = ward_jwt::verify_jwt_svid(text, &KEYS, "payments");
    let _ = JwkSet::from_json(text);
}

/// Policy YAML through validation, compilation and evaluation.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(docs) = ward_policy::parse_documents_yaml(text) else {
        return;
    };
    let policies: Vec<_> = docs
        .into_iter()
        .filter_map(|d| match d {
            ward_policy::Document::Authorization(p) => Some(p),
            ward_policy::Document::Authentication(_) => None,
        })
        .collect();
    let set = ward_policy::PolicySet::new(policies, ward_policy::DefaultAction::Deny);
    let claims = serde_json::json!({ "iss": "https://idp", "sub": "alice", "groups": ["admins"] });
    let claims = claims.as_object().cloned().unwrap_or_default();
    for http in [false, true] {
        let req = ward_policy::Request {
            namespace: "default",
            service: "payments",
            destination_port: 15006,
            source_principal: Some("spiffe://ward.internal/ns/default/sa/frontend"),
            source_ip: "10.1.2.3".parse().ok(),
            http: http.then(|| ward_policy::HttpAttributes {
                method: "POST",
                path: "/pay/1",
                host: "payments",
                headers: vec![("x-env", "prod")],
                request_principal: Some("https://idp/alice"),
                claims: Some(&claims),
            }),
        };
        let _ = set.evaluate(&req);
    }
}

/// A PKCS#10 CSR from a workload.
pub fn csr(data: &[u8]) {
    let _ = ward_ca::validate_csr(data);
}

/// SPIFFE IDs and trust domain names: what parses prints back the same.
pub fn spiffe_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = ward_identity::SpiffeId::parse(text) {
        let again = ward_identity::SpiffeId::parse(id.as_str()).expect("a parsed ID parses again");
        assert_eq!(again.as_str(), id.as_str());
    }
    let _ = ward_identity::TrustDomain::new(text);
}
