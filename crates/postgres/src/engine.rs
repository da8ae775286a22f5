//! The submitter's side: submit a workflow, read status, list runs, cancel, watch events.
//!
//! Invariants:
//! 1. [`Engine::submit`] validates the whole workflow before touching the database, then inserts
//!    the run, its tasks and edges, the roots' `ready` state and the first events in ONE
//!    transaction, and NOTIFYs `<schema>_ready` at commit: a run is either fully there or absent.
//! 2. A task's `rank` is its upward rank: its estimate (1 ms when none) plus the largest rank of
//!    its successors, i.e. the longest remaining path to the end of the run. If any task has an
//!    order key, the ranks are the keys' places in their sorted order instead (0 for a task
//!    without one; equal keys, equal ranks): exact in a `double precision` column, whatever
//!    the keys' size, and ordered as the keys are.
//! 3. [`Engine::watch`] reads the `events` table from a cursor `(xid, id)` and only past
//!    transactions older than every transaction still in progress
//!    (`xid < pg_snapshot_xmin(pg_current_snapshot())`); a bigserial alone is not enough, since
//!    ids are taken before commit and commit out of order. NOTIFY only wakes it; the table is the
//!    source of truth, so nothing is lost across reconnects.
//! 4. The engine keeps one connection and reconnects on the next call after it broke; `watch` and
//!    `wait` reconnect by themselves with backoff.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, Mutex, MutexGuard};
use tokio_postgres::Client;

use crate::conn::{Backoff, ConnectOptions};
use crate::error::{Error, Result};
use crate::memo::{self, MemoEntry};
use crate::model::{
    Event, RunId, RunState, RunStatus, RunSummary, TaskState, TaskStatus, Work, Workflow,
};
use crate::queue;
use crate::schema;

/// A handle on a PostgreSQL-backed nerv: submit, status, runs, cancel, watch.
#[derive(Debug)]
pub struct Engine {
    opts: ConnectOptions,
    conn: Mutex<Option<Client>>,
}

impl Engine {
    /// Connects to `url` (schema `nerv`) and applies missing migrations.
    pub async fn connect(url: &str) -> Result<Engine> {
        Self::connect_with(ConnectOptions::new(url)?).await
    }

    /// Connects with explicit options and applies missing migrations.
    pub async fn connect_with(opts: ConnectOptions) -> Result<Engine> {
        let mut client = opts.connect().await?;
        schema::migrate(&opts, &mut client).await?;
        Ok(Engine {
            opts,
            conn: Mutex::new(Some(client)),
        })
    }

