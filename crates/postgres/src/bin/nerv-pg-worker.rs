//! `nerv-pg-worker`: a worker process for distributed nerv runs (also used by the tests).
//!
//! ```text
//! nerv-pg-worker [--url URL] [--schema S] [-j N] [--tags a,b] [--lease-ms MS] [--batch N]
//! nerv-pg-worker cancel RUN [--url URL] [--schema S]
//! ```
//! The URL defaults to `$NERV_PG_URL`, then `postgres://postgres@127.0.0.1:5432/test`. Registered
//! functions: `noop` (returns its input), `sleep` (input: milliseconds), `fail` (input: message).
//! SIGTERM or Ctrl-C stops claiming, lets running tasks finish and exits.

use std::process::ExitCode;
use std::time::Duration;

use nerv_postgres::{ConnectOptions, Engine, Worker};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

struct Args {
    url: String,
    schema: String,
    jobs: usize,
    tags: Vec<String>,
    lease_ms: u64,
    batch: usize,
    cancel: Option<i64>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        url: std::env::var("NERV_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        schema: "nerv".into(),
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        tags: Vec::new(),
        lease_ms: 30_000,
        batch: 64,
        cancel: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--url" => a.url = val("--url")?,
            "--schema" => a.schema = val("--schema")?,
            "-j" | "--jobs" => a.jobs = val("-j")?.parse().map_err(|e| format!("-j: {e}"))?,
            "--tags" => a.tags = val("--tags")?.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
            "--lease-ms" => a.lease_ms = val("--lease-ms")?.parse().map_err(|e| format!("--lease-ms: {e}"))?,
            "--batch" => a.batch = val("--batch")?.parse().map_err(|e| format!("--batch: {e}"))?,
            "cancel" => a.cancel = Some(val("cancel")?.parse().map_err(|e| format!("cancel: {e}"))?),
            "-h" | "--help" => {
                return Err("usage: nerv-pg-worker [--url URL] [--schema S] [-j N] [--tags a,b] [--lease-ms MS] \
                            [--batch N] | cancel RUN"
                    .into())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NERV_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("nerv-pg-worker: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(run) = args.cancel {
        let opts = match ConnectOptions::new(&args.url) {
            Ok(o) => o.schema(args.schema),
            Err(e) => {
                eprintln!("nerv-pg-worker: {e}");
                return ExitCode::from(2);
            }
        };
        return match Engine::connect_with(opts).await {
            Ok(engine) => match engine.cancel(run).await {
                Ok(true) => {
                    println!("cancelled run {run}");
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    println!("run {run} had already finished");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("nerv-pg-worker: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("nerv-pg-worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let worker = Worker::builder(args.url)
        .schema(args.schema)
        .concurrency(args.jobs)
        .tags(args.tags)
        .lease(Duration::from_millis(args.lease_ms))
        .batch(args.batch)
        .register("noop", |_ctx, input: Value| async move {
            Ok::<_, String>(input)
        })
        .register("sleep", |_ctx, input: Value| async move {
            tokio::time::sleep(Duration::from_millis(input.as_u64().unwrap_or(0))).await;
            Ok::<_, String>(Value::Null)
        })
        .register("fail", |_ctx, input: Value| async move {
            Err::<Value, _>(input.as_str().unwrap_or("failed on purpose").to_string())
        })
        .build();
    let worker = match worker {
        Ok(w) => w,
        Err(e) => {
            eprintln!("nerv-pg-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            stop.cancel();
        });
    }
    eprintln!("nerv-pg-worker {} starting", worker.id());
    match worker.run(stop).await {
        Ok(stats) => {
            eprintln!("nerv-pg-worker {}: {stats:?}", worker.id());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nerv-pg-worker: {e}");
            ExitCode::FAILURE
        }
    }
}
