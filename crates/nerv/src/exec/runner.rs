//! The per-run state and the work of one node: statuses come from the pool; this adds outputs,
//! attempts, timestamps, errors, retries, timeouts, async work and subgraphs.
//!
//! One attempt at a node (`Runner::run`):
//! 1. an upstream failure makes it SKIPPED, a cancelled run makes it CANCELLED (no work runs);
//! 2. the attempt is counted and the first attempt's start time recorded;
//! 3. the body runs inside `catch_unwind` (a panic is this task's failure, with its message);
//! 4. sync work that finished is COMPLETED; async work and subgraphs are DEFERRED and finish
//!    later through the pool's `complete`;
//! 5. an error asks the retry policy: retry at once (loop), retry after a delay (DEFERRED, a
//!    timer requeues the node), or give up: the error is recorded and the node is FAILED (and
//!    under fail-fast the run is cancelled).

use super::resources::Wake;
use super::{Env, FailurePolicy, RunOptions, Timing};
use crate::container::Scope;
use crate::context::TaskContext;
use crate::dynamic::{ChildGraph, Transfer};
use crate::event::{Event, EventBus, EventData, EventKind, Receivers, Source, TaskRef, TaskView};
use crate::graph::{Bodies, Graph, Node, Started};
use crate::policy::circuit_breaker::CircuitPermit;
use crate::policy::retry::RetryPolicy;
use crate::task::{ErrorKind, TaskError, TaskResult, TaskStatus};
use futures_util::FutureExt;
use nerv_pool::{Inline, NodeCx, NodeRunner, OnceArena, RunHandle, Upstream, Verdict};
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// A run's cancellation: a flag checked on the hot path (one load per ancestor run), and a
/// token that async work and timers wait on. (The token alone would not do: its
/// `is_cancelled` takes a mutex.)
#[derive(Clone)]
pub(crate) struct Cancel {
    flag: Arc<AtomicBool>,
    ancestors: Vec<Arc<AtomicBool>>,
    pub(crate) token: CancellationToken,
}

impl Cancel {
    pub(crate) fn new() -> Self {
        Cancel {
            flag: Arc::new(AtomicBool::new(false)),
            ancestors: Vec::new(),
            token: CancellationToken::new(),
        }
    }

    /// A cancellation that also ends when this one is cancelled (for a subgraph's run).
    fn child(&self) -> Self {
        let mut ancestors = self.ancestors.clone();
        ancestors.push(self.flag.clone());
        Cancel {
            flag: Arc::new(AtomicBool::new(false)),
            ancestors,
            token: self.token.child_token(),
        }
    }

    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.flag.load(Relaxed)
            || (!self.ancestors.is_empty() && self.ancestors.iter().any(|a| a.load(Relaxed)))
    }

    pub(crate) fn cancel(&self) {
        self.flag.store(true, Release);
        self.token.cancel();
    }
}

/// How a subgraph's run reports back to the task that made it.
pub(crate) struct ParentLink {
    pub(crate) handle: RunHandle<Runner>,
    pub(crate) node: u32,
    pub(crate) output: u32,
    pub(crate) transfer: Transfer,
    /// The dynamic task's timeout, and whether it fired (the subgraph was then cancelled).
    timeout: Option<(Duration, Arc<AtomicBool>)>,
    /// Cancelled when the subgraph finishes (stops the timeout's timer).
    done: CancellationToken,
}

/// A run's link to the event bus: built only when the executor has a bus.
pub(crate) struct Observer {
    pub(crate) bus: EventBus,
    /// The bus's receivers when the run was created (used while they do not change).
    receivers: Receivers,
    /// The tasks' full ids, shared by their events; built on the first task event.
    names: OnceLock<Arc<[Arc<str>]>>,
    /// The id of the top run (the workflow) this run belongs to.
    pub(crate) workflow: u64,
    /// Whether this run is a subgraph's.
    subgraph: bool,
}

/// Everything one run keeps besides the pool's node states.
pub(crate) struct Runner {
    pub(crate) graph: Graph,
    pub(crate) arena: OnceArena,
    pub(crate) env: Arc<Env>,
    pub(crate) opts: RunOptions,
    pub(crate) cancel: Cancel,
    pub(crate) run_id: u64,
    /// Prefix of task ids in this run (`parent/` for a subgraph).
    pub(crate) prefix: String,
    /// Attempts started, per node; except that a first attempt made on the node's first run
    /// that completed synchronously is not recorded (the hot path: it would cost every task
    /// a cache line); [`attempts_of`](Self::attempts_of) counts it. Every other way out of an
    /// attempt records it before anything can read it.
    attempts: Box<[AtomicU32]>,
    /// With a restore: the nodes completed from it (no attempt), to tell them apart from those
    /// whose one attempt was not recorded. Empty without a restore.
    restored_marks: Box<[std::sync::atomic::AtomicBool]>,
    /// Raw clock ticks at the first attempt's start (0: never started).
    started: Box<[AtomicU64]>,
    /// Raw clock ticks at the final status (0: not reached, or never ran).
    ended: Box<[AtomicU64]>,
    errors: Mutex<Vec<(u32, TaskError)>>,
    /// Results of the tasks of subgraphs started by this run's tasks.
    children: Mutex<Vec<TaskResult>>,
    parent: Option<ParentLink>,
    pub(crate) t0: u64,
    pub(crate) sys0: SystemTime,
    /// `sys0` in nanoseconds since the Unix epoch (task events carry their time so).
    sys0_ns: u64,
    pub(crate) t_end: AtomicU64,
    pub(crate) obs: Option<Observer>,
    /// Nodes holding their declared resources now.
    holding: Mutex<HashSet<u32>>,
    /// Nodes skipped because a branch upstream did not choose them, with that branch.
    branch_skips: Mutex<Vec<(u32, u32)>>,
    /// Nodes whose work failed for good and that run their fallback, with the work's error.
    fallbacks: Mutex<Vec<(u32, TaskError)>>,
    /// The run's tracing span (disabled, and free, without a tracing subscriber).
    pub(crate) span: tracing::Span,
    /// The run's scope of the executor's container, opened when a task first resolves
    /// (subgraphs use their top run's).
    scope: OnceLock<Scope>,
    /// What a resumed top run restores instead of running (never set for a subgraph).
    restore: Option<Arc<crate::graph::Restore>>,
    /// No observer, no restore, no per-task timestamps, no run-wide timeout, no task spans
    /// (their level disabled as the run starts): a plain graph's tasks then take a copy of the
    /// path that checks none of them (see `run_node` and `run_plain`).
    lean: bool,
    /// No restore, no run-wide timeout, no task spans (as for `lean`, but events and
    /// timestamps allowed): a plain graph's tasks then run in the inline loop compiled for
    /// its body type, with their events (see `run_plain`).
    direct: bool,
}

