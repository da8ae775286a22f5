//! Drives the built `nerv` binary on workflow files in temporary folders.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn nerv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nerv"))
}

/// Runs `nerv ARGS` in `dir`.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    nerv()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run nerv")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

/// The only run folder's logs.
fn logs_dir(dir: &Path) -> PathBuf {
    let runs: Vec<_> = std::fs::read_dir(dir.join(".nerv/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].join("logs")
}

/// Waits (up to 20 s) for `path` to hold a pid.
fn wait_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(p) = s.trim().parse() {
                return p;
            }
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` still runs (a zombie, already dead and waiting for its reaper, does not).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
    }
}

fn wait_exit(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "nerv did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn pipeline_runs_writes_logs_and_exits_0() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "p.toml",
        r#"
[tasks.fetch]
run = "echo fetched > fetched.txt"
[tasks.parse]
run = ["sh", "-c", "cat fetched.txt; echo parsed"]
needs = ["fetch"]
[tasks.shout]
run = "echo to-stderr >&2"
"#,
    );
    let o = run_in(d.path(), &["run", "p.toml"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("3 completed, 0 failed, 0 skipped, 0 cancelled"),
        "{out}"
    );
    assert!(out.contains("critical path:"), "{out}");
    let logs = logs_dir(d.path());
    assert_eq!(
        std::fs::read_to_string(logs.join("parse.log")).unwrap(),
        "fetched\nparsed\n"
    );
    assert_eq!(
        std::fs::read_to_string(logs.join("shout.log")).unwrap(),
        "to-stderr\n"
    );
}

/// Output goes through a pipe to the log, created at the first byte: big outputs arrive whole,
/// stdout and stderr interleave in order, a silent task has no file (and `nerv logs` prints
/// nothing for it), and a process left behind outside the task's group that keeps the pipe
/// does not hold the task up.
#[test]
fn logs_are_complete_ordered_and_created_at_the_first_byte() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "p.toml",
        r#"
[tasks.big]
run = "seq 1 300000"
[tasks.mixed]
run = "echo one; echo two >&2; echo three; echo four >&2"
[tasks.silent]
run = ["true"]
[tasks.late]
run = "echo early; setsid sh -c 'sleep 0.5; echo late' &"
"#,
    );
    let o = run_in(d.path(), &["run", "p.toml"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let logs = logs_dir(d.path());
    let big = std::fs::read_to_string(logs.join("big.log")).unwrap();
    assert_eq!(big.lines().count(), 300_000);
    assert!(big.ends_with("\n299999\n300000\n"));
    assert_eq!(
        std::fs::read_to_string(logs.join("mixed.log")).unwrap(),
        "one\ntwo\nthree\nfour\n"
    );
    assert!(!logs.join("silent.log").exists());
    let o = run_in(d.path(), &["logs", "last", "silent"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    assert!(stderr(&o).contains("printed nothing"), "{}", stderr(&o));
    assert_eq!(
        stdout(&run_in(d.path(), &["logs", "last", "mixed"])),
        "one\ntwo\nthree\nfour\n"
    );
    // `late` finished while its setsid child still held the pipe: nerv did not wait for it
    // (the test would be slower otherwise), and nerv's exit closed the pipe, so the child's
    // line is lost or arrives: either way `early` is there.
    let late = std::fs::read_to_string(logs.join("late.log")).unwrap();
    assert!(late.starts_with("early\n"), "{late}");
}

#[test]
fn failure_exits_1_shows_last_lines_and_skips_dependents() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "f.toml",
        r#"
[tasks.build]
run = "for i in $(seq 1 30); do echo line$i; done; echo oops >&2; exit 3"
[tasks.test]
run = "echo should-not-run > ran.txt"
needs = ["build"]
[tasks.deploy]
run = "echo should-not-run > ran.txt"
needs = ["test"]
[tasks.docs]
run = "echo docs"
"#,
    );
    let o = run_in(d.path(), &["run", "f.toml"]);
    assert_eq!(code(&o), 1);
    let out = stdout(&o);
    assert!(out.contains("exit code 3"), "{out}");
    assert!(out.contains("| oops"), "{out}");
    assert!(out.contains("| line30"), "{out}");
    assert!(!out.contains("| line1\n"), "only the last lines: {out}");
    assert!(out.contains("skipped    test"), "{out}");
    assert!(out.contains("skipped    deploy"), "{out}");
    assert!(out.contains("1 completed, 1 failed, 2 skipped"), "{out}");
    assert!(!d.path().join("ran.txt").exists());
}

fn assert_invalid(name: &str, text: &str, lines: &[usize], needle: &str) {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), name, text);
    for cmd in ["validate", "run", "plan"] {
        let o = run_in(d.path(), &[cmd, name]);
        assert_eq!(code(&o), 2, "{cmd}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            lines.iter().any(|l| err.contains(&format!("{name}:{l}:"))),
            "{cmd}: want {name}:{lines:?}: in\n{err}"
        );
        assert!(err.contains(needle), "{cmd}: want {needle:?} in\n{err}");
    }
    assert!(
        !d.path().join(".nerv").exists(),
        "an invalid file starts no run"
    );
}

#[test]
fn invalid_files_exit_2_with_file_and_line() {
    assert_invalid(
        "unknown.toml",
        "[tasks.fetch]\nrun = \"true\"\n[tasks.parse]\nrun = \"true\"\nneeds = [\"fecth\"]\n",
        &[5],
        "did you mean `fetch`?",
    );
    assert_invalid(
        "cycle.toml",
        "[tasks.a]\nrun = \"true\"\nneeds = [\"c\"]\n[tasks.b]\nrun = \"true\"\nneeds = [\"a\"]\n[tasks.c]\nrun = \"true\"\nneeds = [\"b\"]\n",
        &[3, 6, 9],
        "cycle",
    );
    assert_invalid(
        "key.toml",
        "[tasks.a]\nrun = \"true\"\nretires = 3\n",
        &[3],
        "unknown field `retires`",
    );
    assert_invalid(
        "dur.toml",
        "[tasks.a]\nrun = \"true\"\ntimeout = \"3 parsecs\"\n",
        &[3],
        "invalid duration",
    );
    assert_invalid(
        "prio.yaml",
        "tasks:\n  a:\n    run: \"true\"\n    priority: urgent\n",
        &[4],
        "unknown priority",
    );
    assert_invalid(
        "unknown.yml",
        "tasks:\n  a:\n    run: \"true\"\n  b:\n    run: \"true\"\n    needs: [aa]\n",
        &[6],
        "which is not a task",
    );
    assert_invalid(
        "dup.yaml",
        "tasks:\n  a:\n    run: \"true\"\n  a:\n    run: \"true\"\n",
        &[4],
        "duplicate task `a`",
    );
    assert_invalid("empty.toml", "[tasks.a]\nrun = \"\"\n", &[2], "empty `run`");
    assert_invalid(
        "nonlist.toml",
        "[tasks.a]\nrun = \"true\"\nfor_each = \"abc\"\n",
        &[3],
        "sequence",
    );
}

#[test]
fn for_each_expands_and_needs_waits_for_all() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "fe.toml",
        r#"
[tasks.make]
for_each = ["a", "b c", "it's"]
run = "echo {item} > \"out-$NERV_ITEM.txt\""
[tasks.argv]
for_each = ["x;rm -rf nothing"]
run = ["sh", "-c", "printf '%s' \"$1\" > argv.txt", "sh", "{item}"]
[tasks.gather]
run = "ls out-*.txt | wc -l > count.txt; cat out-*.txt > all.txt"
needs = ["make"]
"#,
    );
    let o = run_in(d.path(), &["run", "fe.toml"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let read = |n: &str| std::fs::read_to_string(d.path().join(n)).unwrap();
    assert_eq!(read("count.txt").trim(), "3");
    let mut all: Vec<String> = read("all.txt").lines().map(str::to_owned).collect();
    all.sort();
    assert_eq!(all, ["a", "b c", "it's"]);
    assert_eq!(read("argv.txt"), "x;rm -rf nothing");
    let plan = run_in(d.path(), &["plan", "fe.toml", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let gather = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "gather")
        .unwrap();
    assert_eq!(
        gather["needs"],
        serde_json::json!(["make[a]", "make[b c]", "make[it's]"])
    );
}

#[test]
fn yaml_gives_the_same_plan_as_toml() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "w.toml",
        r#"
name = "same"
[defaults]
retries = 1
timeout = "10m"
[resources]
db = 2
[tasks.fetch]
run = "echo fetch"
priority = "high"
estimate = "2s"
env = { LANG = "C" }
uses = { db = 1 }
[tasks.parse]
run = ["echo", "parse"]
needs = ["fetch"]
retry = { attempts = 3, backoff = "2s", max_backoff = "1m" }
[tasks.compress]
for_each = ["a", "b"]
run = ["gzip", "-k", "{item}.txt"]
needs = ["parse"]
estimate = "1s"
"#,
    );
    write(
        d.path(),
        "w.yaml",
        r#"
name: same
defaults:
  retries: 1
  timeout: 10m
resources:
  db: 2
tasks:
  fetch:
    run: echo fetch
    priority: high
    estimate: 2s
    env: { LANG: C }
    uses: { db: 1 }
  parse:
    run: [echo, parse]
    needs: [fetch]
    retry: { attempts: 3, backoff: 2s, max_backoff: 1m }
  compress:
    for_each: [a, b]
    run: [gzip, -k, "{item}.txt"]
    needs: [parse]
    estimate: 1s
"#,
    );
    let plan = |f: &str| {
        let o = run_in(d.path(), &["plan", f, "--json", "-j", "2"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_object_mut().unwrap().remove("file");
        v
    };
    let (t, y) = (plan("w.toml"), plan("w.yaml"));
    assert_eq!(t, y);
    assert_eq!(
        t["critical_path"],
        serde_json::json!(["fetch", "parse", "compress[a]"])
    );
    assert_eq!(t["timed"], true);
    assert_eq!(t["levels"].as_array().unwrap().len(), 3);
}

#[test]
fn json_lines_parse() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "j.toml", "[tasks.a]\nrun = \"echo a\"\n[tasks.b]\nrun = \"exit 1\"\n[tasks.c]\nrun = \"true\"\nneeds = [\"b\"]\n");
    let o = run_in(d.path(), &["run", "j.toml", "--json"]);
    assert_eq!(code(&o), 1);
    let events: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"run_started"));
    assert_eq!(types.last(), Some(&"summary"));
    assert!(
        types.contains(&"task_completed")
            && types.contains(&"task_failed")
            && types.contains(&"task_skipped")
    );
    let failed = events.iter().find(|e| e["type"] == "task_failed").unwrap();
    assert_eq!(failed["task"], "b");
    assert_eq!(failed["attempt"], 1);
    assert!(failed["error"].as_str().unwrap().contains("exit code 1"));
    assert!(failed["time"].is_string());
    assert_eq!(events.last().unwrap()["exit_code"], 1);
}

/// Max number of tasks between their "start" and "end" markers at once.
fn max_concurrency(markers: &str) -> i32 {
    let (mut cur, mut max) = (0, 0);
    for l in markers.lines() {
        match l.split_whitespace().next() {
            Some("start") => cur += 1,
            Some("end") => cur -= 1,
            _ => panic!("bad marker {l}"),
        }
        max = max.max(cur);
    }
    assert_eq!(cur, 0);
    max
}

#[test]
fn resources_and_jobs_limit_concurrency() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "r.toml",
        r#"
[resources]
db = 2
[tasks.q]
for_each = [1, 2, 3, 4, 5, 6]
run = "echo start {item} >> db.txt; sleep 0.2; echo end {item} >> db.txt"
uses = { db = 1 }
[tasks.free]
for_each = [1, 2, 3, 4]
run = "echo start {item} >> free.txt; sleep 0.2; echo end {item} >> free.txt"
"#,
    );
    let o = run_in(d.path(), &["run", "r.toml", "-j", "8"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let m = max_concurrency(&std::fs::read_to_string(d.path().join("db.txt")).unwrap());
    assert!((1..=2).contains(&m), "db: {m} at once");
    std::fs::remove_file(d.path().join("free.txt")).unwrap();
    std::fs::remove_file(d.path().join("db.txt")).unwrap();
    let o = run_in(d.path(), &["run", "r.toml", "-j", "1"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let m = max_concurrency(&std::fs::read_to_string(d.path().join("free.txt")).unwrap());
    assert_eq!(m, 1, "-j 1");
}

#[test]
fn sigint_cancels_and_kills_the_process_group() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "s.toml",
        r#"
[tasks.long]
run = "(sleep 1000; echo never) & echo $! > pid.txt; wait"
[tasks.stubborn]
run = "trap '' TERM; sleep 1001 & echo $! > pid2.txt; wait; wait"
[tasks.after]
run = "echo after > after.txt"
needs = ["long"]
"#,
    );
    let child = nerv()
        .args(["run", "s.toml", "--grace", "300ms"])
        .current_dir(d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = wait_pid(&d.path().join("pid.txt"));
    let pid2 = wait_pid(&d.path().join("pid2.txt"));
    assert!(running(pid) && running(pid2));
    signal(child.id(), "-INT");
    let o = wait_exit(child);
    assert_eq!(code(&o), 130, "{}{}", stdout(&o), stderr(&o));
    assert!(!running(pid), "sleep 1000 survived");
    assert!(!running(pid2), "sleep 1001 (ignoring SIGTERM) survived");
    assert!(!d.path().join("after.txt").exists());
    let out = stdout(&o);
    assert!(out.contains("interrupted"), "{out}");
    assert!(out.contains("cancelled"), "{out}");
}

#[test]
fn sigterm_to_nerv_also_cancels() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "t.toml",
        "[tasks.long]\nrun = \"sleep 1002 & echo $! > pid.txt; wait\"\n",
    );
    let child = nerv()
        .args(["run", "t.toml", "--json"])
        .current_dir(d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = wait_pid(&d.path().join("pid.txt"));
    signal(child.id(), "-TERM");
    let o = wait_exit(child);
    assert_eq!(code(&o), 130);
    assert!(!running(pid));
    let last: serde_json::Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], "interrupted");
}

#[test]
fn timeout_kills_the_process_group() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "to.toml",
        "[tasks.slow]\nrun = \"(sleep 1003) & echo $! > pid.txt; wait\"\ntimeout = \"300ms\"\n[tasks.next]\nrun = \"true\"\nneeds = [\"slow\"]\n",
    );
    let o = run_in(d.path(), &["run", "to.toml", "--grace", "200ms"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let pid = wait_pid(&d.path().join("pid.txt"));
    assert!(!running(pid), "the timed-out command survived");
    let out = stdout(&o);
    assert!(out.contains("timed out"), "{out}");
    assert!(out.contains("skipped    next"), "{out}");
}

#[test]
fn fail_fast_cancels_running_commands() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "ff.toml",
        "[tasks.slow]\nrun = \"sleep 1004 & echo $! > pid.txt; wait\"\n[tasks.bad]\nrun = \"while [ ! -s pid.txt ]; do sleep 0.01; done; exit 4\"\n[tasks.later]\nrun = \"true\"\nneeds = [\"slow\"]\n",
    );
    let o = run_in(
        d.path(),
        &[
            "run",
            "ff.toml",
            "--fail-fast",
            "-j",
            "2",
            "--grace",
            "200ms",
        ],
    );
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let pid = wait_pid(&d.path().join("pid.txt"));
    assert!(!running(pid));
    let out = stdout(&o);
    assert!(out.contains("exit code 4"), "{out}");
    assert!(out.contains("cancelled"), "{out}");
}

#[test]
fn retries_run_again_then_succeed() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "re.toml",
        "[tasks.flaky]\nrun = \"if [ -e seen ]; then echo second; else touch seen; echo first; exit 1; fi\"\nretry = { attempts = 2, backoff = \"10ms\" }\n",
    );
    let o = run_in(d.path(), &["run", "re.toml"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).contains("retrying   flaky"), "{}", stdout(&o));
    let log = std::fs::read_to_string(logs_dir(d.path()).join("flaky.log")).unwrap();
    assert_eq!(log, "first\n--- nerv: attempt 2 ---\nsecond\n");
}

#[test]
fn env_cwd_and_direct_exec() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("sub")).unwrap();
    write(
        d.path(),
        "e.toml",
        "[defaults]\nenv = { A = \"1\" }\n[tasks.t]\nrun = \"echo $A $B $NERV_TASK > here.txt\"\ncwd = \"sub\"\nenv = { B = 2 }\n[tasks.missing]\nrun = \"no-such-program-nerv arg\"\n",
    );
    let o = run_in(d.path(), &["run", "e.toml"]);
    assert_eq!(code(&o), 1);
    assert_eq!(
        std::fs::read_to_string(d.path().join("sub/here.txt")).unwrap(),
        "1 2 t\n"
    );
    assert!(
        stdout(&o).contains("cannot run `no-such-program-nerv`"),
        "{}",
        stdout(&o)
    );
}

/// nerv finds a direct command's program on PATH itself (the task's `env` PATH if it sets
/// one, relative entries left to the child) and keeps its name as argv[0].
#[test]
fn direct_exec_finds_programs_on_the_tasks_path() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    for dir in ["bin1", "bin2", "sub/rel"] {
        std::fs::create_dir_all(d.path().join(dir)).unwrap();
    }
    for (dir, text) in [("bin1", "one"), ("bin2", "two"), ("sub/rel", "rel")] {
        let p = write(
            &d.path().join(dir),
            "hello-nerv",
            &format!("#!/bin/sh\necho {text} \"$0\" \"$@\" >> \"$OUT\"\n"),
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let base = d.path().display();
    let sys = std::env::var("PATH").unwrap();
    write(
        d.path(),
        "p.toml",
        &format!(
            r#"
[defaults]
env = {{ OUT = "{base}/out.txt" }}
[tasks.first]
run = "hello-nerv a"
env = {{ PATH = "{base}/bin2:{base}/bin1:{sys}" }}
[tasks.second]
run = ["hello-nerv", "b"]
env = {{ PATH = "{base}/bin1:{sys}" }}
needs = ["first"]
[tasks.relative]
run = "hello-nerv c"
cwd = "sub"
env = {{ PATH = "rel:{sys}" }}
needs = ["second"]
[tasks.argv0]
run = ["cat", "/proc/self/cmdline"]
"#
        ),
    );
    let o = run_in(d.path(), &["run", "p.toml"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out = std::fs::read_to_string(d.path().join("out.txt")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("two ") && lines[0].ends_with("hello-nerv a"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("one ") && lines[1].ends_with("hello-nerv b"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("rel ") && lines[2].ends_with("hello-nerv c"),
        "{out}"
    );
    let cmdline = std::fs::read(logs_dir(d.path()).join("argv0.log")).unwrap();
    assert_eq!(cmdline, b"cat\0/proc/self/cmdline\0");
}

#[test]
fn graph_prints_dot_and_mermaid() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "g.toml", "[tasks.a]\nrun = \"true\"\n[tasks.b]\nfor_each = [1, 2]\nrun = \"true\"\nneeds = [\"a\"]\n");
    let o = run_in(d.path(), &["graph", "g.toml", "--format", "dot"]);
    assert_eq!(code(&o), 0);
    let dot = stdout(&o);
    assert!(dot.starts_with("digraph \"g\" {"), "{dot}");
    assert!(
        dot.contains("\"a\" -> \"b[1]\";") && dot.contains("\"a\" -> \"b[2]\";"),
        "{dot}"
    );
    assert!(dot.trim_end().ends_with('}'));
    let o = run_in(d.path(), &["graph", "g.toml", "--format", "mermaid"]);
    let m = stdout(&o);
    assert!(m.starts_with("flowchart LR\n"), "{m}");
    assert!(
        m.contains("t0[\"a\"]") && m.contains("t0 --> t1") && m.contains("t0 --> t2"),
        "{m}"
    );
}

#[test]
fn plan_text_and_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "p.toml", "[tasks.a]\nrun = \"true\"\nestimate = \"2s\"\n[tasks.b]\nrun = \"true\"\nneeds = [\"a\"]\nestimate = \"1s\"\n[tasks.c]\nrun = \"true\"\nestimate = \"1s\"\n");
    let o = run_in(d.path(), &["plan", "p.toml", "-j", "2"]);
    assert_eq!(code(&o), 0);
    let out = stdout(&o);
    assert!(
        out.contains("level 0:") && out.contains("critical path: a → b (3s)"),
        "{out}"
    );
    assert!(out.contains("lower bound on 2 workers: 3s"), "{out}");
    // A wide level names its first tasks and counts the rest; --full names them all.
    let wide: String = (0..15)
        .map(|i| format!("[tasks.w{i:02}]\nrun = \"true\"\n"))
        .collect();
    write(d.path(), "wide.toml", &wide);
    let out = stdout(&run_in(d.path(), &["plan", "wide.toml"])).to_string();
    assert!(out.contains("w09 … and 5 more (15 tasks"), "{out}");
    assert!(!out.contains("w14"), "{out}");
    let out = stdout(&run_in(d.path(), &["plan", "wide.toml", "--full"])).to_string();
    assert!(out.contains("w13 w14"), "{out}");
    assert_eq!(code(&run_in(d.path(), &["run"])), 2);
    assert_eq!(
        code(&run_in(
            d.path(),
            &["run", "p.toml", "--fail-fast", "--keep-going"]
        )),
        2
    );
    assert_eq!(code(&run_in(d.path(), &["run", "nope.toml"])), 2);
    assert_eq!(code(&run_in(d.path(), &["validate", "p.toml"])), 0);
}

#[test]
fn quickstart_example_runs() {
    let d = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.toml");
    std::fs::copy(src, d.path().join("quickstart.toml")).unwrap();
    let o = run_in(d.path(), &["run", "quickstart.toml"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let report = std::fs::read_to_string(d.path().join("work/report.txt")).unwrap();
    assert_eq!(report.trim(), "words: 6000");
}

#[test]
fn fanout_yaml_example_runs() {
    let d = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fanout.yaml");
    std::fs::copy(src, d.path().join("fanout.yaml")).unwrap();
    let o = run_in(d.path(), &["run", "fanout.yaml", "--json"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let sum = std::fs::read_to_string(d.path().join("shards/sum.txt")).unwrap();
    assert_eq!(sum.trim(), "72180100"); // 1² + … + 600²
}

#[test]
fn pipeline_example_runs_and_reports() {
    let d = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pipeline.toml");
    std::fs::copy(src, d.path().join("pipeline.toml")).unwrap();
    let o = run_in(d.path(), &["run", "pipeline.toml"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    // 4000 records, every 97th malformed (41 dropped); sums checked independently.
    let expected = "\
region   records   units   revenue
south        989    6921    364627
east         990    6930    360899
north        990    6921    358783
west         990    6945    357440
total       3959   27717   1441749
raw lines: 4001, clean records: 3959
clean data cksum: 3960214766 53263
";
    let report = std::fs::read_to_string(d.path().join("data/report.txt")).unwrap();
    assert_eq!(report, expected);
    for region in ["north", "south", "east", "west"] {
        let part = std::fs::read_to_string(d.path().join(format!("data/regions/{region}.csv")));
        let part = part.unwrap();
        assert!(
            part.lines().all(|l| l.split(',').nth(1) == Some(region)),
            "{region}"
        );
    }
}

#[test]
fn completions_print_a_script() {
    let d = tempfile::tempdir().unwrap();
    let o = run_in(d.path(), &["completions", "bash"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let script = stdout(&o);
    assert!(script.contains("nerv"), "{script}");
    assert!(
        script.contains("resume") && script.contains("validate"),
        "{script}"
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let o = run_in(d.path(), &["completions", shell]);
        assert_eq!(code(&o), 0, "{shell}: {}", stderr(&o));
        assert!(stdout(&o).contains("nerv"), "{shell}");
    }
    let help = stdout(&run_in(d.path(), &["completions", "--help"]));
    assert!(
        help.contains("bash-completion") && help.contains("$PROFILE"),
        "{help}"
    );
    assert_eq!(code(&run_in(d.path(), &["completions", "tcsh"])), 2);
}

/// The journal commands: runs, resume, status, logs, trace, cache (tests/cli/journal.rs).
#[path = "cli/journal.rs"]
mod journal;

#[path = "cli/db_cache.rs"]
mod db_cache;

/// A small WfFormat 1.5 trace: a → (b, c) → d, runtimes 10/40/20/10 s.
const TRACE: &str = r#"{
  "name": "tiny", "schemaVersion": "1.5",
  "workflow": {
    "specification": { "tasks": [
      {"name": "a", "id": "a", "parents": [], "children": ["b", "c"]},
      {"name": "b", "id": "b", "parents": ["a"], "children": ["d"]},
      {"name": "c", "id": "c", "parents": ["a"], "children": ["d"]},
      {"name": "d", "id": "d", "parents": ["b", "c"], "children": []}
    ]},
    "execution": { "tasks": [
      {"id": "a", "runtimeInSeconds": 10}, {"id": "b", "runtimeInSeconds": 40},
      {"id": "c", "runtimeInSeconds": 20}, {"id": "d", "runtimeInSeconds": 10}
    ]}
  }
}"#;

#[test]
fn a_trace_imports_plans_runs_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let trace = write(dir.path(), "tiny.json", TRACE);
    let o = run_in(
        dir.path(),
        &[
            "import",
            trace.to_str().unwrap(),
            "--scale",
            "0.001",
            "-o",
            "wf.toml",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let toml: toml::Value = std::fs::read_to_string(dir.path().join("wf.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        toml["tasks"]["d"]["needs"].as_array().unwrap().len(),
        2,
        "{toml}"
    );
    // Plan: critical path a → b → d = 60 ms at scale 0.001; nerv's order reaches it on 2.
    let o = run_in(dir.path(), &["plan", "wf.toml", "-j", "2", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(plan["critical_path"], serde_json::json!(["a", "b", "d"]));
    assert_eq!(plan["lower_bound"].as_f64(), Some(60.0));
    assert_eq!(plan["estimated_makespan"].as_f64(), Some(60.0));
    let o = run_in(dir.path(), &["run", "wf.toml", "-j", "2", "--no-journal"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run_in(
        dir.path(),
        &[
            "run",
            "wf.toml",
            "-j",
            "2",
            "--no-journal",
            "--order",
            "searched",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // With --db, the search needs the workers' slots in all: said before connecting.
    let o = run_in(
        dir.path(),
        &[
            "run",
            "wf.toml",
            "--db",
            "postgres://nobody@127.0.0.1:1/none",
            "--order",
            "searched",
        ],
    );
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("needs -j N"), "{}", stderr(&o));
    // Replay in process, and the bench over a folder, as JSON.
    let o = run_in(
        dir.path(),
        &[
            "bench",
            "replay",
            dir.path().to_str().unwrap(),
            "-j",
            "2",
            "--target",
            "0.05",
            "--json",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let rec: serde_json::Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(rec["trace"], "tiny");
    assert_eq!(rec["tasks"], 4);
    assert!(rec["ratio"].as_f64().unwrap() >= 0.99, "{rec}");
    let o = run_in(
        dir.path(),
        &[
            "run",
            "--replay",
            trace.to_str().unwrap(),
            "-j",
            "2",
            "--scale",
            "0.0005",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("ranked makespan"), "{}", stdout(&o));
    // In a searched order: said in the record, never worse than ranked in simulation.
    let o = run_in(
        dir.path(),
        &[
            "bench",
            "replay",
            trace.to_str().unwrap(),
            "-j",
            "2",
            "--target",
            "0.05",
            "--order",
            "searched",
            "--json",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let rec: serde_json::Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(rec["order"], "searched");
    assert_eq!(rec["tasks"], 4);
    assert!(rec["sim_s"].as_f64().unwrap() >= rec["lower_bound_s"].as_f64().unwrap() * 0.999);
    // Not a trace: a clear error naming the file.
    let o = run_in(dir.path(), &["import", "wf.toml"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("wf.toml"), "{}", stderr(&o));
}

/// The distributed mode: a workflow file submitted to PostgreSQL, run by a `nerv worker`
/// process, watched to the end; then listed, inspected and (a second run) cancelled.
#[test]
fn a_workflow_runs_on_postgres_through_a_worker() {
    let url = std::env::var("NERV_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    if std::net::TcpStream::connect("127.0.0.1:5432").is_err() {
        println!("skipped: no PostgreSQL at {url}");
        return;
    }
    // A schema of this test's own (every nerv command below gets it through the environment):
    // other runs on the same server (another checkout's tests) are other queues.
    let schema = format!("nerv_cli_test_{}", std::process::id());
    std::env::set_var("NERV_DB_SCHEMA", &schema);
    struct DropSchema(String);
    impl Drop for DropSchema {
        fn drop(&mut self) {
            let _ = Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc"])
                .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let _drop_schema = DropSchema(schema);
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "wf.toml",
        r#"
[tasks.a]
run = "echo a > a.txt"
[tasks.b]
run = ["sh", "-c", "cat a.txt > b.txt; echo $GREETING >> b.txt"]
needs = ["a"]
env = { GREETING = "hi" }
[tasks.c]
for_each = ["x", "y"]
run = "echo {item} > c_{item}.txt"
needs = ["a"]
[tasks.d]
run = "cat b.txt c_x.txt c_y.txt > d.txt"
needs = ["b", "c"]
"#,
    );
    /// Kills the worker if the test fails before stopping it (no orphan claims tasks later).
    struct Reap(Option<Child>);
    impl Drop for Reap {
        fn drop(&mut self) {
            if let Some(c) = &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut worker = Reap(Some(
        nerv()
            .args(["worker", "--db", &url, "-j", "2"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let o = run_in(dir.path(), &["run", "wf.toml", "--db", &url]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("d.txt")).unwrap(),
        "a\nhi\nx\ny\n"
    );
    // The same display as a local run: a line per task event, then the summary.
    assert!(stdout(&o).contains("completed  d"), "{}", stdout(&o));
    assert!(stdout(&o).contains("5 completed"), "{}", stdout(&o));
    let run = stderr(&o)
        .split("as run ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    let o = run_in(dir.path(), &["status", &run, "--db", &url, "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let st: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(st["tasks"].as_array().unwrap().len(), 5);
    let o = run_in(dir.path(), &["runs", "--db", &url, "--json"]);
    assert!(
        stdout(&o).contains(&format!("\"id\":{run}")),
        "{}",
        stdout(&o)
    );
    // A searched order goes to the queue as order keys: on 2 slots, tasks of 3, 3, 2, 2 and
    // 2 s are best started one 3 s task beside a 2 s one (6 s), while the remaining critical
    // path would start both 3 s tasks first (7 s). The worker's 2 slots take them in key order.
    let keyed: String = [("a", 3), ("b", 3), ("c", 2), ("d", 2), ("e", 2)]
        .iter()
        .map(|(id, s)| {
            format!("[tasks.{id}]\nrun = \"echo {id} >> order.txt\"\nestimate = \"{s}s\"\n")
        })
        .collect();
    write(dir.path(), "keyed.toml", &keyed);
    let o = run_in(
        dir.path(),
        &[
            "run",
            "keyed.toml",
            "--db",
            &url,
            "--order",
            "searched",
            "-j",
            "2",
        ],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let order = std::fs::read_to_string(dir.path().join("order.txt")).unwrap();
    let first: Vec<&str> = order.lines().take(2).collect();
    assert_eq!(order.lines().count(), 5, "{order}");
    assert!(!(first.contains(&"a") && first.contains(&"b")), "{order}");
    // Without `estimate` keys, a second run takes its estimates from the server's history of
    // the workflow: the task that took longest ranks first.
    write(
        dir.path(),
        "hist.toml",
        "[tasks.quick]\nrun = \"true\"\n[tasks.slow]\nrun = \"sleep 0.3\"\n",
    );
    let o = run_in(dir.path(), &["run", "hist.toml", "--db", &url]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run_in(dir.path(), &["run", "hist.toml", "--db", &url, "--detach"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let second = stdout(&o).trim().to_string();
    let ranked = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-Atc"])
        .arg(format!(
            "SELECT name FROM {}.tasks WHERE run_id = {second} ORDER BY rank DESC",
            _drop_schema.0
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ranked.stdout), "slow\nquick\n");
    // `nerv plan --db` plans with the same history: both tasks estimated, `slow` on the
    // critical path with its 0.3 s.
    let o = run_in(dir.path(), &["plan", "hist.toml", "--db", &url, "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(plan["history"], "server", "{plan}");
    assert_eq!(plan["estimated_from_history"], 2, "{plan}");
    assert!(
        plan["critical_path_length"].as_f64().unwrap() >= 300.0,
        "{plan}"
    );
    let o = run_in(dir.path(), &["plan", "hist.toml", "--db", &url]);
    assert!(
        stdout(&o).contains("estimates: 2 of 2 tasks from the server's history"),
        "{}",
        stdout(&o)
    );
    // A detached run that waits on a file never created, then cancelled from here.
    write(
        dir.path(),
        "slow.toml",
        "[tasks.wait]\nrun = \"while [ ! -e never ]; do sleep 0.05; done\"\n",
    );
    let o = run_in(dir.path(), &["run", "slow.toml", "--db", &url, "--detach"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let slow = stdout(&o).trim().to_string();
    let o = run_in(dir.path(), &["cancel", &slow, "--db", &url]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run_in(dir.path(), &["status", &slow, "--db", &url, "--json"]);
    let st: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(st["run"]["state"], "cancelled", "{st}");
    let w = worker.0.take().unwrap();
    signal(w.id(), "-INT");
    let out = wait_exit(w);
    assert_eq!(code(&out), 0);
    // A server that is not there: a clear error naming it, quickly.
    let o = run_in(
        dir.path(),
        &[
            "run",
            "wf.toml",
            "--db",
            "postgres://postgres@127.0.0.1:1/test",
        ],
    );
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("127.0.0.1:1"), "{}", stderr(&o));
}

#[test]
fn plans_estimate_tasks_from_the_history_of_earlier_runs() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "wf.toml",
        "[tasks.a]\nrun = \"sleep 0.05\"\n[tasks.b]\nrun = \"true\"\nneeds = [\"a\"]\n",
    );
    // No history yet: untimed.
    let o = run_in(dir.path(), &["plan", "wf.toml", "--json"]);
    let plan: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(plan["timed"], false);
    assert_eq!(code(&run_in(dir.path(), &["run", "wf.toml"])), 0);
    let o = run_in(dir.path(), &["plan", "wf.toml", "--json"]);
    let plan: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(plan["timed"], true, "{plan}");
    assert_eq!(plan["history"], "journal", "{plan}");
    assert_eq!(plan["estimated_from_history"], 2, "{plan}");
    // `a` slept 50 ms: at least that much of the critical path.
    assert!(
        plan["critical_path_length"].as_f64().unwrap() >= 50.0,
        "{plan}"
    );
}

/// `nerv plan` with counting and a searched order: three 1 s tasks on 2 workers need 2 s,
/// not 1.5; 3, 3, 2, 2, 2 s on 2 workers take 7 s longest first and 6 s searched.
#[test]
fn plan_shows_the_counting_bound_and_the_searched_order() {
    let d = tempfile::tempdir().unwrap();
    let three = "[tasks.a]\nrun = \"true\"\nestimate = \"1s\"\n[tasks.b]\nrun = \"true\"\nestimate = \"1s\"\n[tasks.c]\nrun = \"true\"\nestimate = \"1s\"\n";
    write(d.path(), "three.toml", three);
    let o = run_in(d.path(), &["plan", "three.toml", "-j", "2", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(plan["lower_bound"].as_f64(), Some(1500.0));
    assert_eq!(plan["pigeonhole_bound"].as_f64(), Some(2000.0));
    assert_eq!(plan["estimated_makespan"].as_f64(), Some(2000.0));
    assert!(plan.get("searched_makespan").is_none());
    let o = run_in(d.path(), &["plan", "three.toml", "-j", "2"]);
    assert!(
        stdout(&o).contains("lower bound by counting: 2s"),
        "{}",
        stdout(&o)
    );
    let mut lpt = String::new();
    for (id, s) in [("a", 3), ("b", 3), ("c", 2), ("d", 2), ("e", 2)] {
        lpt += &format!("[tasks.{id}]\nrun = \"true\"\nestimate = \"{s}s\"\n");
    }
    write(d.path(), "lpt.toml", &lpt);
    let o = run_in(
        d.path(),
        &[
            "plan", "lpt.toml", "-j", "2", "--order", "searched", "--json",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(plan["estimated_makespan"].as_f64(), Some(7000.0));
    assert_eq!(plan["searched_makespan"].as_f64(), Some(6000.0));
    assert_eq!(plan["lower_bound"].as_f64(), Some(6000.0));
    // Nothing to search without durations: said, and run in the default order.
    write(
        d.path(),
        "bare.toml",
        "[tasks.a]\nrun = \"true\"\n[tasks.b]\nrun = \"true\"\n",
    );
    let o = run_in(
        d.path(),
        &["run", "bare.toml", "--no-journal", "--order", "searched"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("needs durations"), "{}", stderr(&o));
}

/// A reader that goes away (`nerv plan wf.toml | head -1`) ends a command that prints its
/// result quietly and successfully, instead of a panic about a broken pipe.
#[test]
fn commands_end_quietly_when_their_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut wf = String::new();
    for i in 0..40 {
        let needs = if i > 0 {
            format!("needs = [\"t{}\"]\n", i - 1)
        } else {
            String::new()
        };
        wf += &format!("[tasks.t{i}]\nrun = \"true\"\n{needs}");
    }
    write(dir.path(), "wf.toml", &wf);
    assert_eq!(code(&run_in(dir.path(), &["run", "wf.toml"])), 0);
    for args in [
        &["plan", "wf.toml"][..],
        &["plan", "wf.toml", "--json"],
        &["graph", "wf.toml"],
        &["validate", "wf.toml"],
        &["runs"],
        &["status", "1"],
    ] {
        let mut child = nerv()
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The only reader of the child's stdout goes away before it writes anything.
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert_eq!(code(&o), 0, "nerv {args:?}: {}", stderr(&o));
        assert!(stderr(&o).is_empty(), "nerv {args:?}: {}", stderr(&o));
    }
}