    /// The connection options.
    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }

    async fn client(&self) -> Result<MutexGuard<'_, Option<Client>>> {
        let mut g = self.conn.lock().await;
        let usable = match g.as_ref() {
            Some(c) => !c.is_closed(),
            None => false,
        };
        if !usable {
            *g = Some(self.opts.connect().await?);
        }
        Ok(g)
    }

    fn forget_if_broken<T>(
        &self,
        g: &mut MutexGuard<'_, Option<Client>>,
        r: Result<T>,
    ) -> Result<T> {
        if let Err(e) = &r {
            if e.is_connection() {
                **g = None;
            }
        }
        r
    }

    /// Stores `wf` as a new run and makes its roots ready; returns the run id.
    pub async fn submit(&self, wf: &Workflow) -> Result<RunId> {
        let plan = Plan::build(wf)?;
        let mut g = self.client().await?;
        let client = g.as_mut().expect("connected");
        let r = submit_in(&self.opts, client, wf, &plan).await;
        self.forget_if_broken(&mut g, r)
    }

    /// The run and all its tasks.
    pub async fn status(&self, run: RunId) -> Result<RunStatus> {
        let mut g = self.client().await?;
        let client = g.as_mut().expect("connected");
        let r = status_in(&self.opts, client, run).await;
        self.forget_if_broken(&mut g, r)
    }

    /// All runs, newest first.
    pub async fn runs(&self) -> Result<Vec<RunSummary>> {
        let mut g = self.client().await?;
        let client = g.as_ref().expect("connected");
        let r = client
            .query(
                &format!("SELECT {RUN_COLUMNS} FROM runs r ORDER BY id DESC"),
                &[],
            )
            .await
            .map_err(self.opts.db("listing runs"))
            .map(|rows| rows.iter().map(summary).collect());
        self.forget_if_broken(&mut g, r)
    }

    /// Duration estimates from history, as the local journal gives them: for each task of the
    /// workflow named `workflow` that succeeded by running (not from the cache) in one of its
    /// `last_runs` most recent runs, the mean of those runs' durations (from its last claim to
    /// its end), a moving average over the window. `nerv run --db` gives them to the tasks
    /// that have no `estimate` of their own, for their ranks and a searched order.
    pub async fn task_durations(
        &self,
        workflow: &str,
        last_runs: usize,
    ) -> Result<HashMap<String, Duration>> {
        let mut g = self.client().await?;
        let client = g.as_ref().expect("connected");
        let last = i64::try_from(last_runs).unwrap_or(i64::MAX);
        let r = client
            .query(
                "SELECT t.name, avg(extract(epoch FROM t.finished_at - t.started_at))::float8
                   FROM tasks t
                   JOIN (SELECT id FROM runs WHERE name = $1 ORDER BY id DESC LIMIT $2) r
                     ON r.id = t.run_id
                  WHERE t.status = 'succeeded' AND NOT t.cached
                    AND t.started_at IS NOT NULL AND t.finished_at IS NOT NULL
                  GROUP BY t.name",
                &[&workflow, &last],
            )
            .await
            .map_err(self.opts.db("reading task durations"))
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| {
                        let secs: f64 = r.get(1);
                        Duration::try_from_secs_f64(secs)
                            .ok()
                            .map(|d| (r.get(0), d))
                    })
                    .collect()
            });
        self.forget_if_broken(&mut g, r)
    }

    /// Cancels a run from any process: its waiting tasks are cancelled at once, its running
    /// tasks are stopped by their workers at their next heartbeat (woken by a NOTIFY). Returns
    /// false when the run had already finished.
    pub async fn cancel(&self, run: RunId) -> Result<bool> {
        let mut g = self.client().await?;
        let client = g.as_mut().expect("connected");
        let r = queue::cancel(&self.opts, client, run).await;
        let r = self.forget_if_broken(&mut g, r)?;
        r.ok_or(Error::RunNotFound(run))
    }

    /// Sets the capacity of a resource shared by every run in the schema.
    pub async fn set_resource(&self, name: &str, capacity: i64) -> Result<()> {
        let mut g = self.client().await?;
        let client = g.as_ref().expect("connected");
        let r = client
            .execute(
                "INSERT INTO resources (name, capacity) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET capacity = EXCLUDED.capacity",
                &[&name, &capacity],
            )
            .await
            .map(|_| ())
            .map_err(self.opts.db("setting a resource"));
        self.forget_if_broken(&mut g, r)
    }

    /// Streams the run's events from the beginning; the stream ends after the event that ends
    /// the run (`run_succeeded`, `run_failed`, `run_cancelled`). Reconnects by itself.
    pub fn watch(&self, run: RunId) -> Watch {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(watch_loop(self.opts.clone(), run, tx));
        Watch { rx }
    }

    /// Waits for the run to finish (through [`Engine::watch`]) and returns its final status,
    /// retrying through lost connections.
    pub async fn wait(&self, run: RunId) -> Result<RunStatus> {
        let mut w = self.watch(run);
        while let Some(ev) = w.next().await {
            ev?;
        }
        let mut backoff = Backoff::new();
        loop {
            match self.status(run).await {
                Err(e) if e.is_connection() => tokio::time::sleep(backoff.next_delay()).await,
                other => return other,
            }
        }
    }

    /// Low-level claim, for custom workers and tests: leases up to `max` ready tasks to
    /// `worker` for `lease` (step 1 of the protocol). Only tasks whose tags are all in `tags`
    /// and whose function (if any) is in `functions` are claimed.
    pub async fn claim(
        &self,
        worker: &str,
        tags: &[String],
        functions: &[String],
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Lease>> {
        let mut g = self.client().await?;
        let client = g.as_mut().expect("connected");
        let r = queue::claim(
            &self.opts,
            client,
            worker,
            tags,
            functions,
            max as i64,
            lease.as_millis() as i64,
        )
        .await;
        let claimed = self.forget_if_broken(&mut g, r)?;
        Ok(claimed
            .into_iter()
            .map(|c| Lease {
                run: c.run,
                task: c.name,
                attempt: c.attempt,
                worker: worker.to_string(),
                work: serde_json::from_value(c.work).ok(),
                index: c.id,
            })
            .collect())
    }

    /// Low-level completion (step 3 of the protocol): records `result` for the attempt held by
    /// `lease`. Returns false when the fence refused it (the attempt is no longer current, e.g.
    /// its lease expired and another worker took the task over): a zombie completion, ignored.
    pub async fn complete(
        &self,
        lease: &Lease,
        result: std::result::Result<Value, String>,
    ) -> Result<bool> {
        let outcome = match result {
            Ok(v) => queue::Outcome::Ok(v),
            Err(e) => queue::Outcome::Err(e),
        };
        let c = queue::Completion {
            run: lease.run,
            id: lease.index,
            attempt: lease.attempt,
            outcome,
            memo: None,
        };
        let mut g = self.client().await?;
        let client = g.as_mut().expect("connected");
        let r = queue::complete(&self.opts, client, &lease.worker, std::slice::from_ref(&c)).await;
        let rep = self.forget_if_broken(&mut g, r)?;
        Ok(rep.accepted == 1)
    }

    /// Reclaims every expired lease (step 4 of the protocol) on behalf of `by`; returns how
    /// many tasks were taken back. Workers do this by themselves every half lease.
    pub async fn reap_expired(&self, by: &str) -> Result<usize> {
        let mut g = self.client().await?;
        let client = g.as_mut().expect("connected");
        let r = queue::reap(&self.opts, client, by).await;
        self.forget_if_broken(&mut g, r)
    }

    /// Every live entry of the cache shared by the workers (memoized functions and cached
    /// commands), by task.
    pub async fn memo_entries(&self) -> Result<Vec<MemoEntry>> {
        let mut g = self.client().await?;
        let client = g.as_ref().expect("connected");
        let r = memo::entries(&self.opts, client).await;
        self.forget_if_broken(&mut g, r)
    }

    /// Removes the cache entries stored by these tasks (expired ones included); returns how
    /// many.
    pub async fn memo_remove_tasks(&self, tasks: &[String]) -> Result<u64> {
        let mut g = self.client().await?;
        let client = g.as_ref().expect("connected");
        let r = memo::remove(&self.opts, client, Some(tasks)).await;
        self.forget_if_broken(&mut g, r)
    }

    /// Removes every cache entry; returns how many.
    pub async fn memo_clear(&self) -> Result<u64> {
        let mut g = self.client().await?;
        let client = g.as_ref().expect("connected");
        let r = memo::remove(&self.opts, client, None).await;
        self.forget_if_broken(&mut g, r)
    }

    /// Deletes finished runs with their tasks, edges and events; returns how many. A run is
    /// deleted when it was created before `older_than` (if given) and is not one of the `keep`
    /// newest runs (if given); with neither, nothing is. A running run, or a cancelled one whose
    /// tasks are still being stopped, is never deleted. The same rule as `nerv runs rm`.
    pub async fn prune_runs(
        &self,
        older_than: Option<std::time::SystemTime>,
        keep: Option<usize>,
    ) -> Result<u64> {
        if older_than.is_none() && keep.is_none() {
            return Ok(0);
        }
        let keep = keep.map(|k| i64::try_from(k).unwrap_or(i64::MAX));
        let mut g = self.client().await?;
        let client = g.as_mut().expect("connected");
        let r = prune_in(&self.opts, client, older_than, keep).await;
        self.forget_if_broken(&mut g, r)
    }

    /// Drops the whole schema (every run, task and event in it). For tests and teardown.
    pub async fn drop_schema(&self) -> Result<()> {
        let mut g = self.client().await?;
        let client = g.as_ref().expect("connected");
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.opts.schema_name());
        let r = client
            .batch_execute(&sql)
            .await
            .map_err(self.opts.db("dropping the schema"));
        self.forget_if_broken(&mut g, r)
    }
}

