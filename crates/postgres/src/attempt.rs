//! Running one attempt: a shell command, an argv, or a registered Rust function.
//!
//! Invariants:
//! 1. Commands run in their own process group with `NERV_RUN_ID`, `NERV_TASK`, `NERV_ATTEMPT`,
//!    `NERV_IDEMPOTENCY_KEY` and `NERV_WORKER` set; stopping one (timeout, cancel, lost lease)
//!    sends SIGTERM to the whole group, then SIGKILL after the grace period, and waits for it.
//! 2. A function runs on its own tokio task: its panic fails the attempt (never the worker), and
//!    stopping it aborts that task.
//! 3. Outputs never carry NUL characters (PostgreSQL's `jsonb` and `text` refuse them).
//! 4. The outcome is `Cancelled` when the token was cancelled, `Err` on failure or timeout.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::model::Work;
use crate::queue::{Claimed, Outcome};
use crate::worker::{IdempotencyKey, TaskContext, TaskFn};

/// What an attempt needs from its worker.
pub(crate) struct Attempt<'a> {
    /// The worker's id.
    pub id: &'a str,
    /// Registered functions.
    pub functions: &'a HashMap<String, TaskFn>,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
}

/// Runs one attempt of `c` to its end (or until `token` is cancelled) and says how it ended.
pub(crate) async fn execute(inner: &Attempt<'_>, c: &Claimed, token: CancellationToken) -> Outcome {
    let work: Work = match serde_json::from_value(c.work.clone()) {
        Ok(w) => w,
        Err(e) => return Outcome::Err(format!("task {:?}: unreadable work: {e}", c.name)),
    };
    let timeout = c
        .timeout_ms
        .map(|ms| Duration::from_millis(ms.max(0) as u64));
    let key = IdempotencyKey {
        run: c.run,
        task: c.name.clone(),
        attempt: c.attempt,
    };
    match work {
        Work::Function { name, input } => {
            let Some(f) = inner.functions.get(&name).cloned() else {
                return Outcome::Err(format!(
                    "task {:?}: no function {name:?} registered on worker {}",
                    c.name, inner.id
                ));
            };
            let ctx = TaskContext {
                key,
                worker: inner.id.to_string(),
                cancel: token.clone(),
            };
            let handle = tokio::spawn(f(ctx, input));
            let abort = handle.abort_handle();
            let limit = async {
                match timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = handle => match r {
                    Ok(Ok(v)) => Outcome::Ok(strip_nul(v)),
                    Ok(Err(e)) => Outcome::Err(e),
                    Err(e) if e.is_panic() => Outcome::Err(format!("task {:?} panicked: {}", c.name, panic_text(e.into_panic()))),
                    Err(e) => Outcome::Err(format!("task {:?}: {e}", c.name)),
                },
                _ = limit => {
                    abort.abort();
                    Outcome::Err(format!("task {:?} timed out after {:?}", c.name, timeout.unwrap_or_default()))
                }
                _ = token.cancelled() => {
                    abort.abort();
                    Outcome::Cancelled("stopped".into())
                }
            }
        }
        Work::Shell(line) => {
            run_command(
                inner,
                c,
                &key,
                "sh".into(),
                vec!["-c".into(), line],
                timeout,
                token,
            )
            .await
        }
        Work::Argv(mut argv) => {
            if argv.is_empty() {
                return Outcome::Err(format!("task {:?}: empty argv", c.name));
            }
            let prog = argv.remove(0);
            run_command(inner, c, &key, prog, argv, timeout, token).await
        }
    }
}

/// PostgreSQL's `jsonb` refuses `\u0000`: drop NUL characters from every string.
fn strip_nul(v: Value) -> Value {
    match v {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "")),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nul).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k.replace('\0', ""), strip_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".into())
}

fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[allow(clippy::too_many_arguments)] // the attempt's identity, command and limits
async fn run_command(
    inner: &Attempt<'_>,
    c: &Claimed,
    key: &IdempotencyKey,
    prog: String,
    args: Vec<String>,
    timeout: Option<Duration>,
    token: CancellationToken,
) -> Outcome {
    let mut cmd = tokio::process::Command::new(&prog);
    cmd.args(&args)
        .process_group(0)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NERV_RUN_ID", c.run.to_string())
        .env("NERV_TASK", &c.name)
        .env("NERV_ATTEMPT", c.attempt.to_string())
        .env("NERV_IDEMPOTENCY_KEY", key.to_string())
        .env("NERV_WORKER", inner.id);
    let child = match cmd.spawn() {
        Ok(ch) => ch,
        Err(e) => return Outcome::Err(format!("task {:?}: cannot start {prog:?}: {e}", c.name)),
    };
    let pid = child.id().map(|p| p as i32);
    let out = child.wait_with_output();
    tokio::pin!(out);
    let limit = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let stopped_why = tokio::select! {
        r = &mut out => {
            return match r {
                Ok(o) if o.status.success() => Outcome::Ok(serde_json::json!({
                    "exit_code": 0,
                    "stdout": tail(&o.stdout, 64 * 1024).replace('\0', ""),
                })),
                Ok(o) => Outcome::Err(format!(
                    "task {:?}: {prog} exited with {}: {}",
                    c.name,
                    o.status,
                    tail(&o.stderr, 2048).trim_end()
                )),
                Err(e) => Outcome::Err(format!("task {:?}: waiting for {prog:?}: {e}", c.name)),
            };
        }
        _ = limit => format!("task {:?} timed out after {:?}", c.name, timeout.unwrap_or_default()),
        _ = token.cancelled() => "stopped".to_string(),
    };
    if let Some(pid) = pid {
        let pg = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(inner.kill_grace, &mut out)
            .await
            .is_err()
        {
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            let _ = out.await;
        }
    }
    if token.is_cancelled() {
        Outcome::Cancelled(stopped_why)
    } else {
        Outcome::Err(stopped_why)
    }
}
