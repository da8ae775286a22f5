//! The queue protocol: claim, heartbeat, complete, reap, cancel. Every statement that changes a
//! task lives here.
//!
//! # Invariants
//! - A task's `attempt` is its fencing token: only a claim increments it, and only the holder of
//!   the current `(attempt, lease_owner)` pair may move a `running` task on.
//! - Locks are taken in one order: the runs' advisory locks (by id; *shared* by completions and
//!   reaps, so that they never wait on each other, *exclusive* by cancel) → `runs` rows →
//!   `tasks` rows → `resources` rows (by name) → `run_counts` rows → `memo` rows (by key).
//!   Claims never wait on task rows (`SKIP LOCKED`). A deadlock or serialization failure that
//!   still happens is transient: the caller retries the whole transaction.
//! - Completions never write the `runs` row (it was the hot row that serialized every
//!   completion of a run): terminal tasks are counted in the recording worker's own
//!   `run_counts` row, and a run is finalized exactly once after the commit that counted its
//!   last task (the `finish` module).
//! - `resources.in_use` rises only in the claim transaction (after re-checking capacity under
//!   the row lock) and falls only in the transaction that takes the task out of `running`.
//! - Every transition inserts an `events` row in the same transaction. Submissions and cancels
//!   NOTIFY in their transaction; completions and reclaims NOTIFY `<schema>_events` (and
//!   `<schema>_ready` when a task became ready) in the statement that follows their commit
//!   ([`finalize`]): PostgreSQL serializes the commits of notifying transactions on one
//!   database-wide lock held through the WAL flush, which would put every worker's group commit
//!   in one line. A notification lost with a crashed worker is covered by the pollers.
//!
//! # Protocol (see also the crate README)
//! 1. **Claim** (one transaction, one main statement): select up to `k` rows `WHERE status =
//!    'ready' AND ready_at <= now()` that the worker's tags and functions can run and whose
//!    resources look free, `ORDER BY priority DESC, rank DESC, ready_at`, `FOR UPDATE SKIP
//!    LOCKED`; set them `running`, `attempt = attempt + 1`, `lease_owner = me`, `lease_expires
//!    = now() + lease`. For tasks with `uses`, lock their resource rows (sorted), grant greedily
//!    in priority order, and put the tasks that do not fit back to `ready` with their old attempt
//!    (invisible to others: same transaction). Insert `task_started` events. The worker's claim
//!    connection commits with `synchronous_commit = off`: a claim lost in a crash leaves the row
//!    as before, and the fence includes `lease_owner`, so nothing but a re-run follows.
//! 2. **Heartbeat** (every lease/3, and at once on a `<schema>_cancel` notification): extend
//!    `lease_expires` of the held `(run, task, attempt)` rows still owned by me; rows not
//!    returned were lost (stop them, send nothing); rows whose run is `cancelled` are stopped
//!    and completed as cancelled.
//! 3. **Complete** (group commit: every completion queued since the last commit, one
//!    transaction): take the runs' advisory locks, shared; `UPDATE tasks … WHERE attempt = $attempt AND lease_owner =
//!    $me AND status = 'running'` to `succeeded` / `ready` (retry, `ready_at = now() + backoff`)
//!    / `failed` / `cancelled` (a cache hit is `succeeded` and `cached`); completions that match
//!    no row are zombies: logged, counted, an `completion_ignored` event, nothing else. Then,
//!    in the same transaction: store the cache entries of memoized successes; release
//!    resources; mark every pending descendant of a failed task `skipped`; add the terminal
//!    tasks to this worker's `run_counts`; insert events; last, sent in one pipeline with the
//!    COMMIT (so that successor rows other workers' commits may wait for stay locked for one
//!    statement), decrement `remaining_deps` of successors of succeeded tasks and make those at
//!    0 `ready`, with their events. After the commit, one statement: [`finalize`] the runs whose
//!    tasks are all terminal, NOTIFY.
//! 4. **Reap** (any worker, every lease/2): rows `running` with `lease_expires < now()` are
//!    taken out exactly like a failed completion (retry policy and backoff apply, attempts
//!    counted), with a `lease_expired` event naming the presumed-dead worker. The old holder's
//!    late completion then fails the fence of step 3.
//! 5. **Cancel** (any process): take the run's advisory lock, exclusive (no completion or reap
//!    of the run is in flight meanwhile, so none can make a task ready or retry it behind the
//!    cancel), lock the run row, set it `cancelled`, cancel its `pending`/`ready` tasks (counted
//!    in the `cancel` slot), NOTIFY `<schema>_cancel`; running tasks are stopped by their
//!    workers at step 2 and completed as cancelled.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::Value;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::conn::ConnectOptions;
use crate::error::Result;
use crate::finish::{after_commit, count_done, finalize, lock_runs};
use crate::memo::MemoPut;
use crate::model::{RunId, TaskState};

/// A task leased by this worker.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub run: RunId,
    pub id: i32,
    pub name: String,
    pub attempt: i32,
    pub work: Value,
    pub uses: BTreeMap<String, i64>,
    pub timeout_ms: Option<i64>,
    /// What a cached command's key is made of (`tasks.cache`).
    pub cache: Option<Value>,
    priority: i16,
    rank: f64,
}

