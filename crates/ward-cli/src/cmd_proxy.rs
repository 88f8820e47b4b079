//! `ward proxy` and `ward sample-app`.
use anyhow::Context;
use serde_json::json;

use crate::cli::{Global, Output, ProxyArgs, SampleAppArgs};
use crate::client::{server_url, trust};

pub(crate) async fn run(g: &Global, a: ProxyArgs) -> anyhow::Result<()> {
    let mode = match (&a.cert, &a.key) {
        (Some(cert), Some(key)) => ward_proxy::Mode::Standalone(ward_proxy::Standalone {
            cert: cert.clone(),
            key: key.clone(),
            bundle: g.trust_bundle.clone().ok_or_else(|| {
                anyhow::anyhow!("--cert needs --trust-bundle: the CA certificates peers chain to")
            })?,
            policy_file: a.policy_file.clone(),
            default_action: a.default_policy.parse().map_err(anyhow::Error::msg)?,
        }),
        _ => {
            let url = server_url(g)?;
            let server = url
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_string();
            let join_token = match (&a.join_token, &a.join_token_file) {
                (Some(t), _) => Some(t.trim().to_string()),
                (None, Some(f)) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?
                        .trim()
                        .to_string(),
                ),
                (None, None) => None,
            };
            ward_proxy::Mode::ControlPlane {
                server,
                trust: trust(g)?,
                join_token,
            }
        }
    };
    let cfg = ward_proxy::ProxyConfig {
        mode,
        service: a.service,
        namespace: a.namespace,
        inbound: a.inbound,
        app: a.app,
        app_protocol: a.app_protocol,
        advertise: a.advertise,
        upstreams: a.upstreams,
        admin: Some(a.admin),
        state_dir: a.state_dir,
        drain_timeout: a.drain_timeout,
    };
    let proxy = ward_proxy::Proxy::build(cfg).await?;
    let bound = proxy.bound()?;
    match g.output {
        Output::Json => println!("{}", json!({ "event": "proxy_ready", "proxy": bound })),
        Output::Table => {
            println!(
                "ward proxy {} inbound {} admin {}",
                bound.spiffe_id,
                bound.inbound,
                bound.admin.map(|a| a.to_string()).unwrap_or_default()
            );
            for (name, addr) in &bound.upstreams {
                println!("upstream {name} listening on {addr}");
            }
        }
    }
    proxy.run().await
}

pub(crate) async fn sample_app(g: &Global, a: SampleAppArgs) -> anyhow::Result<()> {
    let http = crate::sample_app::bind(a.listen).await?;
    let tcp = match a.tcp_listen {
        Some(t) => Some(crate::sample_app::bind(t).await?),
        None => None,
    };
    let http_addr = http.local_addr()?;
    let tcp_addr = tcp.as_ref().map(|t| t.local_addr()).transpose()?;
    match g.output {
        Output::Json => println!(
            "{}",
            json!({ "event": "app_ready", "http": http_addr, "tcp": tcp_addr })
        ),
        Output::Table => println!("sample app {} on {http_addr}", a.name),
    }
    crate::sample_app::run(a.name, http, tcp).await
}
