//! Memoized tasks: cache keys, the `memo` table shared by every worker, and its listing.
//!
//! Invariants:
//! 1. A key is MessagePack bytes, stable across processes, machines and builds (no
//!    `std::hash::Hasher`). Two recipes:
//!    - a **function** task registered with [`WorkerBuilder::register_memo`]: the key format's
//!      version, `"function"`, the function's name, the [`Memo`] version and its input (JSON
//!      with object keys sorted), as nerv's embedded memoization keys a task by its id, version
//!      and inputs;
//!    - a **command** task submitted with a [`CommandKey`] (workflow files' `cache = true`):
//!      the recipe of nerv's local cache, moved here so that the CLI's local runs and every
//!      worker compute the very same bytes: the key format's version ([`KEY_VERSION`]), the
//!      task's id, its command (shell line or program and arguments), its `env` (sorted), its
//!      working directory (canonical) and, for each of its `inputs`, the path relative to that
//!      directory and the SHA-256 of the file's contents (nothing for a missing file).
//! 2. A command's key is computed by the worker that claimed the task, after its dependencies
//!    succeeded, from the files as that worker sees them (inputs may be produced by upstream
//!    tasks), before the command runs.
//! 3. The cache is one table per schema, shared by every worker and every run. A hit (an entry
//!    whose `expires_at` is unset or in the future) completes the task without running it, in
//!    the same fenced transaction as any completion; a miss runs it and the entry is stored in
//!    the transaction that records its success (so a result the fence refused is never
//!    stored). Storing a key again replaces the entry.
//! 4. A lookup that fails (server unreachable) is a miss: the task runs, it is never failed
//!    because the cache could not be read.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::conn::ConnectOptions;
use crate::error::Result;

/// The version of the key formats: bumped when what goes into a key changes, so that old
/// entries are never hits.
pub const KEY_VERSION: u32 = 1;

/// How a registered function is memoized: a version (change it when the function's code
/// changes, to invalidate what earlier code computed) and a time to live (`None`: until
/// removed). The same settings as nerv's embedded `Memo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memo {
    pub(crate) version: String,
    pub(crate) ttl: Option<Duration>,
}

impl Memo {
    /// Memoized until removed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries expire `ttl` after they were stored.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The function's code version, part of the key.
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = v.into();
        self
    }
}

/// A cached command task (see [`TaskSpec::cache`](crate::TaskSpec::cache)): what its key is
/// made of, and how long an entry lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cache {
    /// What the key is made of.
    pub key: CommandKey,
    /// How long an entry stays valid; `None`: until removed.
    #[serde(default, with = "crate::model::opt_millis")]
    pub ttl: Option<Duration>,
}

/// A command as its cache key sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyCommand {
    /// A line run by a shell.
    Shell(String),
    /// A program and its arguments.
    Exec(Vec<String>),
}

/// What a command task's cache key is made of (see the module's invariants).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandKey {
    /// The task's id.
    pub task: String,
    /// Its command.
    pub command: KeyCommand,
    /// Its declared environment (not the one the worker inherits).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its working directory.
    pub cwd: PathBuf,
    /// Files whose contents are part of the key (joined to `cwd` when relative).
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
}

#[derive(Serialize)]
struct CommandKeyBytes<'a> {
    version: u32,
    task: &'a str,
    command: (&'static str, Vec<&'a str>),
    env: Vec<(&'a str, &'a str)>,
    cwd: String,
    inputs: Vec<(String, Option<Vec<u8>>)>,
}

impl CommandKey {
    /// The key's bytes, reading the inputs now. Fails, naming the file, when an input exists
    /// but cannot be read.
    pub fn compute(&self) -> std::result::Result<Vec<u8>, String> {
        let command = match &self.command {
            KeyCommand::Shell(s) => ("shell", vec![s.as_str()]),
            KeyCommand::Exec(argv) => ("exec", argv.iter().map(String::as_str).collect()),
        };
        let mut inputs = Vec::with_capacity(self.inputs.len());
        for p in &self.inputs {
            let path = self.cwd.join(p);
            let digest = file_digest(&path).map_err(|e| {
                format!(
                    "cannot read input {} of `{}`: {e}",
                    path.display(),
                    self.task
                )
            })?;
            // As written (relative to the working directory), so that the key does not depend
            // on how the workflow file was named on the command line.
            let shown = path.strip_prefix(&self.cwd).unwrap_or(&path);
            inputs.push((shown.display().to_string(), digest));
        }
        let k = CommandKeyBytes {
            version: KEY_VERSION,
            task: &self.task,
            command,
            env: self
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            cwd: self
                .cwd
                .canonicalize()
                .unwrap_or_else(|_| self.cwd.clone())
                .display()
                .to_string(),
            inputs,
        };
        rmp_serde::to_vec(&k)
            .map_err(|e| format!("cannot build the cache key of `{}`: {e}", self.task))
    }
}

