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
//! - The order kept through changes. A local function that the compiler
//!   shares between the code units of a crate gets a `.llvm.NUMBER`
//!   suffix from a hash of its unit, so any change to a crate renames
//!   hundreds of the listed functions although they are the same
//!   functions: with only the exact names, one change in `ward-server`
//!   took 300 of them out of the order and 2.5 MiB onto the agent's RSS.
//!   The linker is therefore reached through a small script
//!   (`OUT_DIR/order-ld/ld.mold`) that links once without the order, reads
//!   the result's symbol names with `nm`, writes the list with each name
//!   replaced by those of the binary that are equal to it once the
//!   suffixes are set aside, and links again with that list. Without
//!   `nm`, or if either step fails, it links with the list as it is. Only
//!   release builds link twice. The script runs `rust-lld`; it is named
//!   `ld.mold` (`-fuse-ld=mold`) only because the compiler driver looks
//!   for `ld.NAME` in the `-B` directories in the order given, and rustc
//!   gives the toolchain's own directory, with its `ld.lld`, first.
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
    if let Some(lld_dir) = toolchain_lld(&target).filter(|_| order.is_file()) {
        // Only an optimized build is measured; a test build links once.
        let optimized = std::env::var("PROFILE").is_ok_and(|p| p == "release");
        let wrapped = optimized
            .then(|| ordering_wrapper(&out, &lld_dir, &order))
            .flatten()
            .map(|dir| vec![format!("-B{}", dir.display()), "-fuse-ld=mold".to_string()])
            .filter(|w| links(&out, &src, w));
        let plain = vec![
            format!("-B{}", lld_dir.display()),
            "-fuse-ld=lld".to_string(),
            format!("-Wl,--symbol-ordering-file={}", order.display()),
            "-Wl,--no-warn-symbol-ordering".to_string(),
        ];
        let args = wrapped.or_else(|| links(&out, &src, &plain).then_some(plain));
        if let Some(mut args) = args {
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

/// Writes the linker script that resolves the order file's names against
/// the binary being linked (see the module's comment) and returns its
/// directory, for `-B`; `None` where it cannot be written.
fn ordering_wrapper(out: &Path, lld_dir: &Path, order: &Path) -> Option<PathBuf> {
    let dir = out.join("order-ld");
    let lld = lld_dir.join("ld.lld").display().to_string();
    let order = order.display().to_string();
    if lld.contains('\'') || order.contains('\'') {
        return None;
    }
    let script = format!(
        r#"#!/bin/sh
# rust-lld for `ward`, the order file's names resolved against the binary
# (crates/ward-cli/build.rs says why).
real='{lld}'
order='{order}'
output=
prev=
for a in "$@"; do
  [ "$prev" = -o ] && output=$a
  prev=$a
done
if [ -n "$output" ] && command -v nm >/dev/null 2>&1; then
  names="$output.names"
  resolved="$output.order"
  if "$real" "$@" -o "$output.unordered" &&
     nm --defined-only "$output.unordered" > "$names" &&
     awk 'function key(s) {{ sub(/\.llvm\.[0-9]+$/, "", s); return s }}
          FNR == NR {{ k = key($NF); all[k] = all[k] " " $NF; next }}
          {{ k = key($0) }}
          (k in all) && !(k in done) {{ done[k] = 1; n = split(all[k], a, " "); for (i = 1; i <= n; i++) print a[i] }}' \
       "$names" "$order" > "$resolved"; then
    rm -f "$output.unordered" "$names"
    "$real" "$@" --symbol-ordering-file="$resolved" --no-warn-symbol-ordering
    status=$?
    rm -f "$resolved"
    exit $status
  fi
  rm -f "$output.unordered" "$names" "$resolved"
fi
exec "$real" "$@" --symbol-ordering-file="$order" --no-warn-symbol-ordering
"#,
    );
    let path = dir.join("ld.mold");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, script))
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        });
    written.ok().map(|()| dir)
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
