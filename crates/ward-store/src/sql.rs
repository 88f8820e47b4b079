//! The SQL both backends share, written once in the dialect SQLite and
//! PostgreSQL have in common (`$N` parameters, `ON CONFLICT`, `RETURNING`).
//! Each backend module compiles this file as its own `sql` module, after
//! naming its sqlx database `Db` and its store `ThisStore`; the store
//! supplies what differs: how an issuance is committed (`issue`), how
//! the database checks itself (`check`), and the statement (`NOTIFY`, if
//! any) that announces a committed change to other processes.
use sqlx::Transaction;

use super::{Db, ThisStore};
use crate::{
    AuditEvent, AuditRecord, CaRecord, CertQuery, CertRecord, JoinToken, OAuthClient, PolicyRecord,
    Result, Service, SigningKeyRecord, Store, StoreError,
};

/// One certificate issuance (or, with no certificate, one audit entry)
/// to commit.
pub(super) struct Issue {
    /// `None` for an audit entry alone.
    pub cert: Option<CertRecord>,
    /// The join token to take one use from, by hash.
    pub consume: Option<Vec<u8>>,
    /// The time the token must still be valid at.
    pub now: i64,
    /// Recorded with it.
    pub audit: AuditEvent,
}

/// Stores `job` inside `tx`: takes one use of its join token (or fails
/// with [`StoreError::TokenUnavailable`]), inserts the certificate and the
/// audit entry.
pub(super) async fn issue_one(tx: &mut Transaction<'_, Db>, job: &Issue) -> Result<()> {
    let Some(c) = &job.cert else {
        return insert_audit(tx, &job.audit).await;
    };
    if let Some(hash) = &job.consume {
        let done = sqlx::query(
            "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE hash = $1 AND uses_left > 0 AND expires_at > $2",
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
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
    tx: Transaction<'static, Db>,
    audit: &'a [AuditEvent],
}

impl Audited<'_> {
    /// The connection to run statements on.
    fn conn(&mut self) -> &mut <Db as sqlx::Database>::Connection {
        &mut self.tx
    }

    /// Runs `sql` once for each key, bound as its only parameter.
    async fn each<K>(&mut self, sql: &'static str, keys: &[K]) -> Result<()>
    where
        K: for<'q> sqlx::Encode<'q, Db> + sqlx::Type<Db> + Sync,
    {
        for k in keys {
            sqlx::query(sql).bind(k).execute(self.conn()).await?;
        }
        Ok(())
    }

    /// Records the audit entries and commits; where other processes share
    /// the database, each entry's action is announced to them on commit.
    async fn commit(mut self) -> Result<()> {
        for e in self.audit {
            insert_audit(&mut self.tx, e).await?;
            if let Some(notify) = super::NOTIFY {
                sqlx::query(notify)
                    .bind(&e.action)
                    .execute(self.conn())
                    .await?;
            }
        }
        self.tx.commit().await?;
        Ok(())
    }
}

impl ThisStore {
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
        q: sqlx::query::Query<'q, Db, <Db as sqlx::Database>::Arguments<'q>>,
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

pub(super) async fn insert_audit(tx: &mut Transaction<'_, Db>, e: &AuditEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
    )
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
impl Store for ThisStore {
    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn init_meta(&self, key: &str, value: &str) -> Result<String> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        let v: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn add_service(&self, s: &Service, audit: &AuditEvent) -> Result<()> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        let r = sqlx::query(
            "INSERT INTO services (namespace, name, spiffe_id, created_at, protocol) VALUES ($1, $2, $3, $4, $5)",
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
        Ok(sqlx::query_as("SELECT namespace, name, spiffe_id, created_at, protocol FROM services WHERE namespace = $1 AND name = $2")
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
        let q = sqlx::query("DELETE FROM services WHERE namespace = $1 AND name = $2")
            .bind(namespace)
            .bind(name);
        self.write_audited(q, audit).await
    }

    async fn create_join_token(&self, t: &JoinToken, audit: &AuditEvent) -> Result<()> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        sqlx::query(
            "INSERT INTO join_tokens (hash, namespace, service, spiffe_id, expires_at, uses_left, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
            "SELECT hash, namespace, service, spiffe_id, expires_at, uses_left, created_at FROM join_tokens WHERE hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_join_tokens(&self, now: i64) -> Result<Vec<JoinToken>> {
        Ok(sqlx::query_as(
            "SELECT hash, namespace, service, spiffe_id, expires_at, uses_left, created_at FROM join_tokens \
             WHERE uses_left > 0 AND expires_at > $1 ORDER BY created_at, rowid",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn revoke_join_token(&self, prefix: &[u8], audit: &AuditEvent) -> Result<u64> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        let n =
            sqlx::query("DELETE FROM join_tokens WHERE substr(hash, 1, CAST($1 AS INTEGER)) = $2")
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
        self.issue(Issue {
            cert: Some(cert.clone()),
            consume: consume.map(<[u8]>::to_vec),
            now,
            audit: audit.clone(),
        })
        .await
    }

    async fn get_certificate(&self, serial: &str) -> Result<Option<CertRecord>> {
        Ok(sqlx::query_as(
            "SELECT serial, spiffe_id, issuer_serial, not_before, not_after, revoked_at, created_at, der \
             FROM certificates WHERE serial = $1",
        )
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_certificates(&self, q: &CertQuery) -> Result<Vec<CertRecord>> {
        let limit = if q.limit <= 0 { 1000 } else { q.limit };
        // Only the filters asked for are in the SQL, so that each can use
        // its index (`$1 IS NULL OR …` would make the planner scan).
        let mut sql = String::from(
            "SELECT serial, spiffe_id, issuer_serial, not_before, not_after, revoked_at, created_at, der \
             FROM certificates WHERE 1 = 1",
        );
        let filters = [
            (q.spiffe_id.is_some(), "spiffe_id ="),
            (q.valid_at.is_some(), "not_after >"),
            (q.expiring_before.is_some(), "not_after <"),
        ];
        let mut n = 0;
        for (_, cond) in filters.iter().filter(|(asked, _)| *asked) {
            n += 1;
            sql.push_str(&format!(" AND {cond} ${n}"));
        }
        sql.push_str(&format!(
            " ORDER BY created_at DESC, serial LIMIT ${}",
            n + 1
        ));
        let mut query = sqlx::query_as(&sql);
        if let Some(id) = &q.spiffe_id {
            query = query.bind(id);
        }
        if let Some(t) = q.valid_at {
            query = query.bind(t);
        }
        if let Some(t) = q.expiring_before {
            query = query.bind(t);
        }
        Ok(query.bind(limit).fetch_all(&self.pool).await?)
    }

    async fn revoke_certificate(&self, serial: &str, now: i64, audit: &AuditEvent) -> Result<bool> {
        let q = sqlx::query(
            "UPDATE certificates SET revoked_at = $1 WHERE serial = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(serial);
        self.write_audited(q, audit).await
    }

    async fn revoked_serials(&self, now: i64) -> Result<Vec<String>> {
        // Sorted here: an ORDER BY would lead SQLite to walk the primary
        // key over every row instead of the index of revoked ones.
        let mut serials: Vec<String> = sqlx::query_scalar(
            "SELECT serial FROM certificates WHERE revoked_at IS NOT NULL AND not_after > $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        serials.sort_unstable();
        Ok(serials)
    }

    async fn last_leaf_not_after(&self, issuer_serial: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT MAX(not_after) FROM certificates WHERE issuer_serial = $1")
                .bind(issuer_serial)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn insert_ca(&self, ca: &CaRecord, audit: &AuditEvent) -> Result<i64> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO ca_keys (kind, state, serial, cert_der, key_sealed, not_before, not_after, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
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
            sqlx::query("UPDATE ca_keys SET state = $1 WHERE id = $2")
                .bind(state)
                .bind(id)
                .execute(tx.conn())
                .await?;
        }
        tx.each("DELETE FROM ca_keys WHERE id = $1", delete).await?;
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
                "SELECT spec_json, version FROM policies WHERE namespace = $1 AND name = $2",
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
                "INSERT INTO policies (namespace, name, spec_json, version, updated_at) VALUES ($1, $2, $3, $4, $5) \
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
        let q = sqlx::query("DELETE FROM policies WHERE namespace = $1 AND name = $2")
            .bind(namespace)
            .bind(name);
        self.write_audited(q, audit).await
    }

    async fn create_client(&self, c: &OAuthClient, audit: &AuditEvent) -> Result<()> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        let r = sqlx::query(
            "INSERT INTO oauth_clients (client_id, service_id, auth_method, secret_hash, jwks, scopes, audiences, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
            "SELECT client_id, service_id, auth_method, secret_hash, jwks, scopes, audiences, created_at FROM oauth_clients WHERE client_id = $1",
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
        let q = sqlx::query("DELETE FROM oauth_clients WHERE client_id = $1").bind(client_id);
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
            sqlx::query("UPDATE signing_keys SET state = $1, retire_until = $2 WHERE kid = $3")
                .bind(state)
                .bind(until)
                .bind(kid)
                .execute(tx.conn())
                .await?;
        }
        tx.each("DELETE FROM signing_keys WHERE kid = $1", delete)
            .await?;
        tx.commit().await
    }

    async fn revoke_token(&self, jti: &str, expires_at: i64, audit: &AuditEvent) -> Result<()> {
        let mut tx = self.begin_audited(std::slice::from_ref(audit)).await?;
        sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING")
            .bind(jti)
            .bind(expires_at)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    async fn revoked_tokens(&self, now: i64) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT jti FROM revoked_tokens WHERE expires_at > $1 ORDER BY jti")
                .bind(now)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn use_assertion(&self, jti: &str, expires_at: i64, now: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM used_assertions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("INSERT INTO used_assertions (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING")
            .bind(jti)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    async fn audit_batched(&self, event: &AuditEvent) -> Result<()> {
        self.issue(Issue {
            cert: None,
            consume: None,
            now: 0,
            audit: event.clone(),
        })
        .await
    }

    async fn audit(&self, event: &AuditEvent) -> Result<()> {
        self.begin_audited(std::slice::from_ref(event))
            .await?
            .commit()
            .await
    }

    async fn list_audit(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        Ok(sqlx::query_as(
            "SELECT id, at, actor, action, target, detail FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit.clamp(1, 10_000))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn list_audit_newest(
        &self,
        before: i64,
        containing: &str,
        limit: i64,
    ) -> Result<Vec<AuditRecord>> {
        let pattern = format!(
            "%{}%",
            containing
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        Ok(sqlx::query_as(
            "SELECT id, at, actor, action, target, detail FROM audit_log \
             WHERE ($1 = 0 OR id < $1) AND ($2 = '%%' OR LOWER(actor) LIKE $2 ESCAPE '\\' \
             OR LOWER(action) LIKE $2 ESCAPE '\\' OR LOWER(target) LIKE $2 ESCAPE '\\') \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(before)
        .bind(pattern)
        .bind(limit.clamp(1, 10_000))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn integrity_check(&self) -> Result<()> {
        self.check().await
    }

    async fn sync_endpoints(
        &self,
        replica: &str,
        now: i64,
        add: &[(String, String)],
        remove: &[(String, String)],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO replicas (id, seen_at) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(replica)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for (id, addr) in add {
            sqlx::query(
                "INSERT INTO endpoints (replica, spiffe_id, addr) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(replica)
            .bind(id)
            .bind(addr)
            .execute(&mut *tx)
            .await?;
        }
        for (id, addr) in remove {
            sqlx::query(
                "DELETE FROM endpoints WHERE replica = $1 AND spiffe_id = $2 AND addr = $3",
            )
            .bind(replica)
            .bind(id)
            .bind(addr)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(notify) = super::NOTIFY.filter(|_| !add.is_empty() || !remove.is_empty()) {
            sqlx::query(notify)
                .bind("endpoint.change")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_endpoints(&self, since: i64, except: &str) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT e.spiffe_id, e.addr FROM endpoints e JOIN replicas r ON r.id = e.replica \
             WHERE r.seen_at >= $1 AND e.replica <> $2 ORDER BY e.spiffe_id, e.addr",
        )
        .bind(since)
        .bind(except)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn prune_replicas(&self, before: i64) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM endpoints WHERE replica IN (SELECT id FROM replicas WHERE seen_at < $1)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query("DELETE FROM replicas WHERE seen_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn prune_expired(&self, before: i64) -> Result<u64> {
        const BATCHES: [&str; 4] = [
            "DELETE FROM certificates WHERE serial IN \
             (SELECT serial FROM certificates WHERE not_after < $1 LIMIT $2)",
            "DELETE FROM revoked_tokens WHERE jti IN \
             (SELECT jti FROM revoked_tokens WHERE expires_at < $1 LIMIT $2)",
            "DELETE FROM used_assertions WHERE jti IN \
             (SELECT jti FROM used_assertions WHERE expires_at < $1 LIMIT $2)",
            "DELETE FROM join_tokens WHERE hash IN \
             (SELECT hash FROM join_tokens WHERE expires_at < $1 LIMIT $2)",
        ];
        let mut total = 0;
        for sql in BATCHES {
            loop {
                let n = sqlx::query(sql)
                    .bind(before)
                    .bind(crate::PRUNE_BATCH)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                total += n;
                if n < crate::PRUNE_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }

    async fn lock(&self, name: &str) -> Result<crate::StoreLock> {
        self.lock_named(name).await
    }

    async fn changes(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>> {
        self.listen().await
    }
}
