//! `ward`: the control plane, and the admin CLI that talks to it.
mod allocator;
mod cli;
mod client;
mod cmd_admin;
mod cmd_cert;
mod cmd_oauth;
mod cmd_proxy;
mod cmd_server;
mod config_file;
mod demo;
mod dispatch;
mod logging;
mod output;
mod sample_app;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let original: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv = match config_file::expand(original.clone()) {
        Ok(a) => a,
        Err(e) => return config_error(&e),
    };
    let args = match cli::Cli::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => return usage_error(e),
    };
    match &args.command {
        cli::Command::Agent(_) => allocator::run_with(allocator::AGENT_OPTIONS, &original),
        cli::Command::Proxy(_) => allocator::run_with(allocator::PROXY_OPTIONS, &original),
        _ => {}
    }
    let json_errors = args.global.output == cli::Output::Json;
    // One crypto provider for the whole process: aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let filter = match &args.command {
        cli::Command::Demo { .. } => "warn",
        cli::Command::Proxy(p) if p.access_log => "info,sqlx=warn,h2=warn,hyper=warn",
        _ => "info,ward::access=off,sqlx=warn,h2=warn,hyper=warn",
    };
    let _log = logging::init(&args.global, filter);
    // The sidecar's data plane runs its own --worker-threads threads
    // (ward_proxy's `workers`), each a single-threaded event loop; the
    // control loops share the first. The agent has no data plane and a
    // runtime of the cores, at most 2, as ztunnel does.
    let runtime = match &args.command {
        cli::Command::Proxy(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        cli::Command::Agent(_) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli::default_workers())
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch::dispatch(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            output::report_error(json_errors, &e);
            std::process::ExitCode::FAILURE
        }
    }
}

/// A `--config` file that cannot be read or has a wrong setting (exit 2,
/// as a usage error).
fn config_error(message: &str) -> std::process::ExitCode {
    let hint = "fix the file: its keys are the long flags of `ward server --help`";
    if json_asked() {
        eprintln!("{}", serde_json::json!({ "error": message, "hint": hint }));
    } else {
        eprintln!("error: {message}\nhint: {hint}");
    }
    std::process::ExitCode::from(2)
}

/// Whether the command line asks for `--output json`.
fn json_asked() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .any(|w| w[0] == "--output" && w[1] == "json")
        || args.iter().any(|a| a == "--output=json")
}

/// A command line clap refused: its own output (exit 2; help and version
/// exit 0), or one JSON object on stderr when `--output json` was asked.
fn usage_error(e: clap::Error) -> std::process::ExitCode {
    if !json_asked() || !e.use_stderr() {
        e.exit();
    }
    let rendered = e.render().to_string();
    let message = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    eprintln!(
        "{}",
        serde_json::json!({ "error": message, "hint": "run `ward --help`, or `ward COMMAND --help`" })
    );
    std::process::ExitCode::from(2)
}
