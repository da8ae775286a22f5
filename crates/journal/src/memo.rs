//! [`SqliteMemo`]: nerv's memo cache ([`nerv::MemoStore`]) kept in a journal's SQLite file, so
//! that a hit survives a restart.
//!
//! Invariants:
//! - Entries live in the journal's `memo` table (schema version 2): key, task, value, created,
//!   last used, expiry. The store holds bytes only (nerv serializes values with MessagePack).
//! - An entry is returned only before its expiry; an expired entry met by `get` or `entries`
//!   is deleted then (and `purge_expired` deletes them all).
//! - The memo has its own connection (its own mutex), so cache lookups never wait for the
//!   journal's group commits in this process. It shares the journal's writer lock.
//! - Its connection runs with `synchronous = NORMAL` whatever the journal's setting: a cache
//!   entry lost to a power cut costs a recomputation, never a wrong answer, and a hit (which
//!   updates `last_used`) must not pay a disk sync.
//! - [`nerv::MemoStore`] has no error channel: a failing operation behaves as a miss (or as
//!   "nothing removed"), and its error is kept for [`SqliteMemo::take_error`]; the `try_`
//!   methods return it instead.

use crate::error::{JournalError, Result};
use crate::lock::WriterLock;
use crate::sqlite::{connect, from_ns, schema, to_ns, SqliteOptions, Synchronous};
use nerv::{MemoEntry, MemoStore};
use rusqlite::{params, Connection, OptionalExtension};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// A durable memo store in a journal's SQLite file. See the module's invariants.
pub struct SqliteMemo {
    path: PathBuf,
    _lock: Arc<WriterLock>,
    conn: Mutex<Connection>,
    error: Mutex<Option<JournalError>>,
}

