//! `ward server`.
use std::path::PathBuf;

use serde_json::json;

use crate::cli::{Global, Output, ServerArgs};

pub(crate) async fn run(g: &Global, a: ServerArgs) -> anyhow::Result<()> {
    let data_dir = g
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("ward-data"));
    let mut config = ward_server::Config::new(data_dir);
    config.listen = a.listen;
    config.trust_domain = a.trust_domain;
    config.database = a.database;
    config.svid_ttl = a.svid_ttl;
    config.ca_ttl = a.ca_ttl;
    if !a.dns_names.is_empty() {
        config.dns_names = a.dns_names;
    }
    config.upstream_ca = a.upstream_ca_cert.zip(a.upstream_ca_key);
    config.default_policy = a.default_policy;
    config.token_ttl = a.token_ttl;
    config.issuer = a.issuer;
    config.max_pending_calls = a.max_pending_calls as usize;
    config.ui_listen = a.ui_listen;
    config.ui_session_ttl = a.ui_session_ttl;
    if a.print_config {
        print!("{}", effective(g, &config)?);
        return Ok(());
    }
    let server = ward_server::Server::build(config).await?;
    let addr = server.local_addr();
    let files = server.files().clone();
    match g.output {
        Output::Json => {
            println!(
                "{}",
                json!({ "event": "listening", "addr": addr.to_string(), "url": format!("https://{addr}") })
            );
            if let Some(ui) = server.ui_addr() {
                println!(
                    "{}",
                    json!({ "event": "dashboard", "addr": ui.to_string(), "url": format!("https://{ui}/ui/") })
                );
            }
            println!(
                "{}",
                json!({
                    "event": "root_fingerprint",
                    "fingerprint": server.root_fingerprint(),
                    "trust_domain": server.trust_domain(),
                    "data_dir": files.dir.display().to_string(),
                    "admin_token_file": files.admin_token().display().to_string(),
                    "trust_bundle_file": files.bundle().display().to_string(),
                })
            );
        }
        Output::Table => {
            println!("ward server listening on {addr}");
            if let Some(ui) = server.ui_addr() {
                println!("dashboard https://{ui}/ui/ (sign in with the admin token)");
            }
            println!("root fingerprint {}", server.root_fingerprint());
            println!("trust domain {}", server.trust_domain());
            println!("admin token file {}", files.admin_token().display());
            println!("trust bundle file {}", files.bundle().display());
        }
    }
    server.run().await?;
    Ok(())
}

/// The configuration in force, as YAML keyed like the `--config` file, with
/// any password in the database URL replaced.
fn effective(g: &Global, c: &ward_server::Config) -> anyhow::Result<String> {
    let d = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let v = json!({
        "data-dir": c.data_dir.display().to_string(),
        "listen": c.listen.to_string(),
        "trust-domain": c.trust_domain,
        "database": c.database.as_ref().map(|_| c.database().redacted()),
        "svid-ttl": d(c.svid_ttl),
        "ca-ttl": d(c.ca_ttl),
        "dns-name": c.dns_names,
        "upstream-ca-cert": c.upstream_ca.as_ref().map(|(p, _)| p.display().to_string()),
        "upstream-ca-key": c.upstream_ca.as_ref().map(|(_, p)| p.display().to_string()),
        "default-policy": c.default_policy,
        "token-ttl": d(c.token_ttl),
        "issuer": c.issuer,
        "max-pending-calls": c.max_pending_calls,
        "ui-listen": c.ui_listen.map(|a| a.to_string()),
        "ui-session-ttl": d(c.ui_session_ttl),
        "log-format": format!("{:?}", g.log_format).to_lowercase(),
    });
    Ok(serde_yaml_ng::to_string(&v)?)
}
