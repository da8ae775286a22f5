//! `nerv graph FILE --format dot|mermaid`: the task graph as text for Graphviz or Mermaid.

use crate::args::{GraphArgs, GraphFormat};
use crate::exit::{CliError, Exit};
use crate::out::outln;
use nerv_cli::workflow::Workflow;
use std::collections::HashMap;
use std::fmt::Write;

/// Runs `nerv graph`.
pub fn run(args: GraphArgs) -> Result<Exit, CliError> {
    let wf = Workflow::load(&args.file)?;
    let out = match args.format {
        GraphFormat::Dot => dot(&wf),
        GraphFormat::Mermaid => mermaid(&wf),
    };
    outln!("{}", out.strip_suffix('\n').unwrap_or(&out));
    Ok(Exit::Success)
}

fn dot_quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// Graphviz DOT: one node per task (labelled with its id), one edge per dependency.
pub fn dot(wf: &Workflow) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph {} {{", dot_quote(&wf.name));
    let _ = writeln!(s, "  rankdir=LR;");
    let _ = writeln!(s, "  node [shape=box, style=rounded];");
    for t in &wf.tasks {
        let tip = t
            .description
            .clone()
            .unwrap_or_else(|| t.command.display_line());
        let _ = writeln!(s, "  {} [tooltip={}];", dot_quote(&t.id), dot_quote(&tip));
    }
    for t in &wf.tasks {
        for n in &t.needs {
            let _ = writeln!(s, "  {} -> {};", dot_quote(n), dot_quote(&t.id));
        }
    }
    s.push_str("}\n");
    s
}

/// A Mermaid flowchart: nodes `t0, t1, …` labelled with the task ids.
pub fn mermaid(wf: &Workflow) -> String {
    let idx: HashMap<&str, usize> = wf
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let mut s = String::from("flowchart LR\n");
    for (i, t) in wf.tasks.iter().enumerate() {
        let label: String =
            t.id.chars()
                .map(|c| match c {
                    '"' => "#quot;".to_owned(),
                    c => c.to_string(),
                })
                .collect();
        let _ = writeln!(s, "  t{i}[\"{label}\"]");
    }
    for (i, t) in wf.tasks.iter().enumerate() {
        for n in &t.needs {
            let _ = writeln!(s, "  t{} --> t{i}", idx[n.as_str()]);
        }
    }
    s
}