impl Runner {
    pub(crate) fn new(
        graph: Graph,
        env: Arc<Env>,
        opts: RunOptions,
        cancel: Cancel,
        prefix: String,
        parent: Option<ParentLink>,
    ) -> Runner {
        let n = graph.len();
        let arena = OnceArena::new(&graph.0.layout);
        let stamps = if opts.timing == Timing::Off { 0 } else { n };
        let run_id = next_id();
        // Taken together: a task event's time is `sys0` plus the clock's time since `t0`.
        let t0 = env.clock.raw();
        let sys0 = SystemTime::now();
        let workflow = match &parent {
            Some(p) => p.handle.runner().workflow(),
            None => run_id,
        };
        let restore = match &parent {
            None => opts.resume.as_ref().map(|r| r.restore.clone()),
            Some(_) => None,
        };
        let obs = env.bus.clone().map(|bus| Observer {
            receivers: bus.receivers_cache(),
            bus,
            names: OnceLock::new(),
            workflow,
            subgraph: parent.is_some(),
        });
        // Task spans are made when their level is enabled as the run starts, as its own span.
        let direct = restore.is_none() && opts.timeout.is_none() && !task_spans_enabled();
        let lean = direct && obs.is_none() && stamps == 0;
        let span = match &parent {
            Some(p) => {
                tracing::info_span!(parent: &p.handle.runner().span, "subgraph", run = run_id, task = %prefix)
            }
            None => tracing::info_span!("run", run = run_id),
        };
        Runner {
            obs,
            span,
            scope: OnceLock::new(),
            lean,
            direct,
            restore,
            holding: Mutex::new(HashSet::new()),
            fallbacks: Mutex::new(Vec::new()),
            branch_skips: Mutex::new(Vec::new()),
            arena,
            // Zeroed memory: nothing is written per task here, and the pages of a record
            // that no task writes (attempts, in a run where every task completes at once)
            // are never touched.
            attempts: bytemuck::zeroed_slice_box(n),
            restored_marks: bytemuck::zeroed_slice_box(
                if parent.is_none() && opts.resume.is_some() {
                    n
                } else {
                    0
                },
            ),
            started: bytemuck::zeroed_slice_box(stamps),
            ended: bytemuck::zeroed_slice_box(stamps),
            errors: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
            parent,
            t0,
            sys0,
            sys0_ns: sys0
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            t_end: AtomicU64::new(0),
            run_id,
            graph,
            env,
            opts,
            cancel,
            prefix,
        }
    }

    /// The run's container scope (its top run's, for a subgraph), opened on first use.
    pub(crate) fn scope(&self) -> &Scope {
        match &self.parent {
            Some(p) => p.handle.runner().scope(),
            None => self.scope.get_or_init(|| self.env.container.scope()),
        }
    }

    /// The serialized output of `node`, if it is persisted (for its `TaskCompleted` event).
    #[inline]
    pub(crate) fn output_bytes(&self, node: u32) -> Option<Arc<[u8]>> {
        let codec = self.graph.0.codecs.get(node as usize)?.as_ref()?;
        self.save_output(codec)
    }

    #[cold]
    #[inline(never)]
    fn save_output(&self, codec: &Arc<dyn crate::graph::codec::Codec>) -> Option<Arc<[u8]>> {
        codec.save(&self.arena).map(Arc::from)
    }

    /// The id of the top run this run belongs to.
    pub(crate) fn workflow(&self) -> u64 {
        self.obs.as_ref().map_or(self.run_id, |o| o.workflow)
    }

    /// Whether a task event of `kind` would reach anyone.
    #[inline(always)]
    pub(crate) fn wants(&self, kind: EventKind) -> bool {
        matches!(&self.obs, Some(o) if o.bus.wants(kind))
    }

    /// Publishes a task event if anyone listens (the check is one load; the event is built
    /// out of line).
    #[inline(always)]
    pub(crate) fn emit_task(&self, node: u32, data: impl FnOnce() -> EventData, kind: EventKind) {
        self.emit_task_at(node, None, data, kind);
    }

    /// [`emit_task`](Self::emit_task) at the clock's raw time `at` (read for the task's
    /// timestamps: the event shares the read) or, if `None`, now.
    #[inline(always)]
    pub(crate) fn emit_task_at(
        &self,
        node: u32,
        at: Option<u64>,
        data: impl FnOnce() -> EventData,
        kind: EventKind,
    ) {
        if self.wants(kind) {
            self.publish_task_at(node, at, data());
        }
    }

    /// Publishes a task event now (see [`emit_task_at`](Self::emit_task_at)).
    pub(crate) fn publish_task(&self, node: u32, data: EventData) {
        self.publish_task_at(node, None, data);
    }

    #[inline(never)]
    fn publish_task_at(&self, node: u32, at: Option<u64>, data: EventData) {
        let Some(o) = &self.obs else { return };
        // Unbuilt: the bus builds the event only for a receiver that needs one.
        o.bus.publish_task(
            Some(&o.receivers),
            &TaskView {
                workflow: o.workflow,
                names: self.names(o),
                index: node,
                subgraph: o.subgraph,
                ts: self.nanos_at(at.unwrap_or_else(|| self.env.clock.raw())),
                data: &data,
            },
        );
        // The plain events own nothing: their (out-of-line) drop glue is skipped. (Forgotten
        // in place: moving the event into a `ManuallyDrop` first copied it with wide loads of
        // what the caller had just stored narrowly, a store-forwarding stall per event.)
        if matches!(
            data,
            EventData::TaskStarted { .. }
                | EventData::TaskCancelled { .. }
                | EventData::TaskCompleted { output: None, .. }
                | EventData::TaskPending
                | EventData::MemoHit
                | EventData::MemoMiss
        ) {
            std::mem::forget(data);
        }
    }

    fn task_source(&self, o: &Observer, node: u32) -> Source {
        Source {
            workflow: Some(o.workflow),
            task: Some(TaskRef::in_table(self.names(o), node, node, o.subgraph)),
        }
    }

    fn name_arc(&self, o: &Observer, node: u32) -> Arc<str> {
        self.names(o)[node as usize].clone()
    }

    /// The tasks' full ids, by node, shared by their events.
    fn names<'a>(&'a self, o: &'a Observer) -> &'a Arc<[Arc<str>]> {
        let ids = &self.graph.0.ids;
        let names = if self.prefix.is_empty() {
            // A top run's names are the graph's own: shared by all its runs.
            &self.graph.0.names
        } else {
            &o.names
        };
        names.get_or_init(|| {
            // Built once per graph (per subgraph run), by the first event that needs one: a
            // top run's names are its ids as they are (no formatting: a tenth of the first
            // observed run of a graph of empty tasks went to `format!` here).
            if self.prefix.is_empty() {
                return (0..self.graph.len())
                    .map(|i| Arc::from(ids.get(i)))
                    .collect();
            }
            (0..self.graph.len())
                .map(|i| Arc::from(format!("{}{}", self.prefix, ids.get(i))))
                .collect()
        })
    }

