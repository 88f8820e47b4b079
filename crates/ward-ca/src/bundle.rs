use aws_lc_rs::digest::{digest, SHA256};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// `sha256:<hex>` of a certificate's DER, the form `--ca-fingerprint` takes.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(digest(&SHA256, der)))
}

/// PEM-encodes `der` under `label` ("CERTIFICATE", "PRIVATE KEY", …).
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Every certificate in a PEM file, DER, in file order.
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect();
    let certs = certs.map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

/// A SPIFFE trust bundle in its JWK-set form (SPIFFE Trust Domain and
/// Bundle standard, section 4): one `x509-svid` key per CA certificate.
pub fn spiffe_bundle_json(certs: &[Vec<u8>], sequence: u64, refresh_hint_secs: u64) -> Value {
    let keys: Vec<Value> = certs.iter().filter_map(|der| jwk_for_cert(der)).collect();
    json!({
        "keys": keys,
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": refresh_hint_secs,
    })
}

fn jwk_for_cert(der: &[u8]) -> Option<Value> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let x5c = vec![STANDARD.encode(der)];
    let mut jwk = match cert.public_key().parsed().ok()? {
        PublicKey::EC(point) => {
            let data = point.data();
            let (crv, len) = match data.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                _ => return None,
            };
            if data.first() != Some(&4) {
                return None;
            }
            json!({
                "kty": "EC", "crv": crv,
                "x": URL_SAFE_NO_PAD.encode(&data[1..1 + len]),
                "y": URL_SAFE_NO_PAD.encode(&data[1 + len..]),
            })
        }
        PublicKey::RSA(rsa) => json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(strip_zeros(rsa.modulus)),
            "e": URL_SAFE_NO_PAD.encode(strip_zeros(rsa.exponent)),
        }),
        _ => return None,
    };
    jwk["use"] = json!("x509-svid");
    jwk["x5c"] = json!(x5c);
    Some(jwk)
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{now, CaMaterial};
    use std::time::Duration;
    use ward_identity::TrustDomain;

    #[test]
    fn pem_round_trip_and_bundle() {
        let td = TrustDomain::new("example.org").unwrap();
        let root = CaMaterial::generate_root(&td, Duration::from_secs(3600), now()).unwrap();
        let pem = to_pem("CERTIFICATE", &root.cert_der);
        assert_eq!(
            parse_pem_certs(pem.as_bytes()).unwrap(),
            vec![root.cert_der.clone()]
        );
        assert!(parse_pem_certs(b"nothing here").is_err());
        let fp = fingerprint(&root.cert_der);
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64);

        let bundle = spiffe_bundle_json(std::slice::from_ref(&root.cert_der), 3, 300);
        let key = &bundle["keys"][0];
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        assert_eq!(key["use"], "x509-svid");
        assert_eq!(
            STANDARD.decode(key["x5c"][0].as_str().unwrap()).unwrap(),
            root.cert_der
        );
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(key["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        assert_eq!(bundle["spiffe_sequence"], 3);
    }
}
