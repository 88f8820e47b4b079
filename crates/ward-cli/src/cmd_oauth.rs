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

/// The token endpoint as the server names it (the `aud` of a client
/// assertion), from its RFC 8414 metadata.
async fn token_endpoint(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let v: Value = http
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .map_err(|e| crate::client::unreachable(base, &e))?
        .json()
        .await
        .context("reading the server's OAuth metadata")?;
    v["token_endpoint"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow!("the server's OAuth metadata has no token_endpoint"))
}

/// An RFC 7523 client assertion: iss and sub the client, aud the token
/// endpoint, a fresh jti, 60 s of life.
fn client_assertion(
    client: &str,
    key: &std::path::Path,
    kid: Option<&str>,
    endpoint: &str,
) -> anyhow::Result<String> {
    let pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let pkcs8 = ward_ca::parse_pem_key(&pem).map_err(|e| anyhow!("{}: {e}", key.display()))?;
    let kid = kid.unwrap_or_default();
    let signer = [
        ward_jwt::Algorithm::ES256,
        ward_jwt::Algorithm::ES384,
        ward_jwt::Algorithm::EdDSA,
    ]
    .into_iter()
    .find_map(|alg| ward_jwt::SigningKey::from_pkcs8(alg, kid, &pkcs8).ok())
    .ok_or_else(|| {
        anyhow!(
            "{}: not an ES256 (P-256), ES384 (P-384) or EdDSA (Ed25519) key",
            key.display()
        )
    })?;
    let now = ward_ca::now().unix_timestamp();
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti).map_err(|_| anyhow!("no randomness"))?;
    let claims = json!({
        "iss": client, "sub": client, "aud": endpoint,
        "iat": now, "exp": now + 60, "jti": hex::encode(jti),
    });
    signer
        .sign("JWT", &claims)
        .map_err(|e| anyhow!("signing the client assertion: {e}"))
}

pub(crate) async fn token(g: &Global, c: TokenCmd) -> anyhow::Result<()> {
    match c {
        TokenCmd::Get {
            client,
            client_secret,
            cert,
            key,
            assertion_key,
            assertion_kid,
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
            match (client_secret, assertion_key) {
                (Some(secret), _) => req = req.basic_auth(&client, Some(secret)),
                (None, Some(key)) => {
                    let endpoint = token_endpoint(&http, &base).await?;
                    let assertion =
                        client_assertion(&client, &key, assertion_kid.as_deref(), &endpoint)?;
                    form.push((
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                    ));
                    form.push(("client_assertion", assertion));
                }
                (None, None) => form.push(("client_id", client.clone())),
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
                v.typ = Vec::new();
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
