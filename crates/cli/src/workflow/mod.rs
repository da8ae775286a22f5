//! Workflow files: a graph of shell commands written in TOML or YAML (same keys).
//!
//! ```toml
//! name = "pipeline"                  # optional
//! [defaults]                         # optional: priority, timeout, retries | retry, env, cwd, estimate
//! retries = 1
//! timeout = "10m"
//! [resources]                        # optional named concurrency limits
//! db = 2
//! [tasks.fetch]
//! run = "curl -sSf https://example.org -o page.html"   # a string runs through `sh -c`
//! priority = "high"                  # low | medium | high | critical
//! timeout = "30s"
//! retry = { attempts = 3, backoff = "2s", max_backoff = "1m" }   # or: retries = 2
//! env = { LANG = "C" }
//! cwd = "work"                       # relative to the workflow file's folder
//! uses = { db = 1 }
//! estimate = "2s"                    # for `nerv plan`
//! cache = { ttl = "1d" }             # or `cache = true`: skip it when its key was stored
//! inputs = ["page.html"]             # files whose contents are part of the cache key
//! [tasks.compress]
//! for_each = ["a", "b", "c"]         # compress[a], compress[b], compress[c]
//! run = ["gzip", "-k", "{item}.txt"] # an array runs the program directly, no shell
//! needs = ["fetch"]
//! ```
//!
//! Invariants of a loaded [`Workflow`]:
//! 1. Task ids are unique; a `for_each` task `t` with items `x, y` becomes the tasks `t[x]`
//!    and `t[y]` (in the items' order), and `needs = ["t"]` means all of them;
//!    `needs = ["t[x]"]` one of them; `needs = ["t[{item}]"]` in another `for_each` task with
//!    the same items pairs them up.
//! 2. Every `needs` names a task; every `uses` names a declared resource and asks for no more
//!    than its capacity; every task has a non-empty `run`.
//! 3. `{item}` is replaced in `run`, `env` values, `cwd` and `description`. In a shell
//!    string the item is inserted single-quoted unless it is made only of characters that
//!    need no quoting, so that an item never reaches a shell unquoted. The item is also in
//!    the environment as `NERV_ITEM`.
//! 4. `inputs` is only allowed with `cache` (it only feeds the cache key); its paths are
//!    relative to the task's working directory, with `{item}` replaced.
//! 5. The graph has no cycle: checked by [`Workflow::graph_with`] (through
//!    [`nerv::GraphBuilder::build`]), and by [`Workflow::load`].

mod error;
mod raw;

pub use error::{Location, WorkflowError};

