//! `ward cert`.
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{json, Value};
use ward_identity::SpiffeId;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::cli::{CertCmd, Global, Output};
use crate::client::{read_bundle, Api};
use crate::output::{print, time};

pub(crate) async fn run(g: &Global, c: CertCmd) -> anyhow::Result<()> {
    match c {
        CertCmd::Issue {
            spiffe_id,
            out_cert,
            out_key,
            ttl,
            dns_names,
            out_bundle,
        } => {
            let id =
                SpiffeId::parse(&spiffe_id).map_err(|e| anyhow!("--spiffe-id {spiffe_id}: {e}"))?;
            let api = Api::new(g)?;
            let key = KeyPair::generate().context("generating a P-256 key")?;
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
            let csr = params.serialize_request(&key)?.pem()?;
            let mut body = json!({ "csr_pem": csr, "dns_names": dns_names });
            if let Some(t) = ttl {
                body["ttl_secs"] = json!(t.as_secs().max(1));
            }
            let v = api.post("/api/v1/certificates", body).await?;
            write_file(&out_key, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(
                &out_cert,
                v["chain_pem"].as_str().unwrap_or_default().as_bytes(),
                0o644,
            )?;
            if let Some(b) = out_bundle {
                write_file(
                    &b,
                    v["bundle_pem"].as_str().unwrap_or_default().as_bytes(),
                    0o644,
                )?;
            }
            let summary = json!({
                "spiffe_id": v["spiffe_id"], "serial": v["serial"],
                "not_after": if g.output == Output::Json { v["not_after"].clone() } else { json!(time(v["not_after"].as_i64().unwrap_or(0))) },
                "cert": out_cert.display().to_string(), "key": out_key.display().to_string(),
            });
            print(g, &summary, &[]);
        }
        CertCmd::Inspect { file } => return inspect(g, &file).await,
        CertCmd::Revoke { serial, cert } => {
            let serial = match (serial, cert) {
                (Some(s), _) => s.to_ascii_lowercase(),
                (None, Some(f)) => leaf_serial(&f)?,
                (None, None) => bail!("give a serial or --cert FILE"),
            };
            let api = Api::new(g)?;
            let v = api
                .post(&format!("/api/v1/certificates/{serial}/revoke"), json!({}))
                .await?;
            print(g, &v, &[]);
        }
        CertCmd::List { spiffe_id, valid } => {
            let api = Api::new(g)?;
            let mut path = format!("/api/v1/certificates?valid={valid}");
            if let Some(id) = spiffe_id {
                path.push_str(&format!("&spiffe_id={}", urlencode(&id)));
            }
            let mut v = api.get(&path).await?;
            if g.output == Output::Table {
                if let Value::Array(rows) = &mut v {
                    for r in rows {
                        r["not_after"] = json!(time(r["not_after"].as_i64().unwrap_or(0)));
                        r["revoked"] = json!(!r["revoked_at"].is_null());
                    }
                }
            }
            print(g, &v, &["serial", "spiffe_id", "not_after", "revoked"]);
        }
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // `mode` applies only to new files: make an existing one private too.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn read_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = ward_ca::parse_pem_certs(&raw).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(certs.into_iter().map(CertificateDer::from).collect())
}

fn leaf_serial(path: &Path) -> anyhow::Result<String> {
    let chain = read_chain(path)?;
    let (_, leaf) =
        X509Certificate::from_der(&chain[0]).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(hex::encode(leaf.raw_serial()))
}

async fn bundle_for_inspect(g: &Global) -> anyhow::Result<(Vec<CertificateDer<'static>>, String)> {
    if let Some(p) = &g.trust_bundle {
        return Ok((read_bundle(p)?, p.display().to_string()));
    }
    if let Some(d) = &g.data_dir {
        let p = ward_server::DataDirFiles::new(d).bundle();
        return Ok((read_bundle(&p)?, p.display().to_string()));
    }
    let api = Api::new(g).context(
        "no bundle to check the chain against: pass --trust-bundle FILE, --data-dir, or a server",
    )?;
    let v = api.get("/api/v1/ca").await?;
    let pem = v["bundle_pem"].as_str().unwrap_or_default();
    let certs =
        ward_ca::parse_pem_certs(pem.as_bytes()).map_err(|e| anyhow!("server bundle: {e}"))?;
    Ok((
        certs.into_iter().map(CertificateDer::from).collect(),
        "the server".into(),
    ))
}

async fn inspect(g: &Global, file: &Path) -> anyhow::Result<()> {
    let chain = read_chain(file)?;
    let (_, leaf) = X509Certificate::from_der(&chain[0])
        .map_err(|e| anyhow!("{}: not a certificate: {e}", file.display()))?;
    let svid = ward_identity::validate_leaf(&leaf);
    let (bundle, bundle_from) = bundle_for_inspect(g).await?;
    let verified = ward_tls::verify_svid_chain(&chain, &bundle, true, UnixTime::now());
    let now = ward_ca::now().unix_timestamp();
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    let v = json!({
        "spiffe_id": svid.as_ref().map(|id| id.to_string()).ok(),
        "svid_valid": svid.is_ok(),
        "svid_error": svid.as_ref().err().map(|e| e.to_string()),
        "serial": hex::encode(leaf.raw_serial()),
        "issuer": leaf.issuer().to_string(),
        "not_before": if g.output == Output::Json { json!(not_before) } else { json!(time(not_before)) },
        "not_after": if g.output == Output::Json { json!(not_after) } else { json!(time(not_after)) },
        "expired": now >= not_after,
        "chain_length": chain.len(),
        "chain_valid": verified.is_ok(),
        "chain_error": verified.as_ref().err().map(|e| e.to_string()),
        "checked_against": bundle_from,
    });
    print(g, &v, &[]);
    if svid.is_err() || verified.is_err() {
        bail!(
            "{} is not a valid X509-SVID for this trust bundle",
            file.display()
        );
    }
    Ok(())
}
