//! The plain model of a trace: a [`Workflow`] of [`Task`]s with measured runtimes.
//!
//! Invariants of a [`Workflow`] (checked once, by [`Workflow::new`] or the parser): ids are
//! unique and non-empty; every parent names a task of the workflow; no task is its own parent;
//! there is no cycle; every runtime is finite and non-negative. Tasks keep the file's order;
//! each task's `parents` lists every dependency once (those declared as `parents` and those
//! implied by another task's `children`), in the order first seen.

use crate::error::{Error, ErrorKind};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A WfFormat schema version this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SchemaVersion {
    /// 1.4: tasks in `workflow.tasks`, with their measurements inline.
    V1_4,
    /// 1.5: `workflow.specification.tasks` (structure) and `workflow.execution.tasks`
    /// (measurements), matched by id.
    V1_5,
    /// 1.6: the 1.5 layout.
    V1_6,
}

impl SchemaVersion {
    /// The version as written in `schemaVersion` (`"1.4"`, `"1.5"`, `"1.6"`).
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaVersion::V1_4 => "1.4",
            SchemaVersion::V1_5 => "1.5",
            SchemaVersion::V1_6 => "1.6",
        }
    }

    /// Reads a `schemaVersion` value; `None` for a version this crate does not read.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "1.4" => Some(SchemaVersion::V1_4),
            "1.5" => Some(SchemaVersion::V1_5),
            "1.6" => Some(SchemaVersion::V1_6),
            _ => None,
        }
    }

    /// Whether the file separates specification and execution (1.5 and later).
    pub fn has_execution_section(self) -> bool {
        self >= SchemaVersion::V1_5
    }
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One task of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Unique id (the key of `parents`/`children` in the file).
    pub id: String,
    /// Display name (the id when the file gives none).
    pub name: String,
    /// Ids of the tasks it waits for.
    pub parents: Vec<String>,
    /// Measured runtime (`runtimeInSeconds`).
    pub runtime: Duration,
    /// Peak memory (`memoryInBytes`), when measured.
    pub memory_bytes: Option<u64>,
    /// Cores (`coreCount`, or `cores` in 1.4), when given.
    pub cores: Option<u32>,
    /// Average CPU use in percent (`avgCPU`), when measured.
    pub avg_cpu: Option<f64>,
}

impl Task {
    /// A task with only an id and a runtime (name = id, no parents, no measurements).
    pub fn new(id: impl Into<String>, runtime: Duration) -> Self {
        let id = id.into();
        Task {
            name: id.clone(),
            id,
            parents: Vec::new(),
            runtime,
            memory_bytes: None,
            cores: None,
            avg_cpu: None,
        }
    }

    /// Adds a parent (builder style).
    pub fn with_parent(mut self, parent: impl Into<String>) -> Self {
        self.parents.push(parent.into());
        self
    }

    /// The runtime multiplied by `scale` (rounded to the nanosecond; 0 for a non-positive or
    /// non-finite product).
    pub fn scaled_runtime(&self, scale: f64) -> Duration {
        scaled(self.runtime, scale)
    }
}

