//! The worker loop: claim ready tasks, run them, heartbeat their leases, group-commit results.
//!
//! Invariants:
//! 1. Three connections per worker: the *listener* (LISTEN `<schema>_ready` and
//!    `<schema>_cancel`), the *claimer* (claims, heartbeats, reaping; one statement at a time)
//!    and the *committer* (group commits). Each reconnects alone with exponential backoff; after a
//!    listener reconnect the claimer is woken, since notifications may have been missed.
//! 2. At most `concurrency` tasks run at once; a slot is freed when the attempt ends, before its
//!    result is committed.
//! 3. A completion is queued exactly once per attempt this worker still believes it holds; the
//!    committer keeps a batch until a commit succeeds (the fence makes a repeated commit of an
//!    already-committed batch harmless: it is counted as zombies).
//! 4. A task whose lease was lost (heartbeat) is stopped and nothing is sent for it. A task whose
//!    run was cancelled is stopped and completed as cancelled.
//! 5. Shell work runs in its own process group; stopping it sends SIGTERM to the group, then
//!    SIGKILL after the grace period.
//! 6. The worker sleeps on a NOTIFY wake-up; the safety poll (default 5 s) and the next delayed
//!    retry's `ready_at` are the only timers.
//! 7. A memoized attempt (a function registered with [`WorkerBuilder::register_memo`], or a
//!    command submitted with a [`Cache`](crate::Cache)) first computes its key (a command's on
//!    a blocking thread: it reads the inputs) and looks it up on a fourth connection, opened
//!    at the first lookup: a hit is sent as a `Cached` completion without running anything; a
//!    miss runs the work and its success carries the entry to store (see the `memo` module).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::attempt::{execute, Attempt};
use crate::conn::{Backoff, ConnectOptions};
use crate::error::Result;
use crate::memo::{self, Cache, Memo, MemoPut};
use crate::model::{RunId, Work};
use crate::queue::{self, Claimed, Completion, Outcome};
use crate::schema;

/// The idempotency key of one attempt: `(run, task, attempt)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// The run.
    pub run: RunId,
    /// The task's user id.
    pub task: String,
    /// The attempt number (1-based).
    pub attempt: i32,
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.run, self.task, self.attempt)
    }
}

/// What a registered task function sees besides its input.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) key: IdempotencyKey,
    pub(crate) worker: String,
    pub(crate) cancel: CancellationToken,
}

impl TaskContext {
    /// The attempt's idempotency key.
    pub fn idempotency_key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// The worker running the attempt.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Cancelled when the attempt must stop (run cancelled, lease lost, timeout).
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }
}

pub(crate) type TaskFn = Arc<
    dyn Fn(TaskContext, Value) -> BoxFuture<'static, std::result::Result<Value, String>>
        + Send
        + Sync,
>;

