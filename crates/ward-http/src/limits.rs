//! The open-file limit. Every connection is a file descriptor, and the
//! soft limit a process starts with (often 1,024) is far below what a
//! control plane with thousands of sidecars, or a sidecar with thousands
//! of connections, needs; the hard limit is usually much higher. Both
//! apps raise the soft limit to the hard one at start, as Go's runtime
//! and Envoy do.
use std::io;

/// The soft open-file limit now in force and how many are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit.
    pub limit: u64,
    /// Descriptors open.
    pub in_use: u64,
}

/// Raises the soft open-file limit as far as the hard limit allows;
/// the limit in force afterwards.
pub fn raise_open_files() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The limit and the descriptors open now (`/proc/self/fd`), where the
/// system tells them.
pub fn open_files() -> Option<OpenFiles> {
    let (soft, _hard) = rlimit::Resource::NOFILE.get().ok()?;
    // The directory's own descriptor, open while it is read, is counted
    // and taken off again.
    let in_use = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(OpenFiles {
        limit: soft,
        in_use: in_use.saturating_sub(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_goes_up_to_the_hard_one() {
        let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
        let now = raise_open_files().unwrap();
        if hard != rlimit::INFINITY {
            assert_eq!(now, hard);
        }
        let f = open_files().unwrap();
        assert_eq!(f.limit, now);
        assert!(f.in_use >= 3 && f.in_use < f.limit, "{f:?}");
    }
}
