//! Where a run's files go: the one place that decides the on-disk layout, so that the
//! commands that read runs back (`nerv logs`, `nerv runs`, a journal) agree with `nerv run`.
//!
//! ```text
//! <workflow file's folder>/.nerv/            (with a .gitignore of `*`)
//!     runs/<run-id>/logs/<task>.log          stdout and stderr of every attempt of <task>
//!                                            (created at its first output)
//! ```
//!
//! Run ids sort by start time: `20261129T022437Z-4f2a` (UTC start, then four hex digits of
//! the process id and clock so that two runs started in the same second differ).

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The folder of nerv's state for workflows in `base_dir`.
pub fn state_dir(base_dir: &Path) -> PathBuf {
    base_dir.join(".nerv")
}

/// A fresh run id, sortable by start time.
pub fn new_run_id() -> String {
    let now = SystemTime::now();
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let compact: String = stamp.chars().filter(|c| *c != '-' && *c != ':').collect();
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let salt = (std::process::id() ^ nanos) & 0xffff;
    format!("{compact}-{salt:04x}")
}

/// The files of one run.
#[derive(Debug, Clone)]
pub struct RunLayout {
    /// The run's id.
    pub run_id: String,
    /// `.nerv/runs/<run-id>`.
    pub run_dir: PathBuf,
    /// `.nerv/runs/<run-id>/logs`.
    pub logs_dir: PathBuf,
    names: HashMap<String, String>,
}

impl RunLayout {
    /// The layout of run `run_id` of a workflow in `base_dir`, with a log file name for each
    /// of `task_ids` (ids are made file-safe: `compress[a]` logs to `compress.a.log`; when two
    /// ids give the same name, the later in sorted order gets `~2`, so the names depend only
    /// on the set of ids, whatever their order: `nerv logs` rebuilds them from the journal).
    pub fn new<'a>(
        base_dir: &Path,
        run_id: &str,
        task_ids: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let run_dir = state_dir(base_dir).join("runs").join(run_id);
        let logs_dir = run_dir.join("logs");
        let mut used = HashSet::new();
        let mut names = HashMap::new();
        let mut ids: Vec<&str> = task_ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let base = file_safe(id);
            let mut name = base.clone();
            let mut n = 1;
            while !used.insert(name.clone()) {
                n += 1;
                name = format!("{base}~{n}");
            }
            names.insert(id.to_owned(), name);
        }
        RunLayout {
            run_id: run_id.to_owned(),
            run_dir,
            logs_dir,
            names,
        }
    }

    /// Creates the run's folders (and `.nerv/.gitignore`).
    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.logs_dir)?;
        if let Some(state) = self.run_dir.parent().and_then(Path::parent) {
            let ignore = state.join(".gitignore");
            if !ignore.exists() {
                std::fs::write(ignore, "*\n")?;
            }
        }
        Ok(())
    }

    /// The folder of run `run_id` of the workflows whose state folder is `state_dir`.
    pub fn run_dir_in(state_dir: &Path, run_id: &str) -> PathBuf {
        state_dir.join("runs").join(run_id)
    }

    /// The log file of task `id`.
    pub fn log_file(&self, id: &str) -> PathBuf {
        let name = self.names.get(id).cloned().unwrap_or_else(|| file_safe(id));
        self.logs_dir.join(format!("{name}.log"))
    }
}

/// `compress[a b]` → `compress.a_b`.
fn file_safe(id: &str) -> String {
    let mut s = String::with_capacity(id.len());
    for c in id.chars() {
        match c {
            '[' => s.push('.'),
            ']' => {}
            c if c.is_ascii_alphanumeric() || "._-".contains(c) => s.push(c),
            _ => s.push('_'),
        }
    }
    if s.is_empty() || s.starts_with('.') {
        s.insert(0, '_');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_names_are_safe_and_unique() {
        let l = RunLayout::new(Path::new("/w"), "r1", ["compress[a]", "compress.a", "x/y"]);
        assert_eq!(
            l.log_file("compress[a]"),
            Path::new("/w/.nerv/runs/r1/logs/compress.a~2.log")
        );
        assert_eq!(
            l.log_file("compress.a"),
            Path::new("/w/.nerv/runs/r1/logs/compress.a.log")
        );
        assert_eq!(
            l.log_file("x/y"),
            Path::new("/w/.nerv/runs/r1/logs/x_y.log")
        );
        assert!(new_run_id().len() > 16);
    }
}
