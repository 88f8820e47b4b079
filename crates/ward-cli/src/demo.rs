//! `ward demo`: the whole system on one machine. A control plane on a
//! temporary data dir, three sample services each behind its own sidecar,
//! a policy, real traffic, and a summary of what every receiving app saw.
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde_json::{json, Value};
use ward_api::demo::echo_client::EchoClient;
use ward_api::demo::EchoRequest;
use ward_proxy::{Bound, DataPlane, Mode, Protocol, Proxy, ProxyConfig, Upstream};
use ward_tls::ControlPlaneTrust;

use crate::cli::{Global, Output};

const POLICY: &str = r#"{
  "apiVersion": "ward/v1", "kind": "AuthorizationPolicy",
  "metadata": { "name": "payments-from-frontend", "namespace": "default" },
  "spec": { "selector": { "service": "payments" }, "action": "ALLOW",
            "rules": [ { "from": [ { "source": { "principals": ["ward.internal/ns/default/sa/frontend"] } } ] } ] }
}"#;

struct Row {
    from: &'static str,
    to: &'static str,
    protocol: &'static str,
    result: String,
    peer_seen: String,
    tls: String,
    ok: bool,
}

pub(crate) async fn run(g: &Global, check: bool) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let mut cfg = ward_server::Config::new(data.clone());
    cfg.listen = "127.0.0.1:0".parse()?;
    cfg.ui_listen = Some("127.0.0.1:0".parse()?);
    let server = ward_server::Server::build(cfg).await?;
    let server_addr = server.local_addr();
    let ui_addr = server.ui_addr();
    let fp = server.root_fingerprint().to_string();
    tokio::spawn(server.run());
    let mut admin_g = g.clone();
    admin_g.data_dir = Some(data.clone());
    admin_g.server = None;
    let api = crate::client::Api::new(&admin_g)?;

    let mut apps = Vec::new();
    for name in ["frontend", "payments", "ledger"] {
        api.post("/api/v1/services", json!({ "name": name }))
            .await?;
        let http = crate::sample_app::bind("127.0.0.1:0".parse()?).await?;
        let addr = http.local_addr()?;
        tokio::spawn(crate::sample_app::run(name.to_string(), http, None));
        apps.push((name, addr));
    }
    api.post(
        "/api/v1/policies/apply",
        json!({ "policies": [serde_json::from_str::<Value>(POLICY)?] }),
    )
    .await?;

    let mut sidecars = Vec::new();
    for (name, app) in &apps {
        let token = api
            .post("/api/v1/join-tokens", json!({ "service": name }))
            .await?["token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let upstreams: Vec<Upstream> = match *name {
            "frontend" => vec![up("payments")?, up("ledger")?],
            "payments" => vec![up("ledger")?],
            _ => vec![],
        };
        let cfg = ProxyConfig {
            mode: Mode::ControlPlane {
                server: server_addr.to_string(),
                trust: ControlPlaneTrust::fingerprint(&fp).map_err(|e| anyhow!(e))?,
                join_token: Some(token),
                report_every: Duration::from_secs(10),
            },
            service: name.to_string(),
            namespace: "default".into(),
            data_plane: Some(DataPlane {
                inbound: "127.0.0.1:0".parse()?,
                app: *app,
                app_protocol: Protocol::Http,
                advertise: None,
                upstreams,
                hbone: None,
                peer_transport: Default::default(),
                // The demo's sidecars share its runtime.
                workers: 1,
            }),
            workload: None,
            admin: Some("127.0.0.1:0".parse()?),
            state_dir: None,
            drain_timeout: Duration::from_secs(5),
        };
        let proxy = Proxy::build(cfg)
            .await
            .with_context(|| format!("starting the {name} sidecar"))?;
        let bound = proxy.bound()?;
        tokio::spawn(proxy.run());
        sidecars.push((*name, bound));
    }
    let side = |n: &str| {
        sidecars
            .iter()
            .find(|(s, _)| *s == n)
            .map(|(_, b)| b.clone())
            .ok_or_else(|| anyhow!("no sidecar {n}"))
    };
    let (fe, pay, ledger) = (side("frontend")?, side("payments")?, side("ledger")?);
    wait_ready(&[&fe, &pay, &ledger]).await?;

    let fe_pay = fe.upstreams["payments.default"];
    let fe_ledger = fe.upstreams["ledger.default"];
    let pay_ledger = pay.upstreams["ledger.default"];
    let frontend_id = fe.spiffe_id.clone();
    let mut rows = Vec::new();
    rows.push(
        http_call(
            "frontend",
            "payments",
            "HTTP/1.1",
            fe_pay,
            false,
            Some(&frontend_id),
            &pay,
        )
        .await,
    );
    rows.push(
        http_call(
            "frontend",
            "payments",
            "HTTP/2",
            fe_pay,
            true,
            Some(&frontend_id),
            &pay,
        )
        .await,
    );
    rows.push(grpc_call(fe_pay, &frontend_id, &pay).await);
    rows.push(
        http_call(
            "frontend", "ledger", "HTTP/1.1", fe_ledger, false, None, &ledger,
        )
        .await,
    );
    rows.push(
        http_call(
            "payments", "ledger", "HTTP/1.1", pay_ledger, false, None, &ledger,
        )
        .await,
    );
    let pay_inbound = pay
        .inbound
        .ok_or_else(|| anyhow!("the payments sidecar has no inbound port"))?;
    rows.push(plaintext_probe(pay_inbound).await);

    let passed = rows.iter().filter(|r| r.ok).count();
    let total = rows.len();
    match g.output {
        Output::Json => println!(
            "{}",
            json!({
                "server": format!("https://{server_addr}"), "root_fingerprint": fp,
                "calls": rows.iter().map(|r| json!({ "from": r.from, "to": r.to, "protocol": r.protocol, "result": r.result,
                    "peer_seen_by_app": r.peer_seen, "tls": r.tls, "as_expected": r.ok })).collect::<Vec<_>>(),
                "passed": passed, "total": total,
            })
        ),
        Output::Table => print_summary(server_addr, &fp, &rows, passed, total),
    }
    if passed != total {
        return Err(anyhow!(
            "{} of {total} demo calls did not behave as expected",
            total - passed
        ));
    }
    if check {
        return Ok(());
    }
    let ward = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "ward".into());
    let admin = |b: &Bound| b.admin.map(|a| a.to_string()).unwrap_or_default();
    println!();
    println!("A sidecar is the proxy beside each app: it does mutual TLS and authorization for it, so the app speaks plain HTTP on 127.0.0.1.");
    println!("The trust domain (ward.internal) is the name every SPIFFE ID here lives under: spiffe://ward.internal/ns/<namespace>/sa/<service>.");
    println!("Mesh default deny: a call that no ALLOW policy covers is refused, which is why frontend -> ledger gets 403.");
    println!();
    println!("The mesh keeps running. Try, from another shell (Ctrl-C or SIGTERM here stops everything):");
    println!("  curl -s http://{fe_pay}/pay/42            # the frontend sidecar's port for payments: allowed; the app shows the caller's SPIFFE ID");
    println!("  curl -s -i http://{fe_ledger}/balance     # the frontend sidecar's port for ledger: 403, no policy allows it");
    println!("  curl -s --http2-prior-knowledge http://{fe_pay}/h2   # the frontend sidecar's port for payments, over HTTP/2");
    println!(
        "  curl -s http://{}/metrics | grep ward_    # the frontend sidecar's admin port: metrics",
        admin(&fe)
    );
    println!(
        "  curl -s http://{}/certs                   # the payments sidecar's admin port: its certificate",
        admin(&pay)
    );
    println!(
        "  {ward} --data-dir {} status     # the control plane, through its data dir",
        data.display()
    );
    println!("  {ward} --data-dir {} policy check --from frontend --to ledger --method GET --path /balance", data.display());
    println!(
        "  {ward} --data-dir {} top        # who calls whom, allowed and denied, as the sidecars report it",
        data.display()
    );
    if let Some(ui) = ui_addr {
        println!();
        println!(
            "Dashboard: https://{ui}/ui/ (sign in with the admin token in {}; the browser is asked to trust ward's own CA, {})",
            data.join("admin.token").display(),
            data.join("bundle.pem").display()
        );
    }
    ward_http::shutdown_signal().await;
    Ok(())
}