/// Configures a [`Worker`].
pub struct WorkerBuilder {
    url: String,
    schema: Option<String>,
    concurrency: usize,
    tags: Vec<String>,
    lease: Duration,
    batch: usize,
    poll: Duration,
    kill_grace: Duration,
    functions: HashMap<String, TaskFn>,
    memos: HashMap<String, Memo>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("url", &self.url)
            .field("concurrency", &self.concurrency)
            .field("tags", &self.tags)
            .field("functions", &self.functions.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WorkerBuilder {
    /// Uses `schema` (default `nerv`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Runs at most `n` tasks at once (default: the number of CPUs).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The worker's tags; it only claims tasks whose tags are all among them.
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Lease length (default 30 s); heartbeats every third of it, reaping every half.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// Most tasks claimed by one statement (default 64).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Safety-net poll interval when no NOTIFY arrives (default 5 s).
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Time between SIGTERM and SIGKILL when stopping a command (default 2 s).
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Registers a task function under `name` (tasks with `Work::Function { name, .. }`).
    /// An `Err` fails the attempt; a panic fails it too.
    pub fn register<F, Fut, E>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(TaskContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Value, E>> + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        let f: TaskFn =
            Arc::new(move |ctx, input| f(ctx, input).map(|r| r.map_err(|e| e.to_string())).boxed());
        self.functions.insert(name.into(), f);
        self
    }

    /// Registers a memoized task function: before calling `f`, the worker looks up the key
    /// made of `name`, `memo`'s version and the task's input in the cache shared by every
    /// worker; a live entry completes the task with the stored output without calling `f`
    /// (the task is recorded as cached, with a `task_cached` event). Otherwise `f` runs, and
    /// its output is stored with `memo`'s TTL when its success is recorded. Register it the
    /// same way on every worker. Like nerv's embedded `run_memo`: the function must be pure
    /// in its input.
    pub fn register_memo<F, Fut, E>(self, name: impl Into<String>, memo: Memo, f: F) -> Self
    where
        F: Fn(TaskContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Value, E>> + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        let name = name.into();
        let mut b = self.register(name.clone(), f);
        b.memos.insert(name, memo);
        b
    }

    /// Checks the URL and builds the worker (it connects in [`Worker::run`]).
    pub fn build(self) -> Result<Worker> {
        let mut opts = ConnectOptions::new(&self.url)?;
        if let Some(s) = self.schema {
            opts = opts.schema(s);
        }
        opts.check_schema()?;
        let host = hostname();
        let id = format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..));
        let mut fn_names: Vec<String> = self.functions.keys().cloned().collect();
        fn_names.sort();
        Ok(Worker {
            inner: Arc::new(Inner {
                opts,
                id,
                concurrency: self.concurrency,
                tags: self.tags,
                lease: self.lease,
                batch: self.batch,
                poll: self.poll,
                kill_grace: self.kill_grace,
                functions: self.functions,
                memos: self.memos,
                memo_conn: tokio::sync::Mutex::new(None),
                fn_names,
                running: Mutex::new(HashMap::new()),
                active: AtomicUsize::new(0),
                wake: Notify::new(),
                heartbeat_now: Notify::new(),
                stats: Counters::default(),
            }),
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// Counters of a worker, for tests and monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Attempts claimed.
    pub claimed: u64,
    /// Completions accepted by the fence.
    pub completed: u64,
    /// Completions refused by the fence (late or repeated).
    pub zombies: u64,
    /// Attempts stopped because the lease was lost.
    pub lost: u64,
    /// Expired leases this worker reclaimed from others.
    pub reaped: u64,
    /// Group commits.
    pub commits: u64,
    /// Claim statements that returned at least one task.
    pub claims: u64,
}

#[derive(Default)]
struct Counters {
    claimed: AtomicU64,
    completed: AtomicU64,
    zombies: AtomicU64,
    lost: AtomicU64,
    reaped: AtomicU64,
    commits: AtomicU64,
    claims: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancelled,
    Lost,
}

struct Held {
    attempt: i32,
    token: CancellationToken,
    reason: Arc<Mutex<Option<Stop>>>,
}

struct Inner {
    opts: ConnectOptions,
    id: String,
    concurrency: usize,
    tags: Vec<String>,
    lease: Duration,
    batch: usize,
    poll: Duration,
    kill_grace: Duration,
    functions: HashMap<String, TaskFn>,
    memos: HashMap<String, Memo>,
    /// The connection of cache lookups (opened at the first one; replaced when broken).
    memo_conn: tokio::sync::Mutex<Option<Arc<Client>>>,
    fn_names: Vec<String>,
    running: Mutex<HashMap<(RunId, i32), Held>>,
    active: AtomicUsize,
    wake: Notify,
    heartbeat_now: Notify,
    stats: Counters,
}

/// A worker process's engine: claims and runs tasks until shut down.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.inner.id)
            .finish()
    }
}

impl Worker {
    /// A builder for a worker connecting to `url`.
    pub fn builder(url: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            url: url.into(),
            schema: None,
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tags: Vec::new(),
            lease: Duration::from_secs(30),
            batch: 64,
            poll: Duration::from_secs(5),
            kill_grace: Duration::from_secs(2),
            functions: HashMap::new(),
            memos: HashMap::new(),
        }
    }

    /// This worker's id (`host-pid-random`), the `lease_owner` of its tasks.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Counters so far.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.inner.stats;
        WorkerStats {
            claimed: c.claimed.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            zombies: c.zombies.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            reaped: c.reaped.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            claims: c.claims.load(Ordering::Relaxed),
        }
    }

    /// Runs until `shutdown` is cancelled, then stops claiming, lets running tasks finish and
    /// commits their results. Fails only if the first connection (or the migration) fails;
    /// later connection losses are retried with backoff.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<WorkerStats> {
        let inner = &self.inner;
        let mut claim_conn = inner.opts.connect().await?;
        schema::migrate(&inner.opts, &mut claim_conn).await?;
        claim_conn
            .batch_execute(CLAIM_SETTINGS)
            .await
            .map_err(inner.opts.db("configuring the claim connection"))?;
        let commit_conn = inner.opts.connect().await?;
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Completion>();
        let stop_all = CancellationToken::new();
        let listener = tokio::spawn(listen_loop(self.inner.clone(), stop_all.clone()));
        let committer = tokio::spawn(commit_loop(self.inner.clone(), commit_conn, done_rx));
        claim_loop(self.inner.clone(), claim_conn, done_tx, shutdown).await;
        // done_tx is dropped once every task has sent its completion: the committer drains.
        let _ = committer.await;
        stop_all.cancel();
        let _ = listener.await;
        Ok(self.stats())
    }
}

