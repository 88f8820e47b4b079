//! The SQLite backend: one file, WAL journal, `synchronous=FULL`.
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use crate::{Result, StoreError};

// The shared SQL, compiled for this backend (see sql.rs).
#[allow(clippy::duplicate_mod)]
#[path = "sql.rs"]
mod sql;
use sql::Issue;

type Db = sqlx::Sqlite;
type ThisStore = SqliteStore;
/// One server per file: nobody else to tell about changes.
const NOTIFY: Option<&str> = None;

/// Most issuances committed together by one fsync.
const MAX_BATCH: usize = 512;

/// The SQLite store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    issue_tx: mpsc::Sender<IssueJob>,
    /// One server per file: [`crate::Store::lock`] is within the process.
    locks: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

struct IssueJob {
    issue: Issue,
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
        // A database already migrated by a newer release (a replica
        // upgraded first) is used as it is: migrations only add.
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let (issue_tx, issue_rx) = mpsc::channel(4096);
        tokio::spawn(group_commit(pool.clone(), issue_rx));
        Ok(SqliteStore {
            pool,
            issue_tx,
            locks: Default::default(),
        })
    }

    /// Closes the pool, waiting for in-flight writes.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Hands an issuance to the group-commit writer and waits until it is
    /// on disk.
    async fn issue(&self, issue: Issue) -> Result<()> {
        let closed = || StoreError::Database("the store is closed".into());
        let (done, wait) = oneshot::channel();
        self.issue_tx
            .send(IssueJob { issue, done })
            .await
            .map_err(|_| closed())?;
        wait.await.map_err(|_| closed())?
    }

    async fn lock_named(&self, name: &str) -> Result<crate::StoreLock> {
        let lock = self
            .locks
            .lock()
            .map_err(|_| StoreError::Database("lock table poisoned".into()))?
            .entry(name.to_string())
            .or_default()
            .clone();
        Ok(crate::StoreLock::new(lock.lock_owned().await))
    }

    async fn listen(&self) -> Result<Option<mpsc::Receiver<String>>> {
        Ok(None)
    }

    async fn check(&self) -> Result<()> {
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
                let r = sql::issue_one(&mut tx, &job.issue).await;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::SqliteStore;
    use crate::Store;

    async fn open() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("ward.db"))
            .await
            .unwrap();
        (dir, Arc::new(s))
    }

    crate::suite::store_suite!(open);

    #[tokio::test]
    async fn a_database_migrated_by_a_newer_release_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ward.db");
        let s = SqliteStore::open(&path).await.unwrap();
        sqlx::query(crate::suite::NEWER_MIGRATION)
            .execute(&s.pool)
            .await
            .unwrap();
        s.close().await;
        SqliteStore::open(&path).await.unwrap();
    }
}
