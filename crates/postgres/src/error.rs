//! Typed errors of the PostgreSQL backend.
//!
//! Invariants: every error that comes from the server names the host it was talking to; every
//! error about a workflow names the task at fault. Callers branch on the predicates
//! ([`Error::is_connection`], [`Error::is_not_found`]) rather than on message text.

use std::time::Duration;

/// Everything that can go wrong in `nerv-postgres`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection string could not be parsed.
    #[error("invalid PostgreSQL connection string {url:?}: {reason}")]
    InvalidUrl {
        /// The connection string, with any password removed.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// The server could not be reached or refused the connection.
    #[error("cannot connect to PostgreSQL at {host}: {reason}")]
    Connect {
        /// `host:port` that was tried.
        host: String,
        /// The driver error with its causes, e.g. `error connecting to server: Connection refused`.
        reason: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Connecting took longer than the connect timeout.
    #[error("cannot connect to PostgreSQL at {host}: no answer within {timeout:?}")]
    ConnectTimeout {
        /// `host:port` that was tried.
        host: String,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// A statement failed (including a connection lost mid-statement).
    #[error("PostgreSQL at {host} failed while {doing}: {}", chain(source))]
    Db {
        /// `host:port` of the server.
        host: String,
        /// What the library was doing, e.g. `claiming tasks`.
        doing: &'static str,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The workflow is not valid; nothing was stored.
    #[error("invalid workflow {workflow:?}: task {task:?}: {reason}")]
    InvalidWorkflow {
        /// The workflow's name.
        workflow: String,
        /// The task at fault.
        task: String,
        /// Why it is invalid.
        reason: String,
    },
    /// No run with this id exists.
    #[error("run {0} not found")]
    RunNotFound(i64),
    /// The database holds a newer schema than this library knows.
    #[error("schema {schema:?} is at version {found}, newer than this library's {known}")]
    SchemaTooNew {
        /// The schema name.
        schema: String,
        /// Version found in the database.
        found: i32,
        /// Newest version this library knows.
        known: i32,
    },
    /// The schema name is not a plain identifier.
    #[error("invalid schema name {0:?}: use [a-z_][a-z0-9_]* (at most 40 characters)")]
    InvalidSchema(String),
}

impl Error {
    /// True when the error means the server is unreachable or the connection dropped: retrying
    /// after a reconnect may succeed.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::ConnectTimeout { .. } => true,
            Error::Db { source, .. } => is_transient(source),
            _ => false,
        }
    }

    /// True when a run id was not found.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::RunNotFound(_))
    }
}

/// An error and its causes, joined by `: `.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// Whether a driver error is worth retrying after reconnecting: closed connections, I/O errors,
/// server shutdown, serialization failures and deadlocks.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let c = code.code();
            // 08: connection exception, 57P: operator intervention (shutdown), 40001/40P01:
            // serialization failure / deadlock, 53: insufficient resources.
            c.starts_with("08")
                || c.starts_with("57P")
                || c == "40001"
                || c == "40P01"
                || c.starts_with("53")
        }
        // No SQLSTATE: an I/O or protocol error on the socket.
        None => true,
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