/// A run's columns for [`summary`]: unfinished tasks are derived from the per-worker counts.
const RUN_COLUMNS: &str = "r.id, r.name, r.status, r.total,
    r.total - coalesce((SELECT sum(c.done) FROM run_counts c WHERE c.run_id = r.id), 0)::int";

async fn prune_in(
    opts: &ConnectOptions,
    client: &mut Client,
    older_than: Option<std::time::SystemTime>,
    keep: Option<i64>,
) -> Result<u64> {
    let tx = client
        .transaction()
        .await
        .map_err(opts.db("deleting runs"))?;
    let rows = tx
        .query(
            "DELETE FROM runs r
             WHERE r.status <> 'running'
               AND ($1::timestamptz IS NULL OR r.created_at < $1)
               AND ($2::bigint IS NULL OR r.id NOT IN (SELECT id FROM runs ORDER BY id DESC LIMIT $2))
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.run_id = r.id AND t.status = 'running')
             RETURNING r.id",
            &[&older_than, &keep],
        )
        .await
        .map_err(opts.db("deleting runs"))?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    tx.execute("DELETE FROM events WHERE run_id = ANY($1)", &[&ids])
        .await
        .map_err(opts.db("deleting events"))?;
    tx.commit().await.map_err(opts.db("deleting runs"))?;
    Ok(ids.len() as u64)
}

