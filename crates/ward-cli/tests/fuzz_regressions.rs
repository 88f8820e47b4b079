//! The fuzz targets' inputs replayed (not fuzzed): every file of
//! `fuzz/corpus/<target>/` and every crash reproducer in
//! `fuzz/regressions/<target>/` goes through the same function its target
//! calls (`fuzz/src/lib.rs`, included here), so what fuzzing found stays
//! fixed; the sidecar's two targets call ward-proxy's `fuzzing` entry
//! points directly. `cargo fuzz run <target>` (docs/security.md) is the
//! fuzzing.
#[allow(dead_code, unreachable_pub)]
#[path = "../../../fuzz/src/lib.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} panicked", path.display());
            n += 1;
        }
    }
    n
}

#[test]
fn jws_inputs() {
    assert!(replay("jws", harness::jws) > 10);
}

#[test]
fn policy_inputs() {
    assert!(replay("policy", harness::policy) > 1);
}

#[test]
fn csr_inputs() {
    assert!(replay("csr", harness::csr) > 1);
}

#[test]
fn spiffe_id_inputs() {
    assert!(replay("spiffe_id", harness::spiffe_id) > 1);
}

#[test]
fn strict_h1_inputs() {
    assert!(replay("strict_h1", ward_proxy::fuzzing::strict_h1) > 1);
}

#[test]
fn mux_inputs() {
    assert!(replay("mux", ward_proxy::fuzzing::mux_frames) > 1);
}
