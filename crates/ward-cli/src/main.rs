//! `ward`: the control plane, and the admin CLI that talks to it.
mod cli;
mod client;
mod cmd_admin;
mod cmd_cert;
mod cmd_oauth;
mod cmd_proxy;
mod cmd_server;
mod demo;
mod output;
mod sample_app;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    // One crypto provider for the whole process: aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let quiet = matches!(args.command, cli::Command::Demo { .. });
    cli::init_tracing(
        &args.global,
        if quiet {
            "warn"
        } else {
            "info,sqlx=warn,h2=warn,hyper=warn"
        },
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
