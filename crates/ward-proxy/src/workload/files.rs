//! `--write-dir`: `svid.pem` (chain, leaf first), `svid.key` (PKCS#8,
//! 0600) and `bundle.pem`, each replaced atomically (write, then rename)
//! whenever the SVID is renewed or the bundle changes, then `--on-change`
//! runs. For apps that read certificate files (Go's
//! `tls.LoadX509KeyPair`, nginx, anything with a reload).
use std::path::PathBuf;
use std::sync::Arc;

use super::Source;
use crate::identity;
use crate::state::stopped;

pub(crate) async fn keep(source: Arc<Source>, dir: PathBuf, on_change: Option<String>) {
    let mut changes = source.changes();
    let mut stop = source.shared.shutdown.subscribe();
    let mut written: Option<(String, Vec<Vec<u8>>)> = None;
    loop {
        if let Some(svid) = source.current() {
            let key = (
                svid.serial.clone(),
                svid.bundle.iter().map(|c| c.to_vec()).collect(),
            );
            if written.as_ref() != Some(&key) {
                match identity::write_files(&dir, &svid) {
                    Ok(()) => {
                        tracing::info!(dir = %dir.display(), serial = svid.serial, "workload certificate files written");
                        written = Some(key);
                        if let Some(cmd) = &on_change {
                            run(cmd).await;
                        }
                    }
                    Err(e) => {
                        tracing::error!(dir = %dir.display(), error = %format!("{e:#}"), "cannot write the workload certificate files; will retry on the next change")
                    }
                }
            }
        }
        tokio::select! {
            more = changes.next() => if !more { return },
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Runs `--on-change` with `sh -c`, waiting for it; its failure is logged.
async fn run(cmd: &str) {
    match tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .await
    {
        Ok(s) if s.success() => {}
        Ok(s) => tracing::warn!(command = cmd, status = %s, "--on-change command failed"),
        Err(e) => tracing::warn!(command = cmd, error = %e, "--on-change command could not run"),
    }
}
