//! `nerv validate FILE`: loads the file and reports whether it is valid.

use crate::args::FileArgs;
use crate::exit::{CliError, Exit};
use crate::out::outln;
use nerv_cli::workflow::Workflow;

/// Runs `nerv validate`.
pub fn run(args: FileArgs) -> Result<Exit, CliError> {
    let wf = Workflow::load(&args.file)?;
    let edges: usize = wf.tasks.iter().map(|t| t.needs.len()).sum();
    let keys: std::collections::BTreeSet<&str> = wf.tasks.iter().map(|t| t.name.as_str()).collect();
    outln!(
        "{}: ok: {} tasks ({} in the file), {} dependencies",
        args.file.display(),
        wf.tasks.len(),
        keys.len(),
        edges
    );
    Ok(Exit::Success)
}