use error::{closest, Locator};
use nerv::{
    Graph, GraphBuilder, GraphError, Handle, Priority, RetryPolicy, TaskBuilder, TaskError,
};
use raw::{RawCache, RawDefaults, RawFile, RawRetry, RawRun, RawTask};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The syntax of a workflow file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.toml`.
    Toml,
    /// `.yaml` or `.yml`.
    Yaml,
}

impl Format {
    /// The format a file's extension says (`None` for any other extension).
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// What a task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A command line for `sh -c` (it may be executed directly when it has no shell syntax:
    /// see [`Command::direct_argv`]).
    Shell(String),
    /// A program and its arguments, executed directly.
    Exec(Vec<String>),
}

/// Shell builtins and keywords: a command starting with one of these needs the shell even
/// without any special character.
const SHELL_WORDS: &[&str] = &[
    ".", ":", "alias", "bg", "break", "case", "cd", "command", "continue", "do", "done", "elif",
    "else", "esac", "eval", "exec", "exit", "export", "fc", "fg", "fi", "for", "getopts", "hash",
    "if", "jobs", "read", "readonly", "return", "set", "shift", "source", "then", "times", "trap",
    "type", "ulimit", "umask", "unalias", "unset", "until", "wait", "while", "function", "select",
    "local", "declare",
];

impl Command {
    /// The program and arguments to execute without a shell: always for [`Command::Exec`];
    /// for [`Command::Shell`], only when the line is plain words of characters that no shell
    /// treats specially and does not start with a shell builtin (as make does).
    pub fn direct_argv(&self) -> Option<Vec<String>> {
        match self {
            Command::Exec(argv) => Some(argv.clone()),
            Command::Shell(line) => {
                let plain = line
                    .chars()
                    .all(|c| c == ' ' || c == '\t' || is_plain_char(c));
                let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
                match words.first() {
                    Some(first) if plain && !SHELL_WORDS.contains(&first.as_str()) => Some(words),
                    _ => None,
                }
            }
        }
    }

    /// The command as one line (for display).
    pub fn display_line(&self) -> String {
        match self {
            Command::Shell(s) => s.clone(),
            Command::Exec(argv) => argv
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

fn is_plain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_./:,@+-%".contains(c)
}

/// Quotes `s` for a POSIX shell (unchanged if it needs no quoting).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(is_plain_char) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A task's retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// The first back-off delay (nerv's default when `None`).
    pub backoff: Option<Duration>,
    /// The longest back-off delay (nerv's default when `None`).
    pub max_backoff: Option<Duration>,
}

impl Retry {
    /// The equivalent [`RetryPolicy`].
    pub fn policy(&self) -> RetryPolicy {
        let mut p = RetryPolicy::attempts(self.attempts);
        if let Some(b) = self.backoff {
            p = p.backoff(b);
        }
        if let Some(m) = self.max_backoff {
            p = p.max_backoff(m);
        }
        p
    }
}

/// One task after defaults are applied and `for_each` is expanded.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Its id: the key in the file, or `key[item]` for an expansion.
    pub id: String,
    /// The key in the file (`compress` for `compress[a]`).
    pub name: String,
    /// The `for_each` item, for an expansion.
    pub item: Option<String>,
    /// What it runs.
    pub command: Command,
    /// `description`.
    pub description: Option<String>,
    /// `priority` (default medium).
    pub priority: Priority,
    /// `timeout`.
    pub timeout: Option<Duration>,
    /// `retries` / `retry`.
    pub retry: Option<Retry>,
    /// `env` (merged over `[defaults].env`), added to nerv's environment.
    pub env: BTreeMap<String, String>,
    /// The working directory: the workflow file's folder joined with `cwd`.
    pub cwd: PathBuf,
    /// `uses`: resource names and amounts.
    pub uses: BTreeMap<String, u64>,
    /// The ids of the tasks it waits for (expanded).
    pub needs: Vec<String>,
    /// `estimate`, for planning.
    pub estimate: Option<Duration>,
    /// `cache`: `Some` when the task is cached (see [`crate::cache`]).
    pub cache: Option<Cache>,
    /// `inputs`: files (joined to [`cwd`](Self::cwd)) whose contents are part of the cache key.
    pub inputs: Vec<PathBuf>,
}

/// A cached task's settings (`cache = true` or `cache = { ttl = "1d" }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cache {
    /// How long an entry stays valid (`None`: until removed).
    pub ttl: Option<Duration>,
}

/// A loaded, validated workflow file.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// `name`, or the file's stem.
    pub name: String,
    /// The file it was read from.
    pub path: PathBuf,
    /// The folder commands run in by default (the file's folder).
    pub base_dir: PathBuf,
    /// `[resources]`: name → capacity.
    pub resources: BTreeMap<String, u64>,
    /// The tasks, expanded, ordered by key then item.
    pub tasks: Vec<TaskSpec>,
    src: Arc<str>,
    format: Format,
}

impl Workflow {
    /// Reads, parses and validates the file at `path` (its format from its extension).
    pub fn load(path: &Path) -> Result<Workflow, WorkflowError> {
        let format = Format::from_path(path).ok_or_else(|| {
            WorkflowError::new(path, "unknown workflow file type")
                .with_hint("name the file *.toml, *.yaml or *.yml")
        })?;
        let src = std::fs::read_to_string(path)
            .map_err(|e| WorkflowError::new(path, format!("cannot read the file: {e}")))?;
        Workflow::parse(path, &src, format)
    }

