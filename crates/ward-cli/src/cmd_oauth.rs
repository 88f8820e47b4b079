//! `ward client`, `ward token`, `ward signing-key`.
use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use crate::cli::{ClientCmd, Global, Output, SigningKeyCmd, TokenCmd};
use crate::client::{server_url, trust, Api};
use crate::output::{print, time};

pub(crate) async fn client(g: &Global, c: ClientCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match c {
        ClientCmd::Create {
            name,
            service,
            namespace,
            auth,
            scopes,
            audiences,
            jwks,
        } => {
            let mut body = json!({ "name": name, "service": service, "namespace": namespace, "auth": auth, "scopes": scopes, "audiences": audiences });
            if let Some(f) = jwks {
                let raw = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                body["jwks"] = serde_json::from_str(&raw)
                    .with_context(|| format!("{} is not JSON", f.display()))?;
            }
            let v = api.post("/api/v1/clients", body).await?;
            print(g, &v, &[]);
            if v.get("client_secret").is_some() && g.output == Output::Table {
                eprintln!("the client secret is shown only now; store it safely");
            }
        }
        ClientCmd::List => {
            let v = api.get("/api/v1/clients").await?;
            print(
                g,
                &v,
                &["client_id", "auth", "service_id", "scopes", "audiences"],
            );
        }
        ClientCmd::Delete { name } => {
            api.delete(&format!("/api/v1/clients/{name}")).await?;
            print(g, &json!({ "deleted": name }), &[]);
        }
    }
    Ok(())
}

pub(crate) async fn signing_key(g: &Global, c: SigningKeyCmd) -> anyhow::Result<()> {
    let api = Api::new(g)?;
    match c {
        SigningKeyCmd::Rotate => print(
            g,
            &api.post("/api/v1/signing-keys/rotate", json!({})).await?,
            &[],
        ),
        SigningKeyCmd::List => {
            let mut v = api.get("/api/v1/signing-keys").await?;
            if g.output == Output::Table {
                if let Value::Array(rows) = &mut v {
                    for r in rows {
                        r["created"] = json!(time(r["created_at"].as_i64().unwrap_or(0)));
                    }
                }
            }
            print(g, &v, &["kid", "alg", "state", "created"]);
        }
    }
    Ok(())
}

pub(crate) async fn token(g: &Global, c: TokenCmd) -> anyhow::Result<()> {
    match c {
        TokenCmd::Get {
            client,
            client_secret,
            cert,
            key,
            audience,
            scope,
        } => {
            let base = server_url(g)?;
            let client_cert = match (cert, key) {
                (Some(c), Some(k)) => {
                    use rustls_pki_types::pem::PemObject;
                    let chain = rustls_pki_types::CertificateDer::pem_file_iter(&c)
                        .with_context(|| format!("reading {}", c.display()))?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| anyhow!("{}: {e}", c.display()))?;
                    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&k)
                        .map_err(|e| anyhow!("{}: {e}", k.display()))?;
                    Some((chain, key))
                }
                _ => None,
            };
            let tls = ward_tls::client_config(trust(g)?, client_cert, &[b"http/1.1"])?;
            let http = reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .build()?;
            let mut form = vec![("grant_type", "client_credentials".to_string())];
            if let Some(a) = audience {
                form.push(("audience", a));
            }
            if let Some(s) = scope {
                form.push(("scope", s));
            }
            let mut req = http.post(format!("{base}/oauth2/token"));
            match client_secret {
                Some(secret) => req = req.basic_auth(&client, Some(secret)),
                None => form.push(("client_id", client.clone())),
            }
            let resp = req
                .form(&form)
                .send()
                .await
                .map_err(|e| crate::client::unreachable(&base, &e))?;
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or_default();
            if !status.is_success() {
                bail!(
                    "{}: {}",
                    v["error"].as_str().unwrap_or("error"),
                    v["error_description"].as_str().unwrap_or_default()
                );
            }
            if g.output == Output::Json {
                print(g, &v, &[]);
            } else {
                println!("{}", v["access_token"].as_str().unwrap_or_default());
            }
        }
        TokenCmd::Verify {
            jwks,
            issuer,
            audience,
            any_type,
            token,
        } => {
            let raw = if jwks.starts_with("https://") || jwks.starts_with("http://") {
                let tls = ward_tls::client_config(trust(g)?, None, &[b"http/1.1"])?;
                let http = reqwest::Client::builder()
                    .use_preconfigured_tls(tls)
                    .build()?;
                http.get(&jwks)
                    .send()
                    .await
                    .with_context(|| format!("fetching {jwks}"))?
                    .text()
                    .await?
            } else {
                std::fs::read_to_string(&jwks).with_context(|| format!("reading {jwks}"))?
            };
            let set = ward_jwt::JwkSet::from_json(&raw).map_err(|e| anyhow!("{jwks}: {e}"))?;
            let mut v = ward_jwt::Validation::access_token("", "");
            v.issuer = issuer;
            v.audience = audience;
            v.check_binding = false;
            if any_type {
                v.typ = None;
                v.required = vec!["exp"];
            }
            match ward_jwt::verify(token.trim(), &set, &v) {
                Ok(claims) => print(g, &json!({ "valid": true, "claims": claims.0 }), &[]),
                Err(e) => {
                    if g.output == Output::Json {
                        println!("{}", json!({ "valid": false, "reason": e.to_string() }));
                    }
                    bail!("invalid token: {e}");
                }
            }
        }
    }
    Ok(())
}
