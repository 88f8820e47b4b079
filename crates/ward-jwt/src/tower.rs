//! A tower [`Layer`] that requires a valid bearer access token on every
//! request: failures become `401` with `WWW-Authenticate: Bearer
//! error="invalid_token"`, success puts the [`Claims`](crate::Claims) in the request's
//! extensions. With the `axum` feature, `Claims` is also an extractor.
use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::{JwksCache, JwtError, Validation};

/// Token ids (`jti`) revoked before expiry, shared with whatever feeds them
/// (for example ward's watch stream).
#[derive(Clone, Default)]
pub struct RevocationList(Arc<ArcSwap<HashSet<String>>>);

impl RevocationList {
    /// Replaces the list.
    pub fn set(&self, ids: impl IntoIterator<Item = String>) {
        self.0.store(Arc::new(ids.into_iter().collect()));
    }
    /// Whether `jti` is revoked.
    pub fn contains(&self, jti: &str) -> bool {
        self.0.load().contains(jti)
    }
}

/// SHA-256 of the client's TLS certificate, put in request extensions by
/// the TLS server so that certificate-bound tokens can be checked.
#[derive(Clone, Copy, Debug)]
pub struct PeerCertificate(pub [u8; 32]);

struct Config {
    keys: Arc<JwksCache>,
    validation: Validation,
    revoked: Option<RevocationList>,
}

/// Requires a valid access token.
#[derive(Clone)]
pub struct JwtAuthLayer(Arc<Config>);

impl JwtAuthLayer {
    /// Verifies with `keys` and `validation`.
    pub fn new(keys: Arc<JwksCache>, validation: Validation) -> JwtAuthLayer {
        JwtAuthLayer(Arc::new(Config {
            keys,
            validation,
            revoked: None,
        }))
    }

    /// Also refuses tokens whose `jti` is in `list`.
    pub fn with_revocations(self, list: RevocationList) -> JwtAuthLayer {
        let c = &self.0;
        JwtAuthLayer(Arc::new(Config {
            keys: c.keys.clone(),
            validation: c.validation.clone(),
            revoked: Some(list),
        }))
    }
}

impl<S> Layer<S> for JwtAuthLayer {
    type Service = JwtAuth<S>;
    fn layer(&self, inner: S) -> JwtAuth<S> {
        JwtAuth {
            inner,
            config: self.0.clone(),
        }
    }
}

/// The service [`JwtAuthLayer`] produces.
#[derive(Clone)]
pub struct JwtAuth<S> {
    inner: S,
    config: Arc<Config>,
}

fn unauthorized<B: Default>(error: Option<&str>) -> Response<B> {
    let mut r = Response::new(B::default());
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    // RFC 6750 §3.1: no error code when no token was sent.
    let challenge = match error {
        Some(desc) => format!(
            "Bearer realm=\"ward\", error=\"invalid_token\", error_description=\"{}\"",
            desc.replace('"', "'")
        ),
        None => "Bearer realm=\"ward\"".to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    r
}

/// The token of an `Authorization: Bearer …` value (scheme matched
/// case-insensitively, RFC 6750 §2.1).
pub(crate) fn bearer(v: &str) -> Option<&str> {
    crate::credentials(v, "Bearer")
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for JwtAuth<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    ReqB: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<ResB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // The clone that was polled ready is the one that gets the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let token = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer)
                .map(String::from);
            let Some(token) = token else {
                return Ok(unauthorized(None));
            };
            let mut v = config.validation.clone();
            v.peer_cert_sha256 = req.extensions().get::<PeerCertificate>().map(|p| p.0);
            let claims = match config.keys.verify(&token, &v).await {
                Ok(c) => c,
                Err(e) => return Ok(unauthorized(Some(&e.to_string()))),
            };
            if let (Some(list), Some(jti)) = (&config.revoked, claims.jti()) {
                if list.contains(jti) {
                    return Ok(unauthorized(Some("token revoked")));
                }
            }
            req.extensions_mut().insert(claims);
            inner.call(req).await
        })
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for crate::Claims {
    type Rejection = Response<axum::body::Body>;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<crate::Claims>()
            .cloned()
            .ok_or_else(|| unauthorized(Some("no verified access token")))
    }
}

/// Why a request was refused, for callers that verify by hand.
pub fn rejection(e: &JwtError) -> Response<String> {
    unauthorized(Some(&e.to_string()))
}
