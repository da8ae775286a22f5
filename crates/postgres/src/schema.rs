//! Versioned migrations of the schema.
//!
//! Invariants:
//! 1. `schema_version` holds one row per applied migration; versions are applied in order, each
//!    exactly once, in one transaction with its row.
//! 2. Applying is idempotent and safe to run concurrently from many processes: the whole
//!    apply runs under `pg_advisory_xact_lock(hashtext('nerv-migrate:' || schema))`, so the
//!    second process waits, then finds nothing left to do.
//! 3. A database at a newer version than this library knows is refused
//!    ([`Error::SchemaTooNew`](crate::Error::SchemaTooNew)), never downgraded.
//!
//! Tables (version 2 and on):
//! - `runs`: one row per submission: name, status, `total` tasks, times. Completions never
//!   write it: only submit, cancel and the run's finalization (once) do.
//! - `run_counts`: `(run_id, slot)` → tasks that reached a terminal state (`done`) and failed
//!   ones (`failed`). A slot is the worker that recorded them (its completions and reaps), or
//!   `cancel` / `v1`; each worker only ever writes its own row, so completions of one run on
//!   different workers never wait on each other. Unfinished = `total - sum(done)`.
//! - `tasks`: the queue. `status` ∈ pending, ready, running, succeeded, failed, skipped,
//!   cancelled; `remaining_deps` is the join counter; `attempt`, `lease_owner`,
//!   `lease_expires` are the fencing token and lease; `rank` is the upward rank (longest
//!   remaining path by estimate); `ready_at` orders equal ranks and delays retries.
//! - `edges`: dependency edges `from_task → to_task` within a run.
//! - `events`: append-only log; `xid` (the writing transaction) lets readers advance a cursor
//!   only past transactions that can no longer commit (see `engine::watch`).
//! - `workers`: one row per worker process with its tags and last heartbeat.
//! - `resources`: global capacities and amounts in use (`uses` of running tasks).
//! - `memo`: the cache of memoized tasks shared by every worker: key (bytes) → output, the
//!   task that stored it, its size, creation, last use and expiry.
//!
//! Version 2 (over version 1): `run_counts` replaces the `runs.unfinished`/`runs.failed`
//! counters (their values move into a `v1` slot), `runs_running` indexes running runs,
//! `tasks.cache` (what a cached command's key is made of) and `tasks.cached` (completed from the
//! cache), and `memo` is rebuilt with its listing columns (version 1's was never written).
//!
//! Version 3: `runs_name` indexes runs by workflow name, newest first: the history of one
//! workflow (`Engine::task_durations`, its last N runs) reads those runs only, instead of
//! scanning every run of the schema.

use tokio_postgres::Client;

use crate::conn::ConnectOptions;
use crate::error::{Error, Result};

/// The migrations, in order; index + 1 is the version.
const MIGRATIONS: &[&str] = &[V1, V2, V3];

