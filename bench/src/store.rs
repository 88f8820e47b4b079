//! `ward-bench store`: certificate issuance and listing on a store that
//! already holds many issued-certificate rows, next to the same on an
//! empty store in the same run, on SQLite and (with `--postgres URL`) on
//! PostgreSQL; and pruning them once expired.
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ward_store::{AuditEvent, CertQuery, CertRecord, PostgresStore, SqliteStore, Store};

const SPIFFE: &str = "spiffe://ward.internal/ns/default/sa/";

fn now() -> i64 {
    ward_ca::now().unix_timestamp()
}

fn record(serial: String, service: usize, not_after: i64) -> CertRecord {
    CertRecord {
        serial,
        spiffe_id: format!("{SPIFFE}svc-{service}"),
        issuer_serial: "bench-ca".into(),
        not_before: now(),
        not_after,
        revoked_at: None,
        created_at: now(),
        // About the size of a real leaf.
        der: vec![0x30; 600],
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Fills the table with `rows` certificates of 1,000 services, expired
/// (`expired`) or valid for a day, by SQL in large transactions (the
/// store's own path commits each issuance on its own).
async fn fill(url: &str, rows: usize, expired: bool) -> anyhow::Result<()> {
    let not_after = if expired {
        now() - 7200
    } else {
        now() + 86_400
    };
    let sql = if url.starts_with("postgres") {
        "INSERT INTO certificates (serial, spiffe_id, issuer_serial, not_before, not_after, revoked_at, created_at, der) \
         SELECT 'fill-' || $1 || '-' || g, $2 || 'svc-' || (g % 1000), 'bench-ca', $3, $4, NULL, $3, decode(repeat('30', 600), 'hex') \
         FROM generate_series(1, $5) AS g"
    } else {
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < $5) \
         INSERT INTO certificates (serial, spiffe_id, issuer_serial, not_before, not_after, revoked_at, created_at, der) \
         SELECT 'fill-' || $1 || '-' || n, $2 || 'svc-' || (n % 1000), 'bench-ca', $3, $4, NULL, $3, zeroblob(600) FROM g"
    };
    let tag = if expired { "x" } else { "v" };
    let chunk = 100_000;
    let mut done = 0;
    while done < rows {
        let n = chunk.min(rows - done);
        if url.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(url).await?;
            sqlx::query(sql)
                .bind(format!("{tag}{done}"))
                .bind(SPIFFE)
                .bind(now())
                .bind(not_after)
                .bind(n as i32)
                .execute(&pool)
                .await?;
            pool.close().await;
        } else {
            let pool = sqlx::SqlitePool::connect(url).await?;
            sqlx::query(sql)
                .bind(format!("{tag}{done}"))
                .bind(SPIFFE)
                .bind(now())
                .bind(not_after)
                .bind(n as i64)
                .execute(&pool)
                .await?;
            pool.close().await;
        }
        done += n;
    }
    // Fresh statistics, as autovacuum (PostgreSQL) or the server's own
    // optimize would have after such growth.
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await?;
        sqlx::query("ANALYZE certificates").execute(&pool).await?;
        pool.close().await;
    }
    Ok(())
}

