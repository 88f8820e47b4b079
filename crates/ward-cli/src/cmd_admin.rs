//! Registry, join tokens, CA, status and audit commands.
use serde_json::{json, Value};

use crate::cli::{AuditArgs, CaCmd, Global, JoinTokenCmd, Output, PolicyCmd, ServiceCmd, TopArgs};
use crate::client::Api;
use crate::output::{print, time};

pub(crate) async fn service(g: &Global, c: ServiceCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match c {
        ServiceCmd::Add {
            name,
            namespace,
            protocol,
        } => {
            let v = api
                .post(
                    "/api/v1/services",
                    json!({ "name": name, "namespace": namespace, "protocol": protocol }),
                )
                .await?;
            print(g, &v, &[]);
        }
        ServiceCmd::List => {
            let v = api.get("/api/v1/services").await?;
            print(g, &v, &["namespace", "name", "protocol", "spiffe_id"]);
        }
        ServiceCmd::Remove { name, namespace } => {
            api.delete(&format!("/api/v1/services/{namespace}/{name}"))
                .await?;
            print(g, &json!({ "removed": format!("{namespace}/{name}") }), &[]);
        }
    }
    Ok(())
}

pub(crate) async fn join_token(g: &Global, c: JoinTokenCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    let (service, namespace, ttl, uses) = match c {
        JoinTokenCmd::Create {
            service,
            namespace,
            ttl,
            uses,
        } => (service, namespace, ttl, uses),
        JoinTokenCmd::List => {
            let v = api.get("/api/v1/join-tokens").await?;
            print(
                g,
                &v,
                &[
                    "id",
                    "namespace",
                    "service",
                    "uses_left",
                    "expires_at",
                    "created_at",
                ],
            );
            return Ok(());
        }
        JoinTokenCmd::Revoke { id } => {
            api.delete(&format!("/api/v1/join-tokens/{id}")).await?;
            print(g, &json!({ "revoked": id }), &[]);
            return Ok(());
        }
    };
    let v = api
        .post(
            "/api/v1/join-tokens",
            json!({ "service": service, "namespace": namespace, "ttl_secs": ttl.as_secs().max(1), "uses": uses }),
        )
        .await?;
    if g.output == Output::Json {
        print(g, &v, &[]);
    } else {
        // The token alone on stdout, so that `$(ward join-token create …)` works;
        // what it is for goes to stderr.
        println!("{}", v["token"].as_str().unwrap_or_default());
        eprintln!(
            "join token {} for {} (uses: {}, expires {}; `ward join-token revoke {}` cancels it)",
            v["id"].as_str().unwrap_or_default(),
            v["spiffe_id"].as_str().unwrap_or_default(),
            v["uses"],
            time(v["expires_at"].as_i64().unwrap_or(0)),
            v["id"].as_str().unwrap_or_default(),
        );
    }
    Ok(())
}