const V1: &str = r#"
CREATE TABLE runs (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    status      text NOT NULL DEFAULT 'running',
    total       int NOT NULL,
    unfinished  int NOT NULL,
    failed      int NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE TABLE tasks (
    run_id          bigint NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    id              int NOT NULL,
    name            text NOT NULL,
    status          text NOT NULL,
    priority        smallint NOT NULL,
    rank            double precision NOT NULL,
    remaining_deps  int NOT NULL,
    attempt         int NOT NULL DEFAULT 0,
    max_attempts    int NOT NULL,
    backoff_ms      bigint NOT NULL,
    backoff_factor  double precision NOT NULL,
    max_backoff_ms  bigint NOT NULL,
    timeout_ms      bigint,
    work            jsonb NOT NULL,
    fn_name         text,
    uses            jsonb NOT NULL DEFAULT '{}',
    tags            text[] NOT NULL DEFAULT '{}',
    lease_owner     text,
    lease_expires   timestamptz,
    ready_at        timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    output          jsonb,
    error           text,
    PRIMARY KEY (run_id, id)
);
CREATE INDEX tasks_ready ON tasks (priority DESC, rank DESC, ready_at) WHERE status = 'ready';
-- Non-null exactly while running. Deliberately not `WHERE status = 'running'`: the planner would
-- then drive fenced updates and heartbeats from this index instead of from the primary key.
CREATE INDEX tasks_leases ON tasks (lease_expires) WHERE lease_expires IS NOT NULL;
CREATE TABLE edges (
    run_id    bigint NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    from_task int NOT NULL,
    to_task   int NOT NULL,
    PRIMARY KEY (run_id, from_task, to_task)
);
CREATE TABLE events (
    id      bigserial PRIMARY KEY,
    xid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    run_id  bigint NOT NULL,
    task_id int,
    kind    text NOT NULL,
    attempt int,
    worker  text,
    data    jsonb,
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX events_run ON events (run_id, xid, id);
CREATE TABLE workers (
    id          text PRIMARY KEY,
    tags        text[] NOT NULL DEFAULT '{}',
    concurrency int NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    heartbeat   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE resources (
    name     text PRIMARY KEY,
    capacity bigint NOT NULL,
    in_use   bigint NOT NULL DEFAULT 0 CHECK (in_use >= 0)
);
CREATE TABLE memo (
    key        text PRIMARY KEY,
    output     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"#;

const V2: &str = r#"
CREATE TABLE run_counts (
    run_id bigint NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    slot   text NOT NULL,
    done   int NOT NULL DEFAULT 0,
    failed int NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, slot)
);
INSERT INTO run_counts (run_id, slot, done, failed)
    SELECT id, 'v1', total - unfinished, failed FROM runs WHERE total > unfinished OR failed > 0;
ALTER TABLE runs DROP COLUMN unfinished, DROP COLUMN failed;
CREATE INDEX runs_running ON runs (id) WHERE status = 'running';
ALTER TABLE tasks ADD COLUMN cache jsonb, ADD COLUMN cached boolean NOT NULL DEFAULT false;
DROP TABLE memo;
CREATE TABLE memo (
    key        bytea PRIMARY KEY,
    task       text NOT NULL,
    output     jsonb NOT NULL,
    size       bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE INDEX memo_task ON memo (task);
"#;

const V3: &str = r#"
CREATE INDEX runs_name ON runs (name, id DESC);
"#;

/// The newest schema version this library knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Applies missing migrations to `opts`' schema; returns the version now in force.
pub(crate) async fn migrate(opts: &ConnectOptions, client: &mut Client) -> Result<i32> {
    migrate_to(opts, client, SCHEMA_VERSION).await
}

/// Applies the migrations up to version `target` (tests build older schemas with it).
pub(crate) async fn migrate_to(
    opts: &ConnectOptions,
    client: &mut Client,
    target: i32,
) -> Result<i32> {
    let schema = opts.schema_name().to_string();
    let tx = client
        .transaction()
        .await
        .map_err(opts.db("starting migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('nerv-migrate:' || $1::text))",
        &[&schema],
    )
    .await
    .map_err(opts.db("taking the migration lock"))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (
             version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());"
    ))
    .await
    .map_err(opts.db("creating schema_version"))?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_version"),
            &[],
        )
        .await
        .map_err(opts.db("reading schema_version"))?;
    let current: i32 = row.get(0);
    if current > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            schema,
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    let target = target.clamp(0, SCHEMA_VERSION) as usize;
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(target)
        .skip(current as usize)
    {
        let version = i as i32 + 1;
        tx.batch_execute(&format!("SET LOCAL search_path TO {schema}; {sql}"))
            .await
            .map_err(opts.db("applying a migration"))?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_version (version) VALUES ($1)"),
            &[&version],
        )
        .await
        .map_err(opts.db("recording a migration"))?;
        tracing::info!(schema = %schema, version, "applied migration");
    }
    tx.commit()
        .await
        .map_err(opts.db("committing migrations"))?;
    Ok(current.max(target as i32))
}
