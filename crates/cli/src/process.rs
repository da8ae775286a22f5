//! Running one attempt of a task as an operating-system process, and making sure that no
//! process outlives its task.
//!
//! An attempt runs on the engine worker that started it, as make runs a recipe in one of its
//! job slots: the worker spawns the command and waits for it in `poll(2)` on two descriptors,
//! the command's pidfd (readable when it exits) and the pipe of its output. When the command
//! exits, the same worker completes the task and goes on with the next ready one — no other
//! thread is woken on the way (the earlier design, an async task on tokio, crossed three
//! threads per task: tokio's reaper, an engine worker, a tokio worker; see
//! benches/cli_vs_make.sh for the figures).
//!
//! Protocol:
//! 1. Each attempt's command starts in a new process group (`process_group(0)`: its pgid is
//!    its pid), with stdin from /dev/null and stdout and stderr on one pipe, whose bytes the
//!    waiting worker appends to the task's log (the file is created at the first byte, so a
//!    task that prints nothing costs no file).
//! 2. The group is registered with the [`Reaper`] before anything can cancel the attempt.
//! 3. While it waits, the worker checks now and then (after 10 ms, then less and less often,
//!    at least every [`SLICE`]) whether the attempt should stop (the
//!    run was cancelled, failed fast, or the task's timeout passed): then the group gets
//!    SIGTERM, and SIGKILL after the grace period, while the worker keeps copying output; the
//!    attempt ends when the command has exited.
//! 4. When the command exits, any process it left behind in its group gets the same
//!    treatment (on a thread of its own: the task does not wait for it). Output still
//!    arriving after the exit is copied for up to [`DRAIN`], then in the background.
//! 5. [`Reaper::wait_idle`] returns when no group is registered: `nerv run` calls it before
//!    printing its summary, so that it never exits with children still running.