/// How an attempt ended, as reported by the worker.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Succeeded with this output.
    Ok(Value),
    /// Failed with this error (the retry policy decides what follows).
    Err(String),
    /// Stopped because its run was cancelled.
    Cancelled(String),
    /// Not run: this output was found in the cache.
    Cached(Value),
}

/// One finished attempt to record.
#[derive(Debug, Clone)]
pub(crate) struct Completion {
    pub run: RunId,
    pub id: i32,
    pub attempt: i32,
    pub outcome: Outcome,
    /// The cache entry to store if the outcome is a success.
    pub memo: Option<MemoPut>,
}

/// What a group commit did.
#[derive(Debug, Default, Clone)]
pub(crate) struct CommitReport {
    /// Completions applied.
    pub accepted: usize,
    /// Completions refused by the fence: `(run, task, attempt)`.
    pub zombies: Vec<(RunId, i32, i32)>,
    /// Tasks made ready (successors and retries), plus 1 when resources were released: how
    /// much reason there is to claim again.
    pub made_ready: usize,
}

/// A task leaving `running` (or a pending task becoming skipped), to be followed up.
#[derive(Debug, Clone)]
struct Transition {
    run: RunId,
    id: i32,
    status: TaskState,
    attempt: i32,
    uses: BTreeMap<String, i64>,
    error: Option<String>,
    /// Set when the lease expired: the worker that lost it.
    expired_from: Option<String>,
    worker: String,
    /// Completed from the cache.
    cached: bool,
}

impl Transition {
    /// From a row whose first six columns are `run_id, id, status, attempt, uses, error`
    /// (the `RETURNING` lists of completions and reclaims), recorded by worker `me`.
    fn of_row(
        r: &tokio_postgres::Row,
        me: &str,
        expired_from: Option<String>,
        cached: bool,
    ) -> Self {
        Transition {
            run: r.get(0),
            id: r.get(1),
            status: TaskState::parse(r.get(2)).unwrap_or(TaskState::Failed),
            attempt: r.get(3),
            uses: uses_map(&r.get::<_, Value>(4)),
            error: r.get(5),
            expired_from,
            worker: me.to_string(),
            cached,
        }
    }
}

fn uses_map(v: &Value) -> BTreeMap<String, i64> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_i64().map(|n| (k.clone(), n)))
                .collect()
        })
        .unwrap_or_default()
}

const CLAIM: &str = "
WITH cand AS (
    SELECT t.run_id, t.id FROM tasks t
    WHERE t.status = 'ready' AND t.ready_at <= now()
      AND t.tags <@ $2::text[]
      AND (t.fn_name IS NULL OR t.fn_name = ANY($3::text[]))
      AND (t.uses = '{}'::jsonb OR NOT EXISTS (
            SELECT 1 FROM jsonb_each_text(t.uses) u JOIN resources r ON r.name = u.key
            WHERE r.in_use + u.value::bigint > r.capacity))
    ORDER BY t.priority DESC, t.rank DESC, t.ready_at ASC
    LIMIT $4
    FOR UPDATE OF t SKIP LOCKED
), upd AS (
    UPDATE tasks t SET status = 'running', attempt = t.attempt + 1, lease_owner = $1,
        lease_expires = now() + $5::bigint * interval '1 millisecond', started_at = now()
    FROM cand WHERE t.run_id = cand.run_id AND t.id = cand.id
    RETURNING t.run_id, t.id, t.name, t.attempt, t.work, t.uses, t.timeout_ms, t.priority, t.rank,
        t.cache
), ev AS (
    INSERT INTO events (run_id, task_id, kind, attempt, worker)
    SELECT run_id, id, 'task_started', attempt, $1 FROM upd WHERE uses = '{}'::jsonb
)
SELECT * FROM upd";

/// Step 1: claims up to `k` ready tasks for `me`.
#[allow(clippy::too_many_arguments)] // one argument per column of the claim filter
pub(crate) async fn claim(
    opts: &ConnectOptions,
    client: &mut Client,
    me: &str,
    tags: &[String],
    functions: &[String],
    k: i64,
    lease_ms: i64,
) -> Result<Vec<Claimed>> {
    let r = claim_in(opts, client, me, tags, functions, k, lease_ms).await;
    if r.is_err() && !client.is_closed() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    r
}