fn up(name: &str) -> anyhow::Result<Upstream> {
    format!("{name}=127.0.0.1:0")
        .parse()
        .map_err(|e: String| anyhow!(e))
}

async fn wait_ready(sidecars: &[&Bound]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        let mut all = true;
        for s in sidecars {
            let admin = s.admin.ok_or_else(|| anyhow!("no admin port"))?;
            let ready = client
                .get(format!("http://{admin}/ready"))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            let cfg: Value = match client.get(format!("http://{admin}/config")).send().await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => Value::Null,
            };
            let upstreams_known = cfg["config"]["upstreams"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|u| {
                    let id = format!(
                        "spiffe://ward.internal/ns/{}/sa/{}",
                        u["namespace"].as_str().unwrap_or_default(),
                        u["service"].as_str().unwrap_or_default()
                    );
                    cfg["endpoints"][&id]
                        .as_array()
                        .is_some_and(|a| !a.is_empty())
                });
            all &= ready && upstreams_known;
        }
        if all {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(anyhow!("the sidecars did not become ready within 10 s"))
}

async fn tls_versions(receiver: &Bound) -> String {
    let Some(admin) = receiver.admin else {
        return "?".into();
    };
    let text = match reqwest::get(format!("http://{admin}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return "?".into(),
    };
    let mut versions: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("ward_proxy_tls_versions_total{") && l.contains("inbound"))
        .filter_map(|l| {
            l.split("version=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(String::from)
        })
        .collect();
    versions.sort();
    versions.dedup();
    if versions.is_empty() {
        "-".into()
    } else {
        versions.join(",")
    }
}

async fn http_call(
    from: &'static str,
    to: &'static str,
    protocol: &'static str,
    addr: SocketAddr,
    h2: bool,
    expect_allowed_from: Option<&str>,
    receiver: &Bound,
) -> Row {
    let builder = reqwest::Client::builder();
    let client = if h2 {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    }
    .build()
    .expect("HTTP client");
    let (result, peer, ok) = match client.get(format!("http://{addr}/{to}/demo")).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or_default();
            let peer = v["peer_id"].as_str().unwrap_or("-").to_string();
            match expect_allowed_from {
                Some(id) => (
                    format!("{status} allowed"),
                    peer.clone(),
                    status == 200 && peer == id,
                ),
                None => (format!("{status} denied"), "-".into(), status == 403),
            }
        }
        Err(e) => (format!("error: {e}"), "-".into(), false),
    };
    Row {
        from,
        to,
        protocol,
        result,
        peer_seen: peer,
        tls: tls_versions(receiver).await,
        ok,
    }
}

