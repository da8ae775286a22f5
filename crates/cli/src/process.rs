//! Running one attempt of a task as an operating-system process, and making sure that no
//! process outlives its task.
//!
//! Protocol:
//! 1. Each attempt's command starts in a new process group (`process_group(0)`: its pgid is
//!    its pid), with stdin from /dev/null and stdout and stderr appended to the task's log.
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
use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
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

/// Runs one attempt of `spec`: Ok if the command exited 0.
pub async fn run_attempt(spec: &TaskSpec, a: Attempt, reaper: &Reaper) -> Result<(), TaskError> {
    let io_err = |what: &str, e: std::io::Error| TaskError::msg(format!("{what}: {e}"));
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.log)
        .map_err(|e| io_err(&format!("cannot open log {}", a.log.display()), e))?;
    if a.attempt > 1 {
        let _ = writeln!(log, "--- nerv: attempt {} ---", a.attempt);
    }
    let (program, args): (String, Vec<String>) = match spec.command.direct_argv() {
        Some(mut argv) => {
            let p = argv.remove(0);
            (p, argv)
        }
        None => ("sh".into(), vec!["-c".into(), spec.command.display_line()]),
    };
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .current_dir(&spec.cwd)
        .envs(&spec.env)
        .env("NERV_TASK", &spec.id)
        .env("NERV_RUN_ID", &*a.run_id)
        .env("NERV_ATTEMPT", a.attempt.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| io_err("cannot share log", e))?)
        .stderr(log)
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