    /// Parses and validates `src`, the text of `path` in `format`.
    pub fn parse(path: &Path, src: &str, format: Format) -> Result<Workflow, WorkflowError> {
        let raw: RawFile = match format {
            Format::Toml => toml::from_str(src).map_err(|e| {
                let err = WorkflowError::new(path, e.message().trim_end().to_owned());
                let err = match e.span() {
                    Some(s) => {
                        let err = err.at(src, s.start, s.end.saturating_sub(s.start));
                        match Locator::new(src, format).task_at(s.start) {
                            Some(t) => err.with_task(t),
                            None => err,
                        }
                    }
                    None => err,
                };
                hint_for(err)
            })?,
            Format::Yaml => {
                if src.trim().is_empty() {
                    RawFile::default()
                } else {
                    serde_yaml_ng::from_str(src).map_err(|e| {
                        let msg = e.to_string();
                        let msg = strip_yaml_location(&msg);
                        let err = WorkflowError::new(path, msg.clone());
                        let mut err = match e.location() {
                            Some(l) => err.at_line_col(src, l.line(), l.column()),
                            None => err,
                        };
                        // "tasks.NAME[.key]: message": name the task; some value errors are
                        // placed at the task, not the value: move them to the key.
                        if let Some(rest) = msg.strip_prefix("tasks.") {
                            let key_path = rest.split(": ").next().unwrap_or("");
                            let mut parts = key_path.splitn(2, '.');
                            if let Some(task) = parts.next().filter(|t| !t.is_empty()) {
                                if parts.next().is_none() && msg.contains("unknown priority") {
                                    let loc = Locator::new(src, format);
                                    err = loc.error_at_key(path, task, "priority", msg.clone());
                                }
                                err = err.with_task(task);
                            }
                        }
                        if let Some(name) = msg
                            .split("duplicate task `")
                            .nth(1)
                            .and_then(|r| r.split('`').next())
                        {
                            if let Some(o) = Locator::new(src, format).second_key(name) {
                                err = WorkflowError::new(path, msg.clone())
                                    .at(src, o, name.len())
                                    .with_task(name);
                            }
                        }
                        hint_for(err)
                    })?
                }
            }
        };
        let loc = Locator::new(src, format);
        let wf = expand(path, raw, &loc)?;
        let wf = Workflow {
            src: src.into(),
            format,
            ..wf
        };
        wf.graph_with(|b, _| {
            b.run((), |_, ()| Ok::<(), TaskError>(()));
        })?;
        Ok(wf)
    }

    /// The file's text as it was read (for a journal that records what ran).
    pub fn source(&self) -> &str {
        &self.src
    }

    /// The file's syntax.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The task with id `id`.
    pub fn task(&self, id: &str) -> Option<&TaskSpec> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// Builds the graph: one nerv task per [`TaskSpec`] with its id, description, priority,
    /// timeout, retry, uses, estimate and dependencies set; `attach` adds anything else and
    /// must set the work (`run`, `run_async`, ...).
    pub fn graph_with<F>(&self, mut attach: F) -> Result<Graph, WorkflowError>
    where
        F: FnMut(TaskBuilder<'_>, &Arc<TaskSpec>),
    {
        let mut g = Graph::builder();
        for spec in &self.tasks {
            let spec = Arc::new(spec.clone());
            attach(configure(&mut g, &spec), &spec);
        }
        g.build().map_err(|e| self.graph_error(e))
    }

    /// Like [`graph_with`](Self::graph_with), with every task's output persisted
    /// ([`GraphBuilder::persist`]): `attach` sets the work and returns its handle. A journal
    /// records these outputs, and a resumed run restores them instead of running the task.
    pub fn persisted_graph_with<T, F>(&self, mut attach: F) -> Result<Graph, WorkflowError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
        F: FnMut(TaskBuilder<'_>, &Arc<TaskSpec>) -> Handle<T>,
    {
        let mut g = Graph::builder();
        for spec in &self.tasks {
            let spec = Arc::new(spec.clone());
            let h = attach(configure(&mut g, &spec), &spec);
            g.persist(h);
        }
        g.build().map_err(|e| self.graph_error(e))
    }

    fn name_of<'w>(&'w self, id: &'w str) -> &'w str {
        self.task(id).map_or(id, |t| t.name.as_str())
    }

    fn graph_error(&self, e: GraphError) -> WorkflowError {
        let loc = Locator::new(&self.src, self.format);
        match &e {
            GraphError::Cycle { path } if path.len() >= 2 => {
                // path[i+1] depends on path[i]: point at path[1]'s `needs` entry for path[0].
                let (dep, task) = (&path[0], &path[1]);
                loc.error_at_value(
                    &self.path,
                    self.name_of(task),
                    "needs",
                    self.name_of(dep),
                    e.to_string(),
                )
                .with_task(task.clone())
                .with_hint("remove one of these `needs` to break the cycle")
            }
            GraphError::SelfDependency { task } => loc
                .error_at_value(
                    &self.path,
                    self.name_of(task),
                    "needs",
                    self.name_of(task),
                    format!("task `{task}` needs itself"),
                )
                .with_hint("a task cannot wait for itself; remove it from `needs`"),
            GraphError::DuplicateId { id, .. } => loc
                .error_at_key(
                    &self.path,
                    self.name_of(id),
                    "for_each",
                    format!("duplicate task id `{id}`"),
                )
                .with_hint("task names and for_each items must give unique ids"),
            other => {
                let t = other.tasks().first().map(|s| s.to_string());
                let err = WorkflowError::new(&self.path, other.to_string());
                match t {
                    Some(t) => {
                        loc.error_at_key(&self.path, self.name_of(&t), "needs", other.to_string())
                    }
                    None => err,
                }
            }
        }
    }
}

/// A task of `g` for `spec`, with everything the file says set but its work.
fn configure<'g>(g: &'g mut GraphBuilder, spec: &TaskSpec) -> TaskBuilder<'g> {
    let mut b = g.task(&spec.id).priority(spec.priority);
    if let Some(d) = &spec.description {
        b = b.description(d.clone());
    }
    if let Some(t) = spec.timeout {
        b = b.timeout(t);
    }
    if let Some(r) = &spec.retry {
        b = b.retry(r.policy());
    }
    if let Some(e) = spec.estimate {
        b = b.estimate(e);
    }
    for (name, n) in &spec.uses {
        b = b.uses(name, *n);
    }
    for n in &spec.needs {
        b = b.depends_on(n);
    }
    b
}