fn summary(r: &tokio_postgres::Row) -> RunSummary {
    RunSummary {
        id: r.get(0),
        name: r.get(1),
        state: RunState::parse(r.get(2)).unwrap_or(RunState::Failed),
        tasks: r.get::<_, i32>(3) as i64,
        unfinished: r.get::<_, i32>(4) as i64,
    }
}

async fn status_in(opts: &ConnectOptions, client: &mut Client, run: RunId) -> Result<RunStatus> {
    // One snapshot for the run's counts and its tasks: read in two statements outside a
    // transaction, a task that finished between them was final in the task list and still
    // unfinished in the counts (seen in CI: every task cancelled, one unfinished).
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(opts.db("reading a run"))?;
    let row = tx
        .query_opt(
            &format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = $1"),
            &[&run],
        )
        .await
        .map_err(opts.db("reading a run"))?
        .ok_or(Error::RunNotFound(run))?;
    let rows = tx
        .query(
            "SELECT name, status, attempt, lease_owner, output, error, cached FROM tasks
             WHERE run_id = $1 ORDER BY id",
            &[&run],
        )
        .await
        .map_err(opts.db("reading tasks"))?;
    tx.commit().await.map_err(opts.db("reading a run"))?;
    let tasks = rows
        .iter()
        .map(|r| TaskStatus {
            id: r.get(0),
            state: TaskState::parse(r.get(1)).unwrap_or(TaskState::Failed),
            attempt: r.get(2),
            worker: r.get(3),
            output: r.get(4),
            error: r.get(5),
            cached: r.get(6),
        })
        .collect();
    Ok(RunStatus {
        run: summary(&row),
        tasks,
    })
}

/// A validated workflow: dependency indices and ranks.
struct Plan {
    deps: Vec<Vec<i32>>,
    rank: Vec<f64>,
}