/// The transaction of [`claim`] (BEGIN sent with the claim, in one round trip); on error the
/// caller rolls back.
#[allow(clippy::too_many_arguments)] // as `claim`
async fn claim_in(
    opts: &ConnectOptions,
    tx: &Client,
    me: &str,
    tags: &[String],
    functions: &[String],
    k: i64,
    lease_ms: i64,
) -> Result<Vec<Claimed>> {
    let (begun, rows) = futures_util::future::join(
        tx.batch_execute("BEGIN"),
        tx.query_typed(
            CLAIM,
            &[
                (&me, Type::TEXT),
                (&tags, Type::TEXT_ARRAY),
                (&functions, Type::TEXT_ARRAY),
                (&k, Type::INT8),
                (&lease_ms, Type::INT8),
            ],
        ),
    )
    .await;
    begun.map_err(opts.db("claiming tasks"))?;
    let rows = rows.map_err(opts.db("claiming tasks"))?;
    let mut claimed: Vec<Claimed> = rows
        .iter()
        .map(|r| Claimed {
            run: r.get(0),
            id: r.get(1),
            name: r.get(2),
            attempt: r.get(3),
            work: r.get(4),
            uses: uses_map(&r.get::<_, Value>(5)),
            timeout_ms: r.get(6),
            priority: r.get(7),
            rank: r.get(8),
            cache: r.get(9),
        })
        .collect();
    if claimed.iter().any(|c| !c.uses.is_empty()) {
        claimed = grant_resources(opts, tx, me, claimed).await?;
    }
    tx.batch_execute("COMMIT")
        .await
        .map_err(opts.db("committing a claim"))?;
    Ok(claimed)
}

/// Locks the resource rows the claimed tasks use (sorted by name), grants them greedily in
/// priority order, and returns the tasks that fit; the others go back to `ready`.
async fn grant_resources(
    opts: &ConnectOptions,
    tx: &Client,
    me: &str,
    mut claimed: Vec<Claimed>,
) -> Result<Vec<Claimed>> {
    claimed.sort_by(|a, b| b.priority.cmp(&a.priority).then(b.rank.total_cmp(&a.rank)));
    let names: Vec<String> = claimed
        .iter()
        .flat_map(|c| c.uses.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows = tx
        .query("SELECT name, capacity, in_use FROM resources WHERE name = ANY($1) ORDER BY name FOR UPDATE", &[&names])
        .await
        .map_err(opts.db("locking resources"))?;
    let mut room: HashMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, i64>(1) - r.get::<_, i64>(2),
            )
        })
        .collect();
    let mut granted = Vec::new();
    let mut denied = Vec::new();
    for c in claimed {
        let fits = c
            .uses
            .iter()
            .all(|(n, a)| !matches!(room.get(n), Some(r) if *r < *a));
        if fits {
            for (n, a) in &c.uses {
                if let Some(r) = room.get_mut(n) {
                    *r -= a;
                }
            }
            granted.push(c);
        } else {
            denied.push(c);
        }
    }
    let mut add: BTreeMap<String, i64> = BTreeMap::new();
    for c in &granted {
        for (n, a) in &c.uses {
            *add.entry(n.clone()).or_default() += a;
        }
    }
    if !add.is_empty() {
        let (n, a): (Vec<String>, Vec<i64>) = add.into_iter().unzip();
        tx.execute(
            "UPDATE resources r SET in_use = r.in_use + d.amount
             FROM unnest($1::text[], $2::bigint[]) AS d(name, amount) WHERE r.name = d.name",
            &[&n, &a],
        )
        .await
        .map_err(opts.db("taking resources"))?;
    }
    if !denied.is_empty() {
        let runs: Vec<i64> = denied.iter().map(|c| c.run).collect();
        let ids: Vec<i32> = denied.iter().map(|c| c.id).collect();
        tx.execute(
            "UPDATE tasks t SET status = 'ready', attempt = t.attempt - 1, lease_owner = NULL,
                 lease_expires = NULL, started_at = NULL
             FROM unnest($1::bigint[], $2::int[]) AS d(run_id, id)
             WHERE t.run_id = d.run_id AND t.id = d.id",
            &[&runs, &ids],
        )
        .await
        .map_err(opts.db("returning tasks that do not fit"))?;
    }
    let with_uses: Vec<&Claimed> = granted.iter().filter(|c| !c.uses.is_empty()).collect();
    if !with_uses.is_empty() {
        let runs: Vec<i64> = with_uses.iter().map(|c| c.run).collect();
        let ids: Vec<i32> = with_uses.iter().map(|c| c.id).collect();
        let attempts: Vec<i32> = with_uses.iter().map(|c| c.attempt).collect();
        tx.execute(
            "INSERT INTO events (run_id, task_id, kind, attempt, worker)
             SELECT d.run_id, d.id, 'task_started', d.attempt, $4
             FROM unnest($1::bigint[], $2::int[], $3::int[]) AS d(run_id, id, attempt)",
            &[&runs, &ids, &attempts, &me],
        )
        .await
        .map_err(opts.db("recording starts"))?;
    }
    Ok(granted)
}

/// What a heartbeat learned about the held tasks.
#[derive(Debug, Default)]
pub(crate) struct HeartbeatReport {
    /// Held tasks whose lease this worker no longer owns.
    pub lost: Vec<(RunId, i32, i32)>,
    /// Held tasks whose run was cancelled.
    pub cancelled: Vec<(RunId, i32, i32)>,
}