fn strip_yaml_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains("column") => msg[..i].to_owned(),
        _ => msg.to_owned(),
    }
}

/// Hints for the parser's own errors.
fn hint_for(e: WorkflowError) -> WorkflowError {
    let m = e.message().to_owned();
    if m.contains("unknown field") {
        let h = if m.contains("`run`") || m.contains("`needs`") {
            "a task accepts: run, needs, description, priority, timeout, retries, retry, env, cwd, uses, for_each, estimate, cache, inputs"
        } else if m.contains("`tasks`") {
            "the top level accepts: name, defaults, resources, tasks"
        } else {
            "check the spelling of this key"
        };
        e.with_hint(h)
    } else if m.contains("expected a sequence") {
        e.with_hint("write a list, e.g. [\"a\", \"b\"]")
    } else if m.contains("duplicate") {
        e.with_hint("each task name may appear once")
    } else {
        e
    }
}

/// Checks a task name: no brackets (reserved for expansions), no whitespace or quotes.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || "[]\"'{}".contains(c) || c.is_control())
}

fn expand(path: &Path, raw: RawFile, loc: &Locator<'_>) -> Result<Workflow, WorkflowError> {
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let name = raw.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| "workflow".into(), |s| s.to_string_lossy().into_owned())
    });
    for (r, cap) in &raw.resources {
        if r.is_empty()
            || !r
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(loc
                .error_in_section(path, "resources", r, format!("invalid resource name `{r}`"))
                .with_hint("use letters, digits, `_`, `-` and `.`"));
        }
        if *cap == 0 {
            return Err(loc
                .error_in_section(
                    path,
                    "resources",
                    r,
                    format!("resource `{r}` has capacity 0: no task could use it"),
                )
                .with_hint("give it a capacity of at least 1"));
        }
    }
    if raw.defaults.retry.is_some() && raw.defaults.retries.is_some() {
        return Err(loc
            .error_in_section(
                path,
                "defaults",
                "retry",
                "both `retries` and `retry` are set",
            )
            .with_hint(
                "keep one: `retries = N` or `retry = { attempts = N+1, backoff = \"1s\" }`",
            ));
    }
    // Expansion ids per key, to resolve `needs`.
    let mut groups: BTreeMap<&str, Vec<(String, Option<String>)>> = BTreeMap::new();
    for (key, t) in &raw.tasks.0 {
        if !valid_name(key) {
            return Err(loc
                .error_at_key(path, key, "run", format!("invalid task name `{key}`"))
                .with_hint("task names may not contain spaces, quotes, `[`, `]`, `{` or `}`"));
        }
        let ids = match &t.for_each {
            None => vec![(key.clone(), None)],
            Some(items) => {
                if items.is_empty() {
                    return Err(loc
                        .error_at_key(path, key, "for_each", "`for_each` is empty")
                        .with_hint("list at least one item, or remove the task"));
                }
                let mut seen = std::collections::HashSet::new();
                let mut v = Vec::new();
                for it in items {
                    if !seen.insert(it.0.as_str()) {
                        return Err(loc
                            .error_at_value(
                                path,
                                key,
                                "for_each",
                                &it.0,
                                format!("`for_each` lists `{}` twice", it.0),
                            )
                            .with_hint("each item gives a task id, so items must be unique"));
                    }
                    v.push((format!("{key}[{}]", it.0), Some(it.0.clone())));
                }
                v
            }
        };
        groups.insert(key, ids);
    }
    let all_ids: HashMap<&str, ()> = groups
        .values()
        .flatten()
        .map(|(id, _)| (id.as_str(), ()))
        .collect();

    let mut tasks = Vec::new();
    for (key, t) in &raw.tasks.0 {
        let ids = &groups[key.as_str()];
        let err_key = |k: &str, m: String| loc.error_at_key(path, key, k, m);
        let run = t.run.clone().ok_or_else(|| {
            loc.error_at_key(path, key, "run", format!("task `{key}` has no `run`"))
                .with_hint("add `run = \"a shell command\"` or `run = [\"program\", \"arg\"]`")
        })?;
        match &run {
            RawRun::Shell(s) if s.trim().is_empty() => {
                return Err(err_key("run", format!("task `{key}` has an empty `run`"))
                    .with_hint("give the command to run"))
            }
            RawRun::Argv(a) if a.first().is_none_or(|p| p.is_empty()) => {
                return Err(
                    err_key("run", format!("task `{key}` has an empty `run` array"))
                        .with_hint("the first element is the program to run"),
                )
            }
            _ => {}
        }
        if t.retry.is_some() && t.retries.is_some() {
            return Err(
                err_key("retry", "both `retries` and `retry` are set".into()).with_hint(
                    "keep one: `retries = N` or `retry = { attempts = N+1, backoff = \"1s\" }`",
                ),
            );
        }
        if let Some(r) = &t.retry {
            if r.attempts == 0 {
                return Err(
                    err_key("retry", "`retry.attempts` must be at least 1".into())
                        .with_hint("attempts counts the first run: 1 means no retry"),
                );
            }
        }
        let uses = t.uses.clone().unwrap_or_default();
        for (r, n) in &uses {
            match raw.resources.get(r) {
                None => {
                    let mut e = loc.error_at_value(
                        path,
                        key,
                        "uses",
                        r,
                        format!("task `{key}` uses `{r}`, which is not a declared resource"),
                    );
                    e = match closest(r, raw.resources.keys().map(String::as_str)) {
                        Some(c) => e.with_hint(format!("did you mean `{c}`?")),
                        None => e.with_hint(format!("declare it under `resources`, e.g. {r} = 1")),
                    };
                    return Err(e);
                }
                Some(cap) if n > cap => {
                    return Err(loc
                        .error_at_value(
                            path,
                            key,
                            "uses",
                            r,
                            format!("task `{key}` uses {n} of `{r}`, whose capacity is {cap}"),
                        )
                        .with_hint(
                            "it could never start; lower the amount or raise the capacity",
                        ));
                }
                _ => {}
            }
        }
        let defaults: &RawDefaults = &raw.defaults;
        let retry = pick_retry(t.retries, t.retry, defaults);
        let cache = match t.cache {
            None | Some(RawCache::Off) => None,
            Some(RawCache::On { ttl }) => Some(Cache {
                ttl: ttl.map(|d| d.0),
            }),
        };
        if cache.is_none() && t.inputs.is_some() {
            return Err(err_key(
                "inputs",
                format!("task `{key}` lists `inputs` but is not cached"),
            )
            .with_hint("`inputs` only feed the cache key: add `cache = true`, or remove them"));
        }
        if let Some(bad) = t.inputs.iter().flatten().find(|i| i.trim().is_empty()) {
            return Err(loc
                .error_at_value(path, key, "inputs", bad, "an empty input path")
                .with_hint("list file paths, relative to the task's working directory"));
        }
        for (id, item) in ids {
            if item.is_none() && uses_item(t) {
                return Err(loc
                    .error_at_value(
                        path,
                        key,
                        "run",
                        "{item}",
                        format!("task `{key}` uses `{{item}}` but has no `for_each`"),
                    )
                    .with_hint("add `for_each = [...]`, or write the value itself"));
            }
            let subst = |s: &str| match item {
                Some(i) => s.replace("{item}", i),
                None => s.to_owned(),
            };
            let command = match &run {
                RawRun::Shell(s) => Command::Shell(match item {
                    Some(i) => s.replace("{item}", &shell_quote(i)),
                    None => s.clone(),
                }),
                RawRun::Argv(a) => Command::Exec(a.iter().map(|x| subst(x)).collect()),
            };
            let mut env: BTreeMap<String, String> = defaults
                .env
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            for (k, v) in t.env.iter().flatten() {
                env.insert(k.clone(), subst(&v.0));
            }
            let cwd = match t.cwd.as_ref().or(defaults.cwd.as_ref()) {
                Some(c) => base_dir.join(subst(c)),
                None => base_dir.clone(),
            };
            let mut needs = Vec::new();
            for n in t.needs.iter().flatten() {
                let n_sub = subst(n);
                if let Some(exp) = groups.get(n_sub.as_str()) {
                    needs.extend(exp.iter().map(|(i, _)| i.clone()));
                } else if all_ids.contains_key(n_sub.as_str()) {
                    needs.push(n_sub);
                } else {
                    let mut e = loc.error_at_value(
                        path,
                        key,
                        "needs",
                        n,
                        format!("task `{id}` needs `{n_sub}`, which is not a task"),
                    );
                    // Never the task itself: a task cannot need itself.
                    let names = groups
                        .keys()
                        .copied()
                        .chain(all_ids.keys().copied())
                        .filter(|c| *c != key.as_str() && *c != id.as_str());
                    e = match closest(&n_sub, names) {
                        Some(c) => e.with_hint(format!("did you mean `{c}`?")),
                        None => e.with_hint(format!(
                            "the tasks are: {}",
                            groups.keys().copied().collect::<Vec<_>>().join(", ")
                        )),
                    };
                    return Err(e);
                }
            }
            needs.dedup();
            let inputs = t
                .inputs
                .iter()
                .flatten()
                .map(|i| cwd.join(subst(i)))
                .collect();
            tasks.push(TaskSpec {
                id: id.clone(),
                name: key.clone(),
                item: item.clone(),
                command,
                description: t.description.as_deref().map(subst),
                priority: t
                    .priority
                    .or(defaults.priority)
                    .map_or(Priority::Medium, |p| p.0),
                timeout: t.timeout.or(defaults.timeout).map(|d| d.0),
                retry,
                env,
                cwd,
                uses: uses.clone(),
                needs,
                estimate: t.estimate.or(defaults.estimate).map(|d| d.0),
                cache,
                inputs,
            });
        }
    }
    Ok(Workflow {
        name,
        path: path.to_path_buf(),
        base_dir,
        resources: raw.resources,
        tasks,
        src: "".into(),
        format: Format::Toml,
    })
}

fn uses_item(t: &RawTask) -> bool {
    let run = match &t.run {
        Some(RawRun::Shell(s)) => s.contains("{item}"),
        Some(RawRun::Argv(a)) => a.iter().any(|x| x.contains("{item}")),
        None => false,
    };
    run || t.cwd.as_deref().is_some_and(|c| c.contains("{item}"))
}

fn pick_retry(retries: Option<u32>, retry: Option<RawRetry>, d: &RawDefaults) -> Option<Retry> {
    let from = |retries: Option<u32>, retry: Option<RawRetry>| match (retries, retry) {
        (Some(n), _) => Some(Retry {
            attempts: n.saturating_add(1),
            backoff: None,
            max_backoff: None,
        }),
        (None, Some(r)) => Some(Retry {
            attempts: r.attempts,
            backoff: r.backoff.map(|b| b.0),
            max_backoff: r.max_backoff.map(|b| b.0),
        }),
        (None, None) => None,
    };
    from(retries, retry).or_else(|| from(d.retries, d.retry))
}

#[cfg(test)]
mod tests;
