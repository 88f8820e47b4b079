//! The signing CA rotates on its own schedule (prepared and published
//! before it signs, retired ones kept until their last leaf expires), and
//! no valid leaf ever loses its chain in the published bundle.
mod common;

use std::time::{Duration, Instant};

use common::*;
use rustls_pki_types::{CertificateDer, UnixTime};

fn bundle(s: &ward_testkit::WardServer) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(s.bundle_path()).unwrap();
    ward_ca::parse_pem_certs(&pem)
        .unwrap()
        .into_iter()
        .map(CertificateDer::from)
        .collect()
}

#[test]
fn signing_ca_rotates_on_schedule_and_keeps_leaves_verifiable() {
    let s = server(&["--svid-ttl", "6s", "--ca-ttl", "12s"]);
    let dir = tempfile::tempdir().unwrap();
    let first = s.cli_json(&["ca", "show"]).unwrap()["signing"][0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let mut leaves: Vec<(CertificateDer<'static>, i64)> = Vec::new();
    let mut activations = Vec::new();
    let mut seen_prepared = std::collections::HashSet::new();
    let mut last_active = first.clone();
    let mut dropped = false;
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(24) {
        // A new leaf (leaf only: its chain must come from the bundle).
        let (c, k) = (
            dir.path().join(format!("{n}.pem")),
            dir.path().join(format!("{n}.key")),
        );
        let v = s
            .cli_json(&[
                "cert",
                "issue",
                "--spiffe-id",
                "spiffe://ward.internal/ns/default/sa/a",
                "--out-cert",
                c.to_str().unwrap(),
                "--out-key",
                k.to_str().unwrap(),
            ])
            .unwrap();
        let chain = ward_ca::parse_pem_certs(&std::fs::read(&c).unwrap()).unwrap();
        leaves.push((
            CertificateDer::from(chain[0].clone()),
            v["not_after"].as_i64().unwrap(),
        ));
        n += 1;

        let ca = s.cli_json(&["ca", "show"]).unwrap();
        let b = bundle(&s);
        for sc in ca["signing"].as_array().unwrap() {
            let serial = sc["serial"].as_str().unwrap().to_string();
            let in_bundle = b
                .iter()
                .any(|c| ward_ca::fingerprint(c) == sc["fingerprint"].as_str().unwrap());
            assert!(
                in_bundle,
                "every signing CA the server keeps is published: {serial}"
            );
            match sc["state"].as_str().unwrap() {
                "prepared" => {
                    seen_prepared.insert(serial);
                }
                "active" if serial != last_active => {
                    assert!(
                        seen_prepared.contains(&serial),
                        "{serial} was published as prepared before it became active"
                    );
                    activations.push(serial.clone());
                    last_active = serial;
                }
                _ => {}
            }
        }
        if !ca["signing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["serial"] == first.as_str())
        {
            dropped = true;
        }
        // Every unexpired leaf still verifies against the published bundle.
        let now = ward_ca::now().unix_timestamp();
        for (leaf, not_after) in &leaves {
            if *not_after > now + 1 {
                let r = ward_tls::verify_svid_chain(
                    std::slice::from_ref(leaf),
                    &b,
                    true,
                    UnixTime::now(),
                );
                assert!(r.is_ok(), "a valid leaf lost its chain: {r:?}");
            }
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(
        activations.len() >= 2,
        "at least two scheduled rotations in 24 s: {activations:?}"
    );
    assert!(
        dropped,
        "the first signing CA left the bundle once its leaves expired"
    );
}