/// Issuance latency (one at a time) and throughput (64 at once), and
/// listing latencies.
async fn measure(store: &Arc<dyn Store>, tag: &str, seconds: Duration) -> anyhow::Result<Value> {
    let ev = |s: &str| AuditEvent::now("bench", "cert.issue", s, json!({}));
    let mut lat = Vec::new();
    for i in 0..200 {
        let serial = format!("{tag}-seq-{i}");
        let t = Instant::now();
        store
            .record_issued(
                &record(serial.clone(), i % 1000, now() + 3600),
                None,
                now(),
                &ev(&serial),
            )
            .await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64 {
        let (store, tag) = (store.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < seconds {
                let serial = format!("{tag}-par-{w}-{n}");
                let _ = store
                    .record_issued(
                        &record(serial.clone(), n as usize % 1000, now() + 3600),
                        None,
                        now(),
                        &AuditEvent::now("bench", "cert.issue", &serial, json!({})),
                    )
                    .await;
                n += 1;
            }
            n
        }));
    }
    let mut issued = 0;
    for t in tasks {
        issued += t.await?;
    }
    let per_sec = issued as f64 / start.elapsed().as_secs_f64();
    macro_rules! time_ms {
        ($e:expr) => {{
            let t = Instant::now();
            let _ = $e.await;
            ms(t.elapsed())
        }};
    }
    let newest = time_ms!(store.list_certificates(&CertQuery::default()));
    let one_service = time_ms!(store.list_certificates(&CertQuery {
        spiffe_id: Some(format!("{SPIFFE}svc-7")),
        valid_at: Some(now()),
        ..Default::default()
    }));
    let expiring = time_ms!(store.list_certificates(&CertQuery {
        valid_at: Some(now()),
        expiring_before: Some(now() + 600),
        limit: 100,
        ..Default::default()
    }));
    let revoked = time_ms!(store.revoked_serials(now()));
    Ok(json!({
        "issue_p50_ms": ms(percentile(&lat, 0.5)),
        "issue_p99_ms": ms(percentile(&lat, 0.99)),
        "issue_per_sec_64_concurrent": per_sec.round(),
        "list_newest_1000_ms": newest,
        "list_one_service_valid_ms": one_service,
        "list_expiring_soon_ms": expiring,
        "revoked_serials_ms": revoked,
    }))
}

async fn backend(url: &str, rows: usize, seconds: Duration) -> anyhow::Result<Value> {
    let open = || async {
        Ok::<Arc<dyn Store>, anyhow::Error>(if url.starts_with("postgres") {
            Arc::new(PostgresStore::open(url).await?)
        } else {
            Arc::new(
                SqliteStore::open(std::path::Path::new(url.trim_start_matches("sqlite://")))
                    .await?,
            )
        })
    };
    let store = open().await?;
    let empty = measure(&store, "empty", seconds).await?;
    let t = Instant::now();
    fill(url, rows, false).await?;
    let fill_s = t.elapsed().as_secs_f64();
    let full = measure(&store, "full", seconds).await?;
    // The same number again, expired, then pruned.
    fill(url, rows, true).await?;
    let t = Instant::now();
    let pruned = store.prune_expired(now() - 3600).await?;
    let prune_s = t.elapsed().as_secs_f64();
    let after_prune = measure(&store, "pruned", seconds).await?;
    let ratio = |k: &str| {
        let (a, b) = (
            full[k].as_f64().unwrap_or(0.0),
            empty[k].as_f64().unwrap_or(0.0),
        );
        if b > 0.0 {
            ((a / b) * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    Ok(json!({
        "rows": rows,
        "empty": empty,
        "with_rows": full,
        "ratio_with_rows_to_empty": {
            "issue_p50": ratio("issue_p50_ms"),
            "issue_per_sec": ratio("issue_per_sec_64_concurrent"),
            "list_newest_1000": ratio("list_newest_1000_ms"),
            "list_one_service_valid": ratio("list_one_service_valid_ms"),
        },
        "fill_seconds": (fill_s * 10.0).round() / 10.0,
        "expired_rows_pruned": pruned,
        "prune_seconds": (prune_s * 10.0).round() / 10.0,
        "after_prune": after_prune,
    }))
}

/// Runs on SQLite (a temporary file) and, if given, on PostgreSQL.
pub(crate) async fn run(
    rows: usize,
    postgres: Option<&str>,
    seconds: Duration,
) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let sqlite = format!("sqlite://{}", dir.path().join("ward.db").display());
    let mut out = json!({ "sqlite": backend(&sqlite, rows, seconds).await? });
    if let Some(url) = postgres {
        out["postgres"] = backend(url, rows, seconds).await?;
    }
    Ok(out)
}
