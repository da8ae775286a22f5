//! The journal as the `nerv` binary uses it: every run recorded, then listed, inspected,
//! resumed, traced; the durable cache of `cache = true` tasks; a journal locked by another
//! live nerv.

use super::*;
use serde_json::Value;

/// Every line that is `marker` in `dir/marks`.
fn count(dir: &Path, marker: &str) -> usize {
    std::fs::read_to_string(dir.join("marks"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == marker)
        .count()
}

/// `nerv runs --json` in `dir`, newest first.
fn runs(dir: &Path) -> Vec<Value> {
    let o = run_in(dir, &["runs", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ok(o: &Output) {
    assert_eq!(code(o), 0, "{}{}", stdout(o), stderr(o));
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| humantime::parse_rfc3339(s).is_ok())
}

#[test]
fn a_run_is_recorded_and_listed() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "p.toml",
        "[tasks.a]\nrun = \"echo hello-from-a\"\n[tasks.b]\nrun = \"true\"\nneeds = [\"a\"]\n",
    );
    ok(&run_in(d.path(), &["run", "p.toml"]));
    let r = runs(d.path());
    assert_eq!(r.len(), 1, "{r:?}");
    let run = &r[0];
    assert_eq!(run["status"], "completed");
    assert_eq!(run["id"], 1);
    assert!(run["workflow"].as_str().unwrap().ends_with("p.toml"));
    assert!(
        is_rfc3339(&run["started"]) && is_rfc3339(&run["finished"]),
        "{run}"
    );
    assert_eq!(run["counts"]["completed"], 2);
    // The run is known by its number and by the CLI's run id (its log folder's name).
    let name = run["name"].as_str().unwrap();
    assert!(d.path().join(".nerv/runs").join(name).is_dir());
    let text = run_in(d.path(), &["runs"]);
    ok(&text);
    assert!(stdout(&text).contains("completed"), "{}", stdout(&text));
    // From another folder: -C names the workflow's.
    let parent = d.path().parent().unwrap();
    let folder = d.path().file_name().unwrap().to_str().unwrap();
    let o = run_in(parent, &["runs", "--json", "-C", folder]);
    ok(&o);
    assert!(stdout(&o).contains(name), "{}", stdout(&o));
    for which in ["1", name, "last"] {
        let o = run_in(d.path(), &["logs", which, "a"]);
        ok(&o);
        assert_eq!(stdout(&o), "hello-from-a\n");
    }
}

#[test]
fn status_and_logs_show_tasks_and_name_what_is_missing() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "f.toml",
        r#"
[tasks.ok]
run = "echo fine"
[tasks.bad]
run = "echo about-to-fail; echo on-stderr >&2; exit 4"
retries = 1
[tasks.after]
run = "true"
needs = ["bad"]
"#,
    );
    assert_eq!(code(&run_in(d.path(), &["run", "f.toml"])), 1);
    let o = run_in(d.path(), &["status", "1", "--json"]);
    ok(&o);
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["run"]["status"], "failed");
    let task = |id: &str| {
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["task"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(task("ok")["status"], "completed");
    assert_eq!(task("bad")["status"], "failed");
    assert_eq!(task("bad")["attempts"], 2);
    assert!(task("bad")["error"]
        .as_str()
        .unwrap()
        .contains("exit code 4"));
    assert_eq!(task("after")["status"], "skipped");
    assert!(is_rfc3339(&task("bad")["started"]));

    let text = run_in(d.path(), &["status", "last"]);
    ok(&text);
    let out = stdout(&text);
    assert!(
        out.contains("failed") && out.contains("skipped") && out.contains("exit code 4"),
        "{out}"
    );

    // Both attempts' output.
    let o = run_in(d.path(), &["logs", "1", "bad"]);
    ok(&o);
    assert_eq!(
        stdout(&o).matches("about-to-fail").count(),
        2,
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("on-stderr"));

    let o = run_in(d.path(), &["logs", "1", "nosuch"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("run 1") && stderr(&o).contains("`nosuch`"),
        "{}",
        stderr(&o)
    );
    let o = run_in(d.path(), &["logs", "1", "after"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("never ran"), "{}", stderr(&o));
    let o = run_in(d.path(), &["status", "42"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no run `42`"), "{}", stderr(&o));
    let empty = tempfile::tempdir().unwrap();
    let o = run_in(empty.path(), &["runs"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no runs recorded"), "{}", stderr(&o));
}

#[test]
fn sigint_then_resume_runs_only_what_had_not_completed() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "r.toml",
        r#"
[tasks.a]
run = "echo a >> marks"
[tasks.b]
for_each = ["x", "y"]
run = "echo b{item} >> marks"
needs = ["a"]
[tasks.slow]
run = "echo slow-start >> marks; echo $$ > slow.pid; test -f go || sleep 1000; echo slow >> marks"
needs = ["b"]
[tasks.last]
run = "echo last >> marks"
needs = ["slow"]
"#,
    );
    let child = nerv()
        .args(["run", "r.toml", "--grace", "300ms"])
        .current_dir(d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_pid(&d.path().join("slow.pid"));
    signal(child.id(), "-INT");
    let o = wait_exit(child);
    assert_eq!(code(&o), 130, "{}{}", stdout(&o), stderr(&o));
    let r = runs(d.path());
    assert_eq!(r[0]["status"], "interrupted", "{r:?}");
    assert_eq!(r[0]["counts"]["completed"], 3);

    std::fs::write(d.path().join("go"), "").unwrap();
    let o = run_in(d.path(), &["resume"]);
    ok(&o);
    assert!(stdout(&o).contains("restored"), "{}", stdout(&o));
    for (m, n) in [
        ("a", 1),
        ("bx", 1),
        ("by", 1),
        ("slow-start", 2),
        ("slow", 1),
        ("last", 1),
    ] {
        assert_eq!(count(d.path(), m), n, "marker {m}");
    }
    let r = runs(d.path());
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["status"], "completed");
    assert_eq!(r[0]["resumed_from"], r[1]["id"]);
    // Nothing is left to resume.
    let o = run_in(d.path(), &["resume"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("nothing to resume"), "{}", stderr(&o));
    // A restored task's log is the one of the run it ran in.
    let o = run_in(d.path(), &["status", "2", "--json"]);
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let a = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "a")
        .unwrap();
    assert_eq!(a["restored"], true);
    assert_eq!(a["attempts"], 0);
}

#[test]
fn resuming_a_failed_run_after_the_fix_runs_only_failed_and_skipped_tasks() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "f.toml",
        r#"
[tasks.a]
run = "echo a >> marks"
[tasks.b]
run = "echo b-try >> marks; test -f fixed"
needs = ["a"]
[tasks.c]
run = "echo c >> marks"
needs = ["b"]
[tasks.d]
run = "echo d >> marks"
"#,
    );
    let o = run_in(d.path(), &["run", "f.toml"]);
    assert_eq!(code(&o), 1);
    assert_eq!(runs(d.path())[0]["status"], "failed");
    assert_eq!(count(d.path(), "c"), 0);
    std::fs::write(d.path().join("fixed"), "").unwrap();
    let o = run_in(d.path(), &["resume", "1", "--json"]);
    ok(&o);
    let last: Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(last["restored"], 2, "{last}");
    for (m, n) in [("a", 1), ("d", 1), ("b-try", 2), ("c", 1)] {
        assert_eq!(count(d.path(), m), n, "marker {m}");
    }
    // A completed run cannot be resumed.
    let o = run_in(d.path(), &["resume", "2"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("completed"), "{}", stderr(&o));
}

#[test]
fn trace_has_one_complete_event_per_task_on_at_most_j_lanes() {
    let d = tempfile::tempdir().unwrap();
    let mut toml = String::new();
    for i in 0..6 {
        toml.push_str(&format!("[tasks.t{i}]\nrun = \"sleep 0.05\"\n"));
    }
    toml.push_str("[tasks.end]\nrun = \"true\"\nneeds = [\"t0\", \"t5\"]\n");
    write(d.path(), "t.toml", &toml);
    ok(&run_in(d.path(), &["run", "t.toml", "-j", "2"]));
    ok(&run_in(d.path(), &["trace", "last", "-o", "trace.json"]));
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("trace.json")).unwrap())
            .unwrap();
    let x: Vec<&Value> = v["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .collect();
    assert_eq!(x.len(), 7);
    let mut names: Vec<&str> = x.iter().map(|e| e["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["end", "t0", "t1", "t2", "t3", "t4", "t5"]);
    for e in &x {
        assert_eq!(e["pid"], 1);
        assert!(e["tid"].as_u64().unwrap() < 2, "{e}");
        assert!(e["ts"].is_u64() && e["dur"].is_u64(), "{e}");
    }
}

#[test]
fn cached_tasks_run_once_until_their_inputs_change() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "c.toml",
        r#"
[tasks.build]
run = "echo build >> marks; cat src.txt > out.txt"
cache = true
inputs = ["src.txt"]
[tasks.fresh]
run = "echo fresh >> marks"
[tasks.pack]
for_each = ["x", "y"]
run = "echo pack{item} >> marks"
cache = { ttl = "1d" }
"#,
    );
    write(d.path(), "src.txt", "one");
    ok(&run_in(d.path(), &["run", "c.toml"]));
    let o = run_in(d.path(), &["run", "c.toml"]);
    ok(&o);
    assert!(stdout(&o).contains("cached"), "{}", stdout(&o));
    assert_eq!(count(d.path(), "build"), 1);
    assert_eq!(count(d.path(), "packx"), 1);
    assert_eq!(count(d.path(), "fresh"), 2);

    let o = run_in(d.path(), &["cache", "ls", "--json"]);
    ok(&o);
    let entries: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut tasks: Vec<&str> = entries
        .iter()
        .map(|e| e["task"].as_str().unwrap())
        .collect();
    tasks.sort_unstable();
    assert_eq!(tasks, ["build", "pack[x]", "pack[y]"]);
    let pack = entries.iter().find(|e| e["task"] == "pack[x]").unwrap();
    assert!(is_rfc3339(&pack["expires"]), "{pack}");
    assert!(entries.iter().find(|e| e["task"] == "build").unwrap()["expires"].is_null());

    // A changed input is a new key.
    write(d.path(), "src.txt", "two");
    ok(&run_in(d.path(), &["run", "c.toml"]));
    assert_eq!(count(d.path(), "build"), 2);
    assert_eq!(
        std::fs::read_to_string(d.path().join("out.txt")).unwrap(),
        "two"
    );

    // `cache rm NAME` removes every expansion of a for_each task.
    let o = run_in(d.path(), &["cache", "rm", "pack"]);
    ok(&o);
    assert!(stdout(&o).contains("removed 2"), "{}", stdout(&o));
    ok(&run_in(d.path(), &["cache", "rm", "--all"]));
    let o = run_in(d.path(), &["cache", "ls", "--json"]);
    ok(&o);
    assert_eq!(stdout(&o).trim(), "");
    ok(&run_in(d.path(), &["run", "c.toml"]));
    assert_eq!(count(d.path(), "build"), 3);
    assert_eq!(count(d.path(), "packy"), 2);
}

#[test]
fn a_journal_locked_by_a_live_nerv_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "l.toml",
        "[tasks.long]\nrun = \"echo $$ > pid.txt; sleep 1000\"\n",
    );
    write(
        d.path(),
        "other.toml",
        "[tasks.x]\nrun = \"echo x >> marks\"\n",
    );
    let child = nerv()
        .args(["run", "l.toml", "--grace", "300ms"])
        .current_dir(d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_pid(&d.path().join("pid.txt"));
    let o = run_in(d.path(), &["run", "other.toml"]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(
        err.contains("nerv.db") && err.contains("locked by process"),
        "{err}"
    );
    assert!(
        err.contains(&child.id().to_string()),
        "names the holder: {err}"
    );
    assert_eq!(count(d.path(), "x"), 0, "nothing ran");
    // Reading works meanwhile.
    let r = runs(d.path());
    assert_eq!(r[0]["status"], "running");
    signal(child.id(), "-INT");
    assert_eq!(code(&wait_exit(child)), 130);
    // And it runs unrecorded when asked to.
    ok(&run_in(d.path(), &["run", "other.toml", "--no-journal"]));
    assert_eq!(count(d.path(), "x"), 1);
    assert_eq!(runs(d.path()).len(), 1);
}

#[test]
fn runs_rm_keeps_the_newest() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "k.toml", "[tasks.a]\nrun = \"true\"\n");
    for _ in 0..3 {
        ok(&run_in(d.path(), &["run", "k.toml"]));
    }
    let before = runs(d.path());
    let o = run_in(d.path(), &["runs", "rm", "--keep", "1"]);
    ok(&o);
    assert!(stdout(&o).contains("deleted 2 runs"), "{}", stdout(&o));
    let after = runs(d.path());
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["id"], before[0]["id"]);
    let folders = std::fs::read_dir(d.path().join(".nerv/runs"))
        .unwrap()
        .count();
    assert_eq!(folders, 1);
    ok(&run_in(d.path(), &["runs", "rm", "--older-than", "7d"]));
    assert_eq!(runs(d.path()).len(), 1);
    assert_eq!(
        code(&run_in(d.path(), &["runs", "rm"])),
        2,
        "needs --keep or --older-than"
    );
}

