//! The sample app that `ward demo` and the tests run behind sidecars: an
//! HTTP service that reports what it saw of the caller, the
//! `ward.demo.v1.Echo` gRPC service, and an optional TCP echo port.
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::routing::any;
use axum::Json;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Response, Status};
use ward_api::demo::echo_server::{Echo, EchoServer};
use ward_api::demo::{CountRequest, EchoReply, EchoRequest};

struct App {
    name: String,
}

/// Serves until the process ends.
pub(crate) async fn run(
    name: String,
    http: TcpListener,
    tcp: Option<TcpListener>,
) -> anyhow::Result<()> {
    let app = Arc::new(App { name });
    let grpc =
        tonic::service::Routes::new(EchoServer::new(EchoSvc(app.clone()))).into_axum_router();
    let router = grpc
        .route("/echo", any(echo))
        .route("/ws", any(ws))
        .route("/bytes/{n}", any(bytes))
        .route("/sleep/{ms}", any(sleep))
        .fallback(any(whoami))
        .layer(axum::Extension(app));
    if let Some(tcp) = tcp {
        tokio::spawn(tcp_echo(tcp));
    }
    axum::serve(http, router).await?;
    Ok(())
}

pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind(addr).await?)
}

fn header(h: &HeaderMap, name: &str) -> Value {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map_or(Value::Null, |v| json!(v))
}

async fn whoami(axum::Extension(app): axum::Extension<Arc<App>>, req: Request) -> Json<Value> {
    let h = req.headers();
    Json(json!({
        "service": app.name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "version": format!("{:?}", req.version()),
        "peer_id": header(h, "x-ward-peer-id"),
        "xfcc": header(h, "x-forwarded-client-cert"),
        "host": header(h, "host"),
        "headers": h
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), json!(v.to_str().ok()?))))
            .collect::<serde_json::Map<String, Value>>(),
    }))
}

async fn sleep(axum::extract::Path(ms): axum::extract::Path<u64>) -> String {
    tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
    format!("slept {ms} ms\n")
}

/// WebSocket echo: every message comes back, prefixed with the caller's
/// identity as the app saw it.
async fn ws(
    headers: HeaderMap,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> axum::response::Response {
    let peer = headers
        .get("x-ward-peer-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    upgrade.on_upgrade(move |mut socket| async move {
        use axum::extract::ws::Message;
        while let Some(Ok(msg)) = socket.recv().await {
            let reply = match msg {
                Message::Text(t) => Message::Text(format!("{peer} {}", t.as_str()).into()),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}

/// `n` bytes (at most 1 MiB), for benchmarks.
async fn bytes(axum::extract::Path(n): axum::extract::Path<usize>) -> Vec<u8> {
    vec![b'x'; n.min(1 << 20)]
}

async fn echo(req: Request) -> axum::body::Body {
    req.into_body()
}

async fn tcp_echo(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

struct EchoSvc(Arc<App>);

fn peer<T>(req: &tonic::Request<T>) -> String {
    req.metadata()
        .get("x-ward-peer-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tonic::async_trait]
impl Echo for EchoSvc {
    async fn echo(&self, req: tonic::Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let peer_id = peer(&req);
        let message = req.into_inner().message;
        if message == "fail" {
            let mut st = Status::failed_precondition("asked to fail");
            st.metadata_mut().insert(
                "x-demo-detail",
                MetadataValue::from_static("failed-on-purpose"),
            );
            return Err(st);
        }
        Ok(Response::new(EchoReply {
            message,
            service: self.0.name.clone(),
            peer_id,
            index: 0,
        }))
    }

    type CountStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

    async fn count(
        &self,
        req: tonic::Request<CountRequest>,
    ) -> Result<Response<Self::CountStream>, Status> {
        let peer_id = peer(&req);
        let r = req.into_inner();
        let service = self.0.name.clone();
        let mut items: Vec<Result<EchoReply, Status>> = (0..r.count.min(10_000))
            .map(|i| {
                Ok(EchoReply {
                    message: format!("item {i}"),
                    service: service.clone(),
                    peer_id: peer_id.clone(),
                    index: i,
                })
            })
            .collect();
        if r.final_code != 0 {
            items.push(Err(Status::new(
                Code::from_i32(r.final_code),
                "stream ended as asked",
            )));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
}
