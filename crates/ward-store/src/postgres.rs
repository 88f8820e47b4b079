//! The PostgreSQL backend: one database shared by any number of
//! control-plane replicas. Every write is a transaction committed with
//! `synchronous_commit=on`; concurrent commits share WAL flushes inside
//! PostgreSQL, so there is no group-commit writer here.
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::{Result, StoreError};

// The shared SQL, compiled for this backend (see sql.rs).
#[allow(clippy::duplicate_mod)]
#[path = "sql.rs"]
mod sql;
use sql::Issue;

type Db = sqlx::Postgres;
type ThisStore = PostgresStore;
/// Every audited write announces its action on [`CHANNEL`] when it
/// commits (PostgreSQL delivers a NOTIFY only if the transaction commits).
const NOTIFY: Option<&str> = Some("SELECT pg_notify('ward_changes', $1)");
/// The channel replicas listen on.
const CHANNEL: &str = "ward_changes";

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`)
    /// and brings the schema up to date. Replicas starting together run
    /// the migrations once: sqlx holds an advisory lock while it migrates.
    pub async fn open(url: &str) -> Result<PostgresStore> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Database(format!("the PostgreSQL URL: {e}")))?
            .application_name("ward")
            .options([("synchronous_commit", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await
            .map_err(|e| StoreError::Database(format!("PostgreSQL: {e}")))?;
        // A database already migrated by a newer release (a replica
        // upgraded first) is used as it is: migrations only add.
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        migrator.set_ignore_missing(true);
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(PostgresStore { pool })
    }

    /// Closes the pool, waiting for in-flight writes.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Commits one issuance in its own transaction.
    async fn issue(&self, issue: Issue) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sql::issue_one(&mut tx, &issue).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes the advisory lock named `name` on a connection of its own,
    /// which the guard gives back (unlocked) when dropped.
    async fn lock_named(&self, name: &str) -> Result<crate::StoreLock> {
        let key = lock_key(name);
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await?;
        Ok(crate::StoreLock::new(AdvisoryLock {
            conn: Some(conn),
            key,
        }))
    }

    /// Follows [`CHANNEL`] on a connection of its own. After the
    /// connection was lost and is back, sends `"*"`: what was announced in
    /// between is gone, so the receiver reloads everything.
    async fn listen(&self) -> Result<Option<mpsc::Receiver<String>>> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut lost = false;
            loop {
                if lost {
                    // Reconnects (and listens again) if it can.
                    if sqlx::query("SELECT 1")
                        .execute(&mut listener)
                        .await
                        .is_err()
                    {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    lost = false;
                    if tx.send("*".into()).await.is_err() {
                        return;
                    }
                }
                let action = match listener.try_recv().await {
                    Ok(Some(n)) => n.payload().to_string(),
                    // Lost and reconnected at once.
                    Ok(None) => "*".to_string(),
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "the change feed from PostgreSQL was cut; reconnecting");
                        lost = true;
                        continue;
                    }
                };
                if tx.send(action).await.is_err() {
                    return;
                }
            }
        });
        Ok(Some(rx))
    }

    /// PostgreSQL checks its pages itself; this checks that the database
    /// answers and holds ward's schema.
    async fn check(&self) -> Result<()> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await?;
        if n == 0 {
            return Err(StoreError::Database(
                "the database holds no ward schema".into(),
            ));
        }
        Ok(())
    }
}

/// A held advisory lock: released on drop, by `pg_advisory_unlock` on
/// the connection that took it, or, where no runtime is left to run that,
/// by closing the connection (PostgreSQL drops a session's locks with it).
struct AdvisoryLock {
    conn: Option<sqlx::pool::PoolConnection<Db>>,
    key: i64,
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let key = self.key;
                rt.spawn(async move {
                    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(key)
                        .execute(&mut *conn)
                        .await;
                    if unlocked.is_err() {
                        drop(conn.detach());
                    }
                });
            }
            Err(_) => drop(conn.detach()),
        }
    }
}

/// A stable 64-bit key for a lock name (FNV-1a), the same in every
/// replica and every version.
fn lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::PostgresStore;
    use crate::Store;

    async fn open() -> (ward_testkit::postgres::TestDatabase, Arc<dyn Store>) {
        let db = ward_testkit::postgres::TestDatabase::create().await;
        let s = PostgresStore::open(db.url()).await.unwrap();
        (db, Arc::new(s))
    }

    crate::suite::store_suite!(open);

    #[tokio::test]
    async fn a_database_migrated_by_a_newer_release_opens() {
        let db = ward_testkit::postgres::TestDatabase::create().await;
        let s = PostgresStore::open(db.url()).await.unwrap();
        // PostgreSQL spells bytes '\x00'.
        sqlx::query(&crate::suite::NEWER_MIGRATION.replace("X'00'", "'\\x00'"))
            .execute(&s.pool)
            .await
            .unwrap();
        s.close().await;
        PostgresStore::open(db.url()).await.unwrap();
    }
}
