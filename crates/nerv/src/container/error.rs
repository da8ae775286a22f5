//! Why a resolution or a registration failed, naming the provider, who asked, and the path
//! of providers between them.

use thiserror::Error;

/// The error type constructors return: any error converts into it with `?` (a
/// [`ResolveError`] from a dependency included, which is then passed on unchanged).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a provider could not give a value.
///
/// Every variant names the requester: a task (as the engine describes it, e.g.
/// ``task `load` in run 7``), or ``provider `my_crate::Repo` `` when a constructor asked for
/// a dependency. `path` is the whole resolution path: the first requester, then each
/// provider whose constructor was running, ending with the provider at fault.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// No provider is registered for the requested type (and name).
    #[error("no provider for {provider}, requested by {requester}{}{}", via(.path), others(.registered))]
    Missing {
        /// The provider asked for, e.g. ``` `my_crate::Db` (named "primary") ```.
        provider: String,
        /// Who asked for it.
        requester: String,
        /// The resolution path (see the type's documentation).
        path: Vec<String>,
        /// The other registrations of the same type (their names, `(no name)` for the
        /// default one), to spot a misspelt or forgotten name.
        registered: Vec<String>,
    },
    /// Constructing the provider needs the provider itself (`A` needs `B` needs `A`).
    #[error("dependency cycle: {} (requested by {requester})", .cycle.join(" → "))]
    Cycle {
        /// The providers around the cycle; the first and the last are the same.
        cycle: Vec<String>,
        /// Who started the resolution.
        requester: String,
    },
    /// A scoped provider was asked for where there is no scope: from a [`Container`]
    /// rather than a [`Scope`], or from a singleton's constructor (a singleton outlives
    /// every scope, so it may not hold a scoped value).
    ///
    /// [`Container`]: crate::Container
    /// [`Scope`]: crate::Scope
    #[error(
        "{provider} is scoped (one instance per scope), but {requester} asked for it outside \
         a scope{} (resolve it from a `Scope`; a singleton's constructor has no scope)",
        via(.path)
    )]
    OutsideScope {
        /// The scoped provider.
        provider: String,
        /// Who asked for it.
        requester: String,
        /// The resolution path.
        path: Vec<String>,
    },
    /// The provider's constructor returned an error (not a [`ResolveError`]: those are
    /// passed on as they are, since they already name the deepest provider at fault).
    #[error("{provider} could not be created, requested by {requester}{}: {source}", via(.path))]
    Failed {
        /// The provider whose constructor failed.
        provider: String,
        /// Who asked for it.
        requester: String,
        /// The resolution path.
        path: Vec<String>,
        /// The constructor's error.
        #[source]
        source: BoxError,
    },
}

/// ` (path: a → b → c)` when the path goes through providers, else nothing.
fn via(path: &[String]) -> String {
    if path.len() > 2 {
        format!(" (path: {})", path.join(" → "))
    } else {
        String::new()
    }
}

fn others(registered: &[String]) -> String {
    if registered.is_empty() {
        String::new()
    } else {
        format!("; registered for this type: {}", registered.join(", "))
    }
}

impl ResolveError {
    /// Whether no provider was registered for what was asked.
    pub fn is_missing(&self) -> bool {
        matches!(self, ResolveError::Missing { .. })
    }

    /// Whether the resolution ran into a dependency cycle.
    pub fn is_cycle(&self) -> bool {
        matches!(self, ResolveError::Cycle { .. })
    }

    /// Whether a scoped provider was asked for outside a scope.
    pub fn is_outside_scope(&self) -> bool {
        matches!(self, ResolveError::OutsideScope { .. })
    }

    /// Whether a constructor returned an error.
    pub fn is_failed(&self) -> bool {
        matches!(self, ResolveError::Failed { .. })
    }

    /// The provider at fault (for a cycle: the one that closes it).
    pub fn provider(&self) -> &str {
        match self {
            ResolveError::Missing { provider, .. }
            | ResolveError::OutsideScope { provider, .. }
            | ResolveError::Failed { provider, .. } => provider,
            ResolveError::Cycle { cycle, .. } => cycle.last().map_or("", String::as_str),
        }
    }

    /// Who asked: the requester given to the resolution, or ``provider `T` `` when a
    /// constructor asked for a dependency (for a cycle: the first requester).
    pub fn requester(&self) -> &str {
        match self {
            ResolveError::Missing { requester, .. }
            | ResolveError::Cycle { requester, .. }
            | ResolveError::OutsideScope { requester, .. }
            | ResolveError::Failed { requester, .. } => requester,
        }
    }

    /// The resolution path, first requester first (for a cycle: the providers around it).
    pub fn path(&self) -> &[String] {
        match self {
            ResolveError::Missing { path, .. }
            | ResolveError::OutsideScope { path, .. }
            | ResolveError::Failed { path, .. } => path,
            ResolveError::Cycle { cycle, .. } => cycle,
        }
    }
}

/// Why a [`ContainerBuilder`](crate::ContainerBuilder) could not build its container.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// Two different providers were registered for the same type under the same name, so
    /// resolution by type would be ambiguous. (Registering the same handle twice is fine.)
    #[error(
        "two different providers of {provider} (a {first} and a {second}); give one a name \
         with `.named(..)` or register only one"
    )]
    Duplicate {
        /// The type (and name) registered twice.
        provider: String,
        /// The kind of the first registration (`singleton`, `scoped`, `factory`, `config`).
        first: &'static str,
        /// The kind of the second.
        second: &'static str,
    },
}
