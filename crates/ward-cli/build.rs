//! Link options for `ward`, each probed so that other systems build as
//! before:
//!
//! - Packed relative relocations (DT_RELR). A position-independent binary
//!   keeps ASLR, but its table of relative relocations (about 700 KiB for
//!   `ward`) is read at every start and stays in memory; packed, it is a
//!   few KiB. Needs binutils 2.38 or lld, and glibc 2.36.
//! - The sidecar's code placed together. `ward` is one binary for the
//!   control plane, the CLI and the sidecar, and the kernel maps code in
//!   64 KiB windows around each page a process touches: with the
//!   sidecar's ~2 MiB of functions spread over 19 MiB of text, a sidecar
//!   kept about 9 MiB of it resident. `link/sidecar-symbols.txt` lists the
//!   functions a sidecar runs (recorded with `bench/sidecar_symbols.py`),
//!   and the linker that ships with the Rust toolchain (`rust-lld`) puts
//!   them first, in one run. Symbols the list names that no longer exist
//!   are skipped; functions it misses are placed as usual.
//!
//! Each option is probed by linking and running a tiny program with the
//! same C compiler driver rustc links with.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let order = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("link/sidecar-symbols.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host || !target.contains("linux-gnu") {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = out.join("link_probe.c");
    if std::fs::write(&src, "static const char *p = \"x\"; const char **q = &p;\nint main(void) { return **q != 'x'; }\n").is_err() {
        return;
    }
    let relr = ["-Wl,-z,pack-relative-relocs".to_string()];
    if let Some(lld_dir) = toolchain_lld(&target) {
        let mut args = vec![
            format!("-B{}", lld_dir.display()),
            "-fuse-ld=lld".to_string(),
            format!("-Wl,--symbol-ordering-file={}", order.display()),
            "-Wl,--no-warn-symbol-ordering".to_string(),
        ];
        if order.is_file() && links(&out, &src, &args) {
            if links(&out, &src, &[args.clone(), relr.to_vec()].concat()) {
                args.extend(relr);
            }
            for a in args {
                println!("cargo:rustc-link-arg-bins={a}");
            }
            return;
        }
    }
    if links(&out, &src, &relr) {
        println!("cargo:rustc-link-arg-bins={}", relr[0]);
    }
}

/// The directory of the toolchain's `ld.lld` (a wrapper around
/// `rust-lld`), if this toolchain ships it.
fn toolchain_lld(target: &str) -> Option<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8(out.stdout).ok()?;
    let dir = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(target)
        .join("bin/gcc-ld");
    dir.join("ld.lld").is_file().then_some(dir)
}

/// Whether the probe program links with `args` and runs.
fn links(out: &Path, src: &Path, args: &[String]) -> bool {
    let bin = out.join("link_probe");
    let _ = std::fs::remove_file(&bin);
    let linker = std::env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".into());
    let linked = Command::new(&linker)
        .args(["-pie", "-fPIE", "-Wl,--fatal-warnings"])
        .args(args)
        .arg("-o")
        .arg(&bin)
        .arg(src)
        .output();
    matches!(linked, Ok(o) if o.status.success())
        && Command::new(&bin).status().is_ok_and(|s| s.success())
}