#[test]
fn a_run_killed_with_sigkill_is_resumable() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "k.toml",
        r#"
[tasks.a]
run = "echo a >> marks"
[tasks.slow]
run = "echo $$ > slow.pid; test -f go || sleep 1000; echo slow >> marks"
needs = ["a"]
"#,
    );
    let child = nerv()
        .args(["run", "k.toml"])
        .current_dir(d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pgid = wait_pid(&d.path().join("slow.pid"));
    // Kill only once `a`'s completion is durable (the journal commits in the background).
    let deadline = Instant::now() + Duration::from_secs(20);
    while runs(d.path())[0]["counts"]["completed"] != 1 {
        assert!(Instant::now() < deadline, "a's completion never committed");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.id(), "-KILL");
    let _ = wait_exit(child);
    // nerv could not end its commands: do it here (the shell leads its process group).
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
    assert_eq!(runs(d.path())[0]["status"], "running");
    std::fs::write(d.path().join("go"), "").unwrap();
    let o = run_in(d.path(), &["resume"]);
    ok(&o);
    assert_eq!(count(d.path(), "a"), 1);
    assert_eq!(count(d.path(), "slow"), 1);
    let r = runs(d.path());
    assert_eq!(r[1]["status"], "interrupted");
    assert_eq!(r[0]["status"], "completed");
}

#[test]
fn resume_rereads_the_workflow_file() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "w.toml",
        "[tasks.a]\nrun = \"echo a >> marks\"\n[tasks.old]\nrun = \"exit 1\"\n",
    );
    assert_eq!(code(&run_in(d.path(), &["run", "w.toml"])), 1);
    std::fs::rename(&f, d.path().join("moved.toml")).unwrap();
    let o = run_in(d.path(), &["resume"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("no longer exists") && stderr(&o).contains("w.toml"),
        "{}",
        stderr(&o)
    );
    // The task set changed: `old` is gone (ignored), `new` runs, `a` stays restored.
    write(
        d.path(),
        "w.toml",
        "[tasks.a]\nrun = \"echo a >> marks\"\n[tasks.new]\nrun = \"echo new >> marks\"\n",
    );
    let o = run_in(d.path(), &["resume"]);
    ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("no longer has old") && err.contains("new tasks new"),
        "{err}"
    );
    assert_eq!(count(d.path(), "a"), 1);
    assert_eq!(count(d.path(), "new"), 1);
}
