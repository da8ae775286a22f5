//! What `nerv run` shows while it runs: a live display on a terminal, one plain line per
//! event otherwise, or JSON lines with `--json`.
//!
//! The event bus calls [`Display::sender`]'s handler on the engine's threads; it only turns
//! the nerv event into a [`UiEvent`] and sends it down a channel. One display thread owns the
//! output and renders, so a slow terminal never slows the engine.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use nerv::{Event, EventData};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// How many lines of a failed task's log are shown.
pub const TAIL_LINES: usize = 10;

/// Which display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// indicatif bars on stderr.
    Live,
    /// One line per event on stdout.
    Plain,
    /// One JSON object per event per line on stdout.
    Json,
}

/// A task event, as the display needs it.
#[derive(Debug, Clone)]
pub enum UiEvent {
    /// An attempt started.
    Started {
        task: Arc<str>,
        attempt: u32,
        at: SystemTime,
    },
    /// The task completed.
    Completed {
        task: Arc<str>,
        attempt: u32,
        at: SystemTime,
    },
    /// The task failed for good.
    Failed {
        task: Arc<str>,
        attempt: u32,
        at: SystemTime,
        error: String,
    },
    /// An attempt failed; another follows after `delay`.
    Retrying {
        task: Arc<str>,
        attempt: u32,
        at: SystemTime,
        error: String,
        delay: Duration,
    },
    /// Skipped because `cause` failed.
    Skipped {
        task: Arc<str>,
        at: SystemTime,
        cause: Option<String>,
    },
    /// Cancelled.
    Cancelled {
        task: Arc<str>,
        attempt: u32,
        at: SystemTime,
    },
    /// A cached task's key was found: it completes without running (its `Completed` follows).
    Cached { task: Arc<str> },
    /// nerv got SIGINT/SIGTERM.
    Interrupted { second: bool },
    /// The run ended: print the summary and stop.
    Finished(Box<Summary>),
}

impl UiEvent {
    /// The display's view of a nerv event (`None` for events it does not show).
    pub fn from_event(e: &Event) -> Option<UiEvent> {
        let task: Arc<str> = e.source.task.as_ref()?.shared_id();
        let at = e.timestamp;
        Some(match &e.data {
            EventData::TaskStarted { attempt } => UiEvent::Started {
                task,
                attempt: *attempt,
                at,
            },
            EventData::TaskCompleted { attempt, .. } => UiEvent::Completed {
                task,
                attempt: *attempt,
                at,
            },
            EventData::TaskFailed { attempt, error } => UiEvent::Failed {
                task,
                attempt: *attempt,
                at,
                error: error.to_string(),
            },
            EventData::TaskRetrying {
                attempt,
                error,
                delay,
            } => UiEvent::Retrying {
                task,
                attempt: *attempt,
                at,
                error: error.to_string(),
                delay: *delay,
            },
            EventData::TaskSkipped { cause } => UiEvent::Skipped {
                task,
                at,
                cause: cause.as_deref().map(str::to_owned),
            },
            EventData::TaskCancelled { attempt } => UiEvent::Cancelled {
                task,
                attempt: *attempt,
                at,
            },
            _ => return None,
        })
    }
}

/// The end of a run, as printed.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The run's id.
    pub run_id: String,
    /// Final counts.
    pub completed: usize,
    /// Failed tasks.
    pub failed: usize,
    /// Skipped tasks.
    pub skipped: usize,
    /// Cancelled tasks.
    pub cancelled: usize,
    /// Wall time.
    pub wall: Duration,
    /// The critical path by measured durations, and its length.
    pub critical_path: Vec<String>,
    /// Its length.
    pub critical_length: Duration,
    /// The folder of the logs.
    pub logs_dir: PathBuf,
    /// Failed tasks with their errors.
    pub failures: Vec<(String, String)>,
    /// Whether nerv was interrupted.
    pub interrupted: bool,
    /// The exit code nerv is about to return.
    pub exit_code: u8,
    /// The run's number in the journal, if it was recorded.
    pub journal_run: Option<i64>,
    /// The journal run this run resumed, if any.
    pub resumed_from: Option<i64>,
}

/// The display thread and its channel.
pub struct Display {
    tx: Sender<UiEvent>,
    thread: Option<JoinHandle<()>>,
}

impl Display {
    /// Starts the display for a run of `total` tasks whose logs are `logs`.
    pub fn start(
        mode: Mode,
        total: usize,
        logs: HashMap<String, PathBuf>,
        header: Value,
    ) -> Display {
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("nerv-display".into())
            .spawn(move || {
                let mut r = Renderer::new(mode, total, logs);
                r.header(&header);
                r.run(rx);
            })
            .expect("spawn the display thread");
        Display {
            tx,
            thread: Some(thread),
        }
    }