use nerv::TaskError;
use nerv_cli::workflow::TaskSpec;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{PipeReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The longest a waiting attempt goes without checking whether it should stop: how late a
/// cancellation (Ctrl-C, fail-fast) can reach a long command. It starts checking after 10 ms
/// and doubles the interval up to this, so that a thousand long commands cost no more than a
/// few wake-ups a second each. (A timeout is waited for exactly: the wait ends at it.)
const SLICE: Duration = Duration::from_millis(160);

/// How long an attempt waits, once its command exited, for the rest of its output (the end
/// of the pipe): anything written later (by a process that left the group and kept the
/// pipe) is still appended to the log, by a thread in the background.
const DRAIN: Duration = Duration::from_millis(200);

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

/// Ends what is left of group `pgid` once its leader was reaped: SIGTERM (unless
/// `term_sent`), up to the grace period for the group to end, then SIGKILL; unregisters it.
fn end_group(pgid: i32, reaper: Reaper, term_sent: bool) {
    if !term_sent {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + reaper.inner.grace;
    while group_alive(pgid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
    if group_alive(pgid) {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    reaper.remove(pgid);
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

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// A task's log: opened (created) at the first byte, unless already open: creating one
/// empty file per silent task was most of nerv's own system time on graphs of small commands
/// (see benches/cli_vs_make.sh).
struct LogSink {
    path: PathBuf,
    file: Option<File>,
    failed: bool,
}

impl LogSink {
    fn write(&mut self, bytes: &[u8]) {
        if self.file.is_none() && !self.failed {
            match open_log(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    // Keep draining, so that the command is not blocked on a full pipe.
                    self.failed = true;
                    tracing::error!("cannot open log {}: {e}", self.path.display());
                }
            }
        }
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.write_all(bytes) {
                tracing::error!("cannot write log {}: {e}", self.path.display());
                self.file = None;
                self.failed = true;
            }
        }
    }

    /// Reads what `rx` has (it was reported readable, so this does not block) into the log:
    /// false at the end of the pipe.
    fn pump(&mut self, rx: &mut PipeReader, buf: &mut [u8]) -> bool {
        match rx.read(buf) {
            Ok(0) => false,
            Ok(n) => {
                self.write(&buf[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => true,
            Err(e) => {
                tracing::error!(
                    "cannot read the output for log {}: {e}",
                    self.path.display()
                );
                false
            }
        }
    }

    /// Copies the rest of `rx` (blocking) until every writer closed it.
    fn copy_rest(mut self, mut rx: PipeReader) {
        let mut buf = [0u8; 8192];
        loop {
            match rx.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => self.write(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
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

/// Waits up to `wait` for the output pipe `rx` and the exit of the process behind `pidfd`:
/// (output readable, process exited). Without a pidfd (a kernel before 5.3), the exit is
/// not reported here: the caller asks `try_wait` after each wait.
fn wait_for(rx: Option<&PipeReader>, pidfd: Option<&OwnedFd>, wait: Duration) -> (bool, bool) {
    let ts = Timespec {
        tv_sec: wait.as_secs() as _,
        tv_nsec: wait.subsec_nanos() as _,
    };
    let ready = |f: &PollFd<'_>| !f.revents().is_empty();
    let res = match (rx, pidfd) {
        (Some(rx), Some(pf)) => {
            let mut fds = [
                PollFd::new(rx, PollFlags::IN),
                PollFd::new(pf, PollFlags::IN),
            ];
            poll(&mut fds, Some(&ts)).map(|_| (ready(&fds[0]), ready(&fds[1])))
        }
        (Some(rx), None) => {
            let mut fds = [PollFd::new(rx, PollFlags::IN)];
            poll(&mut fds, Some(&ts)).map(|_| (ready(&fds[0]), false))
        }
        (None, Some(pf)) => {
            let mut fds = [PollFd::new(pf, PollFlags::IN)];
            poll(&mut fds, Some(&ts)).map(|_| (false, ready(&fds[0])))
        }
        (None, None) => {
            std::thread::sleep(wait);
            Ok((false, false))
        }
    };
    // EINTR and the like: report nothing; the caller looks again.
    res.unwrap_or((false, false))
}

/// Runs one attempt of `spec` on the calling thread: Ok if the command exited 0. `stop` is
/// asked at least every [`SLICE`] while the command runs; when it turns true the command's group is
/// ended (step 3 of the protocol) and the attempt fails as cancelled (the engine reports a
/// timeout instead when the task's timeout is what passed).
pub fn run_attempt(
    spec: &TaskSpec,
    a: Attempt,
    reaper: &Reaper,
    stop: impl Fn() -> bool,
) -> Result<(), TaskError> {
    let io_err = |what: &str, e: std::io::Error| TaskError::msg(format!("{what}: {e}"));
    // A later attempt writes its header now (the file exists from the first attempt, or is
    // created here); the first attempt's file is created at its first byte of output.
    let file = if a.attempt > 1 {
        let mut f = open_log(&a.log)
            .map_err(|e| io_err(&format!("cannot open log {}", a.log.display()), e))?;
        let _ = writeln!(f, "--- nerv: attempt {} ---", a.attempt);
        Some(f)
    } else {
        None
    };
    let mut sink = LogSink {
        path: a.log.clone(),
        file,
        failed: false,
    };
    // One pipe for stdout and stderr (their relative order is kept, as with one file). Both
    // ends are close-on-exec: the child gets its own copies as fds 1 and 2, so no other
    // command spawned meanwhile holds the write end (which would delay the end of output).
    let (rx, out) = std::io::pipe().map_err(|e| io_err("cannot create a pipe", e))?;
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
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
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
    // Never 0 (that would signal nerv's own group): the child was not waited for yet.
    let pgid = match i32::try_from(child.id()) {
        Ok(p) if p > 0 => p,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(TaskError::msg("the command's pid is out of range"));
        }
    };
    reaper.add(pgid);
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_child(&child),
        rustix::process::PidfdFlags::empty(),
    )
    .ok();
    let deadline = spec.timeout.map(|t| started + t);
    let grace = reaper.inner.grace;
    let mut rx = Some(rx);
    let mut buf = [0u8; 8192];
    let mut stopped = false;
    let mut kill_at: Option<Instant> = None;
    let mut slice = Duration::from_millis(10);
    let status: std::io::Result<ExitStatus> = loop {
        let now = Instant::now();
        let mut wait = slice;
        slice = (slice * 2).min(SLICE);
        for t in [kill_at, deadline].into_iter().flatten() {
            wait = wait.min(t.saturating_duration_since(now));
        }
        if pidfd.is_none() && rx.is_none() {
            // Nothing reports the exit: look often (kernels without pidfd only).
            wait = wait.min(Duration::from_millis(2));
        }
        let (readable, exited) = wait_for(rx.as_ref(), pidfd.as_ref(), wait);
        if readable {
            if let Some(r) = rx.as_mut() {
                if !sink.pump(r, &mut buf) {
                    rx = None;
                }
            }
        }
        if exited || pidfd.is_none() || rx.is_none() {
            match child.try_wait() {
                Ok(Some(s)) => break Ok(s),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
        }
        if !stopped && stop() {
            stopped = true;
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
            kill_at = Some(Instant::now() + grace);
        }
        if kill_at.is_some_and(|k| Instant::now() >= k) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            kill_at = None;
        }
    };
    // The leader exited (and was reaped): end whatever it left behind in its group.
    if group_alive(pgid) {
        let reaper = reaper.clone();
        std::thread::spawn(move || end_group(pgid, reaper, stopped));
    } else {
        reaper.remove(pgid);
    }
    // The log is complete (for the summary's last lines) when the pipe has ended; a process
    // that outlived its group and kept the pipe does not hold the task up.
    if let Some(mut r) = rx {
        let until = Instant::now() + DRAIN;
        let mut open = true;
        while open {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if wait_for(Some(&r), None, left).0 {
                open = sink.pump(&mut r, &mut buf);
            }
        }
        if open {
            std::thread::spawn(move || sink.copy_rest(r));
        }
    }
    if stopped {
        return Err(TaskError::cancelled());
    }
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
