//! The Workload API's unix socket: made in a directory this process's user
//! owns, replacing a stale socket and refusing to take over a live one.
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};
use tokio::net::UnixListener;

/// This process's user id (the owner of `/proc/self`).
pub(crate) fn own_uid() -> anyhow::Result<u32> {
    Ok(std::fs::metadata("/proc/self")
        .context("reading /proc/self to learn this process's uid")?
        .uid())
}

/// Binds `path`. Its directory must exist and belong to this user (so no
/// one else can swap the socket); a socket left by a process that is gone
/// is replaced; one that answers is an error naming it. The socket itself
/// is open to every local user: callers are told apart by SO_PEERCRED.
pub(crate) fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).with_context(|| {
        format!(
            "the Workload API socket's directory {} is not usable: create it (owned by this user)",
            dir.display()
        )
    })?;
    let uid = own_uid()?;
    if meta.uid() != uid {
        bail!(
            "{} belongs to uid {}, not to this process's uid {uid}: put the Workload API socket in a directory this user owns",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "{} is writable by other users (mode {:o}), who could replace the socket: run `chmod go-w {}`",
            dir.display(),
            meta.mode() & 0o777,
            dir.display()
        );
    }
    if let Ok(existing) = std::fs::symlink_metadata(path) {
        if !existing.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket: remove it or choose another --workload-api path",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use: another process serves the Workload API there (stop it, or choose another path)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
        tracing::info!(path = %path.display(), "replaced a stale Workload API socket");
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the Workload API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .with_context(|| format!("opening {} to local callers", path.display()))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile_dir();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("api.sock");
        let live = bind(&path).unwrap();
        let e = bind(&path).unwrap_err().to_string();
        assert!(e.contains("is in use") && e.contains("api.sock"), "{e}");
        drop(live);
        // The file is left behind, as after a crash: the next bind takes it.
        assert!(path.exists());
        let _again = bind(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_directory_others_can_write_is_refused() {
        let dir = tempfile_dir();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = bind(&dir.join("api.sock")).unwrap_err().to_string();
        assert!(e.contains("writable by other users"), "{e}");
        std::fs::write(dir.join("file"), b"x").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = bind(&dir.join("file")).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let mut b = [0u8; 8];
        aws_lc_rs::rand::fill(&mut b).unwrap();
        let d = std::env::temp_dir().join(format!("ward-sock-{}", hex::encode(b)));
        std::fs::create_dir(&d).unwrap();
        d
    }
}
