//! A gRPC service (tonic, `ward.demo.v1.Echo`) that accepts only callers
//! with a ward certificate (mTLS) *and* a valid ward access token for
//! audience `payments` in the `authorization` metadata; anything else gets
//! `UNAUTHENTICATED`. Certificate-bound tokens only work on a connection
//! made with their certificate; revoked tokens are refused as soon as
//! ward's watch stream says so.
//!
//! `payments-grpc --dir DIR --ward https://127.0.0.1:PORT [--listen ADDR]`
//! where DIR holds `svid.pem`, `svid.key` and `bundle.pem`. It prints
//! `listening on ADDR` once it accepts connections.
use std::path::PathBuf;
use std::pin::Pin;

use clap::Parser;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use ward_api::demo::echo_server::{Echo, EchoServer};
use ward_api::demo::{CountRequest, EchoReply, EchoRequest};
use ward_examples::{serve_mtls, Peer, Workload};
use ward_jwt::grpc::JwtInterceptor;
use ward_jwt::{Claims, Validation};

#[derive(Parser)]
struct Args {
    /// Directory with svid.pem, svid.key and bundle.pem.
    #[arg(long)]
    dir: PathBuf,
    /// The ward server (the token issuer), e.g. https://127.0.0.1:8443.
    #[arg(long)]
    ward: String,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

struct Payments;

fn caller<T>(req: &Request<T>) -> Result<(String, String), Status> {
    let claims = req
        .extensions()
        .get::<Claims>()
        .ok_or_else(|| Status::unauthenticated("no verified token"))?;
    if !claims.scopes().contains(&"payments:read") {
        return Err(Status::permission_denied("scope payments:read required"));
    }
    let peer = req.extensions().get::<Peer>().map(|p| p.id.clone());
    Ok((
        peer.unwrap_or_default(),
        claims.client_id().unwrap_or_default().to_string(),
    ))
}

#[tonic::async_trait]
impl Echo for Payments {
    async fn echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let (peer, client_id) = caller(&req)?;
        Ok(Response::new(EchoReply {
            message: format!("{} (token of client {client_id})", req.into_inner().message),
            service: "payments".into(),
            peer_id: peer,
            index: 0,
        }))
    }

    type CountStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

    async fn count(
        &self,
        req: Request<CountRequest>,
    ) -> Result<Response<Self::CountStream>, Status> {
        let (peer, _) = caller(&req)?;
        let n = req.into_inner().count.min(100);
        let replies = (0..n).map(move |i| {
            Ok(EchoReply {
                message: "count".into(),
                service: "payments".into(),
                peer_id: peer.clone(),
                index: i,
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ward_examples::init_logging();
    let args = Args::parse();
    let me = Workload::load(&args.dir)?;
    let tls = me.mesh_tls()?;
    let keys = me.issuer_keys(&args.ward)?;
    keys.keys().await;
    let revoked = me.follow_ward(&args.ward, tls.clone());
    let auth = JwtInterceptor::new(keys, Validation::access_token(&args.ward, "payments"))
        .with_revocations(revoked);
    let app = tonic::service::Routes::new(EchoServer::with_interceptor(Payments, auth))
        .into_axum_router();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    tracing::info!(id = %me.id, "payments (gRPC) serving");
    serve_mtls(listener, tls.server_config(&[b"h2"]), app).await
}