/// Step 2: extends the leases of `held` and records the worker's heartbeat.
pub(crate) async fn heartbeat(
    opts: &ConnectOptions,
    client: &Client,
    me: &str,
    tags: &[String],
    concurrency: i32,
    held: &[(RunId, i32, i32)],
    lease_ms: i64,
) -> Result<HeartbeatReport> {
    let upsert_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&me, &tags, &concurrency];
    let upsert = client.execute(
        "INSERT INTO workers (id, tags, concurrency) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET heartbeat = now()",
        &upsert_params,
    );
    let runs: Vec<i64> = held.iter().map(|h| h.0).collect();
    let ids: Vec<i32> = held.iter().map(|h| h.1).collect();
    let attempts: Vec<i32> = held.iter().map(|h| h.2).collect();
    let extend_params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&me, &runs, &ids, &attempts, &lease_ms];
    let extend = client.query(
        "UPDATE tasks t SET lease_expires = now() + $5::bigint * interval '1 millisecond'
         FROM unnest($2::bigint[], $3::int[], $4::int[]) AS h(run_id, id, attempt)
         WHERE t.run_id = h.run_id AND t.id = h.id AND t.attempt = h.attempt
           AND t.lease_owner = $1 AND t.status = 'running'
         RETURNING t.run_id, t.id, t.attempt, (SELECT r.status FROM runs r WHERE r.id = t.run_id)",
        &extend_params,
    );
    let (_, rows) = futures_util::future::try_join(upsert, extend)
        .await
        .map_err(opts.db("heartbeating"))?;
    let mut kept = HashSet::new();
    let mut report = HeartbeatReport::default();
    for r in rows {
        let key = (r.get::<_, i64>(0), r.get::<_, i32>(1), r.get::<_, i32>(2));
        kept.insert(key);
        if r.get::<_, Option<String>>(3).as_deref() == Some("cancelled") {
            report.cancelled.push(key);
        }
    }
    report.lost = held.iter().copied().filter(|k| !kept.contains(k)).collect();
    Ok(report)
}

/// The `status`/`ready_at` expressions shared by completions and the reaper: `$failed` is a
/// boolean SQL expression telling whether this attempt failed.
const BACKOFF: &str =
    "now() + LEAST(t.max_backoff_ms::float8, t.backoff_ms * power(t.backoff_factor, (t.attempt - 1)::float8)) * interval '1 millisecond'";

/// Step 3: records a batch of completions by `me` in one transaction.
pub(crate) async fn complete(
    opts: &ConnectOptions,
    client: &mut Client,
    me: &str,
    batch: &[Completion],
) -> Result<CommitReport> {
    let runs: BTreeSet<RunId> = batch.iter().map(|c| c.run).collect();
    let r = complete_in(opts, client, me, batch, &runs).await;
    if r.is_err() && !client.is_closed() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    let (transitions, zombies, made_ready) = r?;
    after_commit(opts, client, &finished_runs(&transitions), made_ready > 0).await;
    for z in &zombies {
        tracing::warn!(
            worker = me,
            run = z.0,
            task = z.1,
            attempt = z.2,
            "ignored a late completion (fenced)"
        );
    }
    Ok(CommitReport {
        accepted: transitions.len(),
        zombies,
        made_ready,
    })
}

