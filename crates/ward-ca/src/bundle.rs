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

/// The first private key of a PEM file, as PKCS#8 DER (the form ward
/// stores, seals and writes). Accepts what openssl, cert-manager, Vault and
/// SPIRE write: PKCS#8 (`BEGIN PRIVATE KEY`), SEC1 (`BEGIN EC PRIVATE
/// KEY`, P-256 or P-384) and PKCS#1 (`BEGIN RSA PRIVATE KEY`).
pub fn parse_pem_key(pem: &[u8]) -> Result<Vec<u8>, String> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{
        EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING,
    };
    use rustls_pki_types::PrivateKeyDer;
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => "no private key found (expected BEGIN PRIVATE KEY, BEGIN EC PRIVATE KEY or BEGIN RSA PRIVATE KEY)".to_string(),
        e => format!("not a PEM private key: {e}"),
    })?;
    match key {
        PrivateKeyDer::Pkcs8(k) => Ok(k.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Sec1(k) => [
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &ECDSA_P384_SHA384_ASN1_SIGNING,
        ]
        .into_iter()
        .find_map(|alg| EcdsaKeyPair::from_private_key_der(alg, k.secret_sec1_der()).ok())
        .and_then(|kp| kp.to_pkcs8v1().ok())
        .map(|doc| doc.as_ref().to_vec())
        .ok_or_else(|| "an EC PRIVATE KEY that is malformed or not on P-256 or P-384".to_string()),
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der())
            .map_err(|e| format!("an RSA PRIVATE KEY that cannot be used: {e}"))?
            .as_der()
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| "an RSA PRIVATE KEY that cannot be re-encoded".to_string()),
        _ => Err("an unsupported private key format".into()),
    }
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
    fn keys_in_every_pem_form_become_pkcs8() {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_ASN1_SIGNING};
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let sec1 = pair.private_key().as_der().unwrap();
        for pem in [
            to_pem("PRIVATE KEY", pkcs8.as_ref()),
            to_pem("EC PRIVATE KEY", sec1.as_ref()),
        ] {
            let der = parse_pem_key(pem.as_bytes()).unwrap();
            let back = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &der).unwrap();
            assert_eq!(back.public_key().as_ref(), pair.public_key().as_ref());
        }
        let cert = to_pem("CERTIFICATE", b"not a key");
        assert!(parse_pem_key(cert.as_bytes())
            .unwrap_err()
            .contains("no private key found"));
        let junk = to_pem("EC PRIVATE KEY", b"junk");
        assert!(parse_pem_key(junk.as_bytes()).is_err());
    }

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
