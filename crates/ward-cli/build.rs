//! Links `ward` with packed relative relocations (DT_RELR) where the
//! toolchain and C library support them. A position-independent binary
//! keeps ASLR, but its table of relative relocations (about 700 KiB for
//! `ward`) is read at every start and stays in memory; packed, it is a few
//! KiB. Support is probed by linking and running a tiny program with the
//! same C compiler driver rustc links with, so older systems (binutils
//! before 2.38, glibc before 2.36) build as before.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host || !target.contains("linux-gnu") {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = out.join("relr_probe.c");
    let bin = out.join("relr_probe");
    if std::fs::write(&src, "static const char *p = \"x\"; const char **q = &p;\nint main(void) { return **q != 'x'; }\n").is_err() {
        return;
    }
    let linker = std::env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".into());
    let linked = Command::new(&linker)
        .args([
            "-pie",
            "-fPIE",
            "-Wl,-z,pack-relative-relocs",
            "-Wl,--fatal-warnings",
            "-o",
        ])
        .arg(&bin)
        .arg(&src)
        .output();
    let ok = matches!(linked, Ok(o) if o.status.success())
        && Command::new(&bin).status().is_ok_and(|s| s.success());
    if ok {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
