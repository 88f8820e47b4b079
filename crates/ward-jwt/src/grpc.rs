//! A tonic interceptor that requires a valid bearer access token in the
//! `authorization` metadata of every call, answering `UNAUTHENTICATED`
//! otherwise and putting the [`Claims`](crate::Claims) in the request's
//! extensions.
//!
//! tonic interceptors are synchronous, so the interceptor verifies with the
//! keys the [`JwksCache`] holds at that moment (verified tokens are
//! remembered, so a repeated token costs a lookup). When the keys are due
//! for a refresh, or a token names a key id the cache does not know, a
//! refresh starts in the background and the call is refused; the client's
//! retry finds the new key. Load the keys once with
//! [`JwksCache::keys`] before serving.
use std::sync::Arc;

use tonic::{Request, Status};

use crate::tower::{bearer, PeerCertificate, RevocationList};
use crate::{JwksCache, JwtError, Validation};

/// Requires a valid access token on every gRPC call.
#[derive(Clone)]
pub struct JwtInterceptor {
    keys: Arc<JwksCache>,
    validation: Arc<Validation>,
    revoked: Option<RevocationList>,
}

impl JwtInterceptor {
    /// Verifies with `keys` and `validation`.
    pub fn new(keys: Arc<JwksCache>, validation: Validation) -> JwtInterceptor {
        JwtInterceptor {
            keys,
            validation: Arc::new(validation),
            revoked: None,
        }
    }

    /// Also refuses tokens whose `jti` is in `list`.
    pub fn with_revocations(mut self, list: RevocationList) -> JwtInterceptor {
        self.revoked = Some(list);
        self
    }

    fn refresh_in_background(&self, unknown_kid: bool) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let keys = self.keys.clone();
        rt.spawn(async move {
            if unknown_kid {
                keys.refresh_unknown_kid().await;
            } else {
                keys.keys().await;
            }
        });
    }
}

impl tonic::service::Interceptor for JwtInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or_else(|| Status::unauthenticated("a bearer access token is required"))?;
        if self.keys.is_stale() {
            self.refresh_in_background(false);
        }
        let mut v = (*self.validation).clone();
        v.peer_cert_sha256 = req.extensions().get::<PeerCertificate>().map(|p| p.0);
        let claims = match self.keys.verify_now(token, &v) {
            Ok(c) => c,
            Err(e) => {
                if e == JwtError::UnknownKey {
                    self.refresh_in_background(true);
                }
                return Err(Status::unauthenticated(format!("invalid token: {e}")));
            }
        };
        if let (Some(list), Some(jti)) = (&self.revoked, claims.jti()) {
            if list.contains(jti) {
                return Err(Status::unauthenticated("invalid token: token revoked"));
            }
        }
        req.extensions_mut().insert(claims);
        Ok(req)
    }
}
