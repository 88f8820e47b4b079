//! The SQLite backend: one file, WAL journal, `synchronous=FULL`.
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::{
    AuditEvent, AuditRecord, CaRecord, CertQuery, CertRecord, JoinToken, OAuthClient, PolicyRecord,
    Result, Service, SigningKeyRecord, Store, StoreError,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Most issuances committed together by one fsync.
const MAX_BATCH: usize = 512;

/// The SQLite store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    issue_tx: mpsc::Sender<IssueJob>,
}

struct IssueJob {
    /// `None` for an audit entry alone.
    cert: Option<CertRecord>,
    consume: Option<Vec<u8>>,
    now: i64,
    audit: AuditEvent,
    done: oneshot::Sender<Result<()>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema
    /// up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        let url = format!("sqlite://{}", path.display());
        let opts = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let (issue_tx, issue_rx) = mpsc::channel(4096);
        tokio::spawn(group_commit(pool.clone(), issue_rx));
        Ok(SqliteStore { pool, issue_tx })
    }

    /// Closes the pool, waiting for in-flight writes.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Commits concurrent issuances in one transaction: each job runs inside its
/// own savepoint, so one job's failure (a token used up by a concurrent
/// request) rolls back only that job, and every acknowledged job is on disk.
async fn group_commit(pool: SqlitePool, mut rx: mpsc::Receiver<IssueJob>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut results = Vec::with_capacity(batch.len());
        let outcome: Result<()> = async {
            let mut tx = pool.begin().await?;
            for job in &batch {
                sqlx::query("SAVEPOINT job").execute(&mut *tx).await?;
                let r = issue_one(&mut tx, job).await;
                if r.is_err() {
                    sqlx::query("ROLLBACK TO job").execute(&mut *tx).await?;
                }
                sqlx::query("RELEASE job").execute(&mut *tx).await?;
                results.push(r);
            }
            tx.commit().await?;
            Ok(())
        }
        .await;
        for (i, job) in batch.drain(..).enumerate() {
            let r = match &outcome {
                Ok(()) => results
                    .get_mut(i)
                    .map_or(Err(StoreError::Database("batch aborted".into())), |r| {
                        std::mem::replace(r, Ok(()))
                    }),
                Err(e) => Err(e.clone()),
            };
            let _ = job.done.send(r);
        }
    }
}

async fn issue_one(tx: &mut Transaction<'_, Sqlite>, job: &IssueJob) -> Result<()> {
    let Some(c) = &job.cert else {
        return insert_audit(tx, &job.audit).await;
    };
    if let Some(hash) = &job.consume {
        let done = sqlx::query(
            "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE hash = ? AND uses_left > 0 AND expires_at > ?",
        )
        .bind(hash)
        .bind(job.now)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::TokenUnavailable);
        }
    }
    sqlx::query(
        "INSERT INTO certificates (serial, spiffe_id, issuer_serial, not_before, not_after, revoked_at, created_at, der) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&c.serial)
    .bind(&c.spiffe_id)
    .bind(&c.issuer_serial)
    .bind(c.not_before)
    .bind(c.not_after)
    .bind(c.revoked_at)
    .bind(c.created_at)
    .bind(&c.der)
    .execute(&mut **tx)
    .await?;
    insert_audit(tx, &job.audit).await
}

/// A write transaction that records its audit entries when it commits,
/// so that a change and its audit entries are stored together or not at
/// all. Dropped without [`Audited::commit`], it rolls back.
struct Audited<'a> {
    tx: Transaction<'static, Sqlite>,
    audit: &'a [AuditEvent],
}

impl Audited<'_> {
    /// The connection to run statements on.
    fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.tx
    }

    /// Runs `sql` once for each key, bound as its only parameter.
    async fn each<K>(&mut self, sql: &'static str, keys: &[K]) -> Result<()>
    where
        K: for<'q> sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + Sync,
    {
        for k in keys {
            sqlx::query(sql).bind(k).execute(self.conn()).await?;
        }
        Ok(())
    }

    async fn commit(mut self) -> Result<()> {
        for e in self.audit {
            insert_audit(&mut self.tx, e).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

impl SqliteStore {
    /// Begins a transaction that will record `audit` when it commits.
    async fn begin_audited<'a>(&self, audit: &'a [AuditEvent]) -> Result<Audited<'a>> {
        Ok(Audited {
            tx: self.pool.begin().await?,
            audit,
        })
    }

    /// Runs one UPDATE or DELETE and, when it changed a row, records
    /// `audit` in the same transaction. Returns whether a row changed.
    async fn write_audited<'q>(
        &self,
        q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
        audit: &AuditEvent,
    ) -> Result<bool> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        if q.execute(tx.conn()).await?.rows_affected() == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }
}

