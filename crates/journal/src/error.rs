//! The journal's errors: each names the file and says what the user can do.
//!
//! Invariants:
//! - Every variant carries the path of the journal (or of its lock file) it is about, and its
//!   message names it.
//! - Errors are `Clone`: the writer thread keeps the error of a failed commit and hands a copy
//!   to every `flush` waiting on it. The underlying SQLite or I/O error is kept as text.
//! - The predicates (`is_locked`, `is_disk_full`, ...) are the stable way to branch on an error;
//!   the enum is `#[non_exhaustive]`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Who holds a journal's lock, as written in its lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOwner {
    /// The owner's process id.
    pub pid: u32,
    /// The owner's host name.
    pub host: String,
    /// When the owner took the lock.
    pub since: Option<SystemTime>,
}

impl fmt::Display for LockOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process {} on host {}", self.pid, self.host)?;
        if let Some(since) = self.since {
            match SystemTime::now().duration_since(since) {
                Ok(d) => write!(f, ", holding it for {} s", d.as_secs())?,
                Err(_) => write!(f, ", holding it since a time in the future")?,
            }
        }
        Ok(())
    }
}

/// Formats the owner of a lock, or says it is unknown.
struct OwnerText<'a>(&'a Option<LockOwner>);

impl fmt::Display for OwnerText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(o) => o.fmt(f),
            None => f.write_str("another process (its lock file names no owner)"),
        }
    }
}

/// An error of the journal or of its memo store.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// Another live process has the journal open for writing.
    #[error(
        "journal {} is locked by {}: one process writes a journal at a time; wait for it to \
         finish or stop it (lock file {})",
        path.display(), OwnerText(owner), lock_file.display()
    )]
    Locked {
        /// The journal's database file.
        path: PathBuf,
        /// Its lock file.
        lock_file: PathBuf,
        /// The owner named in the lock file, if it could be read.
        owner: Option<LockOwner>,
    },
    /// The disk (or the journal's configured size limit) is full.
    #[error(
        "disk full writing journal {}: free some space (or raise its size limit, if one is set) \
         or delete old runs, then retry \
         ({detail})",
        path.display()
    )]
    DiskFull {
        /// The journal's database file.
        path: PathBuf,
        /// SQLite's message.
        detail: String,
    },
    /// The file is damaged or is not a nerv journal.
    #[error(
        "journal {} is corrupt or is not a nerv journal ({detail}): move it aside (for example \
         `mv {0} {0}.corrupt`) and start again; the runs recorded in it are lost",
        path.display()
    )]
    Corrupt {
        /// The journal's database file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The file or its directory cannot be written by this process.
    #[error(
        "permission denied writing {}: make the journal file and its directory writable by this \
         user, or choose another journal path ({detail})",
        path.display()
    )]
    PermissionDenied {
        /// The file or directory that could not be written.
        path: PathBuf,
        /// The operating system's or SQLite's message.
        detail: String,
    },
    /// The journal was written by a newer nerv; it was not modified.
    #[error(
        "journal {} has schema version {found}, newer than the version {supported} this build of \
         nerv supports: upgrade nerv, or use another journal path (the file was not modified)",
        path.display()
    )]
    TooNew {
        /// The journal's database file.
        path: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// SQLite stayed busy (another connection, maybe not nerv's, holds a lock) past the timeout.
    #[error("journal {} is busy (locked by another connection) past the timeout: {detail}", path.display())]
    Busy {
        /// The journal's database file.
        path: PathBuf,
        /// SQLite's message.
        detail: String,
    },
    /// The journal's writer thread has stopped (it panicked); nothing more will be committed.
    #[error("the writer thread of journal {} stopped: {detail}", path.display())]
    WriterStopped {
        /// The journal's database file.
        path: PathBuf,
        /// What is known of why.
        detail: String,
    },
    /// Any other SQLite error.
    #[error("journal {}: {detail}", path.display())]
    Sqlite {
        /// The journal's database file.
        path: PathBuf,
        /// SQLite's message.
        detail: String,
    },
    /// Any other I/O error.
    #[error("journal {}: {detail}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The operating system's message.
        detail: String,
    },
}

impl JournalError {
    /// Another live process holds the journal.
    pub fn is_locked(&self) -> bool {
        matches!(self, JournalError::Locked { .. })
    }

    /// The disk or the journal's size limit is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, JournalError::DiskFull { .. })
    }

    /// The file is damaged or not a journal.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, JournalError::Corrupt { .. })
    }

    /// The file or its directory is not writable.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, JournalError::PermissionDenied { .. })
    }

    /// The file was written by a newer nerv.
    pub fn is_too_new(&self) -> bool {
        matches!(self, JournalError::TooNew { .. })
    }

    /// SQLite stayed busy past the timeout.
    pub fn is_busy(&self) -> bool {
        matches!(self, JournalError::Busy { .. })
    }

    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            JournalError::Locked { path, .. }
            | JournalError::DiskFull { path, .. }
            | JournalError::Corrupt { path, .. }
            | JournalError::PermissionDenied { path, .. }
            | JournalError::TooNew { path, .. }
            | JournalError::Busy { path, .. }
            | JournalError::WriterStopped { path, .. }
            | JournalError::Sqlite { path, .. }
            | JournalError::Io { path, .. } => path,
        }
    }

    /// Classifies an I/O error on `path`.
    pub(crate) fn io(path: &Path, e: &std::io::Error) -> Self {
        let path = path.to_path_buf();
        let detail = e.to_string();
        match e.kind() {
            std::io::ErrorKind::PermissionDenied => JournalError::PermissionDenied { path, detail },
            // ENOSPC on Linux (`ErrorKind::StorageFull` is newer than our MSRV).
            _ if cfg!(target_os = "linux") && e.raw_os_error() == Some(28) => {
                JournalError::DiskFull { path, detail }
            }
            _ => JournalError::Io { path, detail },
        }
    }

    /// Classifies a SQLite error on the journal at `path`.
    pub(crate) fn sqlite(path: &Path, e: &rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        let detail = e.to_string();
        let code = match e {
            rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
            _ => None,
        };
        let path_buf = path.to_path_buf();
        match code {
            Some(C::DiskFull) => JournalError::DiskFull {
                path: path_buf,
                detail,
            },
            Some(C::DatabaseCorrupt | C::NotADatabase) => JournalError::Corrupt {
                path: path_buf,
                detail,
            },
            Some(C::DatabaseBusy | C::DatabaseLocked) => JournalError::Busy {
                path: path_buf,
                detail,
            },
            Some(C::PermissionDenied | C::ReadOnly | C::CannotOpen) => {
                match crate::sqlite::unwritable(path) {
                    Some(denied) => JournalError::PermissionDenied {
                        path: denied,
                        detail,
                    },
                    None => JournalError::Sqlite {
                        path: path_buf,
                        detail,
                    },
                }
            }
            _ => JournalError::Sqlite {
                path: path_buf,
                detail,
            },
        }
    }
}

/// The journal's result type.
pub type Result<T, E = JournalError> = std::result::Result<T, E>;
