//! ward's storage: the [`Store`] trait the control plane is written
//! against, and its two implementations: [`SqliteStore`] (one file, the
//! default) and [`PostgresStore`] (shared by several control-plane
//! replicas).
//!
//! Every method is one transaction; an acknowledged write has been synced
//! to disk (SQLite in WAL mode with `synchronous=FULL`; PostgreSQL with
//! `synchronous_commit=on`), so it survives a crash or `kill -9`. On
//! SQLite, certificate issuance, the hot write path, is batched by a
//! group-commit writer: concurrent issuances share one fsync (PostgreSQL
//! groups concurrent commits itself).
//!
//! Both backends run the same SQL (`sql.rs`, compiled once per backend)
//! and pass the same test suite.
//!
//! Migrations only add (tables, indexes, columns with defaults), so a
//! server of an older release keeps working on a database a newer one
//! has migrated: replicas can be upgraded one at a time, and an upgrade
//! rolled back by running the older binary again.
//!
//! ```no_run
//! # async fn f() -> Result<(), ward_store::StoreError> {
//! use ward_store::{SqliteStore, Store};
//! let store = SqliteStore::open(std::path::Path::new("/tmp/ward.db")).await?;
//! println!("{} services", store.list_services().await?.len());
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod model;
mod postgres;
mod sqlite;
#[cfg(test)]
mod suite;

pub use model::*;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record already exists.
    #[error("{0} already exists")]
    Conflict(String),
    /// A join token that was valid when checked was used up or expired
    /// before it could be consumed (a concurrent use won).
    #[error("the join token is no longer valid")]
    TokenUnavailable,
    /// The disk under the database is full: writes fail until space is
    /// freed; reads go on.
    #[error("the disk under the database is full ({0})")]
    Full(String),
    /// The database cannot be reached (PostgreSQL stopped, restarting or
    /// cut off): nothing was changed; the same call succeeds once it is
    /// back, without a restart.
    #[error("the database cannot be reached: {0}")]
    Unavailable(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
    /// The database schema is newer than this binary or damaged.
    #[error("database migration failed: {0}")]
    Migration(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // SQLITE_FULL (13), PostgreSQL's disk_full (53100) and ENOSPC:
        // the disk, not the database.
        let full = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "13" || c == "53100")
            || matches!(&e, sqlx::Error::Io(io) if io.raw_os_error() == Some(28));
        // No connection to be had, or the one in use went away:
        // PostgreSQL's connection_exception class (08) and shutdown or
        // start-up states (57P01-57P03).
        let unavailable = matches!(
            &e,
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
        ) || e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03"));
        if full {
            StoreError::Full(e.to_string())
        } else if unavailable {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Database(e.to_string())
        }
    }
}

/// A lock held across every process sharing the database until dropped
/// (see [`Store::lock`]).
#[must_use = "the lock is released when this is dropped"]
pub struct StoreLock {
    _held: Box<dyn Send + Sync>,
}

impl StoreLock {
    pub(crate) fn new(held: impl Send + Sync + 'static) -> StoreLock {
        StoreLock {
            _held: Box::new(held),
        }
    }
}

impl std::fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLock")
    }
}

/// Rows deleted per transaction by [`Store::prune_expired`].
pub const PRUNE_BATCH: i64 = 10_000;

