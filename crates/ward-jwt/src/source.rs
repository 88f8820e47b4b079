//! A token source for clients: OAuth2 `client_credentials`, cached and
//! refreshed before expiry, with one request in flight at a time (callers
//! that arrive during a fetch wait for it and share its token).
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::SigningKey;

/// How the client authenticates at the token endpoint.
#[derive(Clone)]
pub enum ClientAuth {
    /// `client_secret_basic`.
    Secret {
        /// Client id.
        id: String,
        /// Client secret.
        secret: String,
    },
    /// `private_key_jwt` (RFC 7523): a short assertion signed with `key`.
    PrivateKeyJwt {
        /// Client id.
        id: String,
        /// The client's key; its public half is registered with the server.
        key: Arc<SigningKey>,
    },
    /// `tls_client_auth` (RFC 8705): the HTTP client presents the
    /// client's certificate; only the id is sent.
    TlsClientAuth {
        /// Client id.
        id: String,
    },
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The request failed.
    #[error("token request failed: {0}")]
    Http(String),
    /// The server refused (RFC 6749 §5.2 error code and description).
    #[error("{error}: {description}")]
    Refused {
        /// `error`.
        error: String,
        /// `error_description`.
        description: String,
    },
}

/// Gets and caches access tokens.
pub struct TokenSource {
    http: reqwest::Client,
    token_url: String,
    auth: ClientAuth,
    audience: Option<String>,
    scope: Option<String>,
    cached: Mutex<Option<(String, Instant)>>,
}

impl TokenSource {
    /// A source for `token_url`. `http` carries the TLS configuration
    /// (trust, and the client certificate for `tls_client_auth`).
    pub fn new(
        http: reqwest::Client,
        token_url: &str,
        auth: ClientAuth,
        audience: Option<String>,
        scope: Option<String>,
    ) -> TokenSource {
        TokenSource {
            http,
            token_url: token_url.to_string(),
            auth,
            audience,
            scope,
            cached: Mutex::new(None),
        }
    }

    /// A valid token: the cached one until 80 % of its lifetime has
    /// passed, else a new one.
    pub async fn token(&self) -> Result<String, TokenError> {
        let mut cached = self.cached.lock().await;
        if let Some((t, refresh_at)) = cached.as_ref() {
            if Instant::now() < *refresh_at {
                return Ok(t.clone());
            }
        }
        let (token, expires_in) = self.fetch().await?;
        let refresh_in = Duration::from_secs_f64((expires_in as f64 * 0.8).max(1.0));
        *cached = Some((token.clone(), Instant::now() + refresh_in));
        Ok(token)
    }

    async fn fetch(&self) -> Result<(String, u64), TokenError> {
        let mut form: Vec<(&str, String)> = vec![("grant_type", "client_credentials".into())];
        if let Some(a) = &self.audience {
            form.push(("audience", a.clone()));
        }
        if let Some(s) = &self.scope {
            form.push(("scope", s.clone()));
        }
        let mut req = self.http.post(&self.token_url);
        match &self.auth {
            ClientAuth::Secret { id, secret } => req = req.basic_auth(id, Some(secret)),
            ClientAuth::TlsClientAuth { id } => form.push(("client_id", id.clone())),
            ClientAuth::PrivateKeyJwt { id, key } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut jti = [0u8; 16];
                let _ = aws_lc_rs::rand::fill(&mut jti);
                let claims = json!({
                    "iss": id, "sub": id, "aud": self.token_url, "iat": now, "exp": now + 60,
                    "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                });
                let assertion = key
                    .sign("JWT", &claims)
                    .map_err(|e| TokenError::Http(e.to_string()))?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|e| TokenError::Http(e.to_string()))?;
        let ok = resp.status().is_success();
        let v: Value = resp
            .json()
            .await
            .map_err(|e| TokenError::Http(e.to_string()))?;
        if !ok {
            return Err(TokenError::Refused {
                error: v["error"].as_str().unwrap_or("error").to_string(),
                description: v["error_description"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        let token = v["access_token"]
            .as_str()
            .ok_or_else(|| TokenError::Http("no access_token in the response".into()))?;
        Ok((token.to_string(), v["expires_in"].as_u64().unwrap_or(60)))
    }
}
