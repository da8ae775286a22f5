//! nerv's durable run journal: runs, task transitions and outputs in an embedded SQLite file
//! (bundled SQLite, WAL mode), written by a group-committing thread; and a durable memo cache.
//!
//! Invariants (each module states its own in detail):
//! - A record is durable once [`Journal::committed`] reaches its sequence number, or once a
//!   [`Journal::flush`] issued after it returned `Ok`; never before.
//! - Completion is recorded exactly once per task per run; a duplicate is ignored.
//! - One process writes a journal at a time (an OS lock on `<journal>.lock` naming the
//!   holder); a lock left by a dead process is taken over.
//! - The schema is versioned ([`SCHEMA_VERSION`], [`MIGRATIONS`]): an older file is upgraded
//!   in one transaction when opened; a newer one is refused and left untouched.
//! - Every error names the file it is about and says what to do ([`JournalError`]).
//!
//! Modules, one concept each: `record` (the plain types stored), `store` (the [`JournalStore`]
//! trait any backend implements), `sqlite` ([`SqliteStore`] and its schema), `writer`
//! ([`Journal`], group commit), `memo` ([`SqliteMemo`], a durable [`nerv::MemoStore`]),
//! `lock` (the writer lock), `error`.
//!
//! ```
//! use nerv_journal::{Journal, JournalStore, RunStart, TaskRecord, TaskSpec, TaskStatus};
//! use std::time::SystemTime;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let journal = Journal::open_in(dir.path()).unwrap();
//! let now = SystemTime::now();
//! let run = journal
//!     .begin_run(&RunStart {
//!         workflow: "etl".into(),
//!         name: "nightly".into(),
//!         tasks: vec![TaskSpec::new("load", Vec::<String>::new())],
//!         started: now,
//!         resumed_from: None,
//!     })
//!     .unwrap();
//! journal.submit(TaskRecord::new(run, "load", TaskStatus::Running, 1, now));
//! journal.submit(TaskRecord::new(run, "load", TaskStatus::Completed, 1, now).output(vec![7]));
//! journal.flush().unwrap(); // durable from here on
//! let outputs = journal.store().completed_outputs(run).unwrap();
//! assert_eq!(outputs, vec![("load".to_string(), Some(vec![7]))]);
//! ```

#![forbid(unsafe_code)]

mod bridge;
mod error;
mod lock;
mod memo;
mod record;
mod sqlite;
mod store;
mod writer;

pub use bridge::{restore_of, resume_options, Recorder};
pub use error::{JournalError, LockOwner, Result};
pub use memo::SqliteMemo;
pub use record::{
    DeclareRecord, Record, RunId, RunRecord, RunStart, RunStatus, RunSummary, TaskCounts,
    TaskRecord, TaskSpec, TaskStatus, TaskSummary, UnknownStatus,
};
pub use sqlite::schema::{Migration, APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION};
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous, DEFAULT_FILE_NAME};
pub use store::JournalStore;
pub use writer::{Journal, JournalBuilder, OnCommit};
