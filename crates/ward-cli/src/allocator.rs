//! The memory allocator: jemalloc, and the options the long-running
//! modes (`ward proxy`, `ward agent`) run it with.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

/// jemalloc, chosen by measurement: through a sidecar pair it cut CPU per
/// request against glibc's allocator, at less peak memory than mimalloc
/// (docs/performance.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The variable jemalloc reads its options from (with tikv-jemallocator's
/// prefix).
const OPTIONS: &str = "_RJEM_MALLOC_CONF";

/// The agent's options: one arena and no thread caches. With 100 open
/// Workload API streams they keep 0.6–0.7 MiB less resident, for up to a
/// tenth of ValidateJWTSVID's rate (docs/performance.md).
pub(crate) const AGENT_OPTIONS: &str = "narenas:1,tcache:false";

/// The sidecar's options: each thread cache keeps at most two freed
/// buffers of each large size (rather than 20), and freed pages go back
/// to the system after a second (rather than ten). rustls grows and
/// shrinks a connection's record buffer across jemalloc's large sizes as
/// records arrive, and under load those freed buffers and pages were
/// about 1 MiB of the client-side proxy's resident memory (0.3 MiB of the
/// server side's), at no gain in CPU per request (docs/performance.md).
pub(crate) const PROXY_OPTIONS: &str = "tcache_nslots_large:2,dirty_decay_ms:1000";

/// Executes this binary again, in place (the same process, pid and
/// descriptors), with `options` in the environment. jemalloc reads its
/// options once, at the process's first allocation, so they cannot be set
/// from inside; this runs before the runtime starts. Returns, and the
/// process runs with what it has, when the options are already set (by the
/// operator, whose choice stands, or by the first execution) or the binary
/// cannot be executed again.
pub(crate) fn run_with(options: &str, argv: &[OsString]) {
    if std::env::var_os(OPTIONS).is_some() || argv.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .arg0(&argv[0])
        .args(&argv[1..])
        .env(OPTIONS, options)
        .exec();
    eprintln!("warning: running with the allocator's default options: cannot execute `ward` again ({err})");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `--help` states the options each mode really runs with.
    #[test]
    fn the_help_names_the_options_in_force() {
        let cli = crate::cli::Cli::command();
        for (mode, options) in [
            ("proxy", super::PROXY_OPTIONS),
            ("agent", super::AGENT_OPTIONS),
        ] {
            let help = cli
                .find_subcommand(mode)
                .and_then(|c| c.get_after_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.contains(&format!("_RJEM_MALLOC_CONF={options}")),
                "{mode}: {help}"
            );
        }
    }
}
