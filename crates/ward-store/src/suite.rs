//! The store test suite, run against every backend: each backend's test
//! module calls [`store_suite!`] with a function that opens an empty store.
use std::sync::Arc;

use crate::*;

fn ev(action: &str) -> AuditEvent {
    AuditEvent {
        at: 1,
        actor: "admin".into(),
        action: action.into(),
        target: "t".into(),
        detail: "{}".into(),
    }
}

fn cert(serial: &str, not_after: i64) -> CertRecord {
    CertRecord {
        serial: serial.into(),
        spiffe_id: "spiffe://td/ns/default/sa/a".into(),
        issuer_serial: "ca1".into(),
        not_before: 0,
        not_after,
        revoked_at: None,
        created_at: 1,
        der: vec![1, 2, 3],
    }
}

pub(crate) async fn services_and_audit(s: Arc<dyn Store>) {
    let svc = Service {
        namespace: "default".into(),
        name: "a".into(),
        spiffe_id: "spiffe://td/ns/default/sa/a".into(),
        created_at: 5,
        protocol: "http".into(),
    };
    s.add_service(&svc, &ev("service.add")).await.unwrap();
    assert!(matches!(
        s.add_service(&svc, &ev("service.add")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.list_services().await.unwrap(), vec![svc.clone()]);
    assert_eq!(s.get_service("default", "a").await.unwrap(), Some(svc));
    assert!(s
        .remove_service("default", "a", &ev("service.remove"))
        .await
        .unwrap());
    assert!(!s
        .remove_service("default", "a", &ev("service.remove"))
        .await
        .unwrap());
    let log = s.list_audit(0, 100).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["service.add", "service.remove"]
    );
    assert_eq!(s.init_meta("td", "a").await.unwrap(), "a");
    assert_eq!(s.init_meta("td", "b").await.unwrap(), "a");
    s.integrity_check().await.unwrap();
}

pub(crate) async fn token_consumption_is_atomic_with_issuance(s: Arc<dyn Store>) {
    let tok = JoinToken {
        hash: vec![7; 32],
        namespace: "default".into(),
        service: "a".into(),
        spiffe_id: "spiffe://td/ns/default/sa/a".into(),
        expires_at: 100,
        uses_left: 1,
        created_at: 0,
    };
    s.create_join_token(&tok, &ev("join-token.create"))
        .await
        .unwrap();
    // Expired at t=100: nothing stored.
    assert!(matches!(
        s.record_issued(&cert("01", 500), Some(&tok.hash), 100, &ev("cert.issue"))
            .await,
        Err(StoreError::TokenUnavailable)
    ));
    assert!(s.get_certificate("01").await.unwrap().is_none());
    // Concurrent uses of a single-use token: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = s.clone();
        let h = tok.hash.clone();
        tasks.push(tokio::spawn(async move {
            s.record_issued(
                &cert(&format!("s{i}"), 500),
                Some(&h),
                50,
                &ev("cert.issue"),
            )
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(
        s.find_join_token(&tok.hash)
            .await
            .unwrap()
            .unwrap()
            .uses_left,
        0
    );
    let certs = s.list_certificates(&CertQuery::default()).await.unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(s.list_audit(0, 100).await.unwrap().len(), 2);
}

pub(crate) async fn policies_are_versioned(s: Arc<dyn Store>) {
    let p = |json: &str| vec![("default".to_string(), "p".to_string(), json.to_string())];
    assert_eq!(
        s.apply_policies(&p("{}"), 1, &[ev("policy.apply")])
            .await
            .unwrap()[0]
            .version,
        1
    );
    assert_eq!(
        s.apply_policies(&p("{}"), 2, &[]).await.unwrap()[0].version,
        1,
        "unchanged"
    );
    assert_eq!(
        s.apply_policies(&p("{\"a\":1}"), 3, &[]).await.unwrap()[0].version,
        2
    );
    assert_eq!(s.list_policies().await.unwrap().len(), 1);
    assert!(s
        .delete_policy("default", "p", &ev("policy.delete"))
        .await
        .unwrap());
    assert!(!s
        .delete_policy("default", "p", &ev("policy.delete"))
        .await
        .unwrap());
    assert!(s.list_policies().await.unwrap().is_empty());
}

pub(crate) async fn revocation_and_cas(s: Arc<dyn Store>) {
    s.record_issued(&cert("aa", 500), None, 0, &ev("cert.issue"))
        .await
        .unwrap();
    s.record_issued(&cert("bb", 50), None, 0, &ev("cert.issue"))
        .await
        .unwrap();
    assert!(s
        .revoke_certificate("aa", 10, &ev("cert.revoke"))
        .await
        .unwrap());
    assert!(!s
        .revoke_certificate("aa", 10, &ev("cert.revoke"))
        .await
        .unwrap());
    assert!(!s
        .revoke_certificate("zz", 10, &ev("cert.revoke"))
        .await
        .unwrap());
    s.revoke_certificate("bb", 10, &ev("cert.revoke"))
        .await
        .unwrap();
    assert_eq!(
        s.revoked_serials(100).await.unwrap(),
        vec!["aa".to_string()]
    );
    assert_eq!(s.last_leaf_not_after("ca1").await.unwrap(), Some(500));
    assert_eq!(s.last_leaf_not_after("nope").await.unwrap(), None);
    let q = CertQuery {
        valid_at: Some(100),
        ..Default::default()
    };
    assert_eq!(s.list_certificates(&q).await.unwrap().len(), 1);

    let ca = CaRecord {
        id: 0,
        kind: "signing".into(),
        state: "prepared".into(),
        serial: "c1".into(),
        cert_der: vec![1],
        key_sealed: vec![2],
        not_before: 0,
        not_after: 10,
        created_at: 0,
    };
    let id = s.insert_ca(&ca, &ev("ca.prepare")).await.unwrap();
    s.update_cas(&[(id, "active".into())], &[], &ev("ca.activate"))
        .await
        .unwrap();
    assert_eq!(s.list_cas().await.unwrap()[0].state, "active");
    s.update_cas(&[], &[id], &ev("ca.drop")).await.unwrap();
    assert!(s.list_cas().await.unwrap().is_empty());
}

pub(crate) async fn join_tokens_list_in_order_and_revoke_by_prefix(s: Arc<dyn Store>) {
    for (i, h) in [[3u8; 32], [1u8; 32], [2u8; 32]].iter().enumerate() {
        let t = JoinToken {
            hash: h.to_vec(),
            namespace: "default".into(),
            service: format!("s{i}"),
            spiffe_id: format!("spiffe://td/ns/default/sa/s{i}"),
            expires_at: 100,
            uses_left: 1,
            created_at: 7,
        };
        s.create_join_token(&t, &ev("join-token.create"))
            .await
            .unwrap();
    }
    let names = |v: Vec<JoinToken>| v.into_iter().map(|t| t.service).collect::<Vec<_>>();
    assert_eq!(
        names(s.list_join_tokens(50).await.unwrap()),
        ["s0", "s1", "s2"],
        "oldest first, ties in insertion order"
    );
    assert!(s.list_join_tokens(100).await.unwrap().is_empty(), "expired");
    assert_eq!(
        s.revoke_join_token(&[1, 1, 1], &ev("join-token.revoke"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.revoke_join_token(&[9], &ev("join-token.revoke"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(names(s.list_join_tokens(50).await.unwrap()), ["s0", "s2"]);
    let log = s.list_audit(0, 100).await.unwrap();
    assert_eq!(
        log.len(),
        4,
        "a revocation that matched nothing is not audited"
    );
}

pub(crate) async fn certificate_queries(s: Arc<dyn Store>) {
    let mut other = cert("cc", 300);
    other.spiffe_id = "spiffe://td/ns/default/sa/b".into();
    other.created_at = 3;
    for c in [cert("aa", 100), cert("bb", 200), other] {
        s.record_issued(&c, None, 0, &ev("cert.issue"))
            .await
            .unwrap();
    }
    let serials = |v: Vec<CertRecord>| v.into_iter().map(|c| c.serial).collect::<Vec<_>>();
    let all = s.list_certificates(&CertQuery::default()).await.unwrap();
    assert_eq!(serials(all), ["cc", "aa", "bb"], "newest first");
    let q = CertQuery {
        spiffe_id: Some("spiffe://td/ns/default/sa/a".into()),
        ..Default::default()
    };
    assert_eq!(
        serials(s.list_certificates(&q).await.unwrap()),
        ["aa", "bb"]
    );
    let q = CertQuery {
        valid_at: Some(100),
        expiring_before: Some(250),
        ..Default::default()
    };
    assert_eq!(serials(s.list_certificates(&q).await.unwrap()), ["bb"]);
    let q = CertQuery {
        limit: 1,
        ..Default::default()
    };
    assert_eq!(serials(s.list_certificates(&q).await.unwrap()), ["cc"]);
    let got = s.get_certificate("aa").await.unwrap().unwrap();
    assert_eq!(got, cert("aa", 100), "round trip, bytes included");
}

pub(crate) async fn clients_keys_and_token_revocation(s: Arc<dyn Store>) {
    let c = OAuthClient {
        client_id: "c1".into(),
        service_id: "spiffe://td/ns/default/sa/a".into(),
        auth_method: "client_secret_basic".into(),
        secret_hash: Some(vec![0, 255, 7]),
        jwks: None,
        scopes: "[\"read\"]".into(),
        audiences: "[]".into(),
        created_at: 1,
    };
    s.create_client(&c, &ev("client.create")).await.unwrap();
    assert!(matches!(
        s.create_client(&c, &ev("client.create")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.get_client("c1").await.unwrap(), Some(c.clone()));
    assert_eq!(s.list_clients().await.unwrap(), vec![c]);
    assert!(s.delete_client("c1", &ev("client.delete")).await.unwrap());
    assert!(s.get_client("c1").await.unwrap().is_none());

    let key = |kid: &str| SigningKeyRecord {
        kid: kid.into(),
        alg: "ES256".into(),
        state: "next".into(),
        public_jwk: "{}".into(),
        key_sealed: vec![1, 2],
        created_at: 1,
        retire_until: None,
        purpose: "oauth".into(),
    };
    s.update_signing_keys(&[key("k1"), key("k2")], &[], &[], &ev("key.add"))
        .await
        .unwrap();
    s.update_signing_keys(
        &[],
        &[("k1".into(), "retired".into(), Some(99))],
        &["k2".into()],
        &ev("key.rotate"),
    )
    .await
    .unwrap();
    let keys = s.list_signing_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        (keys[0].state.as_str(), keys[0].retire_until),
        ("retired", Some(99))
    );

    s.revoke_token("j1", 50, &ev("token.revoke")).await.unwrap();
    s.revoke_token("j1", 50, &ev("token.revoke")).await.unwrap();
    assert_eq!(s.revoked_tokens(10).await.unwrap(), ["j1"]);
    assert!(s.revoked_tokens(50).await.unwrap().is_empty());

    assert!(s.use_assertion("a1", 20, 10).await.unwrap());
    assert!(!s.use_assertion("a1", 20, 11).await.unwrap(), "a replay");
    assert!(
        s.use_assertion("a1", 40, 20).await.unwrap(),
        "expired ones are pruned"
    );

    s.set_meta("k", "v1").await.unwrap();
    s.set_meta("k", "v2").await.unwrap();
    assert_eq!(s.get_meta("k").await.unwrap().as_deref(), Some("v2"));
    assert_eq!(s.get_meta("none").await.unwrap(), None);

    s.audit_batched(&ev("token.issue")).await.unwrap();
    let log = s.list_audit(0, 100).await.unwrap();
    assert_eq!(log.last().unwrap().action, "token.issue");
    let page = s.list_audit(log[1].id, 2).await.unwrap();
    assert_eq!(page, log[2..4].to_vec(), "paged by id");
    let newest = s.list_audit_newest(0, "", 2).await.unwrap();
    assert_eq!(
        newest,
        vec![log[log.len() - 1].clone(), log[log.len() - 2].clone()]
    );
    let older = s.list_audit_newest(newest[1].id, "", 100).await.unwrap();
    assert_eq!(older.len(), log.len() - 2);
    let issued = s.list_audit_newest(0, "TOKEN.Iss", 100).await.unwrap();
    assert!(!issued.is_empty() && issued.iter().all(|r| r.action == "token.issue"));
    // LIKE's wildcards in the filter are taken literally.
    assert!(s.list_audit_newest(0, "%", 100).await.unwrap().is_empty());
    assert!(s
        .list_audit_newest(0, "token_issue", 100)
        .await
        .unwrap()
        .is_empty());
}

pub(crate) async fn committed_changes_are_announced(s: Arc<dyn Store>) {
    let Some(mut rx) = s.changes().await.unwrap() else {
        return; // a database of one process: nobody to tell
    };
    // Nothing removed: rolled back, not announced.
    assert!(!s
        .remove_service("default", "none", &ev("service.remove"))
        .await
        .unwrap());
    s.apply_policies(
        &[("default".into(), "p".into(), "{}".into())],
        1,
        &[ev("policy.apply")],
    )
    .await
    .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .expect("announced within 5 s");
    assert_eq!(got.as_deref(), Some("policy.apply"));
}

pub(crate) async fn replicas_share_endpoints_while_seen(s: Arc<dyn Store>) {
    let ep = |id: &str, addr: &str| (id.to_string(), addr.to_string());
    let web = "spiffe://td/ns/default/sa/web";
    s.sync_endpoints(
        "r1",
        100,
        &[ep(web, "10.0.0.1:1"), ep(web, "10.0.0.2:1")],
        &[],
    )
    .await
    .unwrap();
    s.sync_endpoints("r2", 100, &[ep(web, "10.0.0.3:1")], &[])
        .await
        .unwrap();
    assert_eq!(
        s.list_endpoints(90, "r2").await.unwrap(),
        [ep(web, "10.0.0.1:1"), ep(web, "10.0.0.2:1")],
        "the other replicas' endpoints, not its own"
    );
    s.sync_endpoints("r1", 110, &[], &[ep(web, "10.0.0.1:1")])
        .await
        .unwrap();
    assert_eq!(
        s.list_endpoints(90, "r2").await.unwrap(),
        [ep(web, "10.0.0.2:1")]
    );
    // r2 last seen at 100: gone from a view that wants 105 or later.
    assert!(s.list_endpoints(105, "r1").await.unwrap().is_empty());
    assert_eq!(s.prune_replicas(105).await.unwrap(), 1);
    assert_eq!(
        s.list_endpoints(0, "x").await.unwrap(),
        [ep(web, "10.0.0.2:1")]
    );
}

pub(crate) async fn a_lock_has_one_holder_at_a_time(s: Arc<dyn Store>) {
    let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, held) = (s.clone(), held.clone());
        tasks.push(tokio::spawn(async move {
            let _lock = s.lock("rotation").await.unwrap();
            let now = held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            assert_eq!(now, 0, "two holders at once");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            held.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Another name is not held by this one.
    let _a = s.lock("a").await.unwrap();
    let _b = tokio::time::timeout(std::time::Duration::from_secs(5), s.lock("b"))
        .await
        .expect("locks of other names are independent")
        .unwrap();
}

pub(crate) async fn expired_rows_are_pruned_and_the_rest_kept(s: Arc<dyn Store>) {
    for (serial, not_after) in [("old", 50), ("edge", 100), ("new", 500)] {
        s.record_issued(&cert(serial, not_after), None, 0, &ev("cert.issue"))
            .await
            .unwrap();
    }
    s.revoke_token("t-old", 50, &ev("token.revoke"))
        .await
        .unwrap();
    s.revoke_token("t-new", 500, &ev("token.revoke"))
        .await
        .unwrap();
    assert!(s.use_assertion("a-old", 50, 0).await.unwrap());
    let tok = |h: u8, expires_at: i64| JoinToken {
        hash: vec![h; 32],
        namespace: "default".into(),
        service: "a".into(),
        spiffe_id: "spiffe://td/ns/default/sa/a".into(),
        expires_at,
        uses_left: 1,
        created_at: 0,
    };
    s.create_join_token(&tok(1, 50), &ev("join-token.create"))
        .await
        .unwrap();
    s.create_join_token(&tok(2, 500), &ev("join-token.create"))
        .await
        .unwrap();

    assert_eq!(s.prune_expired(100).await.unwrap(), 4);
    let left: Vec<_> = s
        .list_certificates(&CertQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.serial)
        .collect();
    assert_eq!(left, ["edge", "new"], "expiring at the cut-off is kept");
    assert_eq!(s.revoked_tokens(0).await.unwrap(), ["t-new"]);
    assert!(
        s.use_assertion("a-old", 500, 0).await.unwrap(),
        "pruned, so new"
    );
    assert!(s.find_join_token(&[1; 32]).await.unwrap().is_none());
    assert!(s.find_join_token(&[2; 32]).await.unwrap().is_some());
    assert_eq!(s.prune_expired(100).await.unwrap(), 0);
    assert_eq!(
        s.list_audit(0, 100).await.unwrap().len(),
        7,
        "the audit log is kept"
    );
}

/// Marks the database as migrated by a newer release than this one.
pub(crate) const NEWER_MIGRATION: &str =
    "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
     VALUES (99990101000000, 'from a newer release', TRUE, X'00', 1)";

/// Declares one `#[tokio::test]` per suite function, each on a fresh store
/// from `$open` (an async fn returning a guard and the store).
macro_rules! store_suite {
    ($open:ident) => {
        $crate::suite::store_suite!(@tests $open, services_and_audit, token_consumption_is_atomic_with_issuance, policies_are_versioned, revocation_and_cas, join_tokens_list_in_order_and_revoke_by_prefix, certificate_queries, clients_keys_and_token_revocation, committed_changes_are_announced, replicas_share_endpoints_while_seen, a_lock_has_one_holder_at_a_time, expired_rows_are_pruned_and_the_rest_kept);
    };
    (@tests $open:ident, $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_guard, store) = $open().await;
                $crate::suite::$name(store).await;
            }
        )*
    };
}
pub(crate) use store_suite;