    /// Publishes a memo lookup of `node` (hit or miss).
    pub(crate) fn memo_looked_up(&self, node: u32, hit: bool) {
        if hit {
            self.emit_task(node, || EventData::MemoHit, EventKind::MemoHit);
        } else {
            self.emit_task(node, || EventData::MemoMiss, EventKind::MemoMiss);
        }
    }

    /// The wall-clock time of the run's clock's raw time `raw`, in nanoseconds since the Unix
    /// epoch (`sys0` plus the clock's time since `t0`, without `SystemTime` arithmetic).
    #[inline]
    fn nanos_at(&self, raw: u64) -> u64 {
        self.sys0_ns + self.env.clock.delta_as_nanos(self.t0, raw)
    }

    /// Publishes the run's start (created, each task pending, started) to whoever listens.
    pub(crate) fn publish_start(&self, created: Option<&str>) {
        let Some(o) = &self.obs else { return };
        let src = Source::workflow(o.workflow);
        if let Some(name) =
            created.filter(|_| !o.subgraph && o.bus.wants(EventKind::WorkflowCreated))
        {
            o.bus.publish(Event::at(
                self.sys0,
                src.clone(),
                EventData::WorkflowCreated {
                    name: name.into(),
                    tasks: self.graph.len(),
                },
            ));
        }
        if o.bus.wants(EventKind::TaskPending) {
            for i in 0..self.graph.len() as u32 {
                o.bus.publish(Event::at(
                    self.sys0,
                    self.task_source(o, i),
                    EventData::TaskPending,
                ));
            }
        }
        if !o.subgraph && o.bus.wants(EventKind::WorkflowStarted) {
            o.bus.publish(Event::at(
                self.sys0,
                src,
                EventData::WorkflowStarted {
                    graph: self.graph.clone(),
                    resumes: self.opts.resume.as_ref().map(|r| r.key.clone()),
                },
            ));
        }
    }

    /// Publishes the run's end (for a top run).
    fn publish_end(&self, run: &RunHandle<Runner>) {
        let Some(o) = &self.obs else { return };
        if o.subgraph {
            return;
        }
        let kinds = [
            EventKind::WorkflowCompleted,
            EventKind::WorkflowFailed,
            EventKind::WorkflowCancelled,
        ];
        if !kinds.iter().any(|k| o.bus.wants(*k)) {
            return;
        }
        let counts = super::report::count(run);
        let end = self.t_end.load(Acquire);
        let elapsed = self.env.clock.delta(self.t0, end);
        let data = match super::report::run_status(&counts, self.cancel.is_cancelled()) {
            super::RunStatus::Cancelled => EventData::WorkflowCancelled { counts, elapsed },
            super::RunStatus::Completed => EventData::WorkflowCompleted { counts, elapsed },
            super::RunStatus::Failed => {
                let error = (0..self.graph.len() as u32)
                    .map(|i| self.result(run, i))
                    .find(|r| r.status == TaskStatus::Failed)
                    .map(|r| match r.error {
                        Some(e) => format!("task `{}` failed: {e}", r.id),
                        None => format!("task `{}` failed", r.id),
                    })
                    .unwrap_or_else(|| "the run did not complete".to_string());
                EventData::WorkflowFailed {
                    counts,
                    elapsed,
                    error,
                }
            }
        };
        o.bus.publish(Event::at(
            self.sys0 + elapsed,
            Source::workflow(o.workflow),
            data,
        ));
    }

    pub(crate) fn full_id(&self, node: u32) -> String {
        format!("{}{}", self.prefix, self.graph.0.ids.get(node as usize))
    }

    fn retry_policy(&self, node: u32) -> Option<&RetryPolicy> {
        self.graph.0.nodes[node as usize]
            .extra
            .as_ref()
            .and_then(|e| e.retry.as_ref())
            .or(self.opts.retry.as_ref())
    }

    #[inline]
    fn timeout(&self, n: &Node) -> Option<Duration> {
        n.extra
            .as_ref()
            .and_then(|e| e.timeout)
            .or(self.opts.timeout)
    }

    /// Gets the node's declared resources: `Ok(true)` held (now or granted while it
    /// waited), `Ok(false)` queued (it is requeued when they are granted), or the reason
    /// they never can be.
    #[cold]
    #[inline(never)]
    fn admit(
        &self,
        h: RunHandle<Runner>,
        node: u32,
        uses: &super::resources::Uses,
    ) -> Result<bool, TaskError> {
        if self
            .holding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&node)
        {
            return Ok(true);
        }
        let wake = move |k: Wake| {
            if k == Wake::Granted {
                h.runner()
                    .holding
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(node);
            }
            let _ = h.requeue(node);
        };
        match self.env.resources.acquire(self.workflow(), uses, wake) {
            Ok(true) => {
                self.holding
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(node);
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => Err(TaskError::with_kind(ErrorKind::InvalidGraph, e)),
        }
    }

    /// Records a completed attempt: its end time and its `TaskCompleted` event (if anyone
    /// listens).
    #[inline(always)]
    fn completed(&self, node: u32, attempt: u32) {
        let at = self.stamp_end(node);
        self.emit_task_at(
            node,
            at,
            || EventData::TaskCompleted {
                attempt,
                output: self.output_bytes(node),
            },
            EventKind::TaskCompleted,
        );
    }

    /// Gives back the node's resources, if it holds them (its attempt ended). Inline: a task
    /// without options costs one load and a branch here.
    #[inline(always)]
    fn settle(&self, node: u32) {
        if self.graph.0.nodes[node as usize].extra.is_some() {
            self.settle_slow(node);
        }
    }

