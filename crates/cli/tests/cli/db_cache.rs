//! The distributed mode's cache and retention: `cache = true` tasks run with `nerv run --db`
//! are keyed by the worker from the inputs an upstream task made, hit the cache shared by the
//! workers, and are listed and removed with `nerv cache ls|rm --db`; `nerv runs rm --db`
//! deletes old runs.

use super::*;
use serde_json::Value;

/// The server, or `None` (after saying so) when none is reachable.
fn server() -> Option<String> {
    let url = std::env::var("NERV_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    if std::net::TcpStream::connect("127.0.0.1:5432").is_err() {
        println!("skipped: no PostgreSQL at {url}");
        return None;
    }
    Some(url)
}

/// Drops the test's schema, and kills its worker, however the test ends.
struct Cleanup {
    schema: String,
    worker: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = &mut self.worker {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc"])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn cached_tasks_hit_the_shared_cache_through_workers_and_runs_are_pruned() {
    let Some(url) = server() else { return };
    // The schema goes to every child explicitly (another test sets NERV_DB_SCHEMA in this
    // process's environment).
    let schema = format!("nerv_cli_cache_{}", std::process::id());
    let mut cleanup = Cleanup {
        schema: schema.clone(),
        worker: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let nerv_db = |args: &[&str]| -> Output {
        nerv()
            .args(args)
            .args(["--db", &url])
            .env("NERV_DB_SCHEMA", &schema)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    write(
        dir.path(),
        "wf.toml",
        r#"
[tasks.gen]
run = "cp src.txt in.txt"
[tasks.use]
run = "cat in.txt >> out.txt"
needs = ["gen"]
cache = true
inputs = ["in.txt"]
"#,
    );
    cleanup.worker = Some(
        nerv()
            .args(["worker", "--db", &url, "-j", "2"])
            .env("NERV_DB_SCHEMA", &schema)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = || std::fs::read_to_string(dir.path().join("out.txt")).unwrap_or_default();
    // `in.txt` does not exist when the run is submitted: the key is the worker's.
    for (src, cached, expected) in [
        ("a", false, "a\n"),
        ("a", true, "a\n"),
        ("b", false, "a\nb\n"),
    ] {
        write(dir.path(), "src.txt", &format!("{src}\n"));
        let _ = std::fs::remove_file(dir.path().join("in.txt"));
        let o = nerv_db(&["run", "wf.toml"]);
        assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
        assert_eq!(out(), expected, "{src}: {}", stdout(&o));
        assert_eq!(
            stdout(&o).contains("1 cached"),
            cached,
            "{src}: {}",
            stdout(&o)
        );
    }
    // Both inputs' entries, listed as the local cache lists its own.
    let o = nerv_db(&["cache", "ls", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let entries: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2, "{}", stdout(&o));
    for e in &entries {
        assert_eq!(e["task"], "use");
        assert_eq!(e["key"].as_str().unwrap().len(), 12);
        assert!(
            e["size"].as_u64().unwrap() > 0 && e["expires"].is_null(),
            "{e}"
        );
    }
    let o = nerv_db(&["cache", "ls"]);
    let text = stdout(&o);
    assert!(
        text.starts_with("TASK") && text.contains("LAST USED") && text.contains("use "),
        "{text}"
    );
    let o = nerv_db(&["cache", "rm", "use"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("removed 2 cache entries"),
        "{}",
        stdout(&o)
    );
    let o = nerv_db(&["cache", "rm", "use"]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&nerv_db(&["cache", "ls"])).contains("is empty"));
    // Removed: the next run runs the task again.
    let o = nerv_db(&["run", "wf.toml"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(out(), "a\nb\nb\n");
    let o = nerv_db(&["cache", "rm", "--all"]);
    assert!(
        stdout(&o).contains("removed 1 cache entry"),
        "{}",
        stdout(&o)
    );
    // Retention: keep the newest run.
    let o = nerv_db(&["runs", "rm", "--older-than", "1h"]);
    assert!(
        stdout(&o).contains("deleted 0 runs (4 left)"),
        "{}",
        stdout(&o)
    );
    let o = nerv_db(&["runs", "rm", "--keep", "1"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("deleted 3 runs (1 left)"),
        "{}",
        stdout(&o)
    );
    let w = cleanup.worker.take().unwrap();
    signal(w.id(), "-INT");
    assert_eq!(code(&wait_exit(w)), 0);
}
