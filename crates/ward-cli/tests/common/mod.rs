//! Shared by the end-to-end tests.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Command;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use ward_api::v1::SignCertificateRequest;
use ward_identity::SpiffeId;
use ward_testkit::WardServer;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ward")
}

pub fn server(extra: &[&str]) -> WardServer {
    WardServer::start(bin(), extra).expect("ward server starts")
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// A CSR for `id` and its key as rustls wants it.
pub fn csr(id: &SpiffeId) -> (Vec<u8>, PrivateKeyDer<'static>) {
    let (csr, key) = ward_ca::testing::csr_for(id);
    (
        csr,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

pub fn sign_req(csr: Vec<u8>, token: &str) -> SignCertificateRequest {
    SignCertificateRequest {
        csr,
        join_token: token.to_string(),
    }
}

pub fn chain(resp: &ward_api::v1::SignCertificateResponse) -> Vec<CertificateDer<'static>> {
    resp.cert_chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect()
}

/// `openssl verify -CAfile bundle cert`: (success, output).
pub fn openssl_verify(bundle: &Path, cert: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(bundle)
        .arg(cert)
        .output()
        .expect("openssl is installed");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn count_certs(s: &WardServer) -> usize {
    s.cli_json(&["cert", "list"])
        .unwrap()
        .as_array()
        .unwrap()
        .len()
}

pub fn token(s: &WardServer, service: &str, extra: &[&str]) -> String {
    let v = s
        .cli_json(&[&["join-token", "create", "--service", service], extra].concat())
        .unwrap();
    v["token"].as_str().unwrap().to_string()
}