    #[cold]
    #[inline(never)]
    fn settle_slow(&self, node: u32) {
        if let Some(uses) = self.graph.0.nodes[node as usize]
            .extra
            .as_ref()
            .and_then(|e| e.uses.as_ref())
        {
            let held = self
                .holding
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&node);
            if held {
                self.env.resources.release(uses);
            }
        }
    }

    /// Records the node's end time if the run records them; returns the clock's raw time
    /// read for it.
    #[inline]
    fn stamp_end(&self, node: u32) -> Option<u64> {
        let e = self.ended.get(node as usize)?;
        let raw = self.env.clock.raw();
        e.store(raw, Release);
        Some(raw)
    }

    /// Records a final failure; returns the verdict.
    #[cold]
    #[inline(never)]
    fn give_up(&self, node: u32, err: TaskError) -> Verdict {
        self.stamp_end(node);
        let cancelled = err.is_cancelled() || self.cancel.is_cancelled();
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((node, err));
        let attempt = self.attempts[node as usize].load(Relaxed);
        if cancelled {
            self.emit_task(
                node,
                || EventData::TaskCancelled { attempt },
                EventKind::TaskCancelled,
            );
            return Verdict::Cancelled;
        }
        if self.wants(EventKind::TaskFailed) {
            let error = self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .rev()
                .find(|(n, _)| *n == node)
                .map(|(_, e)| e.clone())
                .unwrap_or_else(|| TaskError::msg("failed"));
            self.publish_task(node, EventData::TaskFailed { attempt, error });
        }
        if self.opts.failure == FailurePolicy::FailFast {
            self.cancel.cancel();
            self.env.resources.cancel_waiters(self.workflow());
        }
        Verdict::Failed
    }

    /// The decision after a failed attempt: `Ok(None)` retry now, `Ok(Some(d))` retry after
    /// `d`, `Err(v)` gave up with verdict `v`.
    #[cold]
    #[inline(never)]
    fn after_failure(
        &self,
        node: u32,
        attempt: u32,
        mut err: TaskError,
    ) -> Result<Option<Duration>, Verdict> {
        if self.cancel.is_cancelled() && !err.is_cancelled() && err.kind() != ErrorKind::TimedOut {
            err = TaskError::cancelled();
        }
        // The policy may call the user's `retry_if`: a panic there must not take down a
        // worker or a completion task. It counts as "do not retry".
        let decision = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.retry_policy(node)
                .and_then(|p| p.next_delay(attempt, &err))
        }));
        match decision {
            Ok(Some(d)) => {
                self.emit_task(
                    node,
                    || EventData::TaskRetrying {
                        attempt,
                        error: err,
                        delay: d,
                    },
                    EventKind::TaskRetrying,
                );
                Ok((!d.is_zero()).then_some(d))
            }
            Ok(None) if self.enter_fallback(node, &err) => Ok(None),
            Ok(None) => Err(self.give_up(node, err)),
            Err(p) => {
                let msg = format!(
                    "{err} (and the retry predicate panicked: {})",
                    panic_message(&*p)
                );
                Err(self.give_up(node, TaskError::with_kind(err.kind(), msg)))
            }
        }
    }

    /// Decides, from its dependencies' outcomes, whether a node with a trigger rule (or a
    /// branch upstream) runs: `None` to run, or its verdict.
    #[cold]
    #[inline(never)]
    fn by_rule(&self, ncx: &NodeCx<'_, Self>, rule: crate::graph::TriggerRule) -> Option<Verdict> {
        let node = ncx.node();
        if matches!(ncx.upstream(), Upstream::Cancelled) || self.cancel.is_cancelled() {
            return Some(self.cancelled_before_start(node));
        }
        let h = ncx.handle();
        let g = &self.graph.0;
        let (mut ok, mut failed, mut skipped) = (0, 0, 0);
        let mut not_chosen_by: Option<u32> = None;
        let mut failure: Option<u32> = None;
        for &p in g.dag.predecessors(node) {
            match h.state(p) {
                nerv_pool::NodeState::Completed => {
                    if self.chose(p, node) {
                        ok += 1;
                    } else {
                        skipped += 1;
                        not_chosen_by = Some(p);
                    }
                }
                nerv_pool::NodeState::Failed => {
                    failed += 1;
                    failure.get_or_insert(p);
                }
                nerv_pool::NodeState::Skipped => match h.upstream(p) {
                    Upstream::Failed(root) if h.state(root) == nerv_pool::NodeState::Failed => {
                        failed += 1;
                        failure.get_or_insert(root);
                    }
                    _ => skipped += 1,
                },
                _ => return Some(self.cancelled_before_start(node)),
            }
        }
        if rule.admits(ok, failed, skipped) {
            return None;
        }
        self.stamp_end(node);
        let cause = match (not_chosen_by, failure) {
            (Some(b), _) => {
                self.branch_skips
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((node, b));
                Some(b)
            }
            (None, f) => f,
        };
        if self.wants(EventKind::TaskSkipped) {
            let cause = cause.and_then(|c| self.obs.as_ref().map(|o| self.name_arc(o, c)));
            self.publish_task(node, EventData::TaskSkipped { cause });
        }
        Some(Verdict::Skipped)
    }

    /// Whether `p` lets `node` run: `p` is not a branch, or its choice names `node`.
    fn chose(&self, p: u32, node: u32) -> bool {
        let g = &self.graph.0;
        match g.nodes[p as usize].extra.as_ref().and_then(|e| e.branch) {
            None => true,
            Some(slot) => self
                .arena
                .get(slot)
                .is_some_and(|b| b.follows(g.ids.get(node as usize))),
        }
    }

    /// The branch that skipped `node` (directly, or an ancestor whose skip caused its own).
    fn skipping_branch(&self, node: u32, root: Option<u32>) -> Option<u32> {
        let skips = self.branch_skips.lock().unwrap_or_else(|p| p.into_inner());
        if skips.is_empty() {
            return None;
        }
        skips
            .iter()
            .find(|(n, _)| *n == node || Some(*n) == root)
            .map(|(_, b)| *b)
    }

    fn cancelled_before_start(&self, node: u32) -> Verdict {
        let at = self.stamp_end(node);
        let attempt = self.attempts[node as usize].load(Relaxed);
        self.emit_task_at(
            node,
            at,
            || EventData::TaskCancelled { attempt },
            EventKind::TaskCancelled,
        );
        Verdict::Cancelled
    }

    /// Whether `node` switches to its fallback now: it has one, the failure is not a
    /// cancellation, and it has not used it yet. The caller then runs the node again (retry
    /// now), and `run` calls the fallback.
    fn enter_fallback(&self, node: u32, err: &TaskError) -> bool {
        let has = self.graph.0.nodes[node as usize]
            .extra
            .as_ref()
            .is_some_and(|e| e.fallback);
        if !has || err.is_cancelled() || self.cancel.is_cancelled() {
            return false;
        }
        let mut f = self.fallbacks.lock().unwrap_or_else(|p| p.into_inner());
        if f.iter().any(|(n, _)| *n == node) {
            return false;
        }
        f.push((node, err.clone()));
        true
    }

    /// The error that sent `node` to its fallback, if it did.
    fn fallback_of(&self, node: u32) -> Option<TaskError> {
        self.fallbacks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(n, _)| *n == node)
            .map(|(_, e)| e.clone())
    }

    /// Runs `node`'s fallback: its output becomes the task's.
    #[cold]
    #[inline(never)]
    fn run_fallback(&self, ncx: &NodeCx<'_, Self>, n: &Node) -> Verdict {
        let node = ncx.node();
        let cx = TaskContext {
            ncx,
            runner: self,
            attempt: self.attempts[node as usize].load(Relaxed),
            deadline: None,
        };
        let res = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.graph.0.chunks[n.chunk as usize].fallback(n.index, &cx)
        }));
        match res {
            Ok(Some(Ok(_))) => {
                self.completed(node, cx.attempt);
                Verdict::Completed
            }
            Ok(Some(Err(e))) => self.give_up(
                node,
                TaskError::with_kind(e.kind(), format!("the fallback failed too: {e}")),
            ),
            Ok(None) => self.give_up(node, TaskError::msg("the task has no fallback")),
            Err(p) => self.give_up(
                node,
                TaskError::panic(format!("fallback: {}", panic_message(&*p))),
            ),
        }
    }

    /// Passes `node`'s circuit breaker and rate limit before an attempt (see [`Gate`]).
    #[cold]
    #[inline(never)]
    fn gate(&self, ncx: &NodeCx<'_, Self>, node: u32, e: &crate::graph::Extra) -> Gate {
        let mut permit = None;
        if let Some(kind) = &e.circuit {
            match self.env.breakers.check(kind) {
                Ok(p) => permit = Some(p),
                Err(open) => {
                    let err = TaskError::with_kind(ErrorKind::CircuitOpen, open);
                    if self.enter_fallback(node, &err) {
                        return Gate::Again;
                    }
                    return Gate::Done(self.give_up(node, err));
                }
            }
        }
        if let Some(key) = &e.rate_limit {
            if let Err(limited) = self.env.rate_limits.try_acquire(key) {
                // The permit (if any) is dropped unused: it counts as neither outcome.
                self.requeue_later(ncx.handle(), node, limited.retry_after());
                return Gate::Done(Verdict::Deferred);
            }
        }
        Gate::Go(permit)
    }

    /// Completes `node` with its output from the resumed run's [`Restore`](crate::Restore),
    /// if it lists the node, the node is persisted and the bytes decode; returns whether it
    /// did.
    #[cold]
    #[inline(never)]
    fn restored(&self, node: u32) -> bool {
        let (Some(r), Some(Some(codec))) = (&self.restore, self.graph.0.codecs.get(node as usize))
        else {
            return false;
        };
        if self.attempts[node as usize].load(Relaxed) != 0 {
            return false;
        }
        let Some(bytes) = r.outputs.get(self.graph.0.ids.get(node as usize)) else {
            return false;
        };
        if let Err(e) = codec.load(bytes, &self.arena) {
            tracing::warn!(task = %self.full_id(node), error = %e, "restored output does not decode; running the task again");
            return false;
        }
        if let Some(m) = self.restored_marks.get(node as usize) {
            m.store(true, Relaxed);
        }
        let at = self.stamp_end(node);
        self.emit_task_at(
            node,
            at,
            || EventData::TaskCompleted {
                attempt: 0,
                output: None,
            },
            EventKind::TaskCompleted,
        );
        true
    }

    /// Attempts `node` made, as its result reports them (see `attempts`): with none recorded,
    /// a completed node made one unless it was restored, and a node being run is in its first
    /// (a deferred one, waiting for resources, has made none).
    fn attempts_of(&self, h: &RunHandle<Runner>, node: u32, status: TaskStatus) -> u32 {
        let a = self.attempts[node as usize].load(Relaxed);
        if a != 0 {
            return a;
        }
        let one = match status {
            TaskStatus::Completed => !self
                .restored_marks
                .get(node as usize)
                .is_some_and(|m| m.load(Relaxed)),
            TaskStatus::Running => !h.is_deferred(node),
            _ => false,
        };
        u32::from(one)
    }

    /// Requeues `node` after `delay`, or at once if the run is cancelled meanwhile.
    #[cold]
    #[inline(never)]
    fn requeue_later(&self, h: RunHandle<Runner>, node: u32, delay: Duration) {
        self.settle(node);
        let cancel = self.cancel.token.clone();
        self.env.tokio().spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => {}
            }
            let _ = h.requeue(node);
        });
    }

    #[cold]
    #[inline(never)]
    fn spawn_future(
        &self,
        h: RunHandle<Runner>,
        node: u32,
        attempt: u32,
        fut: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), TaskError>> + Send>>,
        timeout: Option<Duration>,
        permit: Option<CircuitPermit>,
    ) {
        use tracing::Instrument;
        let cancel = self.cancel.token.clone();
        // Called inside the attempt's span (from `run`) or a completion's: keep it.
        let span = tracing::Span::current();
        self.env.tokio().spawn(async move {
            let work = AssertUnwindSafe(fut.instrument(span)).catch_unwind();
            let res = tokio::select! {
                r = work => match r {
                    Ok(r) => r,
                    Err(p) => Err(TaskError::panic(panic_message(&*p))),
                },
                _ = sleep_opt(timeout) => Err(TaskError::timeout(timeout.unwrap_or_default())),
                _ = cancel.cancelled() => Err(TaskError::cancelled()),
            };
            let r = h.runner();
            if let Some(p) = permit {
                match &res {
                    Ok(()) => p.success(),
                    Err(e) => record_failure(p, e),
                }
            }
            let verdict = match res {
                Ok(()) => {
                    r.completed(node, attempt);
                    Verdict::Completed
                }
                Err(e) => match r.after_failure(node, attempt, e) {
                    Ok(None) => {
                        let _ = h.requeue(node);
                        return;
                    }
                    Ok(Some(d)) => {
                        r.requeue_later(h.clone(), node, d);
                        return;
                    }
                    Err(v) => v,
                },
            };
            r.settle(node);
            let _ = h.complete(node, verdict);
        });
    }

    #[cold]
    #[inline(never)]
    fn start_child(&self, h: RunHandle<Runner>, node: u32, child: Box<ChildGraph>) -> Verdict {
        let child = *child;
        let graph = match child.builder.build() {
            Ok(g) => g,
            Err(e) => {
                return self.give_up(
                    node,
                    TaskError::with_kind(ErrorKind::InvalidGraph, format!("invalid subgraph: {e}")),
                )
            }
        };
        if !graph.owns(child.output) {
            return self.give_up(
                node,
                TaskError::with_kind(
                    ErrorKind::InvalidGraph,
                    "the subgraph's output is not one of its tasks",
                ),
            );
        }
        let cancel = self.cancel.child();
        let done = CancellationToken::new();
        let timeout = self.timeout(&self.graph.0.nodes[node as usize]).map(|t| {
            let fired = Arc::new(AtomicBool::new(false));
            let (f, c, d) = (fired.clone(), cancel.clone(), done.clone());
            self.env.tokio().spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(t) => {
                        f.store(true, Release);
                        c.cancel();
                    }
                    _ = d.cancelled() => {}
                }
            });
            (t, fired)
        });
        let runner = Runner::new(
            graph.clone(),
            self.env.clone(),
            self.opts.clone(),
            cancel,
            format!("{}/", self.full_id(node)),
            Some(ParentLink {
                handle: h,
                node,
                output: child.output.index() as u32,
                transfer: child.transfer,
                timeout,
                done,
            }),
        );
        runner.publish_start(None);
        let _run = self.env.pool.start(graph.0.dag.clone(), runner);
        Verdict::Deferred
    }

    /// The result of node `node` as of now.
    pub(crate) fn result(&self, h: &RunHandle<Runner>, node: u32) -> TaskResult {
        let g = &self.graph.0;
        let status: TaskStatus = h.state(node).into();
        let at =
            |ticks: u64| (ticks != 0).then(|| self.sys0 + self.env.clock.delta(self.t0, ticks));
        let stamp = |v: &[AtomicU64]| v.get(node as usize).map_or(0, |a| a.load(Acquire));
        let started = stamp(&self.started);
        let ended = stamp(&self.ended);
        let error = if matches!(status, TaskStatus::Failed | TaskStatus::Cancelled) {
            self.errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .rev()
                .find(|(n, _)| *n == node)
                .map(|(_, e)| e.clone())
        } else {
            None
        };
        let skipped_because = match (status, h.upstream(node)) {
            (TaskStatus::Skipped, up) => {
                let root = match up {
                    Upstream::Failed(root) => Some(root),
                    _ => None,
                };
                match self.skipping_branch(node, root) {
                    Some(b) => Some(self.full_id(b)),
                    None => root.map(|r| self.full_id(r)),
                }
            }
            _ => None,
        };
        let name = g.nodes[node as usize]
            .extra
            .as_ref()
            .and_then(|e| e.name.clone())
            .unwrap_or_else(|| self.full_id(node));
        TaskResult {
            id: self.full_id(node),
            name,
            status,
            error,
            skipped_because,
            scheduled_at: self.scheduled_ticks(node).and_then(at),
            started_at: at(started),
            completed_at: at(ended),
            execution_time: if started != 0 && ended >= started {
                self.env.clock.delta(started, ended)
            } else {
                Duration::ZERO
            },
            attempts: self.attempts_of(h, node, status),
            fallback: if status == TaskStatus::Completed
                && g.nodes[node as usize]
                    .extra
                    .as_ref()
                    .is_some_and(|e| e.fallback)
            {
                self.fallback_of(node)
            } else {
                None
            },
        }
    }

    /// When `node` became ready: the end of its last dependency, or the run's start for a
    /// task without dependencies (derived from recorded times, so it costs nothing while
    /// running). `None` without per-task timing or before it was ready.
    fn scheduled_ticks(&self, node: u32) -> Option<u64> {
        if self.ended.is_empty() {
            return None;
        }
        let mut last = self.t0;
        for &p in self.graph.0.dag.predecessors(node) {
            match self.ended[p as usize].load(Acquire) {
                0 => return None,
                t => last = last.max(t),
            }
        }
        Some(last)
    }

    /// Results of subgraph tasks, in the order their subgraphs finished.
    pub(crate) fn child_results(&self) -> Vec<TaskResult> {
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A fresh id for a run or a workflow definition: one sequence for both, so that they never
/// collide in events.
/// What [`Runner::gate`] decided about an attempt.
enum Gate {
    /// Start it (with the circuit's permit, if the task has a circuit breaker).
    Go(Option<CircuitPermit>),
    /// Loop again (the task switched to its fallback).
    Again,
    /// Do not start it: the node's verdict (`Deferred` when it waits for a rate permit).
    Done(Verdict),
}

/// Starts an attempt's work (body `index` of chunk `chunk`); a panic in it is the attempt's
/// error, with the panic's message.
#[inline(always)]
fn start_caught<C: Bodies + ?Sized>(
    bodies: &C,
    chunk: u32,
    index: u32,
    cx: &TaskContext<'_>,
) -> Result<Started, TaskError> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| bodies.start(chunk, index, cx))) {
        Ok(r) => r,
        Err(p) => Err(TaskError::panic(panic_message(&*p))),
    }
}

