//! Running one attempt of a task as an operating-system process, and making sure that no
//! process outlives its task.
//!
//! Protocol:
//! 1. Each attempt's command starts in a new process group (`process_group(0)`: its pgid is
//!    its pid), with stdin from /dev/null and stdout and stderr on one pipe, which a copier
//!    task appends to the task's log (see [`copy_to_log`]: the file is created at the first
//!    byte, so a task that prints nothing costs no file).
//! 2. The group is registered with the [`Reaper`] before anything can cancel the attempt.
//! 3. When the command exits, any process it left behind in its group gets the same
//!    treatment as in step 4 (tasks do not leave daemons behind).
//! 4. When the attempt's future is dropped before the command exited (the task timed out,
//!    the run was cancelled, fail-fast), the guard sends SIGTERM to the group and hands the
//!    child to a reaper task: it waits up to the grace period for the group to end, then
//!    sends SIGKILL, reaps the child and unregisters the group.
//! 5. [`Reaper::wait_idle`] returns when no group is registered: `nerv run` calls it before
//!    printing its summary, so that it never exits with children still running.

use nerv::TaskError;
use nerv_cli::workflow::TaskSpec;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe::{pipe, Receiver};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// Tracks the live process groups of a run and ends them.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<ReaperInner>,
}

struct ReaperInner {
    live: Mutex<HashSet<i32>>,
    idle: Notify,
    grace: Duration,
}

impl Reaper {
    /// A reaper that waits `grace` between SIGTERM and SIGKILL.
    pub fn new(grace: Duration) -> Self {
        Reaper {
            inner: Arc::new(ReaperInner {
                live: Mutex::new(HashSet::new()),
                idle: Notify::new(),
                grace,
            }),
        }
    }

    fn add(&self, pgid: i32) {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pgid);
    }

    fn remove(&self, pgid: i32) {
        let mut live = self.inner.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&pgid);
        if live.is_empty() {
            self.inner.idle.notify_waiters();
        }
    }

    /// Number of process groups still alive (or not yet reaped).
    pub fn live(&self) -> usize {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Sends SIGKILL to every live group now (a second Ctrl-C).
    pub fn kill_all(&self) {
        for &g in self
            .inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
        }
    }

    /// Waits until every registered group has ended.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.live() == 0 {
                return;
            }
            // Also re-check periodically: a notification may race with registration.
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }
}

/// Whether any process of group `pgid` still exists.
fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok()
}

/// Ends group `pgid` whose leader is `child`: SIGTERM (unless `term_sent`), up to `grace`
/// for the leader and the rest of the group to exit, then SIGKILL; reaps the leader.
async fn terminate(mut child: Option<Child>, pgid: i32, reaper: Reaper, term_sent: bool) {
    if !term_sent {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    }
    let grace = reaper.inner.grace;
    let deadline = tokio::time::Instant::now() + grace;
    if let Some(c) = child.as_mut() {
        let _ = tokio::time::timeout_at(deadline, c.wait()).await;
    }
    while group_alive(pgid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if group_alive(pgid) {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    if let Some(mut c) = child {
        let _ = c.wait().await;
    }
    reaper.remove(pgid);
}

/// Owns a running command's process group until it ended; dropping it early terminates the
/// group (step 4 of the protocol).
struct GroupGuard {
    child: Option<Child>,
    pgid: i32,
    reaper: Reaper,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGTERM);
        let (pgid, reaper) = (self.pgid, self.reaper.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(terminate(Some(child), pgid, reaper, true));
            }
            Err(_) => {
                // No runtime (shutting down): no grace period.
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                reaper.remove(pgid);
            }
        }
    }
}

/// What one attempt needs besides its task.
pub struct Attempt {
    /// The run's id (in `NERV_RUN_ID`).
    pub run_id: Arc<str>,
    /// The task's log file.
    pub log: PathBuf,
    /// Which attempt, from 1.
    pub attempt: u32,
}

/// How long an attempt waits, once its command exited, for the rest of its output (the end
/// of the pipe): anything written later (by a process that left the group and kept the
/// pipe) is still appended to the log by the copier, in the background.
const DRAIN: Duration = Duration::from_millis(200);

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Appends everything read from `rx` (the command's stdout and stderr) to the log file
/// `path`, until every writer closed the pipe. The file is opened (created) at the first
/// byte, unless `log` is already open: creating one empty file per silent task was most of
/// nerv's own system time on graphs of small commands (see benches/cli_vs_make.sh).
async fn copy_to_log(mut rx: Receiver, path: PathBuf, mut log: Option<File>) {
    let mut buf = [0u8; 8192];
    let mut failed = false;
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("cannot read the output for log {}: {e}", path.display());
                return;
            }
        };
        if log.is_none() && !failed {
            match open_log(&path) {
                Ok(f) => log = Some(f),
                Err(e) => {
                    // Keep draining, so that the command is not blocked on a full pipe.
                    failed = true;
                    tracing::error!("cannot open log {}: {e}", path.display());
                }
            }
        }
        if let Some(f) = log.as_mut() {
            if let Err(e) = f.write_all(&buf[..n]) {
                tracing::error!("cannot write log {}: {e}", path.display());
                log = None;
                failed = true;
            }
        }
    }
}