impl Plan {
    fn build(wf: &Workflow) -> Result<Plan> {
        let bad = |task: &str, reason: String| Error::InvalidWorkflow {
            workflow: wf.name.clone(),
            task: task.to_string(),
            reason,
        };
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, t) in wf.tasks.iter().enumerate() {
            if t.id.is_empty() {
                return Err(bad("", "empty task id".into()));
            }
            if index.insert(t.id.as_str(), i).is_some() {
                return Err(bad(&t.id, "duplicate task id".into()));
            }
            if t.retry.max_attempts == 0 {
                return Err(bad(&t.id, "retry.max_attempts must be at least 1".into()));
            }
            if let Some((r, a)) = t.uses.iter().find(|(_, a)| **a < 0) {
                return Err(bad(&t.id, format!("negative amount {a} of resource {r:?}")));
            }
            if let Work::Function { name, .. } = &t.work {
                if name.is_empty() {
                    return Err(bad(&t.id, "empty function name".into()));
                }
            }
        }
        let n = wf.tasks.len();
        let mut deps = vec![Vec::new(); n];
        let mut succ = vec![Vec::new(); n];
        for (i, t) in wf.tasks.iter().enumerate() {
            let mut seen = HashSet::new();
            for d in &t.deps {
                let j = *index
                    .get(d.as_str())
                    .ok_or_else(|| bad(&t.id, format!("unknown dependency {d:?}")))?;
                if j == i {
                    return Err(bad(&t.id, "depends on itself".into()));
                }
                if seen.insert(j) {
                    deps[i].push(j as i32);
                    succ[j].push(i);
                }
            }
        }
        // Kahn's algorithm: a topological order, or the cycle's tasks are left over.
        let mut indeg: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut order: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
        let mut head = 0;
        while head < order.len() {
            let i = order[head];
            head += 1;
            for &s in &succ[i] {
                indeg[s] -= 1;
                if indeg[s] == 0 {
                    order.push(s);
                }
            }
        }
        if order.len() < n {
            let stuck = (0..n).find(|&i| indeg[i] > 0).expect("a task in the cycle");
            return Err(bad(
                &wf.tasks[stuck].id,
                "is part of a dependency cycle".into(),
            ));
        }
        let mut rank = vec![0.0; n];
        for &i in order.iter().rev() {
            let est = wf.tasks[i]
                .estimate
                .map_or(1.0, |d| d.as_secs_f64() * 1000.0);
            let best = succ[i].iter().map(|&s| rank[s]).fold(0.0, f64::max);
            rank[i] = est + best;
        }
        if wf.tasks.iter().any(|t| t.order_key.is_some()) {
            let key = |i: usize| wf.tasks[i].order_key.unwrap_or(0);
            let mut keys: Vec<u64> = (0..n).map(key).collect();
            keys.sort_unstable();
            keys.dedup();
            for (i, r) in rank.iter_mut().enumerate() {
                *r = keys.partition_point(|&k| k < key(i)) as f64;
            }
        }
        Ok(Plan { deps, rank })
    }
}

/// Submissions of at least this many tasks refresh the planner's statistics.
const ANALYZE_AFTER: i32 = 500;

