//! Exit codes, decided in one place.
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | every task completed (or: the file is valid, for `validate`/`plan`/`graph`) |
//! | 1    | a task failed (or nerv itself could not work: a journal it cannot open, a log folder it cannot create, a run that does not exist) |
//! | 2    | the workflow file is invalid, or the command line is wrong (clap's own code) |
//! | 130  | interrupted (SIGINT/SIGTERM): the run was cancelled and its processes ended |

use nerv::RunStatus;
use nerv_cli::workflow::WorkflowError;
use std::fmt;
use std::process::ExitCode;

/// How `nerv` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0.
    Success,
    /// 1.
    TaskFailed,
    /// 2.
    Invalid,
    /// 130.
    Interrupted,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::TaskFailed => 1,
            Exit::Invalid => 2,
            Exit::Interrupted => 130,
        }
    }

    /// The exit of a finished run.
    pub fn of_run(status: RunStatus, interrupted: bool) -> Exit {
        if interrupted {
            Exit::Interrupted
        } else if status == RunStatus::Completed {
            Exit::Success
        } else {
            Exit::TaskFailed
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// An error that ends `nerv` before or outside a run.
#[derive(Debug)]
pub enum CliError {
    /// The workflow file is invalid (exit 2).
    Invalid(WorkflowError),
    /// Anything else (exit 1): the message says what.
    Other(String),
}

impl CliError {
    /// Its exit.
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Invalid(_) => Exit::Invalid,
            CliError::Other(_) => Exit::TaskFailed,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Invalid(e) => write!(f, "{e}"),
            CliError::Other(m) => writeln!(f, "error: {m}"),
        }
    }
}

impl From<WorkflowError> for CliError {
    fn from(e: WorkflowError) -> Self {
        CliError::Invalid(e)
    }
}