/// Where `program` is on `path` (the command's PATH), found once per run by nerv rather than
/// by every child: a child looking it up itself tries `execve` in each PATH entry in turn,
/// all but one failing (8 failed calls per command with a PATH of 9 entries). `None`:
/// leave the search to the child (a name with a `/`, no PATH, a relative PATH entry, not
/// found). A cached answer is checked again (one `stat`) before it is used.
fn resolve(program: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    type Cache = Mutex<HashMap<(String, OsString), PathBuf>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    if program.is_empty() || program.contains('/') {
        return None;
    }
    let path = path
        .map(OsStr::to_os_string)
        .or_else(|| std::env::var_os("PATH"))?;
    let key = (program.to_owned(), path);
    let cache = CACHE.get_or_init(Cache::default);
    let hit = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned();
    if let Some(p) = hit.filter(|p| is_executable(p)) {
        return Some(p);
    }
    let dirs: Vec<PathBuf> = std::env::split_paths(&key.1).collect();
    if dirs.iter().any(|d| !d.is_absolute()) {
        return None; // "" or "." or "bin": relative to the command's cwd
    }
    let found = dirs
        .iter()
        .map(|d| d.join(program))
        .find(|p| is_executable(p))?;
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, found.clone());
    Some(found)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs one attempt of `spec`: Ok if the command exited 0.
pub async fn run_attempt(spec: &TaskSpec, a: Attempt, reaper: &Reaper) -> Result<(), TaskError> {
    let io_err = |what: &str, e: std::io::Error| TaskError::msg(format!("{what}: {e}"));
    // A later attempt writes its header now (the file exists from the first attempt, or is
    // created here); the first attempt's file is created at its first byte of output.
    let log = if a.attempt > 1 {
        let mut f = open_log(&a.log)
            .map_err(|e| io_err(&format!("cannot open log {}", a.log.display()), e))?;
        let _ = writeln!(f, "--- nerv: attempt {} ---", a.attempt);
        Some(f)
    } else {
        None
    };
    // One pipe for stdout and stderr (their relative order is kept, as with one file). Both
    // ends are close-on-exec: the child gets its own copies as fds 1 and 2, so no other
    // command spawned meanwhile holds the write end (which would delay the end of output).
    let (tx, rx) = pipe().map_err(|e| io_err("cannot create a pipe", e))?;
    let out = tx
        .into_blocking_fd()
        .map_err(|e| io_err("cannot create a pipe", e))?;
    let err = out
        .try_clone()
        .map_err(|e| io_err("cannot share a pipe", e))?;
    let (program, args): (String, Vec<String>) = match spec.command.direct_argv() {
        Some(mut argv) => {
            let p = argv.remove(0);
            (p, argv)
        }
        None => ("sh".into(), vec!["-c".into(), spec.command.display_line()]),
    };
    // The program's path found by nerv (the child still sees `program` as its argv[0]).
    let mut cmd = match resolve(&program, spec.env.get("PATH").map(OsStr::new)) {
        Some(path) => {
            let mut c = Command::new(path);
            c.arg0(&program);
            c
        }
        None => Command::new(&program),
    };
    cmd.args(&args)
        .current_dir(&spec.cwd)
        .envs(&spec.env)
        .env("NERV_TASK", &spec.id)
        .env("NERV_RUN_ID", &*a.run_id)
        .env("NERV_ATTEMPT", a.attempt.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0);
    if let Some(item) = &spec.item {
        cmd.env("NERV_ITEM", item);
    }
    let child = cmd.spawn().map_err(|e| {
        let wd = if spec.cwd.is_dir() {
            String::new()
        } else {
            format!(" (working directory {} does not exist)", spec.cwd.display())
        };
        TaskError::msg(format!("cannot run `{program}`: {e}{wd}"))
    })?;
    // The command keeps the parent's copies of the write end until it is dropped: without
    // them, the pipe ends when the command (and whatever it started) closed its own.
    drop(cmd);
    let mut copier = tokio::spawn(copy_to_log(rx, a.log.clone(), log));
    // Never 0 (that would signal nerv's own group): the child was not waited for yet.
    let pgid = match child.id().and_then(|p| i32::try_from(p).ok()) {
        Some(p) if p > 0 => p,
        _ => return Err(TaskError::msg("the command exited before nerv saw its pid")),
    };
    reaper.add(pgid);
    let mut guard = GroupGuard {
        child: Some(child),
        pgid,
        reaper: reaper.clone(),
    };
    let status = guard
        .child
        .as_mut()
        .expect("child present until the guard is disarmed")
        .wait()
        .await;
    // The leader exited: disarm, and end whatever it left behind in its group.
    let child = guard.child.take();
    drop(guard);
    if group_alive(pgid) {
        tokio::spawn(terminate(child, pgid, reaper.clone(), false));
    } else {
        reaper.remove(pgid);
    }
    // The log is complete (for the summary's last lines) when the pipe has ended; a process
    // that outlived its group and kept the pipe does not hold the task up.
    let _ = tokio::time::timeout(DRAIN, &mut copier).await;
    let status = status.map_err(|e| io_err("waiting for the command", e))?;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(c), _) => Err(TaskError::msg(format!("exit code {c}"))),
        (None, Some(s)) => {
            let name = Signal::try_from(s)
                .map_or_else(|_| format!("signal {s}"), |s| s.as_str().to_owned());
            Err(TaskError::msg(format!("killed by {name}")))
        }
        (None, None) => Err(TaskError::msg(format!("ended with {status}"))),
    }
}