    /// A sender for events (cheap to clone; used by the event bus handler).
    pub fn sender(&self) -> Sender<UiEvent> {
        self.tx.clone()
    }

    /// Prints the summary and waits for the display to finish.
    pub fn finish(mut self, s: Summary) {
        let _ = self.tx.send(UiEvent::Finished(Box::new(s)));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Renderer {
    mode: Mode,
    total: usize,
    done: usize,
    failed: usize,
    logs: HashMap<String, PathBuf>,
    start: Instant,
    start_wall: SystemTime,
    first_start: HashMap<Arc<str>, SystemTime>,
    mp: Option<MultiProgress>,
    main: Option<ProgressBar>,
    running: HashMap<Arc<str>, ProgressBar>,
    cached: std::collections::HashSet<Arc<str>>,
    n_cached: usize,
    n_restored: usize,
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.2}s")
    } else {
        let m = (s / 60.0).floor();
        format!("{m:.0}m{:04.1}s", s - m * 60.0)
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut lines: std::collections::VecDeque<String> =
        std::collections::VecDeque::with_capacity(n + 1);
    for l in std::io::BufReader::new(f)
        .split(b'\n')
        .map_while(Result::ok)
    {
        lines.push_back(
            String::from_utf8_lossy(&l)
                .trim_end_matches('\r')
                .to_owned(),
        );
        if lines.len() > n {
            lines.pop_front();
        }
    }
    lines.into()
}

impl Renderer {
    fn new(mode: Mode, total: usize, logs: HashMap<String, PathBuf>) -> Self {
        let (mp, main) = if mode == Mode::Live {
            let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let main = mp.add(ProgressBar::new(total as u64));
            main.set_style(
                ProgressStyle::with_template(
                    "{spinner:.cyan} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            main.enable_steady_tick(Duration::from_millis(100));
            (Some(mp), Some(main))
        } else {
            (None, None)
        };
        Renderer {
            mode,
            total,
            done: 0,
            failed: 0,
            logs,
            start: Instant::now(),
            start_wall: SystemTime::now(),
            first_start: HashMap::new(),
            mp,
            main,
            running: HashMap::new(),
            cached: std::collections::HashSet::new(),
            n_cached: 0,
            n_restored: 0,
        }
    }

    fn header(&mut self, h: &Value) {
        match self.mode {
            Mode::Json => self.json(h.clone()),
            Mode::Plain => self.line(&format!(
                "nerv: running {} ({} tasks), run {}, logs in {}",
                h["workflow"].as_str().unwrap_or(""),
                self.total,
                h["run_id"].as_str().unwrap_or(""),
                h["logs"].as_str().unwrap_or("")
            )),
            Mode::Live => {
                if let Some(mp) = &self.mp {
                    let _ = mp.println(format!(
                        "nerv: running {} ({} tasks), logs in {}",
                        h["workflow"].as_str().unwrap_or(""),
                        self.total,
                        h["logs"].as_str().unwrap_or("")
                    ));
                }
            }
        }
    }

    fn run(&mut self, rx: Receiver<UiEvent>) {
        while let Ok(e) = rx.recv() {
            if let UiEvent::Finished(s) = e {
                self.summary(&s);
                return;
            }
            self.event(e);
        }
    }

    fn line(&self, s: &str) {
        match &self.mp {
            Some(mp) => {
                let _ = mp.println(s);
            }
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{s}");
                let _ = out.flush();
            }
        }
    }

    fn json(&self, v: Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    fn stamp(&self) -> String {
        format!("[{:>8}]", secs(self.start.elapsed()))
    }

    fn elapsed_of(&self, task: &Arc<str>, at: SystemTime) -> Duration {
        self.first_start
            .get(task)
            .and_then(|s| at.duration_since(*s).ok())
            .unwrap_or_default()
    }

    fn log_of(&self, task: &str) -> Option<&PathBuf> {
        self.logs.get(task)
    }

    fn finish_task(&mut self, task: &Arc<str>) {
        self.done += 1;
        if let Some(pb) = self.running.remove(task) {
            pb.finish_and_clear();
            if let Some(mp) = &self.mp {
                mp.remove(&pb);
            }
        }
        if let Some(main) = &self.main {
            main.set_position(self.done as u64);
            let msg = if self.failed > 0 {
                format!("{} running, {} failed", self.running.len(), self.failed)
            } else {
                format!("{} running", self.running.len())
            };
            main.set_message(msg);
        }
    }

    fn event(&mut self, e: UiEvent) {
        let since = |at: SystemTime| {
            at.duration_since(self.start_wall)
                .unwrap_or_default()
                .as_millis() as u64
        };
        match e {
            UiEvent::Started { task, attempt, at } => {
                self.first_start.entry(task.clone()).or_insert(at);
                match self.mode {
                    Mode::Json => self.json(json!({"type": "task_started", "task": &*task, "time": rfc3339(at), "elapsed_ms": since(at), "attempt": attempt})),
                    Mode::Plain => {
                        let a = if attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
                        self.line(&format!("{} started    {task}{a}", self.stamp()));
                    }
                    Mode::Live => {
                        if let Some(mp) = &self.mp {
                            let pb = self.running.remove(&task).unwrap_or_else(|| {
                                let pb = mp.add(ProgressBar::new_spinner());
                                pb.set_style(
                                    ProgressStyle::with_template("  {spinner:.green} {prefix} {elapsed:.dim} {msg:.dim}")
                                        .expect("valid template"),
                                );
                                pb.enable_steady_tick(Duration::from_millis(100));
                                pb
                            });
                            pb.set_prefix(task.to_string());
                            if attempt > 1 {
                                pb.set_message(format!("attempt {attempt}"));
                            }
                            self.running.insert(task, pb);
                        }
                        if let Some(main) = &self.main {
                            main.set_message(format!("{} running", self.running.len()));
                        }
                    }
                }
            }
            UiEvent::Completed { task, attempt, at } => {
                let el = self.elapsed_of(&task, at);
                // Attempt 0: restored from the run being resumed, not run.
                let how = if attempt == 0 {
                    self.n_restored += 1;
                    "restored"
                } else if self.cached.remove(&task) {
                    self.n_cached += 1;
                    "cached"
                } else {
                    "completed"
                };
                match self.mode {
                    Mode::Json => self.json(json!({"type": "task_completed", "task": &*task, "time": rfc3339(at), "elapsed_ms": since(at), "attempt": attempt, "duration_ms": el.as_millis() as u64, "restored": attempt == 0, "cached": how == "cached"})),
                    Mode::Plain if how == "completed" => self.line(&format!("{} completed  {task} ({})", self.stamp(), secs(el))),
                    Mode::Plain => self.line(&format!("{} {how:<10} {task}", self.stamp())),
                    Mode::Live => {}
                }
                self.finish_task(&task);
            }
            UiEvent::Cached { task } => {
                self.cached.insert(task);
            }
            UiEvent::Failed { task, attempt, at, error } => {
                self.failed += 1;
                let el = self.elapsed_of(&task, at);
                let log = self.log_of(&task).cloned();
                let lines = log.as_deref().map(|p| tail(p, TAIL_LINES)).unwrap_or_default();
                match self.mode {
                    Mode::Json => self.json(json!({
                        "type": "task_failed", "task": &*task, "time": rfc3339(at), "elapsed_ms": since(at),
                        "attempt": attempt, "duration_ms": el.as_millis() as u64, "error": error,
                        "exit_code": error.strip_prefix("exit code ").and_then(|c| c.parse::<i32>().ok()),
                        "log": log.as_ref().map(|p| p.display().to_string()), "log_tail": lines,
                    })),
                    Mode::Plain | Mode::Live => {
                        let mut s = if self.mode == Mode::Live {
                            format!("✗ {task} failed after {} (attempt {attempt}): {error}", secs(el))
                        } else {
                            format!("{} failed     {task} ({}, attempt {attempt}): {error}", self.stamp(), secs(el))
                        };
                        if let Some(p) = &log {
                            if lines.is_empty() {
                                s.push_str(&format!("\n    (no output; log: {})", p.display()));
                            } else {
                                s.push_str(&format!("\n    last lines of {}:", p.display()));
                                for l in &lines {
                                    s.push_str(&format!("\n    | {l}"));
                                }
                            }
                        }
                        self.line(&s);
                    }
                }
                self.finish_task(&task);
            }
            UiEvent::Retrying { task, attempt, at, error, delay } => match self.mode {
                Mode::Json => self.json(json!({"type": "task_retrying", "task": &*task, "time": rfc3339(at), "elapsed_ms": since(at), "attempt": attempt, "error": error, "delay_ms": delay.as_millis() as u64})),
                Mode::Plain => self.line(&format!(
                    "{} retrying   {task} (attempt {attempt} failed: {error}; next in {})",
                    self.stamp(),
                    secs(delay)
                )),
                Mode::Live => {
                    self.line(&format!("↻ {task}: attempt {attempt} failed ({error}); retrying in {}", secs(delay)));
                    if let Some(pb) = self.running.get(&task) {
                        pb.set_message(format!("retrying after: {error}"));
                    }
                }
            },
            UiEvent::Skipped { task, at, cause } => {
                match self.mode {
                    Mode::Json => self.json(json!({"type": "task_skipped", "task": &*task, "time": rfc3339(at), "elapsed_ms": since(at), "cause": cause})),
                    Mode::Plain => {
                        let why = cause.map(|c| format!(" ({c} failed)")).unwrap_or_default();
                        self.line(&format!("{} skipped    {task}{why}", self.stamp()));
                    }
                    Mode::Live => {}
                }
                self.finish_task(&task);
            }
            UiEvent::Cancelled { task, attempt, at } => {
                match self.mode {
                    Mode::Json => self.json(json!({"type": "task_cancelled", "task": &*task, "time": rfc3339(at), "elapsed_ms": since(at), "attempt": attempt})),
                    Mode::Plain => self.line(&format!("{} cancelled  {task}", self.stamp())),
                    Mode::Live => {}
                }
                self.finish_task(&task);
            }
            UiEvent::Interrupted { second } => {
                let msg = if second {
                    "interrupted again: killing every command now (SIGKILL)"
                } else {
                    "interrupted: stopping the commands (SIGTERM, then SIGKILL after the grace period); press Ctrl-C again to kill them now"
                };
                match self.mode {
                    Mode::Json => self.json(json!({"type": "interrupted", "time": rfc3339(SystemTime::now()), "second": second})),
                    _ => self.line(&format!("nerv: {msg}")),
                }
            }
            UiEvent::Finished(_) => {}
        }
    }

    fn summary(&mut self, s: &Summary) {
        for (_, pb) in self.running.drain() {
            pb.finish_and_clear();
        }
        if let Some(main) = self.main.take() {
            main.finish_and_clear();
        }
        if let Some(mp) = self.mp.take() {
            let _ = mp.clear();
        }
        if self.mode == Mode::Json {
            self.json(json!({
                "type": "summary", "run_id": s.run_id,
                "status": if s.interrupted { "interrupted" } else if s.failed > 0 { "failed" } else if s.cancelled > 0 { "cancelled" } else { "completed" },
                "completed": s.completed, "failed": s.failed, "skipped": s.skipped, "cancelled": s.cancelled,
                "wall_ms": s.wall.as_millis() as u64, "critical_path": s.critical_path,
                "critical_path_ms": s.critical_length.as_millis() as u64,
                "failures": s.failures.iter().map(|(t, e)| json!({"task": t, "error": e})).collect::<Vec<_>>(),
                "logs": s.logs_dir.display().to_string(), "exit_code": s.exit_code,
                "restored": self.n_restored, "cached": self.n_cached,
                "journal_run": s.journal_run, "resumed_from": s.resumed_from,
            }));
            return;
        }
        let mut out = std::io::stdout().lock();
        let verdict = if s.interrupted {
            "interrupted"
        } else if s.failed > 0 {
            "FAILED"
        } else if s.cancelled > 0 {
            "cancelled"
        } else {
            "ok"
        };
        let _ = writeln!(
            out,
            "nerv: {verdict}: {} completed, {} failed, {} skipped, {} cancelled in {}",
            s.completed,
            s.failed,
            s.skipped,
            s.cancelled,
            secs(s.wall)
        );
        let mut not_run = Vec::new();
        if self.n_restored > 0 {
            let from = s
                .resumed_from
                .map(|r| format!(" from run {r}"))
                .unwrap_or_default();
            not_run.push(format!("{} restored{from}", self.n_restored));
        }
        if self.n_cached > 0 {
            not_run.push(format!("{} cached", self.n_cached));
        }
        if !not_run.is_empty() {
            let _ = writeln!(out, "not run: {}", not_run.join(", "));
        }
        if !s.critical_path.is_empty() {
            let _ = writeln!(
                out,
                "critical path: {} ({})",
                s.critical_path.join(" → "),
                secs(s.critical_length)
            );
        }
        for (t, e) in &s.failures {
            let log = self
                .logs
                .get(t)
                .map(|p| format!(" (log: {})", p.display()))
                .unwrap_or_default();
            let _ = writeln!(out, "failed: {t}: {e}{log}");
        }
        let _ = writeln!(out, "logs: {}", s.logs_dir.display());
        if let Some(n) = s.journal_run {
            let next = if s.interrupted || s.failed > 0 || s.cancelled > 0 {
                format!("; `nerv resume {n}` continues it")
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "recorded as run {n} ({}){next}; `nerv status {n}` shows its tasks",
                s.run_id
            );
        }
        let _ = out.flush();
    }
}