impl fmt::Debug for SqliteMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteMemo")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteMemo {
    /// Opens (creating or upgrading) the journal at `path` for its memo table alone, taking
    /// its writer lock. To use a memo beside a journal, take [`SqliteStore::memo`] instead.
    ///
    /// [`SqliteStore::memo`]: crate::SqliteStore::memo
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteMemo> {
        let path = path.as_ref().to_path_buf();
        if let Some(denied) = crate::sqlite::unwritable(&path) {
            return Err(JournalError::PermissionDenied {
                detail: format!("needed by journal {}", path.display()),
                path: denied,
            });
        }
        let lock = Arc::new(WriterLock::acquire(&path)?);
        let mut conn = connect(&path, &memo_options(), false)?;
        schema::migrate(&mut conn, &path)?;
        Ok(SqliteMemo::from_parts(path, lock, conn))
    }

    pub(crate) fn from_parts(path: PathBuf, lock: Arc<WriterLock>, conn: Connection) -> Self {
        let _ = conn.pragma_update(None, "synchronous", Synchronous::Normal.pragma_name());
        SqliteMemo {
            path,
            _lock: lock,
            conn: Mutex::new(conn),
            error: Mutex::new(None),
        }
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, e: rusqlite::Error) -> JournalError {
        JournalError::sqlite(&self.path, &e)
    }

    fn keep<T>(&self, r: Result<T>, fallback: T) -> T {
        r.unwrap_or_else(|e| {
            *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            fallback
        })
    }

    /// The last error an infallible [`MemoStore`] method met, if any (taking it).
    pub fn take_error(&self) -> Option<JournalError> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// [`MemoStore::get`], with its error.
    pub fn try_get(&self, key: &[u8], now: SystemTime) -> Result<Option<Vec<u8>>> {
        let conn = self.conn();
        let row: Option<(Vec<u8>, Option<i64>)> = conn
            .prepare_cached("SELECT value, expires FROM memo WHERE key = ?1")
            .and_then(|mut s| {
                s.query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        let now = to_ns(now);
        match row {
            Some((value, expires)) if expires.is_none_or(|e| now < e) => {
                // Best effort: a hit stays a hit if its last use cannot be written (a full
                // disk); the error is kept for `take_error`.
                let touched = conn
                    .prepare_cached("UPDATE memo SET last_used = ?2 WHERE key = ?1")
                    .and_then(|mut s| s.execute(params![key, now]));
                if let Err(e) = touched {
                    let e = self.err(e);
                    *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
                Ok(Some(value))
            }
            Some(_) => {
                conn.prepare_cached("DELETE FROM memo WHERE key = ?1")
                    .and_then(|mut s| s.execute(params![key]))
                    .map_err(|e| self.err(e))?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// [`MemoStore::put`], with its error.
    pub fn try_put(
        &self,
        key: &[u8],
        task: &str,
        value: &[u8],
        now: SystemTime,
        expires: Option<SystemTime>,
    ) -> Result<()> {
        let now = to_ns(now);
        self.conn()
            .prepare_cached(
                "INSERT INTO memo (key, task, value, created, last_used, expires) \
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5) \
                 ON CONFLICT (key) DO UPDATE SET task = excluded.task, value = excluded.value, \
                   created = excluded.created, last_used = excluded.last_used, \
                   expires = excluded.expires",
            )
            .and_then(|mut s| s.execute(params![key, task, value, now, expires.map(to_ns)]))
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Deletes every entry expired at `now`; returns how many.
    pub fn purge_expired(&self, now: SystemTime) -> Result<usize> {
        self.conn()
            .prepare_cached("DELETE FROM memo WHERE expires IS NOT NULL AND expires <= ?1")
            .and_then(|mut s| s.execute(params![to_ns(now)]))
            .map_err(|e| self.err(e))
    }

    /// [`MemoStore::entries`], with its error (expired entries are deleted first).
    pub fn try_entries(&self, now: SystemTime) -> Result<Vec<MemoEntry>> {
        self.purge_expired(now)?;
        entries_on(&self.conn(), &self.path, now)
    }

    /// [`MemoStore::remove`], with its error.
    pub fn try_remove(&self, key: &[u8]) -> Result<bool> {
        self.conn()
            .execute("DELETE FROM memo WHERE key = ?1", params![key])
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    /// [`MemoStore::remove_task`], with its error.
    pub fn try_remove_task(&self, task: &str) -> Result<usize> {
        self.conn()
            .execute("DELETE FROM memo WHERE task = ?1", params![task])
            .map_err(|e| self.err(e))
    }

    /// [`MemoStore::clear`], with its error.
    pub fn try_clear(&self) -> Result<usize> {
        self.conn()
            .execute("DELETE FROM memo", [])
            .map_err(|e| self.err(e))
    }
}

fn memo_options() -> SqliteOptions {
    SqliteOptions::default().synchronous(Synchronous::Normal)
}

impl MemoStore for SqliteMemo {
    fn get(&self, key: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        let r = self.try_get(key, now);
        self.keep(r, None)
    }

    fn put(
        &self,
        key: &[u8],
        task: &str,
        value: Vec<u8>,
        now: SystemTime,
        expires: Option<SystemTime>,
    ) {
        let r = self.try_put(key, task, &value, now, expires);
        self.keep(r, ());
    }

    fn entries(&self, now: SystemTime) -> Vec<MemoEntry> {
        let r = self.try_entries(now);
        self.keep(r, Vec::new())
    }

    fn remove(&self, key: &[u8]) -> bool {
        let r = self.try_remove(key);
        self.keep(r, false)
    }

    fn remove_task(&self, task: &str) -> usize {
        let r = self.try_remove_task(task);
        self.keep(r, 0)
    }

    fn clear(&self) {
        let r = self.try_clear();
        self.keep(r, 0);
    }
}

/// The memo entries not expired at `now`, read on `conn` (a read-only connection will do:
/// nothing is purged), oldest first.
pub(crate) fn entries_on(
    conn: &Connection,
    path: &Path,
    now: SystemTime,
) -> Result<Vec<MemoEntry>> {
    let err = |e: rusqlite::Error| JournalError::sqlite(path, &e);
    let mut stmt = conn
        .prepare_cached(
            "SELECT key, task, length(value), created, last_used, expires FROM memo \
             WHERE expires IS NULL OR expires > ?1 ORDER BY created, key",
        )
        .map_err(err)?;
    let rows = stmt
        .query_map([crate::sqlite::to_ns(now)], |r| {
            Ok(MemoEntry {
                key: r.get(0)?,
                task: r.get(1)?,
                size: r.get::<_, i64>(2)? as usize,
                created: from_ns(r.get(3)?),
                last_used: from_ns(r.get(4)?),
                expires: r.get::<_, Option<i64>>(5)?.map(from_ns),
            })
        })
        .map_err(err)?;
    rows.collect::<rusqlite::Result<_>>().map_err(err)
}