/// `d × scale`, rounded to the nanosecond; 0 when the product is not a positive finite number.
pub fn scaled(d: Duration, scale: f64) -> Duration {
    let s = d.as_secs_f64() * scale;
    if s.is_finite() && s > 0.0 {
        Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}

/// A validated trace: its tasks, their dependencies and measured runtimes.
#[derive(Debug, Clone)]
pub struct Workflow {
    name: String,
    version: SchemaVersion,
    file: Option<PathBuf>,
    makespan: Option<Duration>,
    tasks: Vec<Task>,
    by_id: HashMap<String, usize>,
    parents: Vec<Vec<usize>>,
    children: Vec<Vec<usize>>,
    topo: Vec<usize>,
}

impl Workflow {
    /// Validates `tasks` into a workflow (schema version 1.5, no file). Errors name `"<tasks>"`
    /// as their file.
    pub fn new(name: impl Into<String>, tasks: Vec<Task>) -> Result<Workflow, Error> {
        Workflow::validate(
            Path::new("<tasks>"),
            name.into(),
            SchemaVersion::V1_5,
            tasks,
            None,
        )
    }

    pub(crate) fn validate(
        file: &Path,
        name: String,
        version: SchemaVersion,
        mut tasks: Vec<Task>,
        makespan: Option<Duration>,
    ) -> Result<Workflow, Error> {
        let err = |kind| Error::new(file, kind);
        let mut by_id = HashMap::with_capacity(tasks.len());
        for (i, t) in tasks.iter().enumerate() {
            if t.id.is_empty() {
                return Err(err(ErrorKind::EmptyId { position: i }));
            }
            if by_id.insert(t.id.clone(), i).is_some() {
                return Err(err(ErrorKind::DuplicateTask { task: t.id.clone() }));
            }
            let r = t.runtime.as_secs_f64();
            if !r.is_finite() {
                return Err(err(ErrorKind::InvalidRuntime {
                    task: t.id.clone(),
                    value: r,
                }));
            }
        }
        let n = tasks.len();
        let mut parents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, t) in tasks.iter_mut().enumerate() {
            let mut seen = Vec::with_capacity(t.parents.len());
            let mut kept = Vec::with_capacity(t.parents.len());
            for p in t.parents.drain(..) {
                let Some(&j) = by_id.get(&p) else {
                    return Err(err(ErrorKind::UnknownParent {
                        task: t.id.clone(),
                        parent: p,
                    }));
                };
                if j == i {
                    return Err(err(ErrorKind::SelfDependency { task: t.id.clone() }));
                }
                if !seen.contains(&j) {
                    seen.push(j);
                    kept.push(p);
                }
            }
            t.parents = kept;
            parents[i] = seen;
        }
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, ps) in parents.iter().enumerate() {
            for &p in ps {
                children[p].push(i);
            }
        }
        // Kahn's algorithm, roots in file order.
        let mut indeg: Vec<usize> = parents.iter().map(Vec::len).collect();
        let mut topo: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
        let mut head = 0;
        while head < topo.len() {
            let u = topo[head];
            head += 1;
            for &c in &children[u] {
                indeg[c] -= 1;
                if indeg[c] == 0 {
                    topo.push(c);
                }
            }
        }
        if topo.len() < n {
            let path = find_cycle(&parents, &indeg)
                .into_iter()
                .map(|i| tasks[i].id.clone())
                .collect();
            return Err(err(ErrorKind::Cycle { path }));
        }
        Ok(Workflow {
            name,
            version,
            file: (file != Path::new("<tasks>") && file != Path::new("<graph>"))
                .then(|| file.to_path_buf()),
            makespan,
            tasks,
            by_id,
            parents,
            children,
            topo,
        })
    }

    /// The workflow of a nerv graph: each task's id, display name, dependencies and estimate
    /// (`Duration::ZERO` where none is given), so that [`simulate`](crate::simulate) and
    /// [`interval_lower_bound`](crate::interval_lower_bound) work on any graph (for `nerv
    /// plan`'s estimated makespan). Tasks keep the graph's insertion order.
    pub fn from_graph(name: impl Into<String>, graph: &nerv::Graph) -> Workflow {
        let tasks = graph
            .tasks()
            .map(|t| Task {
                id: t.id().to_string(),
                name: t.name().to_string(),
                parents: t.dependencies().map(str::to_string).collect(),
                runtime: t.estimate().unwrap_or_default(),
                memory_bytes: None,
                cores: None,
                avg_cpu: None,
            })
            .collect();
        Workflow::validate(
            Path::new("<graph>"),
            name.into(),
            SchemaVersion::V1_5,
            tasks,
            None,
        )
        .expect("a nerv graph is valid: unique ids, known dependencies, no cycle")
    }

    /// The workflow's name (the instance's `name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schema version of the file.
    pub fn schema_version(&self) -> SchemaVersion {
        self.version
    }

    /// The file it was read from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The makespan recorded in the trace (`makespanInSeconds`), if any.
    pub fn recorded_makespan(&self) -> Option<Duration> {
        self.makespan
    }

    /// The tasks, in the file's order.
    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether there is no task.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Number of dependencies.
    pub fn edge_count(&self) -> usize {
        self.parents.iter().map(Vec::len).sum()
    }

    /// The position of the task with id `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// The task with id `id`.
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.index_of(id).map(|i| &self.tasks[i])
    }

    /// Positions of the parents of the task at position `i`.
    pub fn parents_of(&self, i: usize) -> &[usize] {
        &self.parents[i]
    }

    /// Positions of the children of the task at position `i`.
    pub fn children_of(&self, i: usize) -> &[usize] {
        &self.children[i]
    }

    /// A topological order of positions (roots in file order first).
    pub fn topological_order(&self) -> &[usize] {
        &self.topo
    }

    /// Upward rank of every task at `scale`: its scaled runtime plus the largest rank among
    /// its children (the longest path from the task to the end of the workflow).
    pub fn upward_ranks(&self, scale: f64) -> Vec<Duration> {
        let mut rank = vec![Duration::ZERO; self.len()];
        for &u in self.topo.iter().rev() {
            let below = self.children[u]
                .iter()
                .map(|&c| rank[c])
                .max()
                .unwrap_or_default();
            rank[u] = self.tasks[u].scaled_runtime(scale).saturating_add(below);
        }
        rank
    }

    /// Length of the longest dependency chain at `scale`.
    pub fn critical_path(&self, scale: f64) -> Duration {
        self.upward_ranks(scale)
            .into_iter()
            .max()
            .unwrap_or_default()
    }

    /// Sum of the scaled runtimes.
    pub fn total_work(&self, scale: f64) -> Duration {
        self.tasks.iter().fold(Duration::ZERO, |a, t| {
            a.saturating_add(t.scaled_runtime(scale))
        })
    }

    /// `max(critical path, total work / workers)` at `scale`: no schedule on `workers`
    /// processors finishes sooner.
    pub fn lower_bound(&self, scale: f64, workers: usize) -> Duration {
        let per = self.total_work(scale) / workers.max(1) as u32;
        self.critical_path(scale).max(per)
    }
}

/// One cycle among the tasks Kahn's algorithm could not order (`indeg > 0`): each of them has
/// a parent among them, so walking parents revisits a task. Parent first, first repeated last.
fn find_cycle(parents: &[Vec<usize>], indeg: &[usize]) -> Vec<usize> {
    let stuck = |i: usize| indeg[i] > 0;
    let start = (0..indeg.len()).find(|&i| stuck(i)).unwrap_or(0);
    let mut pos: HashMap<usize, usize> = HashMap::new();
    let mut walk = Vec::new();
    let mut cur = start;
    loop {
        if let Some(&p) = pos.get(&cur) {
            let mut cycle: Vec<usize> = walk[p..].to_vec();
            cycle.reverse(); // walked from child to parent
            let first = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap_or(0);
            cycle.rotate_left(first);
            cycle.push(cycle[0]);
            return cycle;
        }
        pos.insert(cur, walk.len());
        walk.push(cur);
        match parents[cur].iter().copied().find(|&p| stuck(p)) {
            Some(p) => cur = p,
            None => return walk,
        }
    }
}
