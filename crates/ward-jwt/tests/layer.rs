//! The tower layer, the axum extractor and the JWKS cache.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use serde_json::json;
use tower::ServiceExt;
use ward_jwt::tower::{JwtAuthLayer, RevocationList};
use ward_jwt::{Algorithm, Claims, JwkSet, JwksCache, SigningKey, Validation};

const ISS: &str = "https://ward.example";

fn token(key: &SigningKey, jti: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    key.sign("at+jwt", &json!({ "iss": ISS, "sub": "fe", "aud": "payments", "exp": now + 300, "iat": now, "jti": jti, "client_id": "fe", "scope": "payments:read" })).unwrap()
}

fn app(cache: Arc<JwksCache>, revoked: RevocationList) -> Router {
    Router::new()
        .route(
            "/",
            get(|claims: Claims| async move {
                format!("hello {}", claims.client_id().unwrap_or_default())
            }),
        )
        .layer(
            JwtAuthLayer::new(cache, Validation::access_token(ISS, "payments"))
                .with_revocations(revoked),
        )
}

async fn call(app: Router, auth: Option<String>) -> (StatusCode, String, String) {
    let mut req = Request::builder().uri("/");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = app
        .oneshot(req.body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into(), challenge)
}

#[tokio::test]
async fn layer_and_extractor() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let keys = JwkSet::from_json(&json!({ "keys": [key.public_jwk()] }).to_string()).unwrap();
    let cache = Arc::new(JwksCache::fixed(keys));
    let revoked = RevocationList::default();
    let app = app(cache, revoked.clone());

    let (s, body, _) = call(app.clone(), Some(format!("Bearer {}", token(&key, "a")))).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "hello fe"));
    let (s, _, ch) = call(app.clone(), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(ch, "Bearer realm=\"ward\"");
    let (s, _, ch) = call(app.clone(), Some("Bearer not.a.token".into())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(ch.contains("error=\"invalid_token\""), "{ch}");
    let other = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let (s, _, _) = call(app.clone(), Some(format!("Bearer {}", token(&other, "b")))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "signed by another key");
    revoked.set(["c".to_string()]);
    let (s, _, ch) = call(app.clone(), Some(format!("Bearer {}", token(&key, "c")))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(ch.contains("revoked"));
}

#[tokio::test]
async fn jwks_cache_refreshes_once_for_unknown_kids_and_serves_stale_keys() {
    let k1 = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let k2 = SigningKey::generate(Algorithm::ES256, "k2").unwrap();
    let served = Arc::new(std::sync::Mutex::new(json!({ "keys": [k1.public_jwk()] })));
    let fetches = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let fetch: ward_jwt::Fetch = {
        let (served, fetches, down) = (served.clone(), fetches.clone(), down.clone());
        Arc::new(move || {
            let (served, fetches, down) = (served.clone(), fetches.clone(), down.clone());
            Box::pin(async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                if down.load(Ordering::SeqCst) {
                    return Err("issuer down".to_string());
                }
                Ok(served.lock().unwrap().to_string())
            })
        })
    };
    let mut cache = JwksCache::new(fetch);
    cache.cooldown = Duration::from_millis(300);
    let cache = Arc::new(cache);
    let v = Validation::access_token(ISS, "payments");
    cache.verify(&token(&k1, "1"), &v).await.unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    // The issuer rotates to k2: 20 concurrent requests with the new kid
    // cause one fetch.
    *served.lock().unwrap() = json!({ "keys": [k1.public_jwk(), k2.public_jwk()] });
    tokio::time::sleep(Duration::from_millis(350)).await;
    let t2 = token(&k2, "2");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, t, v) = (cache.clone(), t2.clone(), v.clone());
        tasks.push(tokio::spawn(async move { c.verify(&t, &v).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "single-flight refresh");

    // Unknown kids within the cooldown do not hammer the issuer.
    let k3 = SigningKey::generate(Algorithm::ES256, "k3").unwrap();
    for i in 0..5 {
        assert!(cache
            .verify(&token(&k3, &format!("x{i}")), &v)
            .await
            .is_err());
    }
    assert!(
        fetches.load(Ordering::SeqCst) <= 3,
        "cooldown respected: {}",
        fetches.load(Ordering::SeqCst)
    );

    // The issuer goes down: known keys keep working.
    down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(cache.verify(&token(&k3, "y"), &v).await.is_err());
    cache
        .verify(&token(&k1, "z"), &v)
        .await
        .expect("stale keys served while the issuer is down");
}

#[tokio::test]
async fn tonic_interceptor() {
    use tonic::service::Interceptor;
    use ward_jwt::grpc::JwtInterceptor;
    use ward_jwt::tower::PeerCertificate;

    let k1 = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let k2 = SigningKey::generate(Algorithm::ES256, "k2").unwrap();
    let served = Arc::new(std::sync::Mutex::new(vec![k1.public_jwk()]));
    let s = served.clone();
    let mut cache = JwksCache::new(Arc::new(move || {
        let keys = s.lock().unwrap().clone();
        Box::pin(async move { Ok(json!({ "keys": keys }).to_string()) })
    }));
    cache.cooldown = Duration::ZERO;
    let cache = Arc::new(cache);
    cache.keys().await;
    let revoked = RevocationList::default();
    let mut icpt = JwtInterceptor::new(cache.clone(), Validation::access_token(ISS, "payments"))
        .with_revocations(revoked.clone());
    let call = |icpt: &mut JwtInterceptor, auth: Option<String>| {
        let mut req = tonic::Request::new(());
        if let Some(a) = auth {
            req.metadata_mut()
                .insert("authorization", a.parse().unwrap());
        }
        icpt.call(req)
    };

    let ok = call(&mut icpt, Some(format!("Bearer {}", token(&k1, "a")))).unwrap();
    assert_eq!(
        ok.extensions().get::<Claims>().unwrap().client_id(),
        Some("fe")
    );
    // The scheme is case-insensitive.
    assert!(call(&mut icpt, Some(format!("bearer {}", token(&k1, "a")))).is_ok());
    for auth in [
        None,
        Some("Basic Zm9vOmJhcg==".into()),
        Some("Bearer a.b.c".into()),
    ] {
        let err = call(&mut icpt, auth).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
    revoked.set(["r".to_string()]);
    let err = call(&mut icpt, Some(format!("Bearer {}", token(&k1, "r")))).unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{}", err.message());

    // A certificate-bound token needs the bound certificate in the
    // request's extensions.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let bound = k1
        .sign(
            "at+jwt",
            &json!({ "iss": ISS, "sub": "fe", "aud": "payments", "exp": now + 300,
            "iat": now, "jti": "b", "client_id": "fe",
            "cnf": { "x5t#S256": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc" } }),
        )
        .unwrap();
    assert!(call(&mut icpt, Some(format!("Bearer {bound}"))).is_err());
    let mut req = tonic::Request::new(());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {bound}").parse().unwrap());
    req.extensions_mut().insert(PeerCertificate([7; 32]));
    assert!(icpt.call(req).is_ok());

    // A key published after the keys were loaded: the first call is
    // refused and starts a refresh; a retry after it passes.
    served.lock().unwrap().push(k2.public_jwk());
    let t2 = format!("Bearer {}", token(&k2, "n"));
    assert_eq!(
        call(&mut icpt, Some(t2.clone())).unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut passed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if call(&mut icpt, Some(t2.clone())).is_ok() {
            passed = true;
            break;
        }
    }
    assert!(passed, "the background refresh picked up the new key");
}

/// Old keys and an issuer that hangs: requests go on with the keys held
/// (none waits longer than the refresh budget, most do not wait at all),
/// and the issuer sees at most one attempt per cooldown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_keys_and_a_hanging_issuer_hold_no_request() {
    let k1 = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let jwks = json!({ "keys": [k1.public_jwk()] }).to_string();
    let fetches = Arc::new(AtomicUsize::new(0));
    let hang = Arc::new(AtomicBool::new(false));
    let fetch: ward_jwt::Fetch = {
        let (fetches, hang) = (fetches.clone(), hang.clone());
        Arc::new(move || {
            let (fetches, hang, jwks) = (fetches.clone(), hang.clone(), jwks.clone());
            Box::pin(async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                if hang.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Ok(jwks)
            })
        })
    };
    let mut cache = JwksCache::new(fetch);
    cache.max_age = Duration::from_millis(100);
    cache.cooldown = Duration::from_secs(1);
    let cache = Arc::new(cache);
    let v = Validation::access_token(ISS, "payments");
    cache.verify(&token(&k1, "a"), &v).await.unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    hang.store(true, Ordering::SeqCst);
    // The keys are now old, and the cooldown since the first fetch is over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (c, v, t) = (cache.clone(), v.clone(), token(&k1, &format!("b{i}")));
        tasks.push(tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            c.verify(&t, &v).await.map(|_| t0.elapsed())
        }));
    }
    let mut waited = Vec::new();
    for t in tasks {
        waited.push(t.await.unwrap().expect("old keys still verify"));
    }
    waited.sort();
    assert!(
        waited[18] < Duration::from_secs(1),
        "all but the refreshing request went on at once: {waited:?}"
    );
    assert!(
        waited[19] < ward_jwt::STALE_REFRESH_BUDGET + Duration::from_millis(500),
        "{waited:?}"
    );
    // Within the cooldown, nobody tries again.
    for i in 0..10 {
        let t0 = std::time::Instant::now();
        cache
            .verify(&token(&k1, &format!("c{i}")), &v)
            .await
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "one attempt per cooldown"
    );
    assert!(start.elapsed() < Duration::from_secs(4));
}

/// The layer with a list of accepted token types: a token of another
/// `typ` is refused with 401, each listed one passes, in any case.
#[tokio::test]
async fn layer_with_token_types() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let keys = JwkSet::from_json(&json!({ "keys": [key.public_jwk()] }).to_string()).unwrap();
    let cache = Arc::new(JwksCache::fixed(keys));
    let v = Validation::access_token(ISS, "payments").token_types(["JWT", "secevent+jwt"]);
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(JwtAuthLayer::new(cache, v));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({ "iss": ISS, "sub": "fe", "aud": "payments", "exp": now + 300, "iat": now, "jti": "t", "client_id": "fe" });
    for (typ, want) in [
        ("at+jwt", StatusCode::UNAUTHORIZED),
        ("JWT", StatusCode::OK),
        ("jwt", StatusCode::OK),
        ("application/secevent+jwt", StatusCode::OK),
    ] {
        let t = key.sign(typ, &claims).unwrap();
        let (s, _, ch) = call(app.clone(), Some(format!("Bearer {t}"))).await;
        assert_eq!(s, want, "{typ}: {ch}");
    }
}