async fn submit_in(
    opts: &ConnectOptions,
    client: &mut Client,
    wf: &Workflow,
    plan: &Plan,
) -> Result<RunId> {
    let tx = client
        .transaction()
        .await
        .map_err(opts.db("submitting a run"))?;
    for (name, cap) in &wf.resources {
        tx.execute(
            "INSERT INTO resources (name, capacity) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET capacity = EXCLUDED.capacity",
            &[name, cap],
        )
        .await
        .map_err(opts.db("setting resources"))?;
    }
    let used: Vec<String> = wf
        .tasks
        .iter()
        .flat_map(|t| t.uses.keys().cloned())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if !used.is_empty() {
        let rows = tx
            .query(
                "SELECT name, capacity FROM resources WHERE name = ANY($1)",
                &[&used],
            )
            .await
            .map_err(opts.db("reading resources"))?;
        let caps: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for t in &wf.tasks {
            for (r, a) in &t.uses {
                let bad = |reason: String| Error::InvalidWorkflow {
                    workflow: wf.name.clone(),
                    task: t.id.clone(),
                    reason,
                };
                match caps.get(r) {
                    None => {
                        return Err(bad(format!(
                            "uses unknown resource {r:?} (declare its capacity)"
                        )))
                    }
                    Some(c) if a > c => {
                        return Err(bad(format!("needs {a} of {r:?} but its capacity is {c}")))
                    }
                    _ => {}
                }
            }
        }
    }
    let n = wf.tasks.len() as i32;
    let status = if n == 0 { "succeeded" } else { "running" };
    let run: i64 = tx
        .query_one(
            "INSERT INTO runs (name, status, total) VALUES ($1, $2, $3) RETURNING id",
            &[&wf.name, &status, &n],
        )
        .await
        .map_err(opts.db("inserting the run"))?
        .get(0);
    const CHUNK: usize = 5000;
    for (c, chunk) in wf.tasks.chunks(CHUNK).enumerate() {
        let base = c * CHUNK;
        let mut id = Vec::new();
        let mut name = Vec::new();
        let mut priority = Vec::new();
        let mut rank = Vec::new();
        let mut deps = Vec::new();
        let mut max_attempts = Vec::new();
        let mut backoff = Vec::new();
        let mut factor = Vec::new();
        let mut max_backoff = Vec::new();
        let mut timeout: Vec<Option<i64>> = Vec::new();
        let mut work = Vec::new();
        let mut fn_name: Vec<Option<String>> = Vec::new();
        let mut uses = Vec::new();
        let mut tags = Vec::new();
        let mut cache: Vec<Option<Value>> = Vec::new();
        for (k, t) in chunk.iter().enumerate() {
            let i = base + k;
            id.push(i as i32);
            name.push(t.id.clone());
            priority.push(t.priority.as_i16());
            rank.push(plan.rank[i]);
            deps.push(plan.deps[i].len() as i32);
            max_attempts.push(t.retry.max_attempts as i32);
            backoff.push(t.retry.backoff.as_millis() as i64);
            factor.push(t.retry.factor);
            max_backoff.push(t.retry.max_backoff.as_millis() as i64);
            timeout.push(t.timeout.map(|d| d.as_millis() as i64));
            work.push(serde_json::to_value(&t.work).unwrap_or(Value::Null));
            fn_name.push(match &t.work {
                Work::Function { name, .. } => Some(name.clone()),
                _ => None,
            });
            uses.push(serde_json::to_value(&t.uses).unwrap_or(Value::Null));
            tags.push(serde_json::to_value(&t.tags).unwrap_or(Value::Null));
            cache.push(t.cache.as_ref().and_then(|c| serde_json::to_value(c).ok()));
        }
        tx.execute(
            "INSERT INTO tasks (run_id, id, name, status, priority, rank, remaining_deps, max_attempts,
                 backoff_ms, backoff_factor, max_backoff_ms, timeout_ms, work, fn_name, uses, tags, ready_at,
                 cache)
             SELECT $1, u.id, u.name, CASE WHEN u.deps = 0 THEN 'ready' ELSE 'pending' END, u.priority,
                 u.rank, u.deps, u.max_attempts, u.backoff_ms, u.factor, u.max_backoff_ms, u.timeout_ms,
                 u.work, u.fn_name, u.uses, ARRAY(SELECT jsonb_array_elements_text(u.tags)),
                 CASE WHEN u.deps = 0 THEN now() END, u.cache
             FROM unnest($2::int[], $3::text[], $4::smallint[], $5::float8[], $6::int[], $7::int[],
                 $8::bigint[], $9::float8[], $10::bigint[], $11::bigint[], $12::jsonb[], $13::text[],
                 $14::jsonb[], $15::jsonb[], $16::jsonb[])
               AS u(id, name, priority, rank, deps, max_attempts, backoff_ms, factor, max_backoff_ms,
                 timeout_ms, work, fn_name, uses, tags, cache)",
            &[
                &run,
                &id,
                &name,
                &priority,
                &rank,
                &deps,
                &max_attempts,
                &backoff,
                &factor,
                &max_backoff,
                &timeout,
                &work,
                &fn_name,
                &uses,
                &tags,
                &cache,
            ],
        )
        .await
        .map_err(opts.db("inserting tasks"))?;
    }
    let mut from = Vec::new();
    let mut to = Vec::new();
    for (i, ds) in plan.deps.iter().enumerate() {
        for &d in ds {
            from.push(d);
            to.push(i as i32);
        }
    }
    for (f, t) in from.chunks(20_000).zip(to.chunks(20_000)) {
        tx.execute(
            "INSERT INTO edges (run_id, from_task, to_task) SELECT $1, f, t FROM unnest($2::int[], $3::int[]) AS e(f, t)",
            &[&run, &f, &t],
        )
        .await
        .map_err(opts.db("inserting edges"))?;
    }
    let end = if n == 0 {
        ", ($1, NULL, 'run_succeeded')"
    } else {
        ""
    };
    tx.execute(
        &format!(
            "INSERT INTO events (run_id, task_id, kind) VALUES ($1, NULL, 'run_submitted'){end};
             "
        ),
        &[&run],
    )
    .await
    .map_err(opts.db("inserting events"))?;
    let roots: Vec<i32> = (0..n)
        .filter(|&i| plan.deps[i as usize].is_empty())
        .collect();
    tx.execute(
        "INSERT INTO events (run_id, task_id, kind) SELECT $1, r, 'task_ready' FROM unnest($2::int[]) AS r",
        &[&run, &roots],
    )
    .await
    .map_err(opts.db("inserting events"))?;
    tx.execute(
        "SELECT pg_notify($1, ''), pg_notify($2, '')",
        &[&opts.channel("ready"), &opts.channel("events")],
    )
    .await
    .map_err(opts.db("notifying"))?;
    tx.commit().await.map_err(opts.db("committing a run"))?;
    if n >= ANALYZE_AFTER {
        // A queue table's statistics go stale fast; without them the planner sorts every ready
        // row on each claim instead of walking `tasks_ready` in order. Best effort.
        if let Err(e) = client.batch_execute("ANALYZE tasks, edges").await {
            tracing::debug!("analyze after submit: {e}");
        }
    }
    Ok(run)
}