/// The transaction of [`complete`]: returns the transitions applied, the zombies and how many
/// tasks became ready. On error the caller rolls back.
async fn complete_in(
    opts: &ConnectOptions,
    tx: &Client,
    me: &str,
    batch: &[Completion],
    runs: &BTreeSet<RunId>,
) -> Result<(Vec<Transition>, Vec<(RunId, i32, i32)>, usize)> {
    let (begun, locked) =
        futures_util::future::join(tx.batch_execute("BEGIN"), lock_runs(opts, tx, runs, true))
            .await;
    begun.map_err(opts.db("recording completions"))?;
    locked?;
    let mut r_run = Vec::with_capacity(batch.len());
    let mut r_id = Vec::with_capacity(batch.len());
    let mut r_attempt = Vec::with_capacity(batch.len());
    let mut r_outcome = Vec::with_capacity(batch.len());
    let mut r_output: Vec<Option<Value>> = Vec::with_capacity(batch.len());
    let mut r_error: Vec<Option<String>> = Vec::with_capacity(batch.len());
    for c in batch {
        r_run.push(c.run);
        r_id.push(c.id);
        r_attempt.push(c.attempt);
        let (o, out, err) = match &c.outcome {
            Outcome::Ok(v) => ("ok", Some(v.clone()), None),
            // PostgreSQL text cannot hold NUL characters.
            Outcome::Err(e) => ("err", None, Some(e.replace('\0', ""))),
            Outcome::Cancelled(e) => ("cancelled", None, Some(e.replace('\0', ""))),
            Outcome::Cached(v) => ("cached", Some(v.clone()), None),
        };
        r_outcome.push(o.to_string());
        r_output.push(out);
        r_error.push(err);
    }
    let sql = format!(
        "WITH c AS (
            SELECT * FROM unnest($2::bigint[], $3::int[], $4::int[], $5::text[], $6::jsonb[], $7::text[])
                AS c(run_id, id, attempt, outcome, output, error))
         UPDATE tasks t SET
            status = CASE WHEN c.outcome IN ('ok', 'cached') THEN 'succeeded'
                          WHEN c.outcome = 'cancelled' OR r.status = 'cancelled' THEN 'cancelled'
                          WHEN t.attempt < t.max_attempts THEN 'ready'
                          ELSE 'failed' END,
            ready_at = CASE WHEN c.outcome = 'err' AND r.status <> 'cancelled' AND t.attempt < t.max_attempts
                            THEN {BACKOFF} ELSE t.ready_at END,
            output = c.output, error = c.error, finished_at = now(),
            lease_owner = NULL, lease_expires = NULL, cached = (c.outcome = 'cached')
         FROM c, runs r
         WHERE t.run_id = c.run_id AND t.id = c.id AND r.id = c.run_id
           AND t.attempt = c.attempt AND t.lease_owner = $1 AND t.status = 'running'
         RETURNING t.run_id, t.id, t.status, t.attempt, t.uses, t.error, t.cached"
    );
    let rows = tx
        .query_typed(
            &sql,
            &[
                (&me, Type::TEXT),
                (&r_run, Type::INT8_ARRAY),
                (&r_id, Type::INT4_ARRAY),
                (&r_attempt, Type::INT4_ARRAY),
                (&r_outcome, Type::TEXT_ARRAY),
                (&r_output, Type::JSONB_ARRAY),
                (&r_error, Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(opts.db("recording completions"))?;
    let transitions: Vec<Transition> = rows
        .iter()
        .map(|r| Transition::of_row(r, me, None, r.get(6)))
        .collect();
    let accepted: HashSet<(RunId, i32, i32)> = transitions
        .iter()
        .map(|t| (t.run, t.id, t.attempt))
        .collect();
    let zombies: Vec<(RunId, i32, i32)> = batch
        .iter()
        .map(|c| (c.run, c.id, c.attempt))
        .filter(|k| !accepted.contains(k))
        .collect();
    store_memo(opts, tx, batch, &transitions).await?;
    let made_ready = follow_up(opts, tx, me, &transitions, &zombies).await?;
    Ok((transitions, zombies, made_ready))
}

/// Step 4: takes expired leases back; returns how many tasks were reclaimed. Also the safety
/// net of run finalization: finishes every running run whose tasks are all terminal (its last
/// completer died between its commit and its [`finalize`]).
pub(crate) async fn reap(opts: &ConnectOptions, client: &mut Client, me: &str) -> Result<usize> {
    finalize(opts, client, None, false, false).await?;
    let cand = client
        .query(
            "SELECT run_id, id, attempt, lease_owner FROM tasks
             WHERE status = 'running' AND lease_expires < now() ORDER BY lease_expires LIMIT 256",
            &[],
        )
        .await
        .map_err(opts.db("looking for expired leases"))?;
    if cand.is_empty() {
        return Ok(0);
    }
    let runs: BTreeSet<RunId> = cand.iter().map(|r| r.get(0)).collect();
    let c_run: Vec<i64> = cand.iter().map(|r| r.get(0)).collect();
    let c_id: Vec<i32> = cand.iter().map(|r| r.get(1)).collect();
    let c_attempt: Vec<i32> = cand.iter().map(|r| r.get(2)).collect();
    let c_owner: Vec<Option<String>> = cand.iter().map(|r| r.get(3)).collect();
    let r = reap_in(opts, client, me, &runs, (c_run, c_id, c_attempt, c_owner)).await;
    if r.is_err() && !client.is_closed() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    let (transitions, made_ready) = r?;
    after_commit(opts, client, &finished_runs(&transitions), made_ready > 0).await;
    for t in &transitions {
        tracing::warn!(
            run = t.run,
            task = t.id,
            attempt = t.attempt,
            from = t.expired_from.as_deref().unwrap_or("?"),
            now = %t.status,
            "reclaimed an expired lease"
        );
    }
    Ok(transitions.len())
}

/// The candidates of [`reap`]: runs, task ids, attempts, lease owners.
type Expired = (Vec<i64>, Vec<i32>, Vec<i32>, Vec<Option<String>>);

/// The transaction of [`reap`]; on error the caller rolls back.
async fn reap_in(
    opts: &ConnectOptions,
    tx: &Client,
    me: &str,
    runs: &BTreeSet<RunId>,
    (c_run, c_id, c_attempt, c_owner): Expired,
) -> Result<(Vec<Transition>, usize)> {
    tx.batch_execute("BEGIN")
        .await
        .map_err(opts.db("reclaiming expired leases"))?;
    lock_runs(opts, tx, runs, true).await?;
    let sql = format!(
        "UPDATE tasks t SET
            status = CASE WHEN r.status = 'cancelled' THEN 'cancelled'
                          WHEN t.attempt < t.max_attempts THEN 'ready' ELSE 'failed' END,
            ready_at = CASE WHEN r.status <> 'cancelled' AND t.attempt < t.max_attempts
                            THEN {BACKOFF} ELSE t.ready_at END,
            error = 'lease expired: worker ' || coalesce(c.owner, '?') || ' stopped heartbeating',
            finished_at = now(), lease_owner = NULL, lease_expires = NULL
         FROM unnest($1::bigint[], $2::int[], $3::int[], $4::text[]) AS c(run_id, id, attempt, owner), runs r
         WHERE t.run_id = c.run_id AND t.id = c.id AND t.attempt = c.attempt AND r.id = c.run_id
           AND t.status = 'running' AND t.lease_expires < now()
         RETURNING t.run_id, t.id, t.status, t.attempt, t.uses, t.error, c.owner"
    );
    let rows = tx
        .query(&sql, &[&c_run, &c_id, &c_attempt, &c_owner])
        .await
        .map_err(opts.db("reclaiming expired leases"))?;
    let transitions: Vec<Transition> = rows
        .iter()
        .map(|r| {
            let lost_by = r.get::<_, Option<String>>(6).unwrap_or_default();
            Transition::of_row(r, me, Some(lost_by), false)
        })
        .collect();
    let made_ready = follow_up(opts, tx, me, &transitions, &[]).await?;
    Ok((transitions, made_ready))
}

/// Rows for one `INSERT INTO events … SELECT FROM unnest(…)`.
#[derive(Default)]
struct EventRows {
    run: Vec<i64>,
    task: Vec<Option<i32>>,
    kind: Vec<String>,
    attempt: Vec<Option<i32>>,
    worker: Vec<Option<String>>,
    data: Vec<Option<Value>>,
}

impl EventRows {
    fn push(
        &mut self,
        run: i64,
        task: Option<i32>,
        kind: &str,
        attempt: Option<i32>,
        worker: Option<&str>,
        data: Option<Value>,
    ) {
        self.run.push(run);
        self.task.push(task);
        self.kind.push(kind.to_string());
        self.attempt.push(attempt);
        self.worker.push(worker.map(str::to_string));
        self.data.push(data);
    }

    async fn insert(&self, opts: &ConnectOptions, tx: &Client) -> Result<()> {
        if self.run.is_empty() {
            return Ok(());
        }
        tx.query_typed(
            "INSERT INTO events (run_id, task_id, kind, attempt, worker, data)
             SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::int[], $5::text[], $6::jsonb[])",
            &[
                (&self.run, Type::INT8_ARRAY),
                (&self.task, Type::INT4_ARRAY),
                (&self.kind, Type::TEXT_ARRAY),
                (&self.attempt, Type::INT4_ARRAY),
                (&self.worker, Type::TEXT_ARRAY),
                (&self.data, Type::JSONB_ARRAY),
            ],
        )
        .await
        .map_err(opts.db("inserting events"))?;
        Ok(())
    }
}

/// The rest of steps 3 and 4, ending the caller's transaction: resources, skipped
/// descendants, run counts, events, successors, COMMIT (the NOTIFYs follow the commit, see
/// [`after_commit`]). Returns how many tasks became ready, plus
/// one when resources were freed (a reason for workers to claim again).
async fn follow_up(
    opts: &ConnectOptions,
    tx: &Client,
    me: &str,
    transitions: &[Transition],
    zombies: &[(RunId, i32, i32)],
) -> Result<usize> {
    let mut ev = EventRows::default();
    for z in zombies {
        ev.push(
            z.0,
            Some(z.1),
            "completion_ignored",
            Some(z.2),
            Some(me),
            None,
        );
    }
    // Resources held by tasks leaving `running`, locked in name order.
    let mut release: BTreeMap<String, i64> = BTreeMap::new();
    for t in transitions {
        for (n, a) in &t.uses {
            *release.entry(n.clone()).or_default() += a;
        }
    }
    let released = !release.is_empty();
    if released {
        let (n, a): (Vec<String>, Vec<i64>) = release.into_iter().unzip();
        tx.query(
            "SELECT 1 FROM resources WHERE name = ANY($1) ORDER BY name FOR UPDATE",
            &[&n],
        )
        .await
        .map_err(opts.db("locking resources"))?;
        tx.execute(
            "UPDATE resources r SET in_use = greatest(0, r.in_use - d.amount)
             FROM unnest($1::text[], $2::bigint[]) AS d(name, amount) WHERE r.name = d.name",
            &[&n, &a],
        )
        .await
        .map_err(opts.db("releasing resources"))?;
    }
    // Per-run terminal counts.
    let mut done: BTreeMap<RunId, (i32, i32)> = BTreeMap::new();
    let mut made_ready = 0;
    let (mut ok_run, mut ok_id) = (Vec::new(), Vec::new());
    let (mut bad_run, mut bad_id) = (Vec::new(), Vec::new());
    for t in transitions {
        if let Some(from) = &t.expired_from {
            ev.push(
                t.run,
                Some(t.id),
                "lease_expired",
                Some(t.attempt),
                Some(from),
                None,
            );
        }
        let data = t.error.as_ref().map(|e| serde_json::json!({ "error": e }));
        let kind = match t.status {
            TaskState::Succeeded => "task_succeeded",
            TaskState::Ready => "task_retrying",
            TaskState::Failed => "task_failed",
            TaskState::Cancelled => "task_cancelled",
            _ => "task_failed",
        };
        let worker = if t.expired_from.is_some() {
            None
        } else {
            Some(t.worker.as_str())
        };
        if t.cached {
            ev.push(
                t.run,
                Some(t.id),
                "task_cached",
                Some(t.attempt),
                worker,
                None,
            );
        }
        ev.push(t.run, Some(t.id), kind, Some(t.attempt), worker, data);
        match t.status {
            TaskState::Succeeded => {
                ok_run.push(t.run);
                ok_id.push(t.id);
                done.entry(t.run).or_default().0 += 1;
            }
            TaskState::Failed => {
                bad_run.push(t.run);
                bad_id.push(t.id);
                let e = done.entry(t.run).or_default();
                e.0 += 1;
                e.1 += 1;
            }
            TaskState::Cancelled => done.entry(t.run).or_default().0 += 1,
            TaskState::Ready => made_ready += 1,
            _ => {}
        }
    }
    if !bad_run.is_empty() {
        let rows = tx
            .query(
                "WITH RECURSIVE d(run_id, id) AS (
                    SELECT f.run_id, e.to_task FROM unnest($1::bigint[], $2::int[]) AS f(run_id, id)
                    CROSS JOIN LATERAL (
                        SELECT to_task FROM edges WHERE run_id = f.run_id AND from_task = f.id) e
                    UNION
                    SELECT d.run_id, e.to_task FROM d
                    CROSS JOIN LATERAL (
                        SELECT to_task FROM edges WHERE run_id = d.run_id AND from_task = d.id) e)
                 UPDATE tasks t SET status = 'skipped', finished_at = now()
                 FROM d WHERE t.run_id = d.run_id AND t.id = d.id AND t.status = 'pending'
                 RETURNING t.run_id, t.id",
                &[&bad_run, &bad_id],
            )
            .await
            .map_err(opts.db("skipping dependents"))?;
        for r in rows {
            let run: i64 = r.get(0);
            ev.push(run, Some(r.get(1)), "task_skipped", None, None, None);
            done.entry(run).or_default().0 += 1;
        }
    }
    count_done(opts, tx, me, &done).await?;
    ev.insert(opts, tx).await?;
    // Last, and sent together with the COMMIT: the successors' rows, which other workers'
    // commits may also be waiting for (a task's parents finish on different workers), stay
    // locked for this one statement and the commit, never for a round trip to this process.
    // Their `task_ready` events are inserted by the same statement. If the statement fails,
    // the server ends the transaction at the COMMIT that follows it (as a rollback).
    let commit = async {
        tx.batch_execute("COMMIT")
            .await
            .map_err(opts.db("committing completions"))
    };
    if ok_run.is_empty() {
        commit.await?;
    } else {
        // `query_typed`: Parse, Bind and Execute leave in one message batch on the first poll,
        // so the server receives them before the COMMIT (a plain `query` would first wait for
        // a prepare round trip, and the COMMIT would overtake the statement).
        let succ = async {
            tx.query_typed(
                "WITH d AS (
                    SELECT f.run_id, e.to_task AS id, count(*)::int AS n
                    FROM unnest($1::bigint[], $2::int[]) AS f(run_id, id)
                    -- LATERAL: one primary-key probe per finished task, whatever the statistics.
                    CROSS JOIN LATERAL (
                        SELECT to_task FROM edges WHERE run_id = f.run_id AND from_task = f.id) e
                    GROUP BY 1, 2),
                 upd AS (
                    UPDATE tasks t SET remaining_deps = t.remaining_deps - d.n,
                        status = CASE WHEN t.remaining_deps - d.n = 0 THEN 'ready' ELSE t.status END,
                        ready_at = CASE WHEN t.remaining_deps - d.n = 0 THEN now() ELSE t.ready_at END
                    FROM d WHERE t.run_id = d.run_id AND t.id = d.id AND t.status = 'pending'
                    RETURNING t.run_id, t.id, t.status),
                 ev AS (
                    INSERT INTO events (run_id, task_id, kind)
                    SELECT run_id, id, 'task_ready' FROM upd WHERE status = 'ready' RETURNING 1)
                 SELECT count(*)::int FROM ev",
                &[(&ok_run, Type::INT8_ARRAY), (&ok_id, Type::INT4_ARRAY)],
            )
            .await
            .map_err(opts.db("releasing successors"))
        };
        let (rows, committed) = futures_util::future::join(succ, commit).await;
        made_ready += rows?.first().map_or(0, |r| r.get::<_, i32>(0)) as usize;
        committed?;
    }
    // Freed resources may let a waiting ready task run: wake the workers for that too.
    if released {
        made_ready += 1;
    }
    Ok(made_ready)
}

