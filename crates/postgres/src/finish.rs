//! Finishing runs: the runs' advisory locks, the per-worker `run_counts`, and the
//! exactly-once finalization of a run.
//!
//! Invariants:
//! 1. No completion writes a `runs` row. A task reaching a terminal state is counted once, in
//!    the transaction that makes it terminal, in the `run_counts` row of the worker that
//!    recorded it (slot = worker id; `cancel` for a cancel; `v1` for counts migrated from
//!    schema version 1). Only that worker writes its row, so completions of one run on
//!    different workers never wait on each other.
//! 2. Completions and reaps take the runs' advisory locks *shared* (they never wait on each
//!    other), a cancel takes its run's *exclusive*: while a cancel holds it no completion of
//!    the run is in flight, so none can make a task ready or retry it behind the cancel.
//! 3. [`finalize`] is a conditional `UPDATE runs … WHERE status = 'running' AND total <=
//!    sum(done)` run by every completing or reaping transaction right *after* its commit. The
//!    last transaction to commit a run's terminal task runs it after every other one committed,
//!    so it sees every count and finalizes the run; several finalizers of one run are
//!    serialized by the row lock and all but the first find the status no longer `running`.
//!    A worker that dies between its commit and its finalize is covered by the reapers, which
//!    finalize every running run whose counts are complete.
//! 4. NOTIFYs of completions and reaps are sent by the same statement, after the commit:
//!    PostgreSQL serializes the commits of notifying transactions on one database-wide lock
//!    held through their WAL flush.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::conn::ConnectOptions;
use crate::error::Result;
use crate::model::RunId;

/// The runs' advisory locks, in id order: `shared` for completions and reaps (which never
/// wait on each other), exclusive for a cancel. The lock tag is `(hashtext('<schema>:run'),
/// run mod 2^31-1)`: two runs that share a tag merely wait on each other's cancels.
pub(crate) async fn lock_runs(
    opts: &ConnectOptions,
    tx: &Client,
    runs: &BTreeSet<RunId>,
    shared: bool,
) -> Result<()> {
    let ids: Vec<i64> = runs.iter().copied().collect();
    let f = if shared {
        "pg_advisory_xact_lock_shared"
    } else {
        "pg_advisory_xact_lock"
    };
    tx.query_typed(
        &format!(
            "SELECT {f}(hashtext($1), (s.r % 2147483647)::int)::text
             FROM (SELECT r FROM unnest($2::bigint[]) AS r ORDER BY r) s"
        ),
        &[
            (&format!("{}:run", opts.schema_name()), Type::TEXT),
            (&ids, Type::INT8_ARRAY),
        ],
    )
    .await
    .map_err(opts.db("locking runs"))?;
    Ok(())
}

/// Finalizes, exactly once, each of `runs` (all running runs when `None`) whose tasks are all
/// terminal: sets its final status and `finished_at` and inserts its `run_<status>` event (see
/// the module's invariants). Also sends the NOTIFYs of the transaction just committed:
/// `<schema>_events` when `events` (or when a run was finalized), `<schema>_ready` when
/// `ready`. One statement, run after that commit. Returns how many runs it finalized.
pub(crate) async fn finalize(
    opts: &ConnectOptions,
    client: &Client,
    runs: Option<&[RunId]>,
    events: bool,
    ready: bool,
) -> Result<i64> {
    let filter = if runs.is_some() {
        "r.id = ANY($2::bigint[])"
    } else {
        "$2::bigint[] IS NULL"
    };
    let sql = format!(
        "WITH s AS (
            SELECT r.id, r.total, coalesce(sum(c.done), 0) AS done, coalesce(sum(c.failed), 0) AS failed
            FROM runs r LEFT JOIN run_counts c ON c.run_id = r.id
            WHERE {filter} AND r.status = 'running'
            GROUP BY r.id, r.total),
         upd AS (
            UPDATE runs r SET status = CASE WHEN s.failed > 0 THEN 'failed' ELSE 'succeeded' END,
                finished_at = now()
            FROM s WHERE r.id = s.id AND s.done >= s.total AND r.status = 'running'
            RETURNING r.id, r.status),
         ev AS (INSERT INTO events (run_id, kind) SELECT id, 'run_' || status FROM upd RETURNING 1)
         SELECT (SELECT count(*) FROM ev),
             CASE WHEN $3 OR EXISTS (SELECT 1 FROM ev) THEN pg_notify($1, '') END::text,
             CASE WHEN $4 <> '' THEN pg_notify($4, '') END::text"
    );
    let ids: Option<Vec<i64>> = runs.map(<[i64]>::to_vec);
    let ready = if ready {
        opts.channel("ready")
    } else {
        String::new()
    };
    let row = client
        .query_typed(
            &sql,
            &[
                (&opts.channel("events"), Type::TEXT),
                (&ids, Type::INT8_ARRAY),
                (&events, Type::BOOL),
                (&ready, Type::TEXT),
            ],
        )
        .await
        .map_err(opts.db("finishing runs"))?;
    Ok(row.first().map_or(0, |r| r.get(0)))
}

/// What follows the commit of completions or reclaims: [`finalize`] their runs and NOTIFY.
/// NOTIFY is sent here rather than in the committed transaction because PostgreSQL serializes
/// the commits of notifying transactions on one database-wide lock, held through their WAL
/// flush: every completion of every worker would wait in line. A failure is only logged (the
/// commit must not be retried: it happened); the reapers finalize the run and workers and
/// watchers poll as a safety net.
pub(crate) async fn after_commit(
    opts: &ConnectOptions,
    client: &Client,
    runs: &[RunId],
    ready: bool,
) {
    if let Err(e) = finalize(opts, client, Some(runs), true, ready).await {
        tracing::warn!("{e}; a reaper will finish the run");
    }
}

/// Adds terminal tasks (`done`: run → (terminal, failed)) to `slot`'s `run_counts` rows.
pub(crate) async fn count_done(
    opts: &ConnectOptions,
    tx: &Client,
    slot: &str,
    done: &BTreeMap<RunId, (i32, i32)>,
) -> Result<()> {
    let done: Vec<(&RunId, &(i32, i32))> =
        done.iter().filter(|(_, v)| v.0 > 0 || v.1 > 0).collect();
    if done.is_empty() {
        return Ok(());
    }
    let runs: Vec<i64> = done.iter().map(|(r, _)| **r).collect();
    let n: Vec<i32> = done.iter().map(|(_, v)| v.0).collect();
    let f: Vec<i32> = done.iter().map(|(_, v)| v.1).collect();
    tx.query_typed(
        "INSERT INTO run_counts (run_id, slot, done, failed)
         SELECT d.run_id, $1, d.n, d.f FROM unnest($2::bigint[], $3::int[], $4::int[]) AS d(run_id, n, f)
         ON CONFLICT (run_id, slot) DO UPDATE
         SET done = run_counts.done + EXCLUDED.done, failed = run_counts.failed + EXCLUDED.failed",
        &[
            (&slot, Type::TEXT),
            (&runs, Type::INT8_ARRAY),
            (&n, Type::INT4_ARRAY),
            (&f, Type::INT4_ARRAY),
        ],
    )
    .await
    .map_err(opts.db("counting finished tasks"))?;
    Ok(())
}