/// Records a failed attempt in its circuit; a cancellation is no verdict on the service.
fn record_failure(p: CircuitPermit, err: &TaskError) {
    if !err.is_cancelled() {
        p.failure();
    }
}

pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Relaxed)
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Whether a task's tracing span would be enabled at all: the first test `info_span!` makes
/// (static and current maximum level), done before building one.
#[inline(always)]
fn task_spans_enabled() -> bool {
    tracing::level_filters::STATIC_MAX_LEVEL >= tracing::Level::INFO
        && tracing::level_filters::LevelFilter::current() >= tracing::Level::INFO
}

/// The message of a panic payload (`&str` or `String`), or a placeholder.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

impl NodeRunner for Runner {
    #[inline]
    fn run(&self, ncx: &NodeCx<'_, Self>) -> Verdict {
        // A plain graph's tasks get their own copy of the path, compiled knowing that no
        // task has options (see `GraphInner::plain`).
        let bodies = &*self.graph.0.chunks;
        if self.graph.0.plain {
            if self.lean {
                return self.run_node::<true, true, _>(ncx, bodies, ncx.is_first_run());
            }
            return self.run_node::<true, false, _>(ncx, bodies, ncx.is_first_run());
        }
        let v = self.run_node::<false, false, _>(ncx, bodies, ncx.is_first_run());
        if v != Verdict::Deferred {
            self.settle(ncx.node());
        }
        v
    }