/// The runs in which some task reached a terminal state (or was skipped behind one): those a
/// commit may have finished.
fn finished_runs(transitions: &[Transition]) -> Vec<RunId> {
    transitions
        .iter()
        .filter(|t| t.status.is_terminal())
        .map(|t| t.run)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Stores the cache entries of the accepted successes that carry one (sorted by key, so that
/// concurrent commits lock `memo` rows in one order).
async fn store_memo(
    opts: &ConnectOptions,
    tx: &Client,
    batch: &[Completion],
    transitions: &[Transition],
) -> Result<()> {
    let ok: HashSet<(RunId, i32, i32)> = transitions
        .iter()
        .filter(|t| t.status == TaskState::Succeeded && !t.cached)
        .map(|t| (t.run, t.id, t.attempt))
        .collect();
    let mut puts: BTreeMap<&[u8], (&MemoPut, &Value)> = BTreeMap::new();
    for c in batch {
        if let (Some(m), Outcome::Ok(v)) = (&c.memo, &c.outcome) {
            if ok.contains(&(c.run, c.id, c.attempt)) {
                puts.insert(m.key.as_slice(), (m, v));
            }
        }
    }
    if puts.is_empty() {
        return Ok(());
    }
    let keys: Vec<&[u8]> = puts.keys().copied().collect();
    let tasks: Vec<&str> = puts.values().map(|(m, _)| m.task.as_str()).collect();
    let outputs: Vec<&Value> = puts.values().map(|(_, v)| *v).collect();
    let ttl: Vec<Option<i64>> = puts.values().map(|(m, _)| m.ttl_ms).collect();
    tx.execute(
        "INSERT INTO memo (key, task, output, size, created_at, last_used, expires_at)
         SELECT d.key, d.task, d.output, octet_length(d.output::text), now(), now(),
             now() + d.ttl_ms * interval '1 millisecond'
         FROM unnest($1::bytea[], $2::text[], $3::jsonb[], $4::bigint[]) AS d(key, task, output, ttl_ms)
         ON CONFLICT (key) DO UPDATE SET task = EXCLUDED.task, output = EXCLUDED.output,
             size = EXCLUDED.size, created_at = EXCLUDED.created_at,
             last_used = EXCLUDED.last_used, expires_at = EXCLUDED.expires_at",
        &[&keys, &tasks, &outputs, &ttl],
    )
    .await
    .map_err(opts.db("storing cache entries"))?;
    Ok(())
}

/// Step 5: cancels `run`; returns false when it had already finished.
pub(crate) async fn cancel(
    opts: &ConnectOptions,
    client: &mut Client,
    run: RunId,
) -> Result<Option<bool>> {
    let tx = client
        .transaction()
        .await
        .map_err(opts.db("cancelling a run"))?;
    lock_runs(opts, tx.client(), &BTreeSet::from([run]), false).await?;
    let row = tx
        .query_opt(
            "SELECT status FROM runs WHERE id = $1 FOR NO KEY UPDATE",
            &[&run],
        )
        .await
        .map_err(opts.db("cancelling a run"))?;
    let Some(row) = row else { return Ok(None) };
    if row.get::<_, &str>(0) != "running" {
        return Ok(Some(false));
    }
    // Every task may already be terminal, its last completion committed but its finalize not
    // yet run (no completion is in flight: this transaction holds the run's lock exclusively,
    // and this statement sees every committed one): then the run has finished, not been
    // cancelled.
    let complete: bool = tx
        .query_one(
            "SELECT coalesce(sum(c.done), 0) >= (SELECT total FROM runs WHERE id = $1)
             FROM run_counts c WHERE c.run_id = $1",
            &[&run],
        )
        .await
        .map_err(opts.db("cancelling a run"))?
        .get(0);
    if complete {
        tx.commit().await.map_err(opts.db("cancelling a run"))?;
        finalize(opts, client, Some(&[run]), true, false).await?;
        return Ok(Some(false));
    }
    let rows = tx
        .query(
            "UPDATE tasks SET status = 'cancelled', finished_at = now()
             WHERE run_id = $1 AND status IN ('pending', 'ready') RETURNING id",
            &[&run],
        )
        .await
        .map_err(opts.db("cancelling tasks"))?;
    let n = rows.len() as i32;
    count_done(
        opts,
        tx.client(),
        "cancel",
        &BTreeMap::from([(run, (n, 0))]),
    )
    .await?;
    tx.execute(
        "UPDATE runs SET status = 'cancelled', finished_at = now() WHERE id = $1",
        &[&run],
    )
    .await
    .map_err(opts.db("cancelling a run"))?;
    let mut ev = EventRows::default();
    for r in &rows {
        ev.push(run, Some(r.get(0)), "task_cancelled", None, None, None);
    }
    ev.push(run, None, "run_cancelled", None, None, None);
    ev.insert(opts, tx.client()).await?;
    tx.execute(
        "SELECT pg_notify($1, $3), pg_notify($2, $3)",
        &[
            &opts.channel("events"),
            &opts.channel("cancel"),
            &run.to_string(),
        ],
    )
    .await
    .map_err(opts.db("notifying"))?;
    tx.commit().await.map_err(opts.db("committing a cancel"))?;
    Ok(Some(true))
}

/// Seconds until the next delayed (retrying) ready task, if any.
pub(crate) async fn next_ready_in(opts: &ConnectOptions, client: &Client) -> Result<Option<f64>> {
    let row = client
        .query_one(
            "SELECT extract(epoch FROM min(ready_at) - now())::float8 FROM tasks
             WHERE status = 'ready' AND ready_at > now()",
            &[],
        )
        .await
        .map_err(opts.db("looking for delayed tasks"))?;
    Ok(row.get(0))
}
