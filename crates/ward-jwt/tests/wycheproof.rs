//! Project Wycheproof's JWS and JWK vectors (tests/vectors/wycheproof),
//! every one run against `ward-jwt`: every invalid vector is rejected;
//! every valid vector whose algorithm and key ward accepts verifies; the
//! other valid vectors are rejected for a reason ward documents (HMAC and
//! algorithms outside ES256, ES384, EdDSA, RS256 and PS256; RSA keys below
//! 2048 bits; JSON serialization).
use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use ward_jwt::{verify_jws, JwkSet, JwtError};

/// The JWK members that are private key material.
const PRIVATE: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The public half of a JWK (an `oct` key keeps nothing usable).
fn public(jwk: &Value) -> Value {
    let mut out = Map::new();
    for (k, v) in jwk.as_object().into_iter().flatten() {
        if !PRIVATE.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// The key set a group is verified with: its public keys only.
fn key_set(group: &Value) -> Result<JwkSet, JwtError> {
    let keys = group
        .get("public")
        .or_else(|| group.get("private"))
        .expect("a group has keys");
    let keys: Vec<Value> = match keys.get("keys") {
        Some(Value::Array(a)) => a.iter().map(public).collect(),
        _ => vec![public(keys)],
    };
    JwkSet::from_json(&json!({ "keys": keys }).to_string())
}

fn alg_of(group: &Value) -> String {
    let keys = group
        .get("public")
        .or_else(|| group.get("private"))
        .unwrap();
    let key = keys.get("keys").and_then(|k| k.get(0)).unwrap_or(keys);
    key["alg"].as_str().unwrap_or("?").to_string()
}

const ALLOWED: [&str; 5] = ["ES256", "ES384", "EdDSA", "RS256", "PS256"];

/// Why ward refuses a valid vector, if it is one of the documented reasons.
fn documented(alg: &str, group: &Value, test: &Value) -> Option<&'static str> {
    if test["jws"].is_object() {
        return Some("JSON serialization (ward takes compact JWS only)");
    }
    if !ALLOWED.contains(&alg) {
        return Some("algorithm outside ward's allowlist");
    }
    let key = group.get("public").or_else(|| group.get("private"))?;
    let n_bits = key["n"].as_str().map_or(usize::MAX, |n| n.len() * 6);
    if (alg.starts_with("RS") || alg.starts_with("PS")) && n_bits < 2048 {
        return Some("RSA key below 2048 bits");
    }
    None
}

fn header_alg(jws: &Value) -> Option<String> {
    use base64::Engine;
    let h = jws.as_str()?.split('.').next()?;
    let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .ok()?;
    let h: Value = serde_json::from_slice(&h).ok()?;
    h["alg"].as_str().map(String::from)
}

fn run(file: &str) -> BTreeMap<String, usize> {
    let data: Value = serde_json::from_str(file).unwrap();
    let mut tally = BTreeMap::new();
    let mut count = |what: String| *tally.entry(what).or_insert(0) += 1;
    for group in data["testGroups"].as_array().unwrap() {
        let alg = alg_of(group);
        let keys = key_set(group);
        for test in group["tests"].as_array().unwrap() {
            let id = format!(
                "tcId {} ({} {})",
                test["tcId"], group["comment"], test["comment"]
            );
            // What decides is the algorithm the token says it uses.
            let alg = header_alg(&test["jws"]).unwrap_or_else(|| alg.clone());
            let jws = match &test["jws"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let got = keys
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|k| verify_jws(&jws, k, 64 * 1024));
            match (test["result"].as_str().unwrap(), &got) {
                ("invalid", Ok(_)) => panic!("{id}: an invalid vector verified"),
                ("invalid", Err(_)) => count("invalid: rejected".into()),
                ("valid", Ok(_)) => {
                    assert!(
                        ALLOWED.contains(&alg.as_str()),
                        "{id}: {alg} verified outside the allowlist"
                    );
                    count(format!("valid: accepted ({alg})"));
                }
                ("valid", Err(e)) => {
                    let why = documented(&alg, group, test)
                        .unwrap_or_else(|| panic!("{id}: a valid {alg} vector was refused: {e}"));
                    count(format!("valid: rejected, {why}"));
                }
                ("acceptable", r) => count(format!(
                    "acceptable: {}",
                    if r.is_ok() { "accepted" } else { "rejected" }
                )),
                (other, _) => panic!("{id}: unknown result {other}"),
            }
        }
    }
    tally
}

#[test]
fn json_web_signature_vectors() {
    let tally = run(include_str!(
        "vectors/wycheproof/json_web_signature_test.json"
    ));
    eprintln!("{tally:#?}");
    // Each allowed algorithm with a vector had one verify.
    for alg in ["ES256", "RS256", "PS256"] {
        assert!(
            tally.contains_key(&format!("valid: accepted ({alg})")),
            "{alg}: {tally:?}"
        );
    }
    assert!(tally["invalid: rejected"] > 300, "{tally:?}");
}

#[test]
fn json_web_key_vectors() {
    let tally = run(include_str!("vectors/wycheproof/json_web_key_test.json"));
    eprintln!("{tally:#?}");
    assert!(tally.contains_key("valid: accepted (RS256)"), "{tally:?}");
}