/// The SHA-256 of a file's contents (`None` if it does not exist).
pub fn file_digest(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Some(h.finalize().to_vec()))
}

/// A key as short hex, for listings and events (the first 6 bytes of its SHA-256).
pub fn short_hex(key: &[u8]) -> String {
    Sha256::digest(key)[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// JSON with every object's keys sorted, so that equal values give equal key bytes whatever
/// order their keys were built in.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The key of a memoized function call (see the module's invariants).
pub(crate) fn function_key(name: &str, memo: &Memo, input: &Value) -> Vec<u8> {
    let input = serde_json::to_string(&canonical(input)).unwrap_or_default();
    rmp_serde::to_vec(&(KEY_VERSION, "function", name, memo.version.as_str(), input))
        .unwrap_or_default()
}

/// One entry of the cache, as listed by [`Engine::memo_entries`](crate::Engine::memo_entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoEntry {
    /// The key's bytes.
    pub key: Vec<u8>,
    /// The task that stored it (its id in its run).
    pub task: String,
    /// The stored output's size in bytes (as JSON text).
    pub size: u64,
    /// When it was stored.
    pub created: SystemTime,
    /// When it was last returned (or stored).
    pub last_used: SystemTime,
    /// When it expires, if ever.
    pub expires: Option<SystemTime>,
}

/// An entry to store with a successful completion.
#[derive(Debug, Clone)]
pub(crate) struct MemoPut {
    pub key: Vec<u8>,
    pub task: String,
    pub ttl_ms: Option<i64>,
}

/// The output stored under `key`, if live (and marks it used).
pub(crate) async fn lookup(
    opts: &ConnectOptions,
    client: &Client,
    key: &[u8],
) -> Result<Option<Value>> {
    let row = client
        .query_opt(
            "UPDATE memo SET last_used = now()
             WHERE key = $1 AND (expires_at IS NULL OR expires_at > now())
             RETURNING output",
            &[&key],
        )
        .await
        .map_err(opts.db("looking up the cache"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Every live entry, by task then creation.
pub(crate) async fn entries(opts: &ConnectOptions, client: &Client) -> Result<Vec<MemoEntry>> {
    let rows = client
        .query(
            "SELECT key, task, size, created_at, last_used, expires_at FROM memo
             WHERE expires_at IS NULL OR expires_at > now() ORDER BY task, created_at",
            &[],
        )
        .await
        .map_err(opts.db("listing the cache"))?;
    Ok(rows
        .iter()
        .map(|r| MemoEntry {
            key: r.get(0),
            task: r.get(1),
            size: r.get::<_, i64>(2).max(0) as u64,
            created: r.get(3),
            last_used: r.get(4),
            expires: r.get(5),
        })
        .collect())
}

/// Removes the entries of `tasks` (every entry when `None`), expired ones included; returns
/// how many.
pub(crate) async fn remove(
    opts: &ConnectOptions,
    client: &Client,
    tasks: Option<&[String]>,
) -> Result<u64> {
    let r = match tasks {
        Some(t) => {
            client
                .execute("DELETE FROM memo WHERE task = ANY($1)", &[&t])
                .await
        }
        None => client.execute("DELETE FROM memo", &[]).await,
    };
    r.map_err(opts.db("removing cache entries"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_keys_ignore_object_key_order_but_not_values() {
        let m = Memo::new().version("1");
        let a = function_key(
            "f",
            &m,
            &serde_json::json!({"a": 1, "b": [1, {"y": 2, "x": 1}]}),
        );
        let b: Value = serde_json::from_str(r#"{"b": [1, {"x": 1, "y": 2}], "a": 1}"#).unwrap();
        assert_eq!(a, function_key("f", &m, &b));
        assert_ne!(a, function_key("g", &m, &b));
        assert_ne!(a, function_key("f", &Memo::new().version("2"), &b));
        assert_ne!(a, function_key("f", &m, &serde_json::json!({"a": 2})));
    }

    #[test]
    fn command_keys_follow_input_contents() {
        let d = std::env::temp_dir().join(format!("nerv-pg-key-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let k = CommandKey {
            task: "t".into(),
            command: KeyCommand::Shell("cat in.txt".into()),
            env: BTreeMap::new(),
            cwd: d.clone(),
            inputs: vec!["in.txt".into()],
        };
        let missing = k.compute().unwrap();
        std::fs::write(d.join("in.txt"), "a").unwrap();
        let a = k.compute().unwrap();
        assert_ne!(missing, a);
        assert_eq!(a, k.compute().unwrap());
        // Relative and absolute spellings of the same input give the same key.
        let abs = CommandKey {
            inputs: vec![d.join("in.txt")],
            ..k.clone()
        };
        assert_eq!(a, abs.compute().unwrap());
        std::fs::write(d.join("in.txt"), "b").unwrap();
        assert_ne!(a, k.compute().unwrap());
        assert_eq!(short_hex(&a).len(), 12);
        let _ = std::fs::remove_dir_all(&d);
    }
}
