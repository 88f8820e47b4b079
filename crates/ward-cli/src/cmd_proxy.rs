//! `ward proxy` and `ward sample-app`.
use anyhow::Context;
use serde_json::json;

use crate::cli::{AgentArgs, Global, Output, ProxyArgs, SampleAppArgs, WorkloadArgs};
use crate::client::{server_urls, trust};

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
        _ => control_plane(g, &a.join_token, &a.join_token_file, a.report_interval)?,
    };
    let cfg = ward_proxy::ProxyConfig {
        mode,
        service: a.service,
        namespace: a.namespace,
        data_plane: Some(ward_proxy::DataPlane {
            inbound: a.inbound,
            app: a.app,
            app_protocol: a.app_protocol,
            advertise: a.advertise,
            upstreams: a.upstreams,
            hbone: a.hbone,
            peer_transport: a.peer_transport,
            workers: a.worker_threads.unwrap_or_else(crate::cli::default_workers),
        }),
        workload: workload(a.workload),
        admin: Some(a.admin),
        state_dir: a.state_dir,
        drain_timeout: a.drain_timeout,
    };
    let proxy = ward_proxy::Proxy::build(cfg).await?;
    proxy.count_log_drops(crate::logging::dropped_lines);
    let bound = proxy.bound()?;
    match g.output {
        Output::Json => println!("{}", json!({ "event": "proxy_ready", "proxy": bound })),
        Output::Table => {
            println!(
                "ward proxy {} inbound {} admin {}",
                bound.spiffe_id,
                bound.inbound.map(|a| a.to_string()).unwrap_or_default(),
                bound.admin.map(|a| a.to_string()).unwrap_or_default()
            );
            for (name, addr) in &bound.upstreams {
                println!("upstream {name} listening on {addr}");
            }
            if let Some(p) = &bound.workload_api {
                println!("workload API on unix://{}", p.display());
            }
        }
    }
    proxy.run().await
}

/// `ward agent`: a sidecar's identity side alone.
pub(crate) async fn agent(g: &Global, a: AgentArgs) -> anyhow::Result<()> {
    if a.workload.workload_api.is_none() && a.workload.write_dir.is_none() {
        anyhow::bail!(
            "give --workload-api unix:///path, --write-dir DIR or both: the agent has nothing else to do"
        );
    }
    let cfg = ward_proxy::ProxyConfig {
        mode: control_plane(g, &a.join_token, &a.join_token_file, a.report_interval)?,
        service: a.service,
        namespace: a.namespace,
        data_plane: None,
        workload: workload(a.workload),
        admin: a.admin,
        state_dir: a.state_dir,
        drain_timeout: std::time::Duration::from_secs(1),
    };
    let agent = ward_proxy::Proxy::build(cfg).await?;
    agent.count_log_drops(crate::logging::dropped_lines);
    let bound = agent.bound()?;
    match g.output {
        Output::Json => println!("{}", json!({ "event": "agent_ready", "agent": bound })),
        Output::Table => {
            println!(
                "ward agent {} admin {}",
                bound.spiffe_id,
                bound.admin.map(|a| a.to_string()).unwrap_or_default()
            );
            if let Some(p) = &bound.workload_api {
                println!("workload API on unix://{}", p.display());
            }
        }
    }
    agent.run().await
}

/// A control plane from the global flags, and the join token if given.
fn control_plane(
    g: &Global,
    join_token: &Option<String>,
    join_token_file: &Option<std::path::PathBuf>,
    report_every: std::time::Duration,
) -> anyhow::Result<ward_proxy::Mode> {
    let server = server_urls(g)?
        .iter()
        .map(|u| u.trim_start_matches("https://"))
        .collect::<Vec<_>>()
        .join(",");
    let join_token = match (join_token, join_token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    Ok(ward_proxy::Mode::ControlPlane {
        server,
        trust: trust(g)?,
        join_token,
        report_every,
    })
}

fn workload(w: WorkloadArgs) -> Option<ward_proxy::WorkloadConfig> {
    if w.workload_api.is_none() && w.write_dir.is_none() {
        return None;
    }
    Some(ward_proxy::WorkloadConfig {
        socket: w.workload_api,
        uids: w.workload_uids,
        write_dir: w.write_dir,
        on_change: w.on_change,
    })
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
