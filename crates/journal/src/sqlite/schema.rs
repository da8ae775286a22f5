//! The journal's schema and its migrations.
//!
//! Invariants:
//! - The schema's version is SQLite's `PRAGMA user_version`; a file nerv created carries
//!   `PRAGMA application_id` = [`APPLICATION_ID`] ("nerv") from version 1 on.
//! - [`MIGRATIONS`] lists every step, in order, version `n` at index `n - 1`; a step is never
//!   edited once released, only new steps are appended (and [`SCHEMA_VERSION`] raised).
//! - Opening applies every pending step and the new `user_version` in ONE transaction: a crash
//!   midway leaves the file at its old version, unchanged.
//! - A file whose version is newer than [`SCHEMA_VERSION`] is refused before anything is
//!   written to it (not even the journal mode).

use crate::error::{JournalError, Result};
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;

/// `PRAGMA application_id` of a nerv journal: the bytes "nerv".
pub const APPLICATION_ID: i32 = 0x6E65_7276;

/// One step of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// The version the step brings the file to.
    pub version: u32,
    /// What it does, for people.
    pub description: &'static str,
    /// The SQL it runs (inside the migration transaction).
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "runs, tasks (latest state and output), history (every transition)",
        sql: "
            CREATE TABLE runs (
                id           INTEGER PRIMARY KEY AUTOINCREMENT,
                workflow     TEXT NOT NULL,
                name         TEXT NOT NULL,
                status       TEXT NOT NULL,
                started      INTEGER NOT NULL,
                finished     INTEGER,
                error        TEXT,
                resumed_from INTEGER
            );
            CREATE TABLE tasks (
                run      INTEGER NOT NULL,
                task     TEXT NOT NULL,
                deps     BLOB,
                status   TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                started  INTEGER,
                finished INTEGER,
                error    TEXT,
                output   BLOB,
                PRIMARY KEY (run, task)
            ) WITHOUT ROWID;
            CREATE TABLE history (
                run         INTEGER NOT NULL,
                batch       INTEGER NOT NULL,
                transitions BLOB NOT NULL,
                PRIMARY KEY (run, batch)
            );
        ",
    },
    Migration {
        version: 2,
        description: "durable memo cache; runs indexed by workflow and by the run they resume",
        sql: "
            CREATE TABLE memo (
                key       BLOB PRIMARY KEY,
                task      TEXT NOT NULL,
                value     BLOB NOT NULL,
                created   INTEGER NOT NULL,
                last_used INTEGER NOT NULL,
                expires   INTEGER
            );
            CREATE INDEX memo_task ON memo (task);
            CREATE INDEX memo_expires ON memo (expires) WHERE expires IS NOT NULL;
            CREATE INDEX runs_workflow ON runs (workflow, id);
            CREATE INDEX runs_resumed_from ON runs (resumed_from) WHERE resumed_from IS NOT NULL;
        ",
    },
    Migration {
        version: 3,
        description: "tasks keyed by an integer, (run << 32) | the task's number in its run, \
                      instead of (run, text id); history rows may be compact (task numbers)",
        sql: "
            CREATE TABLE tasks_v3 (
                id       INTEGER PRIMARY KEY,
                run      INTEGER NOT NULL,
                task     TEXT NOT NULL,
                deps     BLOB,
                status   TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                started  INTEGER,
                finished INTEGER,
                error    TEXT,
                output   BLOB
            );
            INSERT INTO tasks_v3
                (id, run, task, deps, status, attempts, started, finished, error, output)
                SELECT (run << 32) | (row_number() OVER (PARTITION BY run ORDER BY task) - 1),
                       run, task, deps, status, attempts, started, finished, error, output
                FROM tasks;
            DROP TABLE tasks;
            ALTER TABLE tasks_v3 RENAME TO tasks;
        ",
    },
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The version and application id of an open file; reading them writes nothing. Refuses a file
/// that is not a nerv journal or is newer than this build.
pub(crate) fn check(conn: &Connection, path: &Path) -> Result<u32> {
    let err = |e: rusqlite::Error| JournalError::sqlite(path, &e);
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(err)?;
    if app != 0 && app != APPLICATION_ID {
        return Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("a SQLite database of another application (application_id {app:#x})"),
        });
    }
    if version == 0 {
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(err)?;
        if objects > 0 {
            return Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                detail: "a SQLite database that nerv did not create".into(),
            });
        }
    }
    if version > SCHEMA_VERSION {
        return Err(JournalError::TooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(version)
}

/// Applies every pending migration in one transaction; returns the version found before.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<u32> {
    let err = |e: rusqlite::Error| JournalError::sqlite(path, &e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    // Read again inside the transaction: the version cannot change under us now.
    let found = check(&tx, path)?;
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        tx.execute_batch(m.sql).map_err(err)?;
    }
    if found < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(err)?;
    }
    tx.commit().map_err(err)?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.description);
        }
    }
}