/// Result alias for storage calls.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The control plane's storage.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// A value from the key/value settings table.
    async fn get_meta(&self, key: &str) -> Result<Option<String>>;
    /// Sets a value in the key/value settings table, if not set yet;
    /// returns the value in force.
    async fn init_meta(&self, key: &str, value: &str) -> Result<String>;
    /// Sets a value in the key/value settings table.
    async fn set_meta(&self, key: &str, value: &str) -> Result<()>;

    /// Registers a service. [`StoreError::Conflict`] if it exists.
    async fn add_service(&self, service: &Service, audit: &AuditEvent) -> Result<()>;
    /// One service.
    async fn get_service(&self, namespace: &str, name: &str) -> Result<Option<Service>>;
    /// Every service, by namespace then name.
    async fn list_services(&self) -> Result<Vec<Service>>;
    /// Removes a service; false if there was none.
    async fn remove_service(&self, namespace: &str, name: &str, audit: &AuditEvent)
        -> Result<bool>;

    /// Stores a new join token (by hash).
    async fn create_join_token(&self, token: &JoinToken, audit: &AuditEvent) -> Result<()>;
    /// A join token by hash.
    async fn find_join_token(&self, hash: &[u8]) -> Result<Option<JoinToken>>;
    /// The join tokens still usable at `now` (unexpired, uses left), oldest
    /// first.
    async fn list_join_tokens(&self, now: i64) -> Result<Vec<JoinToken>>;
    /// Deletes the join tokens whose hash starts with `prefix` (a token's
    /// public id); how many there were.
    async fn revoke_join_token(&self, prefix: &[u8], audit: &AuditEvent) -> Result<u64>;

    /// Records an issued certificate, in the same transaction consuming one
    /// use of the join token `consume` (if given, and only if it is still
    /// unexpired with uses left at `now`; else [`StoreError::TokenUnavailable`]
    /// and nothing is stored).
    async fn record_issued(
        &self,
        cert: &CertRecord,
        consume: Option<&[u8]>,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<()>;
    /// A certificate by serial.
    async fn get_certificate(&self, serial: &str) -> Result<Option<CertRecord>>;
    /// Certificates, newest first, optionally only those for one SPIFFE ID
    /// and only those not expired at `valid_at`.
    async fn list_certificates(&self, query: &CertQuery) -> Result<Vec<CertRecord>>;
    /// Marks a certificate revoked; false if unknown or already revoked.
    async fn revoke_certificate(&self, serial: &str, now: i64, audit: &AuditEvent) -> Result<bool>;
    /// Serials of revoked certificates that have not expired at `now`.
    async fn revoked_serials(&self, now: i64) -> Result<Vec<String>>;
    /// The latest expiry of the leaves a signing CA issued.
    async fn last_leaf_not_after(&self, issuer_serial: &str) -> Result<Option<i64>>;

    /// Stores a CA certificate and its sealed key; returns its id.
    async fn insert_ca(&self, ca: &CaRecord, audit: &AuditEvent) -> Result<i64>;
    /// Every stored CA, oldest first.
    async fn list_cas(&self) -> Result<Vec<CaRecord>>;
    /// Applies state changes and deletions to CAs in one transaction.
    async fn update_cas(
        &self,
        states: &[(i64, String)],
        delete: &[i64],
        audit: &AuditEvent,
    ) -> Result<()>;

    /// Creates or replaces policies, all in one transaction; a policy whose
    /// document is unchanged keeps its version. Returns the stored records.
    async fn apply_policies(
        &self,
        policies: &[(String, String, String)],
        at: i64,
        audit: &[AuditEvent],
    ) -> Result<Vec<PolicyRecord>>;
    /// Every policy, by namespace then name.
    async fn list_policies(&self) -> Result<Vec<PolicyRecord>>;
    /// Deletes a policy; false if there was none.
    async fn delete_policy(&self, namespace: &str, name: &str, audit: &AuditEvent) -> Result<bool>;

    /// Stores a new OAuth2 client. [`StoreError::Conflict`] if the id exists.
    async fn create_client(&self, client: &OAuthClient, audit: &AuditEvent) -> Result<()>;
    /// One client.
    async fn get_client(&self, client_id: &str) -> Result<Option<OAuthClient>>;
    /// Every client.
    async fn list_clients(&self) -> Result<Vec<OAuthClient>>;
    /// Deletes a client; false if there was none.
    async fn delete_client(&self, client_id: &str, audit: &AuditEvent) -> Result<bool>;

    /// Every token signing key.
    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>>;
    /// Inserts keys and changes states/deletes others, in one transaction.
    async fn update_signing_keys(
        &self,
        insert: &[SigningKeyRecord],
        states: &[(String, String, Option<i64>)],
        delete: &[String],
        audit: &AuditEvent,
    ) -> Result<()>;

    /// Marks a token id revoked until it would have expired anyway.
    async fn revoke_token(&self, jti: &str, expires_at: i64, audit: &AuditEvent) -> Result<()>;
    /// Token ids revoked and not yet expired at `now`.
    async fn revoked_tokens(&self, now: i64) -> Result<Vec<String>>;
    /// Records a client assertion id; false if it was seen before (replay).
    async fn use_assertion(&self, jti: &str, expires_at: i64, now: i64) -> Result<bool>;
    /// Appends to the audit log through the group-commit writer (for
    /// high-rate events such as token issuance).
    async fn audit_batched(&self, event: &AuditEvent) -> Result<()>;

    /// Appends to the audit log on its own.
    async fn audit(&self, event: &AuditEvent) -> Result<()>;
    /// Audit entries with id greater than `after`, oldest first, at most `limit`.
    async fn list_audit(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>>;
    /// Audit entries with id below `before` (0: from the newest), newest
    /// first, at most `limit`, whose actor, action or target contains
    /// `containing` (any case; empty: all).
    async fn list_audit_newest(
        &self,
        before: i64,
        containing: &str,
        limit: i64,
    ) -> Result<Vec<AuditRecord>>;

    /// Runs the backend's integrity check; Ok(()) when the database is sound.
    async fn integrity_check(&self) -> Result<()>;

    /// Brings this replica's part of the shared endpoint table up to date
    /// (adds `add`, removes `remove`, as (SPIFFE ID, address) pairs) and
    /// marks the replica seen at `now`; other replicas are told when
    /// something changed.
    async fn sync_endpoints(
        &self,
        replica: &str,
        now: i64,
        add: &[(String, String)],
        remove: &[(String, String)],
    ) -> Result<()>;
    /// The (SPIFFE ID, address) pairs of the replicas seen since `since`,
    /// other than `except`.
    async fn list_endpoints(&self, since: i64, except: &str) -> Result<Vec<(String, String)>>;
    /// Forgets the replicas not seen since `before`, with their endpoints.
    async fn prune_replicas(&self, before: i64) -> Result<u64>;

    /// Deletes what expired before `before`: certificates, revoked token
    /// ids, used assertion ids and join tokens, in batches of
    /// [`PRUNE_BATCH`] rows so that no transaction holds the database for
    /// long. Returns how many rows went.
    async fn prune_expired(&self, before: i64) -> Result<u64>;

    /// Waits for, then holds, the lock `name` among every process sharing
    /// this database (a PostgreSQL advisory lock; within the process for
    /// SQLite): so that of several replicas due to rotate the CA or a
    /// signing key at once, one does and the others see it done.
    async fn lock(&self, name: &str) -> Result<StoreLock>;

    /// The changes committed by any process sharing this database, each as
    /// the audit action of the write (`policy.apply`, `ca.rotate`, ...), so
    /// that a control-plane replica can reload what another one changed;
    /// `"*"` when some may have been missed (the feed reconnected). `None`
    /// for a database only this process uses.
    async fn changes(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>>;
}
