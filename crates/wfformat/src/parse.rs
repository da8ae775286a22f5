//! Reading WfFormat JSON (schema 1.4 to 1.6) into a [`Workflow`].
//!
//! Steps:
//! 1. Read `schemaVersion` alone (so that a file of another version fails with
//!    [`ErrorKind::UnsupportedVersion`] rather than with a shape error).
//! 2. Deserialize the layout of that version: 1.5 and 1.6 have the structure in
//!    `workflow.specification.tasks` and the measurements in `workflow.execution.tasks`
//!    (matched by id); 1.4 has both in `workflow.tasks`. A file whose layout disagrees with
//!    its version (a 1.4 layout labelled 1.5, say) is read by its layout.
//! 3. Join: every task gets its runtime (required), memory, cores and CPU; each dependency is
//!    taken from `parents` and from the other side's `children` (traces list both, and a few
//!    list only one). In 1.4 files, a parent that is not an id may name a task by `name`.
//! 4. Validate ([`Workflow`]'s invariants): unknown ids, duplicates, cycles.

use crate::error::{Error, ErrorKind};
use crate::model::{SchemaVersion, Task, Workflow};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

#[derive(Deserialize)]
struct VersionOnly {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawInstance {
    name: Option<String>,
    workflow: RawWorkflow,
}

#[derive(Deserialize)]
struct RawWorkflow {
    name: Option<String>,
    specification: Option<RawSpecification>,
    execution: Option<RawExecution>,
    /// 1.4: tasks with their measurements.
    tasks: Option<Vec<RawTask>>,
    #[serde(rename = "makespanInSeconds")]
    makespan: Option<f64>,
}

#[derive(Deserialize)]
struct RawSpecification {
    tasks: Vec<RawTask>,
}

#[derive(Deserialize)]
struct RawExecution {
    #[serde(default)]
    tasks: Vec<RawTask>,
    #[serde(rename = "makespanInSeconds")]
    makespan: Option<f64>,
}

/// A task of any layout: structure fields (specification, 1.4) and measurement fields
/// (execution, 1.4); absent ones are `None`.
#[derive(Deserialize)]
struct RawTask {
    id: Option<String>,
    name: Option<String>,
    #[serde(default)]
    parents: Vec<String>,
    #[serde(default)]
    children: Vec<String>,
    #[serde(rename = "runtimeInSeconds")]
    runtime: Option<f64>,
    #[serde(rename = "memoryInBytes")]
    memory: Option<f64>,
    #[serde(rename = "coreCount")]
    core_count: Option<f64>,
    cores: Option<f64>,
    #[serde(rename = "avgCPU")]
    avg_cpu: Option<f64>,
}

impl RawTask {
    fn key(&self) -> String {
        self.id
            .clone()
            .or_else(|| self.name.clone())
            .unwrap_or_default()
    }
}

/// Reads and validates the WfFormat file at `path`.
pub fn parse_file(path: impl AsRef<Path>) -> Result<Workflow, Error> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::new(path, ErrorKind::Io(e)))?;
    parse_str(&text, path)
}