/// One attempt leased by [`Engine::claim`].
#[derive(Debug, Clone)]
pub struct Lease {
    /// The run.
    pub run: RunId,
    /// The task's user id.
    pub task: String,
    /// The attempt number: the fencing token.
    pub attempt: i32,
    /// The worker holding the lease.
    pub worker: String,
    /// What to run (`None` if the stored work could not be read).
    pub work: Option<Work>,
    index: i32,
}

impl Lease {
    /// The attempt's idempotency key.
    pub fn idempotency_key(&self) -> crate::IdempotencyKey {
        crate::IdempotencyKey {
            run: self.run,
            task: self.task.clone(),
            attempt: self.attempt,
        }
    }
}

/// A stream of a run's events; see [`Engine::watch`]. Also a [`futures_util::Stream`].
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Result<Event>>,
}

impl Watch {
    /// The next event, or `None` after the run ended (or a non-retryable error was returned).
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for Watch {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

const WATCH_POLL: Duration = Duration::from_secs(1);

async fn watch_loop(opts: ConnectOptions, run: RunId, tx: mpsc::Sender<Result<Event>>) {
    let mut cursor = ("0".to_string(), 0i64);
    let mut backoff = Backoff::new();
    let mut checked = false;
    loop {
        let (client, mut notes) = match opts.listen(&[opts.channel("events")]).await {
            Ok(pair) => pair,
            Err(e) if e.is_connection() => {
                tracing::warn!("watch of run {run}: {e}; reconnecting");
                tokio::time::sleep(backoff.next_delay()).await;
                if tx.is_closed() {
                    return;
                }
                continue;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        backoff.reset();
        if !checked {
            match client
                .query_opt("SELECT 1 FROM runs WHERE id = $1", &[&run])
                .await
            {
                Ok(Some(_)) => checked = true,
                Ok(None) => {
                    let _ = tx.send(Err(Error::RunNotFound(run))).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        "watch of run {run}: {}; reconnecting",
                        opts.db("reading the run")(e)
                    );
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
        }
        loop {
            let rows = client
                .query(
                    "SELECT e.id, e.xid::text, t.name, e.kind, e.attempt, e.worker, e.data
                     FROM events e LEFT JOIN tasks t ON t.run_id = e.run_id AND t.id = e.task_id
                     WHERE e.run_id = $1 AND (e.xid, e.id) > ($2::text::xid8, $3)
                       AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
                     ORDER BY e.xid, e.id LIMIT 1000",
                    &[&run, &cursor.0, &cursor.1],
                )
                .await;
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(
                        "watch of run {run}: {}; reconnecting",
                        opts.db("reading events")(e)
                    );
                    break;
                }
            };
            let full = rows.len() == 1000;
            for r in rows {
                let ev = Event {
                    id: r.get(0),
                    run,
                    task: r.get(2),
                    kind: r.get(3),
                    attempt: r.get(4),
                    worker: r.get(5),
                    data: r.get(6),
                };
                cursor = (r.get(1), ev.id);
                let end = ev.ends_run();
                if tx.send(Ok(ev)).await.is_err() || end {
                    return;
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                n = notes.recv() => if n.is_none() { break },
                _ = tokio::time::sleep(WATCH_POLL) => {}
                _ = tx.closed() => return,
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskSpec;

    fn wf(tasks: Vec<TaskSpec>) -> Workflow {
        Workflow {
            name: "w".into(),
            tasks,
            resources: Default::default(),
        }
    }

    #[test]
    fn rank_is_longest_remaining_path() {
        let p = Plan::build(&wf(vec![
            TaskSpec::shell("a", "true").estimate(Duration::from_millis(10)),
            TaskSpec::shell("b", "true")
                .after(["a"])
                .estimate(Duration::from_millis(5)),
            TaskSpec::shell("c", "true")
                .after(["a"])
                .estimate(Duration::from_millis(50)),
            TaskSpec::shell("d", "true")
                .after(["b", "c"])
                .estimate(Duration::from_millis(1)),
        ]))
        .unwrap();
        assert_eq!(p.rank, vec![61.0, 6.0, 51.0, 1.0]);
        assert_eq!(p.deps[3], vec![1, 2]);
    }

    #[test]
    fn order_keys_replace_the_ranks_in_their_order() {
        let big = u64::MAX - 1;
        let p = Plan::build(&wf(vec![
            TaskSpec::shell("a", "true")
                .estimate(Duration::from_secs(9))
                .order_key(5),
            TaskSpec::shell("b", "true").after(["a"]).order_key(big),
            TaskSpec::shell("c", "true").after(["a"]).order_key(big + 1),
            TaskSpec::shell("d", "true").after(["b", "c"]),
            TaskSpec::shell("e", "true").order_key(5),
        ]))
        .unwrap();
        // Sorted keys 0 (d has none), 5, big, big + 1: distinct ranks even where f64 could
        // not tell the keys apart.
        assert_eq!(p.rank, vec![1.0, 2.0, 3.0, 0.0, 1.0]);
    }

    #[test]
    fn cycle_and_unknown_dep_name_the_task() {
        let e = Plan::build(&wf(vec![
            TaskSpec::shell("a", "true").after(["b"]),
            TaskSpec::shell("b", "true").after(["a"]),
        ]))
        .err()
        .unwrap();
        assert!(e.to_string().contains("cycle"), "{e}");
        let e = Plan::build(&wf(vec![TaskSpec::shell("a", "true").after(["zz"])]))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("task \"a\"") && e.to_string().contains("zz"),
            "{e}"
        );
    }
}
