//! The data dir: key-encryption key, admin token, and files that local
//! clients read (`ward --data-dir D`).
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Why a file of the data dir could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Reading, writing or creating it failed.
    #[error("{path}: {source}")]
    Io {
        /// Which file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Another server holds the data dir.
    #[error("{dir} is in use by another ward server (pid {pid}{at}); stop it, or give this one its own --data-dir")]
    Locked {
        /// The data dir.
        dir: String,
        /// The running server's pid, as it wrote it.
        pid: String,
        /// ", at https://…" when the running server has bound its port.
        at: String,
    },
    /// A secret file others may read.
    #[error("{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed {
        /// Which file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
}

impl FileError {
    /// An I/O failure on `path`.
    pub(crate) fn io(path: &Path, source: std::io::Error) -> FileError {
        FileError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Paths of the files in a data dir.
#[derive(Debug, Clone)]
pub struct DataDirFiles {
    /// The directory.
    pub dir: PathBuf,
}

/// What a running server writes for local clients: `<data-dir>/server.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// `sha256:<hex>` of the root certificate.
    pub root_fingerprint: String,
    /// The trust domain.
    pub trust_domain: String,
    /// The server's process id.
    pub pid: u32,
}

impl DataDirFiles {
    /// The files of `dir`.
    pub fn new(dir: &Path) -> DataDirFiles {
        DataDirFiles {
            dir: dir.to_path_buf(),
        }
    }
    /// The key-encryption key (32 raw bytes, mode 0600).
    pub fn kek(&self) -> PathBuf {
        self.dir.join("kek.key")
    }
    /// The admin token (mode 0600).
    pub fn admin_token(&self) -> PathBuf {
        self.dir.join("admin.token")
    }
    /// The trust bundle, PEM, rewritten on every change.
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }
    /// Where the running server is.
    pub fn server_info(&self) -> PathBuf {
        self.dir.join("server.json")
    }

    /// The lock file, held with an exclusive lock while a server runs.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join("server.lock")
    }

    /// Takes the data dir for this process: an exclusive lock on
    /// `server.lock`, held until the returned guard is dropped (or the
    /// process dies, since the kernel releases it). A second server on the
    /// same dir is refused with the first one's pid and address.
    pub(crate) fn lock(&self) -> Result<DataDirLock, FileError> {
        let path = self.lock_file();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| FileError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let pid = fs::read_to_string(&path).unwrap_or_default();
                let pid = pid.trim().to_string();
                let at = fs::read(self.server_info())
                    .ok()
                    .and_then(|raw| serde_json::from_slice::<ServerInfo>(&raw).ok())
                    .filter(|info| info.pid.to_string() == pid)
                    .map(|info| format!(", at {}", info.url))
                    .unwrap_or_default();
                return Err(FileError::Locked {
                    dir: self.dir.display().to_string(),
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid
                    },
                    at,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(FileError::io(&path, e)),
        }
        file.set_len(0)
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .and_then(|_| file.sync_all())
            .map_err(|e| FileError::io(&path, e))?;
        Ok(DataDirLock { _file: file })
    }

    /// Removes `server.json` if process `pid` wrote it.
    pub(crate) fn remove_server_info(&self, pid: u32) {
        let path = self.server_info();
        let ours = fs::read(&path)
            .ok()
            .and_then(|raw| serde_json::from_slice::<ServerInfo>(&raw).ok())
            .is_some_and(|info| info.pid == pid);
        if ours {
            let _ = fs::remove_file(path);
        }
    }

    /// Creates the directory (0700) if needed.
    pub(crate) fn ensure_dir(&self) -> Result<(), FileError> {
        fs::create_dir_all(&self.dir).map_err(|e| FileError::io(&self.dir, e))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| FileError::io(&self.dir, e))
    }

    /// Reads the secret file at `path`, or creates it with `make` (mode
    /// 0600, written and synced before use). Returns the contents and
    /// whether it was created.
    pub(crate) fn secret_file(
        &self,
        path: &Path,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<(Vec<u8>, bool), FileError> {
        match fs::read(path) {
            Ok(b) => {
                let mode = fs::metadata(path)
                    .map_err(|e| FileError::io(path, e))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(FileError::Exposed {
                        path: path.display().to_string(),
                        mode: mode & 0o777,
                    });
                }
                Ok((b, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = make();
                write_new(path, &bytes, 0o600)?;
                Ok((bytes, true))
            }
            Err(e) => Err(FileError::io(path, e)),
        }
    }

    /// Replaces a public file atomically.
    pub(crate) fn write_public(&self, path: &Path, bytes: &[u8]) -> Result<(), FileError> {
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        write_new(&tmp, bytes, 0o644)?;
        fs::rename(&tmp, path).map_err(|e| FileError::io(path, e))
    }
}

/// The data dir's lock; released when dropped.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: fs::File,
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| FileError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| FileError::io(path, e))
}

/// A new random secret token, `prefix` + 43 base64url characters (256 bits).
pub(crate) fn random_token(prefix: &str) -> String {
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .expect("system randomness");
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw))
}