async fn listen_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let channels = [inner.opts.channel("ready"), inner.opts.channel("cancel")];
    let mut backoff = Backoff::new();
    loop {
        let conn = tokio::select! {
            c = inner.opts.listen(&channels) => c,
            _ = stop.cancelled() => return,
        };
        match conn {
            Ok((_client, mut rx)) => {
                backoff.reset();
                inner.wake.notify_one();
                inner.heartbeat_now.notify_one();
                loop {
                    tokio::select! {
                        n = rx.recv() => match n {
                            Some(ch) if ch == channels[1] => inner.heartbeat_now.notify_one(),
                            Some(_) => inner.wake.notify_one(),
                            None => break,
                        },
                        _ = stop.cancelled() => return,
                    }
                }
                tracing::warn!(worker = %inner.id, "listen connection lost; reconnecting");
            }
            Err(e) => tracing::warn!(worker = %inner.id, "listen: {e}; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Settings of the claim connection (claims, heartbeats, reaping): their commits do not wait for
/// the WAL flush. A claim, lease extension or reclaim lost in a server crash leaves the row as it
/// was before, which the protocol already handles: the fence includes `lease_owner`, so a lost
/// claim's attempt number can be reused by another worker without letting the first one complete
/// it, and the task simply runs again (at-least-once, as after any lost lease). Completions stay
/// synchronous: an acknowledged result is durable.
const CLAIM_SETTINGS: &str = "SET synchronous_commit = off";

async fn reconnect(inner: &Inner, backoff: &mut Backoff, settings: &str) -> Client {
    loop {
        tokio::time::sleep(backoff.next_delay()).await;
        let c = match inner.opts.connect().await {
            Ok(c) if !settings.is_empty() => c
                .batch_execute(settings)
                .await
                .map(|_| c)
                .map_err(inner.opts.db("configuring a connection")),
            other => other,
        };
        match c {
            Ok(c) => {
                backoff.reset();
                return c;
            }
            Err(e) => tracing::warn!(worker = %inner.id, "reconnect: {e}"),
        }
    }
}

async fn commit_loop(
    inner: Arc<Inner>,
    mut client: Client,
    mut rx: mpsc::UnboundedReceiver<Completion>,
) {
    let mut backoff = Backoff::new();
    let max = 512;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        if let Err(e) = commit(&inner, &mut client, &mut backoff, &batch).await {
            // Not a connection problem: some result cannot be stored (e.g. JSON the server
            // refuses). Isolate it so that it cannot block the others.
            tracing::warn!(worker = %inner.id, "commit of {} results failed: {e}; committing one by one", batch.len());
            for mut c in batch {
                if let Err(e) =
                    commit(&inner, &mut client, &mut backoff, std::slice::from_ref(&c)).await
                {
                    c.outcome = Outcome::Err(format!(
                        "the result of this attempt could not be stored: {e}"
                    ));
                    if let Err(e) =
                        commit(&inner, &mut client, &mut backoff, std::slice::from_ref(&c)).await
                    {
                        tracing::error!(
                            worker = %inner.id, run = c.run, task = c.id,
                            "dropping a result that cannot be stored ({e}); its lease will expire"
                        );
                    }
                }
            }
        }
    }
}

/// Commits `batch`, reconnecting and retrying for as long as the failure is a connection one;
/// returns any other error.
async fn commit(
    inner: &Inner,
    client: &mut Client,
    backoff: &mut Backoff,
    batch: &[Completion],
) -> Result<()> {
    loop {
        match queue::complete(&inner.opts, client, &inner.id, batch).await {
            Ok(rep) => {
                let s = &inner.stats;
                s.completed
                    .fetch_add(rep.accepted as u64, Ordering::Relaxed);
                s.zombies
                    .fetch_add(rep.zombies.len() as u64, Ordering::Relaxed);
                s.commits.fetch_add(1, Ordering::Relaxed);
                if rep.made_ready > 0 {
                    inner.wake.notify_one();
                }
                backoff.reset();
                return Ok(());
            }
            Err(e) if client.is_closed() || e.is_connection() => {
                tracing::warn!(worker = %inner.id, "commit of {} results failed: {e}; retrying", batch.len());
                *client = reconnect(inner, backoff, "").await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn claim_loop(
    inner: Arc<Inner>,
    mut client: Client,
    done: mpsc::UnboundedSender<Completion>,
    shutdown: CancellationToken,
) {
    let lease_ms = inner.lease.as_millis() as i64;
    let hb_every = inner.lease / 3;
    let reap_every = inner.lease / 2;
    let mut next_hb = tokio::time::Instant::now();
    let mut next_reap = tokio::time::Instant::now();
    let mut backoff = Backoff::new();
    let mut idle_wait = inner.poll;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let step: Result<bool> = async {
            let now = tokio::time::Instant::now();
            if now >= next_hb {
                heartbeat(&inner, &client, lease_ms).await?;
                next_hb = now + hb_every;
            }
            if now >= next_reap {
                let n = queue::reap(&inner.opts, &mut client, &inner.id).await?;
                inner.stats.reaped.fetch_add(n as u64, Ordering::Relaxed);
                next_reap = now + reap_every;
            }
            let free = inner
                .concurrency
                .saturating_sub(inner.active.load(Ordering::Acquire));
            if free == 0 {
                idle_wait = inner.poll;
                return Ok(false);
            }
            let want = free.min(inner.batch);
            let claimed = queue::claim(
                &inner.opts,
                &mut client,
                &inner.id,
                &inner.tags,
                &inner.fn_names,
                want as i64,
                lease_ms,
            )
            .await?;
            let got = claimed.len();
            inner.stats.claimed.fetch_add(got as u64, Ordering::Relaxed);
            if got > 0 {
                inner.stats.claims.fetch_add(1, Ordering::Relaxed);
            }
            for c in claimed {
                start(&inner, c, done.clone());
            }
            if got == 0 {
                idle_wait = match queue::next_ready_in(&inner.opts, &client).await? {
                    Some(s) => Duration::from_secs_f64(s.max(0.001)).min(inner.poll),
                    None => inner.poll,
                };
            }
            Ok(got == want)
        }
        .await;
        if step.is_ok() {
            backoff.reset();
        }
        match step {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(worker = %inner.id, "{e}");
                if client.is_closed() || e.is_connection() {
                    client = reconnect(&inner, &mut backoff, CLAIM_SETTINGS).await;
                } else {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                continue;
            }
        }
        let until_hb = next_hb.saturating_duration_since(tokio::time::Instant::now());
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = inner.heartbeat_now.notified() => next_hb = tokio::time::Instant::now(),
            _ = tokio::time::sleep(idle_wait.min(until_hb)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    // Drain: wait for running attempts to end (they hold clones of `done`).
    while inner.active.load(Ordering::Acquire) > 0 {
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if tokio::time::Instant::now() >= next_hb {
            if let Err(e) = heartbeat(&inner, &client, lease_ms).await {
                tracing::warn!(worker = %inner.id, "{e}");
                if client.is_closed() {
                    client = reconnect(&inner, &mut backoff, CLAIM_SETTINGS).await;
                }
            }
            next_hb = tokio::time::Instant::now() + hb_every;
        }
    }
}

async fn heartbeat(inner: &Inner, client: &Client, lease_ms: i64) -> Result<()> {
    let held: Vec<(RunId, i32, i32)> = {
        let r = inner.running.lock().expect("running map");
        r.iter().map(|(k, h)| (k.0, k.1, h.attempt)).collect()
    };
    let rep = queue::heartbeat(
        &inner.opts,
        client,
        &inner.id,
        &inner.tags,
        inner.concurrency as i32,
        &held,
        lease_ms,
    )
    .await?;
    let r = inner.running.lock().expect("running map");
    for (keys, why) in [(&rep.lost, Stop::Lost), (&rep.cancelled, Stop::Cancelled)] {
        for k in keys {
            if let Some(h) = r.get(&(k.0, k.1)) {
                if h.attempt == k.2 {
                    *h.reason.lock().expect("reason") = Some(why);
                    h.token.cancel();
                }
            }
        }
    }
    Ok(())
}

fn start(inner: &Arc<Inner>, c: Claimed, done: mpsc::UnboundedSender<Completion>) {
    let token = CancellationToken::new();
    let reason = Arc::new(Mutex::new(None));
    inner.active.fetch_add(1, Ordering::AcqRel);
    inner.running.lock().expect("running map").insert(
        (c.run, c.id),
        Held {
            attempt: c.attempt,
            token: token.clone(),
            reason: reason.clone(),
        },
    );
    let inner = inner.clone();
    tokio::spawn(async move {
        let attempt = Attempt {
            id: &inner.id,
            functions: &inner.functions,
            kill_grace: inner.kill_grace,
        };
        let (outcome, memo) = match memo_plan(&inner, &c).await {
            Err(e) => (Outcome::Err(e), None),
            Ok(None) => (execute(&attempt, &c, token).await, None),
            Ok(Some(put)) => match lookup(&inner, &put.key).await {
                Some(v) => (Outcome::Cached(v), None),
                None => (execute(&attempt, &c, token).await, Some(put)),
            },
        };
        let why = *reason.lock().expect("reason");
        inner
            .running
            .lock()
            .expect("running map")
            .remove(&(c.run, c.id));
        let outcome = match (why, outcome) {
            (Some(Stop::Lost), _) => None,
            (Some(Stop::Cancelled), Outcome::Ok(v)) => Some(Outcome::Ok(v)),
            (Some(Stop::Cancelled), Outcome::Cached(v)) => Some(Outcome::Cached(v)),
            (Some(Stop::Cancelled), _) => Some(Outcome::Cancelled("run cancelled".into())),
            (None, o) => Some(o),
        };
        match outcome {
            Some(outcome) => {
                let _ = done.send(Completion {
                    run: c.run,
                    id: c.id,
                    attempt: c.attempt,
                    outcome,
                    memo,
                });
            }
            None => {
                inner.stats.lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(worker = %inner.id, run = c.run, task = %c.name, "lease lost; result dropped");
            }
        }
        drop(done);
        inner.active.fetch_sub(1, Ordering::AcqRel);
        inner.wake.notify_one();
    });
}

/// The cache entry `c` would be stored under, if it is memoized: `Err` when its key cannot be
/// computed (an input that exists but cannot be read), which fails the attempt.
async fn memo_plan(inner: &Inner, c: &Claimed) -> std::result::Result<Option<MemoPut>, String> {
    // At most a thousand years: the expiry must stay a valid timestamp.
    let ttl_ms = |d: Option<Duration>| d.map(|d| d.as_millis().min(31_536_000_000_000) as i64);
    if let Some(cache) = &c.cache {
        let cache: Cache = serde_json::from_value(cache.clone())
            .map_err(|e| format!("task {:?}: unreadable cache settings: {e}", c.name))?;
        let ttl = ttl_ms(cache.ttl);
        let key = tokio::task::spawn_blocking(move || cache.key.compute())
            .await
            .map_err(|e| format!("task {:?}: computing its cache key: {e}", c.name))??;
        return Ok(Some(MemoPut {
            key,
            task: c.name.clone(),
            ttl_ms: ttl,
        }));
    }
    if inner.memos.is_empty() {
        return Ok(None);
    }
    let Ok(Work::Function { name, input }) = serde_json::from_value::<Work>(c.work.clone()) else {
        return Ok(None);
    };
    Ok(inner.memos.get(&name).map(|m| MemoPut {
        key: memo::function_key(&name, m, &input),
        task: c.name.clone(),
        ttl_ms: ttl_ms(m.ttl),
    }))
}

/// The cached output under `key`; `None` on a miss, and when the cache cannot be read (the
/// task then runs: a cache is never a reason to fail).
async fn lookup(inner: &Inner, key: &[u8]) -> Option<Value> {
    let client = {
        let mut g = inner.memo_conn.lock().await;
        match g.as_ref() {
            Some(c) if !c.is_closed() => c.clone(),
            _ => match inner.opts.connect().await {
                Ok(c) => {
                    let c = Arc::new(c);
                    *g = Some(c.clone());
                    c
                }
                Err(e) => {
                    tracing::warn!(worker = %inner.id, "cache lookup: {e}; running the task");
                    return None;
                }
            },
        }
    };
    match memo::lookup(&inner.opts, &client, key).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(worker = %inner.id, "cache lookup: {e}; running the task");
            None
        }
    }
}