/// Reads and validates WfFormat JSON text; `origin` names it in errors (a path, or e.g.
/// `"<stdin>"`).
pub fn parse_str(text: &str, origin: impl AsRef<Path>) -> Result<Workflow, Error> {
    let file = origin.as_ref();
    let err = |kind| Error::new(file, kind);
    let v: VersionOnly = serde_json::from_str(text).map_err(|e| err(ErrorKind::Json(e)))?;
    let version_text = match &v.schema_version {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "(missing)".to_string(),
    };
    let version = SchemaVersion::parse(&version_text).ok_or_else(|| {
        err(ErrorKind::UnsupportedVersion {
            version: version_text.clone(),
        })
    })?;
    let raw: RawInstance = serde_json::from_str(text).map_err(|e| err(ErrorKind::Json(e)))?;
    let name = raw.name.or(raw.workflow.name.clone()).unwrap_or_else(|| {
        file.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let wf = raw.workflow;
    let (structure, measured, makespan, split) = match (wf.specification, wf.tasks) {
        (Some(spec), _) => {
            let (exec, makespan) = match wf.execution {
                Some(e) => (e.tasks, e.makespan.or(wf.makespan)),
                None => (Vec::new(), wf.makespan),
            };
            (spec.tasks, exec, makespan, true)
        }
        (None, Some(tasks)) => (tasks, Vec::new(), wf.makespan, false),
        (None, None) => return Err(err(ErrorKind::MissingTasks)),
    };
    let makespan = makespan
        .filter(|m| m.is_finite() && *m >= 0.0)
        .and_then(|m| Duration::try_from_secs_f64(m).ok());
    let tasks = join(file, version, structure, measured, split)?;
    Workflow::validate(file, name, version, tasks, makespan)
}

/// Steps 3 of the module docs: measurements and the two-sided dependencies.
fn join(
    file: &Path,
    version: SchemaVersion,
    structure: Vec<RawTask>,
    measured: Vec<RawTask>,
    split: bool,
) -> Result<Vec<Task>, Error> {
    let err = |kind| Error::new(file, kind);
    let keys: Vec<String> = structure.iter().map(RawTask::key).collect();
    let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        if k.is_empty() {
            return Err(err(ErrorKind::EmptyId { position: i }));
        }
        if by_id.insert(k.as_str(), i).is_some() {
            return Err(err(ErrorKind::DuplicateTask { task: k.clone() }));
        }
    }
    // 1.4 files written by older tools refer to tasks by name: accept a unique name too.
    let mut by_name: HashMap<&str, Option<usize>> = HashMap::new();
    if version == SchemaVersion::V1_4 {
        for (i, t) in structure.iter().enumerate() {
            if let Some(n) = &t.name {
                by_name
                    .entry(n.as_str())
                    .and_modify(|e| *e = None)
                    .or_insert(Some(i));
            }
        }
    }
    let resolve = |r: &str| -> Option<usize> {
        by_id
            .get(r)
            .copied()
            .or_else(|| by_name.get(r).copied().flatten())
    };
    let mut exec: Vec<Option<RawTask>> = Vec::new();
    if split {
        exec.resize_with(structure.len(), || None);
        for m in measured {
            let k = m.key();
            match by_id.get(k.as_str()) {
                Some(&i) => exec[i] = Some(m),
                None => return Err(err(ErrorKind::UnknownExecutionTask { task: k })),
            }
        }
    }
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(); structure.len()];
    for (i, t) in structure.iter().enumerate() {
        for p in &t.parents {
            let j = resolve(p).ok_or_else(|| {
                err(ErrorKind::UnknownParent {
                    task: keys[i].clone(),
                    parent: p.clone(),
                })
            })?;
            parents[i].push(j);
        }
    }
    for (i, t) in structure.iter().enumerate() {
        for c in &t.children {
            let j = resolve(c).ok_or_else(|| {
                err(ErrorKind::UnknownChild {
                    task: keys[i].clone(),
                    child: c.clone(),
                })
            })?;
            if !parents[j].contains(&i) {
                parents[j].push(i);
            }
        }
    }
    let mut tasks = Vec::with_capacity(structure.len());
    for (i, t) in structure.iter().enumerate() {
        let id = &keys[i];
        let m = if split { exec[i].as_ref() } else { Some(t) };
        let runtime = m
            .and_then(|m| m.runtime)
            .ok_or_else(|| err(ErrorKind::MissingRuntime { task: id.clone() }))?;
        if !runtime.is_finite() || runtime < 0.0 {
            return Err(err(ErrorKind::InvalidRuntime {
                task: id.clone(),
                value: runtime,
            }));
        }
        let measure = |field: &'static str, v: Option<f64>| -> Result<Option<f64>, Error> {
            match v {
                Some(x) if !x.is_finite() || x < 0.0 => Err(err(ErrorKind::InvalidMeasure {
                    task: id.clone(),
                    field,
                    value: x,
                })),
                other => Ok(other),
            }
        };
        let memory = measure("memoryInBytes", m.and_then(|m| m.memory))?;
        let cores = match m.and_then(|m| m.core_count) {
            Some(c) => measure("coreCount", Some(c))?,
            None => measure("cores", m.and_then(|m| m.cores).or(t.cores))?,
        };
        let avg_cpu = m.and_then(|m| m.avg_cpu).filter(|c| c.is_finite());
        tasks.push(Task {
            id: id.clone(),
            name: t.name.clone().unwrap_or_else(|| id.clone()),
            parents: parents[i].iter().map(|&p| keys[p].clone()).collect(),
            runtime: Duration::try_from_secs_f64(runtime).unwrap_or(Duration::MAX),
            memory_bytes: memory.map(|b| b.round() as u64),
            cores: cores.map(|c| c.round().min(u32::MAX as f64) as u32),
            avg_cpu,
        });
    }
    Ok(tasks)
}
