//! Export to a nerv workflow file (the TOML format of the command line):
//!
//! ```toml
//! name = "montage"
//! [resources]                 # only with a memory limit
//! memory = 8000000000
//! [tasks.mProject_ID0000001]
//! run = ["sleep", "0.015712"]
//! needs = ["..."]
//! estimate = "15712us"
//! uses = { memory = 14692000 } # only with a memory limit
//! ```
//!
//! Each task runs `sleep` (or the program given) for its runtime times the scale; `estimate`
//! is that same duration, in whole milliseconds when it is one, else microseconds. A task's
//! name is written as its `description` when it differs from its id.

use crate::graph::MEMORY_RESOURCE;
use crate::model::Workflow;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Options of [`Workflow::to_toml`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// Runtimes are multiplied by this (default 1).
    pub scale: f64,
    /// The program and leading arguments; the scaled runtime in seconds is appended
    /// (default `["sleep"]`).
    pub command: Vec<String>,
    /// With `Some(limit)`: `[resources] memory = limit` and, on each task with a measured
    /// memory, `uses = { memory = min(bytes, limit) }`.
    pub memory_limit: Option<u64>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            scale: 1.0,
            command: vec!["sleep".to_string()],
            memory_limit: None,
        }
    }
}

impl ExportOptions {
    /// Default options with `scale`.
    pub fn scaled(scale: f64) -> Self {
        ExportOptions {
            scale,
            ..ExportOptions::default()
        }
    }
}

#[derive(Serialize)]
struct FileOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    resources: BTreeMap<&'static str, u64>,
    tasks: BTreeMap<&'a str, TaskOut<'a>>,
}

#[derive(Serialize)]
struct TaskOut<'a> {
    run: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    needs: Vec<&'a str>,
    estimate: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    uses: BTreeMap<&'static str, u64>,
}

/// Seconds with up to 9 decimals, trailing zeros removed (`"0.123"`, `"2"`).
pub fn format_seconds(d: Duration) -> String {
    let s = format!("{}.{:09}", d.as_secs(), d.subsec_nanos());
    let s = s.trim_end_matches('0');
    s.trim_end_matches('.').to_string()
}

/// A duration as the workflow file's `estimate` reads it: `"123ms"`, `"15712us"`, `"7ns"`,
/// `"0ms"`.
pub fn format_estimate(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns.is_multiple_of(1_000_000) {
        format!("{}ms", ns / 1_000_000)
    } else if ns.is_multiple_of(1_000) {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

impl Workflow {
    /// The workflow as a nerv workflow file (TOML), see the module docs.
    pub fn to_toml(&self, opts: &ExportOptions) -> String {
        let mut resources = BTreeMap::new();
        if let Some(limit) = opts.memory_limit {
            resources.insert(MEMORY_RESOURCE, limit);
        }
        let tasks = self
            .tasks()
            .iter()
            .map(|t| {
                let d = t.scaled_runtime(opts.scale);
                let mut run = opts.command.clone();
                run.push(format_seconds(d));
                let mut uses = BTreeMap::new();
                if let (Some(limit), Some(bytes)) = (opts.memory_limit, t.memory_bytes) {
                    if bytes > 0 {
                        uses.insert(MEMORY_RESOURCE, bytes.min(limit));
                    }
                }
                let out = TaskOut {
                    run,
                    description: (t.name != t.id).then_some(t.name.as_str()),
                    needs: t.parents.iter().map(String::as_str).collect(),
                    estimate: format_estimate(d),
                    uses,
                };
                (t.id.as_str(), out)
            })
            .collect();
        let file = FileOut {
            name: self.name(),
            resources,
            tasks,
        };
        toml::to_string(&file).expect("a workflow file always serializes to TOML")
    }
}