    fn finished(&self, run: &RunHandle<Self>) {
        self.finish_run(run)
    }

    #[inline]
    fn run_inline(&self, lp: Inline<'_, '_, Self>) {
        // A lean or direct run of a plain graph: the graph's one chunk runs the loop,
        // compiled for its body type.
        if self.graph.0.plain && self.direct {
            if let Some(chunk) = self.graph.0.chunks.first() {
                if self.lean {
                    return chunk.run_inline(self, lp);
                }
                return chunk.run_direct_inline(self, lp);
            }
        }
        lp.run_each(|cx| self.run(cx))
    }
}

impl Runner {
    /// The inline loop of a lean run of a plain graph, whose bodies are `bodies`, a chunk of
    /// one known type: each task's path, its body included, is compiled into the loop (no
    /// call through a pointer per task). Called by the chunk (`BodyChunk::run_inline`).
    #[inline(always)]
    pub(crate) fn run_plain_inline<C: Bodies>(&self, bodies: &C, lp: Inline<'_, '_, Self>) {
        lp.run_each(|cx| self.run_plain::<true, C>(cx, bodies))
    }

    /// [`run_plain_inline`](Self::run_plain_inline) for a direct run (`Runner::direct`).
    /// Called by the chunk (`BodyChunk::run_direct_inline`).
    #[inline(always)]
    pub(crate) fn run_direct_inline<C: Bodies>(&self, bodies: &C, lp: Inline<'_, '_, Self>) {
        lp.run_each(|cx| self.run_plain::<false, C>(cx, bodies))
    }

