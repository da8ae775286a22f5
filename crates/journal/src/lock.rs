//! The journal's writer lock: one process at a time writes a journal.
//!
//! Invariants:
//! - The lock is an OS advisory lock (`flock` on Unix, `LockFileEx` on Windows) on a sidecar
//!   file `<journal>.lock`, held for as long as the [`WriterLock`] lives. The OS releases it
//!   when its holder dies, however it dies (kill -9 included): a stale lock file left by a dead
//!   process is simply taken over, and its contents rewritten.
//! - The lock file's contents name the holder (`pid`, `host`, `since`) so that a process that
//!   finds the journal locked can say who holds it. The contents are informative only; the OS
//!   lock decides.
//! - `flock` locks belong to an open file, not a process: opening the same journal twice in one
//!   process fails too, as it must (two writers would interleave their runs' ids).
//!
//! Protocol, in `acquire`:
//! 1. open (creating) the lock file without truncating it;
//! 2. try the exclusive lock without waiting; if it is held, read the owner and fail with
//!    `Locked`;
//! 3. truncate the file and write this process's owner lines.

use crate::error::{JournalError, LockOwner, Result};
use fs4::fs_std::FileExt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The held writer lock of a journal (released when dropped).
#[derive(Debug)]
pub(crate) struct WriterLock {
    _file: File,
}

impl WriterLock {
    /// The lock file beside the journal `db`.
    pub(crate) fn path_for(db: &Path) -> PathBuf {
        let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".lock");
        db.with_file_name(name)
    }

    /// Takes the writer lock of the journal `db` (see the module's protocol).
    pub(crate) fn acquire(db: &Path) -> Result<WriterLock> {
        let path = Self::path_for(db);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| JournalError::io(&path, &e))?;
        let locked = FileExt::try_lock_exclusive(&file).map_err(|e| JournalError::io(&path, &e))?;
        if !locked {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(JournalError::Locked {
                path: db.to_path_buf(),
                lock_file: path,
                owner: parse_owner(&text),
            });
        }
        let me = LockOwner {
            pid: std::process::id(),
            host: hostname(),
            since: Some(SystemTime::now()),
        };
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(format_owner(&me).as_bytes())?;
            file.flush()
        };
        write(&mut file).map_err(|e| JournalError::io(&path, &e))?;
        Ok(WriterLock { _file: file })
    }
}

/// The lock file's contents for `owner`.
pub(crate) fn format_owner(owner: &LockOwner) -> String {
    let since = owner
        .since
        .and_then(|s| s.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("pid={}\nhost={}\nsince={}\n", owner.pid, owner.host, since)
}

/// Reads an owner from a lock file's contents (`None` if it names no pid).
pub(crate) fn parse_owner(text: &str) -> Option<LockOwner> {
    let mut pid = None;
    let mut host = String::from("unknown");
    let mut since = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("pid", v)) => pid = v.trim().parse().ok(),
            Some(("host", v)) => host = v.trim().to_string(),
            Some(("since", v)) => {
                since = v
                    .trim()
                    .parse()
                    .ok()
                    .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
            }
            _ => {}
        }
    }
    pid.map(|pid| LockOwner { pid, host, since })
}

/// This machine's name, best effort.
pub(crate) fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_round_trips() {
        let o = LockOwner {
            pid: 42,
            host: "h".into(),
            since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(7)),
        };
        assert_eq!(parse_owner(&format_owner(&o)), Some(o));
        assert_eq!(parse_owner("garbage"), None);
    }
}