pub(crate) async fn ca(g: &Global, c: CaCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match c {
        CaCmd::Show { pem } => {
            let v = api.get("/api/v1/ca").await?;
            if pem {
                print!("{}", v["bundle_pem"].as_str().unwrap_or_default());
            } else if g.output == Output::Json {
                print(g, &v, &[]);
            } else {
                println!(
                    "trust domain: {}",
                    v["trust_domain"].as_str().unwrap_or_default()
                );
                let r = &v["root"];
                println!(
                    "root: {} serial {} expires {}",
                    r["fingerprint"].as_str().unwrap_or_default(),
                    r["serial"].as_str().unwrap_or_default(),
                    time(r["not_after"].as_i64().unwrap_or(0))
                );
                println!("bundle sequence: {}", v["bundle_sequence"]);
                let rows: Vec<Value> = v["signing"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| {
                        json!({
                            "state": s["state"], "serial": s["serial"],
                            "not_before": time(s["not_before"].as_i64().unwrap_or(0)),
                            "not_after": time(s["not_after"].as_i64().unwrap_or(0)),
                        })
                    })
                    .collect();
                println!("signing CAs:");
                print(
                    g,
                    &Value::Array(rows),
                    &["state", "serial", "not_before", "not_after"],
                );
            }
        }
        CaCmd::Fingerprint => {
            let v = api.get("/api/v1/ca").await?;
            let fp = v["root"]["fingerprint"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if g.output == Output::Json {
                print(g, &json!({ "fingerprint": fp }), &[]);
            } else {
                println!("{fp}");
            }
        }
        CaCmd::Rotate => {
            let v = api.post("/api/v1/ca/rotate", json!({})).await?;
            print(g, &v, &[]);
        }
    }
    Ok(())
}

pub(crate) async fn status(g: &Global) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    let v = api.get("/api/v1/status").await?;
    if g.output == Output::Json {
        print(g, &v, &[]);
        return Ok(());
    }
    println!("server: healthy");
    println!(
        "trust domain: {}",
        v["trust_domain"].as_str().unwrap_or_default()
    );
    println!(
        "root fingerprint: {}",
        v["root_fingerprint"].as_str().unwrap_or_default()
    );
    println!(
        "active signing CA: {}",
        v["active_signing_ca"].as_str().unwrap_or_default()
    );
    println!("registered services: {}", v["services"]);
    let proxies = v["connected_proxies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    println!("connected proxies: {}", proxies.len());
    if let (Some(cap), Some(limit)) = (
        v["sidecar_capacity"].as_u64(),
        v["open_files"]["limit"].as_u64(),
    ) {
        println!("sidecars it can hold at its open-file limit ({limit}): {cap}");
    }
    for p in &proxies {
        println!(
            "  {} since {}",
            p["spiffe_id"].as_str().unwrap_or_default(),
            time(p["since"].as_i64().unwrap_or(0))
        );
    }
    let near = v["certificates_near_expiry"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    println!(
        "certificates expiring within {}s: {}",
        v["near_expiry_window_secs"],
        near.len()
    );
    for c in &near {
        println!(
            "  {} {} expires {}",
            c["serial"].as_str().unwrap_or_default(),
            c["spiffe_id"].as_str().unwrap_or_default(),
            time(c["not_after"].as_i64().unwrap_or(0))
        );
    }
    Ok(())
}

/// `ward top`: the traffic graph as a table, busiest edge first.
pub(crate) async fn top(g: &Global, a: TopArgs) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    loop {
        let v = api.get("/api/v1/traffic").await?;
        if g.output == Output::Json {
            print(g, &v, &[]);
        } else {
            if a.watch {
                // Clear the screen and go home, as top does.
                print!("\x1b[2J\x1b[H");
            }
            print_traffic(&v);
        }
        if !a.watch {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

fn print_traffic(v: &Value) {
    // `spiffe://td/ns/N/sa/S` as N/S; anything else as it is.
    let short = |id: &str| -> String {
        if id.is_empty() {
            return "(unauthenticated or other)".into();
        }
        let path = id.splitn(4, '/').nth(3).unwrap_or(id);
        match path.split('/').collect::<Vec<_>>()[..] {
            ["ns", ns, "sa", sa] => format!("{ns}/{sa}"),
            _ => id.to_string(),
        }
    };
    let edges = v["edges"].as_array().cloned().unwrap_or_default();
    let header: Vec<String> = [
        "SOURCE",
        "DESTINATION",
        "RPS",
        "ALLOWED",
        "DENIED",
        "DENIED BY",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    let rows: Vec<Vec<String>> = edges
        .iter()
        .map(|e| {
            let denied_by: Vec<String> = e["denied_by"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{} ({})",
                        p["policy"].as_str().unwrap_or_default(),
                        p["requests"]
                    )
                })
                .collect();
            vec![
                short(e["source"].as_str().unwrap_or_default()),
                short(e["destination"].as_str().unwrap_or_default()),
                format!("{:.1}", e["rate"].as_f64().unwrap_or(0.0)),
                e["allowed"].to_string(),
                e["denied"].to_string(),
                denied_by.join(", "),
            ]
        })
        .collect();
    let watchers = v["watchers"].as_array().map_or(0, |w| w.len());
    println!(
        "{} edges, {watchers} sidecars and agents connected",
        rows.len()
    );
    if !rows.is_empty() {
        crate::output::print_grid(&header, &rows);
    }
}

pub(crate) async fn audit(g: &Global, a: AuditArgs) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    let v = api
        .get(&format!(
            "/api/v1/audit?after={}&limit={}",
            a.after, a.limit
        ))
        .await?;
    let v = match (g.output, v) {
        (Output::Table, Value::Array(rows)) => Value::Array(
            rows.into_iter()
                .map(|mut r| {
                    r["at"] = json!(time(r["at"].as_i64().unwrap_or(0)));
                    r
                })
                .collect(),
        ),
        (_, v) => v,
    };
    print(g, &v, &["id", "at", "actor", "action", "target"]);
    Ok(())
}

/// Reads every policy document in `paths` (files, or directories of
/// `.yaml`/`.yml`/`.json` files), with where each came from.
pub(crate) fn read_policy_documents(
    paths: &[std::path::PathBuf],
) -> anyhow::Result<(Vec<Value>, Vec<String>)> {
    use anyhow::Context;
    use serde::Deserialize;
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(p.clone());
        }
    }
    let (mut docs, mut sources) = (Vec::new(), Vec::new());
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let v = Value::deserialize(doc)
                .map_err(|e| anyhow::anyhow!("{}, document {}: {e}", f.display(), i + 1))?;
            if v.is_null() {
                continue;
            }
            docs.push(v);
            sources.push(format!("{}, document {}", f.display(), i + 1));
        }
    }
    if docs.is_empty() {
        anyhow::bail!("no policy documents found");
    }
    Ok((docs, sources))
}

