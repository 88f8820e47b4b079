//! Runs the command the user asked for.
use crate::cli::{Cli, Command};
use crate::{cmd_admin, cmd_cert, cmd_oauth, cmd_proxy, cmd_server, demo};

/// Hands the parsed command line to the command that does it.
pub(crate) async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let g = cli.global;
    match cli.command {
        Command::Server(a) => cmd_server::run(&g, a).await,
        Command::Proxy(a) => cmd_proxy::run(&g, *a).await,
        Command::Agent(a) => cmd_proxy::agent(&g, a).await,
        Command::Demo { check } => demo::run(&g, check).await,
        Command::SampleApp(a) => cmd_proxy::sample_app(&g, a).await,
        Command::Service(c) => cmd_admin::service(&g, c).await,
        Command::JoinToken(c) => cmd_admin::join_token(&g, c).await,
        Command::Cert(c) => cmd_cert::run(&g, c).await,
        Command::Ca(c) => cmd_admin::ca(&g, c).await,
        Command::Policy(c) => cmd_admin::policy(&g, c).await,
        Command::Client(c) => cmd_oauth::client(&g, c).await,
        Command::Token(c) => cmd_oauth::token(&g, c).await,
        Command::SigningKey(c) => cmd_oauth::signing_key(&g, c).await,
        Command::Status => cmd_admin::status(&g).await,
        Command::Audit(a) => cmd_admin::audit(&g, a).await,
        Command::Top(a) => cmd_admin::top(&g, a).await,
    }
}
