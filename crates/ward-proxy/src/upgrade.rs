//! HTTP/1.1 upgrades (WebSocket and the like): the request is sent on a
//! dedicated HTTP/1.1 connection, and after `101 Switching Protocols` the
//! two upgraded streams are spliced together.
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http::{Body, Reject, ReqBody};

/// Whether `req` asks to switch protocols.
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11 && req.headers().contains_key(http::header::UPGRADE)
}

/// Sends `req` over `io` (already connected, TLS or not) and, if the peer
/// switches protocols, splices the caller's upgraded connection to it.
pub(crate) async fn forward<IO>(mut req: Request<ReqBody>, io: IO) -> Response<Body>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let from_caller = hyper::upgrade::on(&mut req);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "upgrade: HTTP/1.1 handshake failed");
            return Reject::UpgradeFailed.response();
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection ended");
        }
    });
    let mut resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "upgrade: request failed");
            return Reject::UpgradeFailed.response();
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let from_peer = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::join!(from_caller, from_peer) {
                (Ok(a), Ok(b)) => {
                    let _ =
                        tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b))
                            .await;
                }
                (a, b) => tracing::debug!(
                    caller = a.is_ok(),
                    peer = b.is_ok(),
                    "upgrade did not complete"
                ),
            }
        });
    }
    resp.map(|b| b.boxed())
}