pub(crate) async fn policy(g: &Global, c: PolicyCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match c {
        PolicyCmd::Apply { files } => {
            let (docs, sources) = read_policy_documents(&files)?;
            let v = api
                .post(
                    "/api/v1/policies/apply",
                    json!({ "policies": docs, "sources": sources }),
                )
                .await?;
            if g.output == Output::Json {
                print(g, &v, &[]);
            } else {
                for p in v["applied"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "policy {}/{} applied (version {})",
                        p["namespace"].as_str().unwrap_or_default(),
                        p["name"].as_str().unwrap_or_default(),
                        p["version"]
                    );
                }
            }
        }
        PolicyCmd::List => {
            let mut v = api.get("/api/v1/policies").await?;
            if let Value::Array(rows) = &mut v {
                if g.output == Output::Table {
                    for r in rows {
                        r["kind"] = r["policy"]["kind"].clone();
                        r["action"] = r["policy"]["spec"]["action"].clone();
                        r["service"] = r["policy"]["spec"]["selector"]["service"].clone();
                        let authz = r["kind"] == "AuthorizationPolicy";
                        r["dry_run"] = match r["policy"]["spec"]["dryRun"].as_bool() {
                            _ if !authz => Value::Null,
                            Some(true) => json!("yes"),
                            _ => json!("no"),
                        };
                    }
                }
            }
            print(
                g,
                &v,
                &[
                    "namespace",
                    "name",
                    "kind",
                    "service",
                    "action",
                    "dry_run",
                    "version",
                    "updated_at",
                ],
            );
        }
        PolicyCmd::Get { name, namespace } => {
            let v = api
                .get(&format!("/api/v1/policies/{namespace}/{name}"))
                .await?;
            if g.output == Output::Json {
                print(g, &v, &[]);
            } else {
                print!("{}", serde_yaml_ng::to_string(&v["policy"])?);
            }
        }
        PolicyCmd::Check {
            from,
            to,
            method,
            path,
            host,
            port,
            source_ip,
            headers,
            claims,
            token_type,
        } => {
            let headers = headers
                .iter()
                .map(|h| {
                    h.split_once('=')
                        .map(|(k, v)| json!([k.trim(), v]))
                        .ok_or_else(|| anyhow::anyhow!("--header {h:?}: expected K=V"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let claims = claims
                .map(|c| match serde_json::from_str::<Value>(&c) {
                    Ok(v) if v.is_object() => Ok(v),
                    Ok(_) => Err(anyhow::anyhow!("--claims: expected a JSON object, {{...}}")),
                    Err(e) => Err(anyhow::anyhow!("--claims: not JSON: {e}")),
                })
                .transpose()?;
            let v = api
                .post(
                    "/api/v1/policies/check",
                    json!({
                        "from": from, "to": to, "method": method, "path": path, "host": host,
                        "port": port, "source_ip": source_ip, "headers": headers, "claims": claims,
                        "token_type": token_type,
                    }),
                )
                .await?;
            let allowed = v["decision"] == "allow";
            if g.output == Output::Json {
                print(g, &v, &[]);
            } else {
                let rule = v["rule"]
                    .as_u64()
                    .map(|r| format!(", rule {r}"))
                    .unwrap_or_default();
                println!(
                    "{}: {} (policy {}{rule})",
                    v["decision"].as_str().unwrap_or_default().to_uppercase(),
                    match v["reason"].as_str().unwrap_or_default() {
                        "DenyRule" => "a DENY rule matched",
                        "AllowRule" => "an ALLOW rule matched",
                        "NoAllowMatched" => "ALLOW policies apply and none matched",
                        "TokenType" => "the token's typ is not one the RequestAuthentication accepts (tokenType)",
                        _ => "no policy applies; the mesh default decided",
                    },
                    v["policy"].as_str().unwrap_or_default(),
                );
                if let Some(detail) = v["detail"].as_str() {
                    println!("  {detail}");
                }
                if let Some(from) = v["request"]["from"].as_str() {
                    println!(
                        "  caller: {from} ({})",
                        v["request"]["from_resolved"].as_str().unwrap_or_default()
                    );
                }
                for m in v["reported"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "  also matched: {} ({}{}, rule {}), not enforced",
                        m["policy"].as_str().unwrap_or_default(),
                        m["action"].as_str().unwrap_or_default(),
                        if m["dry_run"] == true {
                            ", dry-run"
                        } else {
                            ""
                        },
                        m["rule"]
                    );
                }
            }
            if !allowed {
                std::process::exit(1);
            }
        }
        PolicyCmd::Delete { name, namespace } => {
            api.delete(&format!("/api/v1/policies/{namespace}/{name}"))
                .await?;
            print(g, &json!({ "deleted": format!("{namespace}/{name}") }), &[]);
        }
    }
    Ok(())
}
