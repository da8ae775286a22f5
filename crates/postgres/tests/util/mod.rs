//! Shared helpers of the PostgreSQL integration tests.
#![allow(dead_code)] // each test binary uses a subset

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nerv_postgres::{ConnectOptions, Engine, RunId, RunStatus, TaskState};

/// The server under test: `$NERV_PG_URL` or the local default.
pub fn url() -> String {
    std::env::var("NERV_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema and an engine on it; `None` (after printing why) when no server is reachable.
pub struct Db {
    pub engine: Engine,
    pub schema: String,
    pub dir: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Takes the cross-process test lock: shared for ordinary tests, exclusive for the test that
/// restarts the server (so it also holds under runners that run test binaries in parallel).
pub async fn lock(exclusive: bool) -> nix::fcntl::Flock<std::fs::File> {
    let path = std::env::temp_dir().join("nerv-postgres-tests.lock");
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("lock file");
        let arg = if exclusive {
            nix::fcntl::FlockArg::LockExclusive
        } else {
            nix::fcntl::FlockArg::LockShared
        };
        nix::fcntl::Flock::lock(f, arg)
            .map_err(|(_, e)| e)
            .expect("flock")
    })
    .await
    .expect("lock task")
}

/// A fresh schema (see [`Db`]) under the shared test lock.
pub async fn db(name: &str) -> Option<Db> {
    db_locked(name, false).await
}

/// A fresh schema under the shared (or, for a server restart, exclusive) test lock.
pub async fn db_locked(name: &str, exclusive: bool) -> Option<Db> {
    let guard = lock(exclusive).await;
    let schema = format!("t_{name}_{}_{:04x}", std::process::id(), fastrand_u16());
    let opts = ConnectOptions::new(&url())
        .expect("url")
        .schema(&schema)
        .connect_timeout(Duration::from_secs(3));
    match Engine::connect_with(opts).await {
        Ok(engine) => {
            let dir = std::env::temp_dir().join(format!("nerv-pg-{schema}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Some(Db {
                engine,
                schema,
                dir,
                _lock: guard,
            })
        }
        Err(e) if e.is_connection() => {
            println!("skipped: no PostgreSQL at {} ({e})", url());
            None
        }
        Err(e) => panic!("cannot prepare schema {schema}: {e}"),
    }
}

fn fastrand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ (nanos >> 16)) as u16
}

impl Db {
    pub async fn cleanup(self) {
        let _ = self.engine.drop_schema().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts a worker process on this schema; it is SIGKILLed (with its process group) on drop.
    pub fn worker(&self, extra: &[&str]) -> WorkerProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nerv-pg-worker"));
        cmd.args(["--url", &url(), "--schema", &self.schema])
            .args(extra)
            .stdin(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        WorkerProc {
            child: cmd.spawn().expect("spawn nerv-pg-worker"),
        }
    }

    /// Polls the run's status until `pred` holds (or 60 s pass, then panics with the status).
    pub async fn until(
        &self,
        run: RunId,
        what: &str,
        pred: impl Fn(&RunStatus) -> bool,
    ) -> RunStatus {
        for _ in 0..1200 {
            match self.engine.status(run).await {
                Ok(s) if pred(&s) => return s,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!(
            "gave up waiting for {what}: {:?}",
            self.engine.status(run).await
        );
    }

    /// A plain connection to the server with this schema first on the search path.
    pub async fn sql(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("SET search_path TO {}", self.schema))
            .await
            .expect("search_path");
        client
    }

    /// A worker on this schema running in this process until the returned token is cancelled.
    pub fn spawn(
        &self,
        worker: nerv_postgres::Worker,
    ) -> (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<nerv_postgres::Result<nerv_postgres::WorkerStats>>,
    ) {
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        (stop, tokio::spawn(async move { worker.run(s).await }))
    }

    /// Number of registered workers.
    pub async fn wait_workers(&self, n: usize) {
        for _ in 0..600 {
            let out = Command::new("psql")
                .args([
                    &url(),
                    "-Atc",
                    &format!("SELECT count(*) FROM {}.workers", self.schema),
                ])
                .output();
            if let Ok(o) = out {
                if String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<usize>()
                    .unwrap_or(0)
                    >= n
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("workers did not register");
    }
}

/// A worker process, killed with its process group on drop.
pub struct WorkerProc {
    pub child: Child,
}

impl WorkerProc {
    /// SIGKILLs the worker and everything it started (a machine dying).
    pub fn kill_hard(&mut self) {
        let pg = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill_hard();
        }
    }
}

/// Lines of a file (empty when missing).
pub fn lines(path: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// How many times each line occurs.
pub fn counts(lines: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for l in lines {
        *m.entry(l.clone()).or_insert(0) += 1;
    }
    m
}

pub fn all(s: &RunStatus, state: TaskState) -> bool {
    s.tasks.iter().all(|t| t.state == state)
}
