use super::*;

fn toml(src: &str) -> Result<Workflow, WorkflowError> {
    Workflow::parse(Path::new("w.toml"), src, Format::Toml)
}

fn yaml(src: &str) -> Result<Workflow, WorkflowError> {
    Workflow::parse(Path::new("w.yaml"), src, Format::Yaml)
}

#[test]
fn expands_for_each_and_needs() {
    let wf = toml(
        r#"
[tasks.fetch]
run = "echo hi"
[tasks.compress]
for_each = ["a", "b c", 3]
run = "gzip -k {item}.txt"
needs = ["fetch"]
[tasks.done]
run = ["echo", "done"]
needs = ["compress"]
"#,
    )
    .unwrap();
    let ids: Vec<_> = wf.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "compress[a]",
            "compress[b c]",
            "compress[3]",
            "done",
            "fetch"
        ]
    );
    assert_eq!(
        wf.task("done").unwrap().needs,
        ["compress[a]", "compress[b c]", "compress[3]"]
    );
    assert_eq!(
        wf.task("compress[b c]").unwrap().command,
        Command::Shell("gzip -k 'b c'.txt".into())
    );
}

#[test]
fn defaults_apply_and_tasks_override() {
    let wf = toml(
        r#"
[defaults]
retries = 2
timeout = "10m"
priority = "low"
env = { A = "1", B = "2" }
[tasks.a]
run = "true"
timeout = "30s"
retry = { attempts = 5, backoff = "2s", max_backoff = "1m" }
env = { B = "3" }
[tasks.b]
run = "true"
"#,
    )
    .unwrap();
    let a = wf.task("a").unwrap();
    assert_eq!(a.timeout, Some(Duration::from_secs(30)));
    assert_eq!(a.retry.unwrap().attempts, 5);
    assert_eq!(a.env["A"], "1");
    assert_eq!(a.env["B"], "3");
    let b = wf.task("b").unwrap();
    assert_eq!(b.timeout, Some(Duration::from_secs(600)));
    assert_eq!(b.retry.unwrap().attempts, 3);
    assert_eq!(b.priority, Priority::Low);
}

#[test]
fn unknown_needs_names_line_and_hint() {
    let e =
        toml("[tasks.fetch]\nrun = \"true\"\n[tasks.parse]\nrun = \"true\"\nneeds = [\"fecth\"]\n")
            .unwrap_err();
    assert_eq!(
        e.location(),
        Some(Location {
            line: 5,
            column: 10
        })
    );
    assert_eq!(e.hint(), Some("did you mean `fetch`?"));
    assert_eq!(e.task(), Some("parse"));
    // The only close name is the task itself, which it cannot need: no such suggestion.
    let e = toml("[tasks.a]\nrun = \"true\"\nneeds = [\"b\"]\n").unwrap_err();
    assert_eq!(e.hint(), Some("the tasks are: a"));
}

#[test]
fn cycle_is_reported() {
    let e = toml(
        "[tasks.a]\nrun = \"true\"\nneeds = [\"b\"]\n[tasks.b]\nrun = \"true\"\nneeds = [\"a\"]\n",
    )
    .unwrap_err();
    assert!(e.message().contains("cycle"), "{e}");
    assert!(e.location().is_some(), "{e}");
}

#[test]
fn bad_values_have_spans() {
    let e = toml("[tasks.a]\nrun = \"true\"\ntimeout = \"ten minutes\"\n").unwrap_err();
    assert_eq!(e.location().unwrap().line, 3, "{e}");
    assert!(e.message().contains("invalid duration"), "{e}");
    let e = toml("[tasks.a]\nrun = \"true\"\npriority = \"urgent\"\n").unwrap_err();
    assert_eq!(e.location().unwrap().line, 3, "{e}");
    let e = toml("[tasks.a]\nrun = \"true\"\nretires = 3\n").unwrap_err();
    assert_eq!(e.location().unwrap().line, 3, "{e}");
    assert!(e.message().contains("unknown field"), "{e}");
    let e = yaml("tasks:\n  a:\n    run: \"true\"\n    retires: 3\n").unwrap_err();
    assert_eq!(e.location().unwrap().line, 4, "{e}");
    let e = yaml("tasks:\n  a:\n    run: \"true\"\n    timeout: soon\n").unwrap_err();
    assert_eq!(e.location().unwrap().line, 4, "{e}");
}

#[test]
fn semantic_errors() {
    assert!(toml("[tasks.a]\ndescription = \"x\"\n")
        .unwrap_err()
        .message()
        .contains("no `run`"));
    assert!(toml("[tasks.a]\nrun = \"  \"\n")
        .unwrap_err()
        .message()
        .contains("empty"));
    assert!(toml("[tasks.a]\nrun = \"x\"\nuses = { db = 1 }\n")
        .unwrap_err()
        .message()
        .contains("not a declared resource"));
    assert!(
        toml("[resources]\ndb = 1\n[tasks.a]\nrun = \"x\"\nuses = { db = 2 }\n")
            .unwrap_err()
            .message()
            .contains("capacity")
    );
    assert!(toml("[tasks.a]\nrun = \"echo {item}\"\n")
        .unwrap_err()
        .message()
        .contains("for_each"));
    assert!(toml("[tasks.a]\nrun = \"x\"\nfor_each = \"a\"\n").is_err());
    assert!(toml("[tasks.a]\nrun = \"x\"\nneeds = [\"a\"]\n")
        .unwrap_err()
        .message()
        .contains("itself"));
}

#[test]
fn yaml_matches_toml() {
    let t = toml("[tasks.a]\nrun = \"echo a\"\n[tasks.b]\nfor_each = [1, 2]\nrun = [\"echo\", \"{item}\"]\nneeds = [\"a\"]\n").unwrap();
    let y = yaml("tasks:\n  a:\n    run: echo a\n  b:\n    for_each: [1, 2]\n    run: [echo, \"{item}\"]\n    needs: [a]\n").unwrap();
    let ids = |w: &Workflow| {
        w.tasks
            .iter()
            .map(|t| (t.id.clone(), t.needs.clone(), t.command.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&t), ids(&y));
}

#[test]
fn direct_exec_only_for_plain_commands() {
    assert_eq!(
        Command::Shell("sleep 0.1".into()).direct_argv(),
        Some(vec!["sleep".into(), "0.1".into()])
    );
    assert_eq!(Command::Shell("echo a > b".into()).direct_argv(), None);
    assert_eq!(Command::Shell("cd x".into()).direct_argv(), None);
    assert_eq!(Command::Shell("echo $HOME".into()).direct_argv(), None);
    assert_eq!(Command::Shell("A=1 env".into()).direct_argv(), None);
}

#[test]
fn item_pairs_with_item_in_needs() {
    let wf = toml("[tasks.a]\nfor_each = [\"x\", \"y\"]\nrun = \"true\"\n[tasks.b]\nfor_each = [\"x\", \"y\"]\nrun = \"true\"\nneeds = [\"a[{item}]\"]\n").unwrap();
    assert_eq!(wf.task("b[y]").unwrap().needs, ["a[y]"]);
}