async fn grpc_call(addr: SocketAddr, expect: &str, receiver: &Bound) -> Row {
    let r = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let reply = EchoClient::new(channel)
            .echo(EchoRequest {
                message: "hello".into(),
            })
            .await?
            .into_inner();
        Ok::<_, anyhow::Error>(reply)
    }
    .await;
    let (result, peer, ok) = match r {
        Ok(reply) => (
            "OK allowed".to_string(),
            reply.peer_id.clone(),
            reply.peer_id == expect,
        ),
        Err(e) => (format!("error: {e}"), "-".into(), false),
    };
    Row {
        from: "frontend",
        to: "payments",
        protocol: "gRPC",
        result,
        peer_seen: peer,
        tls: tls_versions(receiver).await,
        ok,
    }
}

async fn plaintext_probe(inbound: SocketAddr) -> Row {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let outcome = async {
        let mut s = tokio::net::TcpStream::connect(inbound).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: payments\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"))
    }
    .await;
    let served = outcome.unwrap_or(false);
    Row {
        from: "outsider",
        to: "payments",
        protocol: "plaintext",
        result: if served {
            "served!".into()
        } else {
            "refused".into()
        },
        peer_seen: "-".into(),
        tls: "none".into(),
        ok: !served,
    }
}

fn print_summary(server: SocketAddr, fp: &str, rows: &[Row], passed: usize, total: usize) {
    println!("ward demo: control plane https://{server}, trust domain ward.internal, root {fp}");
    println!("services: frontend, payments, ledger, each a sample app behind its own sidecar");
    println!("policy: payments-from-frontend (ALLOW frontend -> payments); nothing allows ledger, and the mesh default is deny");
    println!();
    let header = [
        "FROM",
        "TO",
        "PROTOCOL",
        "RESULT",
        "PEER SEEN BY THE APP",
        "TLS",
        "",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.from.into(),
                r.to.into(),
                r.protocol.into(),
                r.result.clone(),
                r.peer_seen.clone(),
                r.tls.clone(),
                if r.ok {
                    "as expected".into()
                } else {
                    "UNEXPECTED".into()
                },
            ]
        })
        .collect();
    let header: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    let cells: Vec<Vec<String>> = cells.into_iter().map(|c| c.to_vec()).collect();
    crate::output::print_grid(&header, &cells);
    println!();
    println!("{passed} of {total} calls behaved as expected");
}
