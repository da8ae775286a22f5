//! `nerv import`: a WfCommons WfFormat trace (schema 1.4 to 1.6) as a nerv workflow file.
//!
//! Each task becomes a command (`sleep` for its recorded runtime times `--scale`, or the
//! program given with `--command`), its parents its `needs`, its runtime its `estimate` (so
//! that `nerv plan` and the scheduler know durations), and with `--memory-limit` its recorded
//! memory a `uses = { memory = … }` against a `[resources] memory` budget.

use crate::args::ImportArgs;
use crate::exit::{CliError, Exit};
use nerv_wfformat::ExportOptions;

/// Runs `nerv import`.
pub fn run(args: ImportArgs) -> Result<Exit, CliError> {
    let wf = nerv_wfformat::parse_file(&args.file).map_err(|e| CliError::Other(e.to_string()))?;
    let mut opts = ExportOptions::scaled(args.scale);
    if let Some(cmd) = &args.command {
        opts.command = cmd.split_whitespace().map(str::to_string).collect();
        if opts.command.is_empty() {
            return Err(CliError::Other("--command: empty".into()));
        }
    }
    opts.memory_limit = args.memory_limit;
    let text = wf.to_toml(&opts);
    match &args.output {
        Some(path) if path.as_os_str() != "-" => {
            std::fs::write(path, text)
                .map_err(|e| CliError::Other(format!("cannot write {}: {e}", path.display())))?;
            eprintln!(
                "nerv: imported {} ({} tasks, schema {}) into {}",
                args.file.display(),
                wf.tasks().len(),
                wf.schema_version().as_str(),
                path.display()
            );
        }
        _ => print!("{text}"),
    }
    Ok(Exit::Success)
}