async fn insert_audit(tx: &mut Transaction<'_, Sqlite>, e: &AuditEvent) -> Result<()> {
    sqlx::query("INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)")
        .bind(e.at)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn init_meta(&self, key: &str, value: &str) -> Result<String> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        let v: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn add_service(&self, s: &Service, audit: &AuditEvent) -> Result<()> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        let r = sqlx::query(
            "INSERT INTO services (namespace, name, spiffe_id, created_at, protocol) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&s.namespace)
        .bind(&s.name)
        .bind(&s.spiffe_id)
        .bind(s.created_at)
        .bind(&s.protocol)
        .execute(tx.conn())
        .await;
        match r {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "service {}/{}",
                    s.namespace, s.name
                )))
            }
            r => r?,
        };
        tx.commit().await
    }

    async fn get_service(&self, namespace: &str, name: &str) -> Result<Option<Service>> {
        Ok(sqlx::query_as("SELECT namespace, name, spiffe_id, created_at, protocol FROM services WHERE namespace = ? AND name = ?")
            .bind(namespace)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        Ok(sqlx::query_as(
            "SELECT namespace, name, spiffe_id, created_at, protocol FROM services ORDER BY namespace, name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn remove_service(
        &self,
        namespace: &str,
        name: &str,
        audit: &AuditEvent,
    ) -> Result<bool> {
        let q = sqlx::query("DELETE FROM services WHERE namespace = ? AND name = ?")
            .bind(namespace)
            .bind(name);
        self.write_audited(q, audit).await
    }

    async fn create_join_token(&self, t: &JoinToken, audit: &AuditEvent) -> Result<()> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        sqlx::query(
            "INSERT INTO join_tokens (hash, namespace, service, spiffe_id, expires_at, uses_left, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.hash)
        .bind(&t.namespace)
        .bind(&t.service)
        .bind(&t.spiffe_id)
        .bind(t.expires_at)
        .bind(t.uses_left)
        .bind(t.created_at)
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }

    async fn find_join_token(&self, hash: &[u8]) -> Result<Option<JoinToken>> {
        Ok(sqlx::query_as(
            "SELECT hash, namespace, service, spiffe_id, expires_at, uses_left, created_at FROM join_tokens WHERE hash = ?",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_join_tokens(&self, now: i64) -> Result<Vec<JoinToken>> {
        Ok(sqlx::query_as(
            "SELECT hash, namespace, service, spiffe_id, expires_at, uses_left, created_at FROM join_tokens \
             WHERE uses_left > 0 AND expires_at > ? ORDER BY created_at, rowid",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn revoke_join_token(&self, prefix: &[u8], audit: &AuditEvent) -> Result<u64> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        let n = sqlx::query("DELETE FROM join_tokens WHERE substr(hash, 1, ?) = ?")
            .bind(prefix.len() as i64)
            .bind(prefix)
            .execute(tx.conn())
            .await?
            .rows_affected();
        if n > 0 {
            tx.commit().await?;
        }
        Ok(n)
    }

    async fn record_issued(
        &self,
        cert: &CertRecord,
        consume: Option<&[u8]>,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<()> {
        let (done, wait) = oneshot::channel();
        let job = IssueJob {
            cert: Some(cert.clone()),
            consume: consume.map(<[u8]>::to_vec),
            now,
            audit: audit.clone(),
            done,
        };
        self.issue_tx
            .send(job)
            .await
            .map_err(|_| StoreError::Database("the store is closed".into()))?;
        wait.await
            .map_err(|_| StoreError::Database("the store is closed".into()))?
    }

    async fn get_certificate(&self, serial: &str) -> Result<Option<CertRecord>> {
        Ok(sqlx::query_as(
            "SELECT serial, spiffe_id, issuer_serial, not_before, not_after, revoked_at, created_at, der \
             FROM certificates WHERE serial = ?",
        )
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_certificates(&self, q: &CertQuery) -> Result<Vec<CertRecord>> {
        let limit = if q.limit <= 0 { 1000 } else { q.limit };
        Ok(sqlx::query_as(
            "SELECT serial, spiffe_id, issuer_serial, not_before, not_after, revoked_at, created_at, der \
             FROM certificates \
             WHERE (? IS NULL OR spiffe_id = ?) AND (? IS NULL OR not_after > ?) AND (? IS NULL OR not_after < ?) \
             ORDER BY created_at DESC, serial LIMIT ?",
        )
        .bind(&q.spiffe_id)
        .bind(&q.spiffe_id)
        .bind(q.valid_at)
        .bind(q.valid_at)
        .bind(q.expiring_before)
        .bind(q.expiring_before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn revoke_certificate(&self, serial: &str, now: i64, audit: &AuditEvent) -> Result<bool> {
        let q = sqlx::query(
            "UPDATE certificates SET revoked_at = ? WHERE serial = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(serial);
        self.write_audited(q, audit).await
    }

    async fn revoked_serials(&self, now: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT serial FROM certificates WHERE revoked_at IS NOT NULL AND not_after > ? ORDER BY serial",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn last_leaf_not_after(&self, issuer_serial: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT MAX(not_after) FROM certificates WHERE issuer_serial = ?")
                .bind(issuer_serial)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn insert_ca(&self, ca: &CaRecord, audit: &AuditEvent) -> Result<i64> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO ca_keys (kind, state, serial, cert_der, key_sealed, not_before, not_after, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&ca.kind)
        .bind(&ca.state)
        .bind(&ca.serial)
        .bind(&ca.cert_der)
        .bind(&ca.key_sealed)
        .bind(ca.not_before)
        .bind(ca.not_after)
        .bind(ca.created_at)
        .fetch_one(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn list_cas(&self) -> Result<Vec<CaRecord>> {
        Ok(sqlx::query_as(
            "SELECT id, kind, state, serial, cert_der, key_sealed, not_before, not_after, created_at FROM ca_keys ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn update_cas(
        &self,
        states: &[(i64, String)],
        delete: &[i64],
        audit: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        for (id, state) in states {
            sqlx::query("UPDATE ca_keys SET state = ? WHERE id = ?")
                .bind(state)
                .bind(id)
                .execute(tx.conn())
                .await?;
        }
        tx.each("DELETE FROM ca_keys WHERE id = ?", delete).await?;
        tx.commit().await
    }

    async fn apply_policies(
        &self,
        policies: &[(String, String, String)],
        at: i64,
        audit: &[AuditEvent],
    ) -> Result<Vec<PolicyRecord>> {
        let mut tx = self.begin_audited(audit).await?;
        let mut out = Vec::with_capacity(policies.len());
        for (namespace, name, json) in policies {
            let current: Option<(String, i64)> = sqlx::query_as(
                "SELECT spec_json, version FROM policies WHERE namespace = ? AND name = ?",
            )
            .bind(namespace)
            .bind(name)
            .fetch_optional(tx.conn())
            .await?;
            let version = match current {
                Some((old, v)) if old == *json => v,
                Some((_, v)) => v + 1,
                None => 1,
            };
            sqlx::query(
                "INSERT INTO policies (namespace, name, spec_json, version, updated_at) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (namespace, name) DO UPDATE SET spec_json = excluded.spec_json, \
                 version = excluded.version, updated_at = excluded.updated_at",
            )
            .bind(namespace)
            .bind(name)
            .bind(json)
            .bind(version)
            .bind(at)
            .execute(tx.conn())
            .await?;
            out.push(PolicyRecord {
                namespace: namespace.clone(),
                name: name.clone(),
                spec_json: json.clone(),
                version,
                updated_at: at,
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn list_policies(&self) -> Result<Vec<PolicyRecord>> {
        Ok(sqlx::query_as("SELECT namespace, name, spec_json, version, updated_at FROM policies ORDER BY namespace, name")
            .fetch_all(&self.pool)
            .await?)
    }

    async fn delete_policy(&self, namespace: &str, name: &str, audit: &AuditEvent) -> Result<bool> {
        let q = sqlx::query("DELETE FROM policies WHERE namespace = ? AND name = ?")
            .bind(namespace)
            .bind(name);
        self.write_audited(q, audit).await
    }

    async fn create_client(&self, c: &OAuthClient, audit: &AuditEvent) -> Result<()> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        let r = sqlx::query(
            "INSERT INTO oauth_clients (client_id, service_id, auth_method, secret_hash, jwks, scopes, audiences, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&c.client_id)
        .bind(&c.service_id)
        .bind(&c.auth_method)
        .bind(&c.secret_hash)
        .bind(&c.jwks)
        .bind(&c.scopes)
        .bind(&c.audiences)
        .bind(c.created_at)
        .execute(tx.conn())
        .await;
        match r {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!("client {}", c.client_id)))
            }
            r => r?,
        };
        tx.commit().await
    }

    async fn get_client(&self, client_id: &str) -> Result<Option<OAuthClient>> {
        Ok(sqlx::query_as(
            "SELECT client_id, service_id, auth_method, secret_hash, jwks, scopes, audiences, created_at FROM oauth_clients WHERE client_id = ?",
        )
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_clients(&self) -> Result<Vec<OAuthClient>> {
        Ok(sqlx::query_as(
            "SELECT client_id, service_id, auth_method, secret_hash, jwks, scopes, audiences, created_at FROM oauth_clients ORDER BY client_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn delete_client(&self, client_id: &str, audit: &AuditEvent) -> Result<bool> {
        let q = sqlx::query("DELETE FROM oauth_clients WHERE client_id = ?").bind(client_id);
        self.write_audited(q, audit).await
    }

    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        Ok(sqlx::query_as(
            "SELECT kid, alg, state, public_jwk, key_sealed, created_at, retire_until, purpose FROM signing_keys ORDER BY created_at, kid",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn update_signing_keys(
        &self,
        insert: &[SigningKeyRecord],
        states: &[(String, String, Option<i64>)],
        delete: &[String],
        audit: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        for k in insert {
            sqlx::query(
                "INSERT INTO signing_keys (kid, alg, state, public_jwk, key_sealed, created_at, retire_until, purpose) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&k.kid)
            .bind(&k.alg)
            .bind(&k.state)
            .bind(&k.public_jwk)
            .bind(&k.key_sealed)
            .bind(k.created_at)
            .bind(k.retire_until)
            .bind(&k.purpose)
            .execute(tx.conn())
            .await?;
        }
        for (kid, state, until) in states {
            sqlx::query("UPDATE signing_keys SET state = ?, retire_until = ? WHERE kid = ?")
                .bind(state)
                .bind(until)
                .bind(kid)
                .execute(tx.conn())
                .await?;
        }
        tx.each("DELETE FROM signing_keys WHERE kid = ?", delete)
            .await?;
        tx.commit().await
    }

    async fn revoke_token(&self, jti: &str, expires_at: i64, audit: &AuditEvent) -> Result<()> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES (?, ?) ON CONFLICT (jti) DO NOTHING")
            .bind(jti)
            .bind(expires_at)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    async fn revoked_tokens(&self, now: i64) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT jti FROM revoked_tokens WHERE expires_at > ? ORDER BY jti")
                .bind(now)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn use_assertion(&self, jti: &str, expires_at: i64, now: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM used_assertions WHERE expires_at <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("INSERT INTO used_assertions (jti, expires_at) VALUES (?, ?) ON CONFLICT (jti) DO NOTHING")
            .bind(jti)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    async fn audit_batched(&self, event: &AuditEvent) -> Result<()> {
        let (done, wait) = oneshot::channel();
        let job = IssueJob {
            cert: None,
            consume: None,
            now: 0,
            audit: event.clone(),
            done,
        };
        self.issue_tx
            .send(job)
            .await
            .map_err(|_| StoreError::Database("the store is closed".into()))?;
        wait.await
            .map_err(|_| StoreError::Database("the store is closed".into()))?
    }

    async fn audit(&self, event: &AuditEvent) -> Result<()> {
        self.begin_audited(std::slice::from_ref(event))
            .await?
            .commit()
            .await
    }

    async fn list_audit(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        Ok(sqlx::query_as(
            "SELECT id, at, actor, action, target, detail FROM audit_log WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(limit.clamp(1, 10_000))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn integrity_check(&self) -> Result<()> {
        let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&self.pool)
            .await?;
        if rows == ["ok"] {
            Ok(())
        } else {
            Err(StoreError::Database(format!(
                "integrity check failed: {}",
                rows.join("; ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("ward.db"))
            .await
            .unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn services_and_audit() {
        let (_d, s) = store().await;
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

    #[tokio::test]
    async fn token_consumption_is_atomic_with_issuance() {
        let (_d, s) = store().await;
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

    #[tokio::test]
    async fn policies_are_versioned() {
        let (_d, s) = store().await;
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

    #[tokio::test]
    async fn revocation_and_cas() {
        let (_d, s) = store().await;
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
}