    /// A task of a lean (`LEAN`) or direct run of a plain graph: on its first run, with every
    /// predecessor completed and the run not cancelled, one attempt with nothing around it
    /// but, in a direct run, its started and completed events and stamps (no restore, no
    /// timeout, no task span, no option to check); anything else takes the general path.
    #[inline(always)]
    fn run_plain<const LEAN: bool, C: Bodies>(
        &self,
        ncx: &NodeCx<'_, Self>,
        bodies: &C,
    ) -> Verdict {
        let first = ncx.is_first_run();
        if !first || ncx.upstream() != Upstream::Ok || self.cancel.is_cancelled() {
            return self.run_node::<true, LEAN, C>(ncx, bodies, first);
        }
        let node = ncx.node();
        if !LEAN {
            self.attempt_started(node, 1);
        }
        let cx = TaskContext {
            ncx,
            runner: self,
            attempt: 1,
            deadline: None,
        };
        let res = start_caught(bodies, 0, node, &cx);
        if let Ok(Started::Done) = res {
            // Nothing to drop: said so, as the drop glue of the whole `Result` (not always
            // inlined) was called here per task otherwise (12 instructions on a chain).
            std::mem::forget(res);
            if !LEAN {
                self.completed(node, 1);
            }
            return Verdict::Completed;
        }
        match self.first_outcome::<LEAN>(&cx, res) {
            Some(v) => v,
            // Retried at once: the next attempts on the general path.
            None => self.run_node::<true, LEAN, C>(ncx, bodies, false),
        }
    }

    /// [`outcome`](Self::outcome) of [`run_plain`](Self::run_plain)'s attempt that did not
    /// complete at once.
    #[cold]
    #[inline(never)]
    fn first_outcome<const LEAN: bool>(
        &self,
        cx: &TaskContext<'_>,
        res: Result<Started, TaskError>,
    ) -> Option<Verdict> {
        self.outcome::<LEAN>(cx, res, None, None)
    }

    /// Records the start of attempt `attempt` of `node`: its first attempt's start time (if
    /// the run records them) and its `TaskStarted` event (if anyone listens).
    #[inline(always)]
    fn attempt_started(&self, node: u32, attempt: u32) {
        let mut at = None;
        if attempt == 1 {
            if let Some(s) = self.started.get(node as usize) {
                let raw = self.env.clock.raw();
                s.store(raw, Relaxed);
                at = Some(raw);
            }
        }
        self.emit_task_at(
            node,
            at,
            || EventData::TaskStarted { attempt },
            EventKind::TaskStarted,
        );
    }

    /// Runs `node`; `PLAIN`: the graph is plain (`GraphInner::plain`), so its node record is
    /// implied, not read (a line per task less), and every option check folds away (chain
    /// shape: about 20 % of a task's time, measured with that copy of the path).
    #[inline(always)]
    ///
    /// `LEAN`: the run is lean (`Runner::lean`): no event to publish, nothing to restore, no
    /// timestamp to record, no run-wide timeout; those checks fold away too.
    fn run_node<const PLAIN: bool, const LEAN: bool, C: Bodies + ?Sized>(
        &self,
        ncx: &NodeCx<'_, Self>,
        bodies: &C,
        mut first: bool,
    ) -> Verdict {
        let node = ncx.node();
        let implied;
        let n = if PLAIN {
            implied = Node {
                chunk: 0,
                index: node,
                extra: None,
            };
            &implied
        } else {
            &self.graph.0.nodes[node as usize]
        };
        if !LEAN && self.restore.is_some() && self.restored(node) {
            return Verdict::Completed;
        }
        if let Some(e) = n.extra.as_ref().filter(|e| e.by_rule()) {
            if let Some(v) = self.by_rule(ncx, e.trigger) {
                return v;
            }
        } else {
            match ncx.upstream() {
                Upstream::Ok => {}
                Upstream::Failed(root) => {
                    let at = self.stamp_end(node);
                    if self.wants(EventKind::TaskSkipped) {
                        let cause = self.obs.as_ref().map(|o| self.name_arc(o, root));
                        self.publish_task_at(node, at, EventData::TaskSkipped { cause });
                    }
                    return Verdict::Skipped;
                }
                Upstream::Cancelled => {
                    let at = self.stamp_end(node);
                    self.emit_task_at(
                        node,
                        at,
                        || EventData::TaskCancelled { attempt: 0 },
                        EventKind::TaskCancelled,
                    );
                    return Verdict::Cancelled;
                }
            }
        }
        // `first`: on the node's first run (`NodeCx::is_first_run`) nothing has counted an
        // attempt yet: the first one is 1 without reading the record (see `attempts`).
        loop {
            if self.cancel.is_cancelled() {
                let at = self.stamp_end(node);
                let attempt = self.attempts[node as usize].load(Relaxed);
                self.emit_task_at(
                    node,
                    at,
                    || EventData::TaskCancelled { attempt },
                    EventKind::TaskCancelled,
                );
                return Verdict::Cancelled;
            }
            if let Some(uses) = n.extra.as_ref().and_then(|e| e.uses.as_ref()) {
                match self.admit(ncx.handle(), node, uses) {
                    Ok(true) => {}
                    // Queued: run again once the resources are granted.
                    Ok(false) => return Verdict::Deferred,
                    Err(e) => return self.give_up(node, e),
                }
            }
            if n.extra.as_ref().is_some_and(|e| e.fallback) && self.fallback_of(node).is_some() {
                return self.run_fallback(ncx, n);
            }
            let mut permit = None;
            let gated = n
                .extra
                .as_ref()
                .filter(|e| e.circuit.is_some() || e.rate_limit.is_some());
            if let Some(e) = gated {
                match self.gate(ncx, node, e) {
                    Gate::Go(p) => permit = p,
                    Gate::Again => continue,
                    Gate::Done(v) => return v,
                }
            }
            // Attempts of one node never overlap: a plain load and store suffice. A first
            // attempt on the first run is recorded only if it does not complete at once
            // (`attempt`).
            let attempt = if std::mem::take(&mut first) {
                1
            } else {
                let attempts = &self.attempts[node as usize];
                let attempt = attempts.load(Relaxed) + 1;
                attempts.store(attempt, Relaxed);
                attempt
            };
            if !LEAN {
                self.attempt_started(node, attempt);
            }
            // The fast path: no circuit permit, no task span. The span is made only when its
            // level is enabled (the span macro's own first test), so that without a subscriber
            // no disabled span is built, entered and dropped per task. `attempt` is inlined here
            // with a constant `None` permit only: a permit moved in from the variable above
            // would be copied through the stack per task.
            let step = if gated.is_none() && !task_spans_enabled() {
                self.attempt::<LEAN, C>(ncx, bodies, n, attempt, None)
            } else {
                self.attempt_outlined(ncx, bodies, n, attempt, permit)
            };
            match step {
                Some(v) => return v,
                None => continue,
            }
        }
    }

