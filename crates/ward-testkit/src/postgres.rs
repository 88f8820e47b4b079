//! A PostgreSQL database of a test's own, on the throw-away cluster that
//! `scripts/test` (or CI) starts and names in `WARD_TEST_POSTGRES`.
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

/// The variable naming the test cluster: `postgres://user@host:port`.
pub const ENV: &str = "WARD_TEST_POSTGRES";

/// A fresh, empty database, dropped with this guard.
pub struct TestDatabase {
    base: String,
    name: String,
    url: String,
}

fn base_url() -> String {
    match std::env::var(ENV) {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "{ENV} is not set: the PostgreSQL tests need a cluster to create databases in; \
             run ./scripts/test, which starts a throw-away one, or set {ENV}=postgres://USER@127.0.0.1:PORT"
        ),
    }
}

/// `url` with its database replaced by `db`, its parameters kept.
fn with_database(url: &str, db: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let query = url[end..].find('?').map_or("", |i| &url[end + i..]);
    format!("{}/{db}{query}", &url[..end])
}

impl TestDatabase {
    /// Creates a database with a name no other test uses.
    pub async fn create() -> TestDatabase {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = base_url();
        let name = format!(
            "ward_test_{}_{}_{:08x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand_u32()
        );
        let mut conn = sqlx::PgConnection::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("connecting to {ENV}={base}: {e}"));
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        let url = with_database(&base, &name);
        TestDatabase { base, name, url }
    }

    /// The URL to hand to `ward server --database` or `PostgresStore::open`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Drop runs inside the test's runtime: use a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&base).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// A PostgreSQL cluster of a test's own (for a test that stops and starts
/// it), run by `scripts/postgres`; stopped when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    url: String,
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/postgres");

fn script(cmd: &str, dir: &std::path::Path) -> String {
    let out = std::process::Command::new(SCRIPT)
        .arg(cmd)
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {SCRIPT}: {e}"));
    assert!(
        out.status.success(),
        "scripts/postgres {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Cluster {
    /// Initializes and starts a cluster on an OS-chosen loopback port.
    pub fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = script("start", dir.path());
        Cluster { dir, url }
    }

    /// `postgres://…/postgres`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops it (fast shutdown: connections are closed).
    pub fn stop(&self) {
        script("stop", self.dir.path());
    }

    /// Starts it again on the same port. After [`Cluster::kill9`], the
    /// killed server's processes may take a moment to go: retried.
    pub fn resume(&self) {
        for _ in 0..50 {
            let ok = std::process::Command::new(SCRIPT)
                .arg("resume")
                .arg(self.dir.path())
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        script("resume", self.dir.path());
    }

    /// SIGKILL to the server and every process of it, as in a crash: no
    /// shutdown checkpoint, recovery from the WAL at the next start.
    pub fn kill9(&self) {
        let pidfile = self.dir.path().join("data/postmaster.pid");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}", pidfile.display()));
        // The children first, found by their parent in /proc.
        let children: Vec<String> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let ppid = stat.rsplit(')').next()?.split_whitespace().nth(1)?;
                (ppid == pid.to_string()).then(|| e.file_name().to_string_lossy().into_owned())
            })
            .collect();
        let _ = std::process::Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .args(&children)
            .status();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(SCRIPT)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_in_a_url_is_replaced() {
        use super::with_database;
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5/postgres", "d"),
            "postgres://u@127.0.0.1:5/d"
        );
        assert_eq!(with_database("postgres://u@h:5", "d"), "postgres://u@h:5/d");
        assert_eq!(
            with_database("postgres://u@h:5/x?a=b", "d"),
            "postgres://u@h:5/d?a=b"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5?sslmode=disable", "d"),
            "postgres://u:p@h:5/d?sslmode=disable"
        );
    }
}
