//! The client: a `checkout` workload that gets a certificate-bound access
//! token from ward with `tls_client_auth` (RFC 8705: its ward certificate
//! is its credential, no secret), then calls the payments service over
//! mTLS, verifying that the server is exactly the payments SPIFFE ID.
//!
//! It also shows what the service refuses: a call without a token, and
//! the same token on a connection made with another certificate. It exits
//! non-zero if any answer differs from what is expected.
//!
//! ```text
//! checkout --dir DIR --ward https://127.0.0.1:PORT --client-id checkout \
//!     --server-id spiffe://ward.internal/ns/default/sa/payments \
//!     (--http https://127.0.0.1:PORT | --grpc 127.0.0.1:PORT) [--other-dir DIR2]
//! ```
use std::path::PathBuf;

use anyhow::{bail, ensure, Context};
use clap::Parser;
use ward_api::demo::echo_client::EchoClient;
use ward_api::demo::EchoRequest;
use ward_examples::Workload;
use ward_identity::SpiffeId;
use ward_jwt::source::{ClientAuth, TokenSource};

#[derive(Parser)]
struct Args {
    /// Directory with svid.pem, svid.key and bundle.pem.
    #[arg(long)]
    dir: PathBuf,
    /// The ward server (the token issuer), e.g. https://127.0.0.1:8443.
    #[arg(long)]
    ward: String,
    /// This workload's OAuth2 client id (registered with tls_client_auth).
    #[arg(long, default_value = "checkout")]
    client_id: String,
    /// The SPIFFE ID the payments service must present.
    #[arg(long)]
    server_id: String,
    /// The HTTP service's URL.
    #[arg(long, conflicts_with = "grpc")]
    http: Option<String>,
    /// The gRPC service's address (host:port).
    #[arg(long)]
    grpc: Option<String>,
    /// Another workload's files, to show that the token is bound to this
    /// workload's certificate.
    #[arg(long)]
    other_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ward_examples::init_logging();
    let args = Args::parse();
    let me = Workload::load(&args.dir)?;
    let server_id =
        SpiffeId::parse(&args.server_id).map_err(|e| anyhow::anyhow!("--server-id: {e}"))?;

    // The token: tls_client_auth over mTLS to ward, cached and refreshed
    // before it expires.
    let tokens = TokenSource::new(
        me.ward_http()?,
        &format!("{}/oauth2/token", args.ward),
        ClientAuth::TlsClientAuth {
            id: args.client_id.clone(),
        },
        Some("payments".into()),
        Some("payments:read".into()),
    );
    let token = tokens.token().await.context("getting a token from ward")?;
    println!("got a token from ward ({} bytes)", token.len());

    let other = args.other_dir.as_deref().map(Workload::load).transpose()?;
    if let Some(url) = &args.http {
        http_calls(&me, other.as_ref(), &server_id, url, &token).await
    } else if let Some(addr) = &args.grpc {
        grpc_calls(&me, other.as_ref(), &server_id, addr, &token).await
    } else {
        bail!("give --http URL or --grpc ADDR")
    }
}

/// mTLS to the service as `w`, which must be exactly `server_id`.
fn mtls(
    w: &Workload,
    server_id: &SpiffeId,
    alpn: &[&[u8]],
) -> anyhow::Result<rustls::ClientConfig> {
    Ok(w.mesh_tls()?.client_config(server_id.clone(), alpn))
}

async fn http_calls(
    me: &Workload,
    other: Option<&Workload>,
    server_id: &SpiffeId,
    url: &str,
    token: &str,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(mtls(me, server_id, &[b"http/1.1"])?)
        .build()?;
    let r = client
        .get(format!("{url}/balance"))
        .bearer_auth(token)
        .send()
        .await?;
    let status = r.status();
    let body = r.text().await?;
    println!("GET /balance with the token: {status} {body}");
    ensure!(status == 200, "expected 200");

    let r = client
        .post(format!("{url}/charge"))
        .bearer_auth(token)
        .send()
        .await?;
    println!("POST /charge with a payments:read token: {}", r.status());
    ensure!(
        r.status() == 403,
        "expected 403 (scope payments:write missing)"
    );

    let r = client.get(format!("{url}/balance")).send().await?;
    println!("GET /balance without a token: {}", r.status());
    ensure!(r.status() == 401, "expected 401");

    if let Some(other) = other {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(mtls(other, server_id, &[b"http/1.1"])?)
            .build()?;
        let r = client
            .get(format!("{url}/balance"))
            .bearer_auth(token)
            .send()
            .await?;
        println!(
            "GET /balance with the token on {}'s connection: {}",
            other.id,
            r.status()
        );
        ensure!(
            r.status() == 401,
            "expected 401 (token bound to another certificate)"
        );
    }
    Ok(())
}

async fn grpc_calls(
    me: &Workload,
    other: Option<&Workload>,
    server_id: &SpiffeId,
    addr: &str,
    token: &str,
) -> anyhow::Result<()> {
    let call = |w: &Workload, token: Option<&str>| {
        let tls = mtls(w, server_id, &[b"h2"]);
        let token = token.map(str::to_string);
        let addr = addr.to_string();
        async move {
            let channel = ward_api::connect(&addr, tls?).await?;
            let mut req = tonic::Request::new(EchoRequest {
                message: "charge 12".into(),
            });
            if let Some(t) = token {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse()?);
            }
            anyhow::Ok(EchoClient::new(channel).echo(req).await)
        }
    };
    match call(me, Some(token)).await? {
        Ok(r) => {
            let r = r.into_inner();
            println!(
                "Echo with the token: OK \"{}\" (the service saw caller {})",
                r.message, r.peer_id
            );
            ensure!(r.peer_id == me.id, "the service saw another caller");
        }
        Err(s) => bail!("Echo with the token failed: {s}"),
    }
    let s = call(me, None)
        .await?
        .err()
        .context("Echo without a token succeeded")?;
    println!("Echo without a token: {:?} ({})", s.code(), s.message());
    ensure!(
        s.code() == tonic::Code::Unauthenticated,
        "expected UNAUTHENTICATED"
    );
    if let Some(other) = other {
        let s = call(other, Some(token))
            .await?
            .err()
            .context("the token worked on another workload's connection")?;
        println!(
            "Echo with the token on {}'s connection: {:?} ({})",
            other.id,
            s.code(),
            s.message()
        );
        ensure!(
            s.code() == tonic::Code::Unauthenticated,
            "expected UNAUTHENTICATED"
        );
    }
    Ok(())
}