    /// [`attempt`](Self::attempt) with a circuit permit, or inside the task's tracing span
    /// when spans are enabled.
    #[inline(never)]
    fn attempt_outlined<C: Bodies + ?Sized>(
        &self,
        ncx: &NodeCx<'_, Self>,
        bodies: &C,
        n: &Node,
        attempt: u32,
        permit: Option<CircuitPermit>,
    ) -> Option<Verdict> {
        if !task_spans_enabled() {
            return self.attempt::<false, C>(ncx, bodies, n, attempt, permit);
        }
        let node = ncx.node();
        let _span =
            tracing::info_span!(parent: &self.span, "task", task = %self.full_id(node), attempt)
                .entered();
        self.attempt::<false, C>(ncx, bodies, n, attempt, permit)
    }

    /// Runs one counted attempt's work and handles its outcome: the node's verdict, or `None`
    /// to retry at once.
    #[inline(always)]
    fn attempt<const LEAN: bool, C: Bodies + ?Sized>(
        &self,
        ncx: &NodeCx<'_, Self>,
        bodies: &C,
        n: &Node,
        attempt: u32,
        permit: Option<CircuitPermit>,
    ) -> Option<Verdict> {
        let timeout = if LEAN { None } else { self.timeout(n) };
        let cx = TaskContext {
            ncx,
            runner: self,
            attempt,
            deadline: timeout.map(|t| (self.env.clock.now() + t, t)),
        };
        let res = start_caught(bodies, n.chunk, n.index, &cx);
        self.outcome::<LEAN>(&cx, res, timeout, permit)
    }

    /// Handles the outcome of an attempt (see [`attempt`](Self::attempt)): the node's verdict,
    /// or `None` to retry at once.
    #[inline(always)]
    fn outcome<const LEAN: bool>(
        &self,
        cx: &TaskContext<'_>,
        res: Result<Started, TaskError>,
        timeout: Option<Duration>,
        mut permit: Option<CircuitPermit>,
    ) -> Option<Verdict> {
        let (ncx, node, attempt) = (cx.ncx, cx.ncx.node(), cx.attempt);
        let err = match res {
            Ok(Started::Done) => {
                if let Some(p) = permit.take() {
                    p.success();
                }
                if !LEAN {
                    self.completed(node, attempt);
                }
                return Some(Verdict::Completed);
            }
            // Any other outcome records the attempt before it can be read (see `attempts`).
            Ok(Started::Future(fut)) => {
                self.attempts[node as usize].store(attempt, Relaxed);
                self.spawn_future(ncx.handle(), node, attempt, fut, timeout, permit);
                return Some(Verdict::Deferred);
            }
            Ok(Started::Graph(child)) => {
                self.attempts[node as usize].store(attempt, Relaxed);
                return Some(self.start_child(ncx.handle(), node, child));
            }
            Err(e) => match cx.deadline_passed() {
                Some(limit) if !e.is_timeout() && !self.cancel.is_cancelled() => {
                    TaskError::timeout(limit)
                }
                _ => e,
            },
        };
        self.attempts[node as usize].store(attempt, Relaxed);
        if let Some(p) = permit.take() {
            record_failure(p, &err);
        }
        match self.after_failure(node, attempt, err) {
            Ok(None) => None,
            Ok(Some(d)) => {
                self.requeue_later(ncx.handle(), node, d);
                Some(Verdict::Deferred)
            }
            Err(v) => Some(v),
        }
    }

    fn finish_run(&self, run: &RunHandle<Self>) {
        self.t_end.store(self.env.clock.raw(), Release);
        self.publish_end(run);
        let Some(link) = &self.parent else { return };
        link.done.cancel();
        let parent = link.handle.runner();
        let mut results: Vec<TaskResult> = (0..self.graph.len() as u32)
            .map(|i| self.result(run, i))
            .collect();
        results.extend(self.child_results());
        // Name the task that failed, rather than one skipped or cancelled because of it.
        let failed = results
            .iter()
            .find(|r| r.status == TaskStatus::Failed)
            .or_else(|| results.iter().find(|r| r.status != TaskStatus::Completed))
            .map(|r| (r.id.clone(), r.status, r.error.clone()));
        {
            // Only the last attempt's subgraph tasks are kept.
            let mut children = parent.children.lock().unwrap_or_else(|p| p.into_inner());
            children.retain(|r| !r.id.starts_with(&self.prefix));
            children.extend(results);
        }
        let timed_out = link
            .timeout
            .as_ref()
            .filter(|(_, fired)| fired.load(Acquire))
            .map(|(t, _)| *t);
        let err = match (timed_out, failed) {
            (Some(t), _) => TaskError::timeout(t),
            (None, None) if (link.transfer)(&self.arena, &parent.arena) => {
                let attempt = parent.attempts[link.node as usize].load(Relaxed);
                parent.completed(link.node, attempt);
                parent.settle(link.node);
                let _ = link.handle.complete(link.node, Verdict::Completed);
                return;
            }
            (None, None) => TaskError::msg(format!(
                "subgraph output `{}` has no value",
                self.full_id(link.output)
            )),
            (None, Some((id, status, err))) => {
                let why = err.map(|e| format!(": {e}")).unwrap_or_default();
                TaskError::msg(format!("subgraph task `{id}` {status}{why}"))
            }
        };
        let attempt = parent.attempts[link.node as usize].load(Relaxed);
        let verdict = match parent.after_failure(link.node, attempt, err) {
            Ok(None) => {
                let _ = link.handle.requeue(link.node);
                return;
            }
            Ok(Some(d)) => {
                parent.requeue_later(link.handle.clone(), link.node, d);
                return;
            }
            Err(v) => v,
        };
        parent.settle(link.node);
        let _ = link.handle.complete(link.node, verdict);
    }
}
