//! Dependency injection: typed providers of shared services, per-run values and
//! configuration, resolved by type or through their handles, overridable for tests (the
//! seed's Dependency Injector: `Singleton`, `Factory`, `Configuration`, `DeclarativeContainer`,
//! provider overriding).
//!
//! Invariants:
//! - A [`Container`] owns a registry frozen when built (type and name → provider) and the
//!   coordinator of constructions (`init.rs`). Its providers and their singleton instances
//!   live as long as the container and the handles that share them.
//! - A provider handle ([`Singleton`], [`Scoped`], [`Factory`], [`Config`]) *is* its
//!   provider: clones, and the container it is registered in, share its constructor, its
//!   instance and its overrides.
//! - A [`Scope`] owns the scoped instances created in it; they are dropped with the scope.
//!   The engine opens one scope per workflow run.
//! - Singleton instances are created at most once per provider and scoped instances at most
//!   once per provider and scope, even when many threads ask at once; a failed construction
//!   stores nothing.
//! - No lock is held while a constructor runs, and no lock at all on the path that returns
//!   an existing singleton (a scope's table takes one read lock).
//!
//! Resolution protocol (`resolver.resolve::<T>()`):
//! 1. Find the provider registered for `T` (and the name) in the frozen registry (a hash
//!    lookup, no lock), else fail with [`ResolveError::Missing`], naming `T`, the requester
//!    and the path.
//! 2. Take the provider's current source: the top override if there is one (one atomic load
//!    tells), else its own.
//! 3. A value is returned as it is; a singleton or scoped instance that exists is returned
//!    (an `Arc` clone). A scoped source without a scope fails with
//!    [`ResolveError::OutsideScope`].
//! 4. Otherwise, if the provider is already in the resolution chain, fail with
//!    [`ResolveError::Cycle`]; then claim the construction (`init.rs`: wait if another
//!    thread is building it, and fail with the cycle if that wait would never end).
//! 5. Run the constructor with a child [`Resolver`] whose chain ends with this provider (with
//!    no scope for a singleton, the same scope for a scoped provider or a factory). An error
//!    is returned as [`ResolveError::Failed`] — or unchanged if it is a `ResolveError` from a
//!    dependency — and nothing is stored.
//! 6. Store the instance (in the singleton's cell or the scope), release the claim (waking
//!    waiters), return it.
//!
//! Factories take steps 1, 2, 4 (the chain check only) and 5, every call.

mod config;
mod error;
mod init;
mod provider;
mod resolver;

pub use config::{Config, ConfigBuilder, ConfigError, ConfigOrigin};
pub use error::{BoxError, RegisterError, ResolveError};
pub use provider::{Factory, Replacement, Scoped, Singleton};
pub use resolver::{Resolve, Resolver};

use init::Coordinator;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// The registry's two name spaces: shared values (`Arc<T>`) and factories (`A → T`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Space {
    Shared,
    Factory,
}

/// One registered provider, type-erased.
///
/// Public only so that [`Register`] implementations inside the crate can build it; it is
/// not reachable from outside.
pub struct Entry {
    space: Space,
    type_id: TypeId,
    name: Option<Arc<str>>,
    label: Arc<str>,
    kind: &'static str,
    /// The provider's address: registering the same provider twice is not a conflict.
    identity: usize,
    /// `Arc<dyn Shared<T>>` or `Arc<FactorySlot<A, T>>`.
    provider: Box<dyn Any + Send + Sync>,
    /// The public handle (`Singleton<T>`, ...), for [`Container::provider`].
    handle: Box<dyn Any + Send + Sync>,
}

/// Something that adds providers to a container: every provider handle, and the structs
/// that group them.
///
/// Implementing it for a struct of handles is how a program declares its services in one
/// place (the seed's `DeclarativeContainer`): the struct is the declaration, its fields are
/// typed handles to resolve through, and `register` lists them once.
///
/// ```
/// use nerv::{BoxError, Config, Container, ContainerBuilder, Factory, Register, Scoped, Singleton};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// #[derive(serde::Deserialize)]
/// struct AppConfig { base_url: String }
///
/// struct HttpClient { base_url: String }
/// struct Session { id: u64 }
/// struct Job { name: String, retries: u32, base_url: String }
///
/// /// Every service of the program, declared once.
/// #[derive(Clone)]
/// struct Services {
///     config: Config<AppConfig>,
///     http: Singleton<HttpClient>,
///     session: Scoped<Session>,
///     job: Factory<(String, u32), Job>,
/// }
///
/// impl Services {
///     fn new(config: AppConfig) -> Services {
///         let sessions = AtomicU64::new(0);
///         Services {
///             config: Config::from_value(config),
///             http: Singleton::new(|r| {
///                 let config = r.resolve::<AppConfig>()?;
///                 Ok(HttpClient { base_url: config.base_url.clone() })
///             }),
///             session: Scoped::new(move |_| {
///                 Ok(Session { id: sessions.fetch_add(1, Ordering::Relaxed) })
///             }),
///             job: Factory::new(|r, (name, retries): (String, u32)| {
///                 let http = r.resolve::<HttpClient>()?;
///                 Ok(Job { name, retries, base_url: http.base_url.clone() })
///             }),
///         }
///     }
/// }
///
/// impl Register for Services {
///     fn register(&self, builder: &mut ContainerBuilder) {
///         builder.add(&self.config).add(&self.http).add(&self.session).add(&self.job);
///     }
/// }
///
/// # fn main() -> Result<(), BoxError> {
/// let services = Services::new(AppConfig { base_url: "https://example.org".into() });
/// let container = Container::builder().add(&services).build()?;
///
/// // Through a handle (no lookup) or by type: the same instance.
/// let http = services.http.resolve(&container)?;
/// assert!(std::sync::Arc::ptr_eq(&http, &container.resolve::<HttpClient>()?));
///
/// // A factory makes a new value from its arguments.
/// let job = container.create::<(String, u32), Job>(("load".into(), 3))?;
/// assert_eq!((job.name.as_str(), job.retries), ("load", 3));
///
/// // Scoped: one per scope (the engine opens one per run).
/// let (run1, run2) = (container.scope(), container.scope());
/// assert_eq!(services.session.resolve(&run1)?.id, services.session.resolve(&run1)?.id);
/// assert_ne!(services.session.resolve(&run1)?.id, services.session.resolve(&run2)?.id);
///
/// // Tests substitute a component, then put the original back.
/// services.http.override_with(Singleton::from_value(HttpClient { base_url: "mock".into() }));
/// assert_eq!(container.resolve::<HttpClient>()?.base_url, "mock");
/// services.http.reset_override();
/// assert!(std::sync::Arc::ptr_eq(&http, &container.resolve::<HttpClient>()?));
/// # Ok(())
/// # }
/// ```
pub trait Register {
    /// Adds this provider (or each provider of this group) to `builder`.
    fn register(&self, builder: &mut ContainerBuilder);
}

/// Collects providers, then builds a [`Container`] whose registry can no longer change
/// (so resolution needs no lock). Obtained from [`Container::builder`].
#[derive(Default)]
pub struct ContainerBuilder {
    entries: Vec<Entry>,
}

impl fmt::Debug for ContainerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.label))
            .finish()
    }
}

impl ContainerBuilder {
    /// Adds a provider handle, or a group of them (a struct implementing [`Register`]).
    pub fn add<R: Register + ?Sized>(&mut self, providers: &R) -> &mut Self {
        providers.register(self);
        self
    }

    pub(crate) fn push(&mut self, entry: Entry) {
        self.entries.push(entry);
    }

    /// The container, or an error if two different providers share a type and a name
    /// (which would make resolution by type ambiguous). Leaves the builder empty.
    pub fn build(&mut self) -> Result<Container, RegisterError> {
        let mut providers: HashMap<(Space, TypeId), Vec<Entry>> = HashMap::new();
        for entry in std::mem::take(&mut self.entries) {
            let same = providers.entry((entry.space, entry.type_id)).or_default();
            match same.iter().find(|e| e.name == entry.name) {
                Some(e) if e.identity == entry.identity => {}
                Some(e) => {
                    return Err(RegisterError::Duplicate {
                        provider: entry.label.to_string(),
                        first: e.kind,
                        second: entry.kind,
                    })
                }
                None => same.push(entry),
            }
        }
        Ok(Container::from_registry(providers))
    }
}

struct Inner {
    providers: HashMap<(Space, TypeId), Vec<Entry>>,
    coordinator: Coordinator,
    next_scope: AtomicU64,
}

impl Inner {
    fn find(&self, space: Space, type_id: TypeId, name: Option<&str>) -> Option<&Entry> {
        self.providers
            .get(&(space, type_id))?
            .iter()
            .find(|e| e.name.as_deref() == name)
    }

    /// The names under which `type_id` is registered, for [`ResolveError::Missing`].
    fn registered(&self, space: Space, type_id: TypeId) -> Vec<String> {
        self.providers
            .get(&(space, type_id))
            .map(|es| {
                es.iter()
                    .map(|e| match &e.name {
                        Some(n) => format!("{n:?}"),
                        None => "(no name)".to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The requester named in errors when none is given.
const CONTAINER_CALLER: &str = "a caller of the container";

/// A set of providers, resolved by type (and name) or through their handles.
///
/// `Clone + Send + Sync`; clones are cheap and share everything. Build one with
/// [`Container::builder`], open a [`Scope`] per unit of work (the engine: per run) with
/// [`Container::scope`], and resolve:
///
/// - [`resolve::<T>()`](Container::resolve) → `Arc<T>` from the singleton, scoped or
///   config provider of `T` ([`resolve_named`](Container::resolve_named) picks one of
///   several by name);
/// - [`create::<A, T>(args)`](Container::create) → a new `T` from the factory `A → T`.
///
/// Errors name the provider, who asked and the path between them: see [`ResolveError`].
/// The [`Register`] trait shows a whole program's services declared and resolved.
///
/// ```
/// use nerv::{Container, Singleton};
///
/// struct Db { url: String }
/// struct Repo { db: std::sync::Arc<Db> }
///
/// let container = Container::builder()
///     .add(&Singleton::from_value(Db { url: "sqlite::memory:".into() }))
///     .add(&Singleton::new(|r| Ok(Repo { db: r.resolve::<Db>()? })))
///     .build()?;
/// assert_eq!(container.resolve::<Repo>()?.db.url, "sqlite::memory:");
///
/// let err = container.resolve::<String>().err().expect("no provider of String");
/// assert!(err.is_missing());
/// # Ok::<(), nerv::BoxError>(())
/// ```
#[derive(Clone)]
pub struct Container {
    inner: Arc<Inner>,
}

impl Default for Container {
    fn default() -> Self {
        Container::new()
    }
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut labels: Vec<String> = (self.inner.providers.values().flatten())
            .map(|e| format!("{} {}", e.kind, e.label))
            .collect();
        labels.sort();
        f.debug_struct("Container")
            .field("providers", &labels)
            .finish()
    }
}

impl Container {
    /// An empty container (what an executor uses when given none).
    pub fn new() -> Container {
        Container::from_registry(HashMap::new())
    }

    fn from_registry(providers: HashMap<(Space, TypeId), Vec<Entry>>) -> Container {
        Container {
            inner: Arc::new(Inner {
                providers,
                coordinator: Coordinator::default(),
                next_scope: AtomicU64::new(1),
            }),
        }
    }

    /// A builder to register providers into.
    pub fn builder() -> ContainerBuilder {
        ContainerBuilder::default()
    }

    /// Opens a new scope: scoped providers resolved through it give one instance per scope,
    /// dropped when the scope is.
    pub fn scope(&self) -> Scope {
        Scope {
            container: self.clone(),
            id: self.inner.next_scope.fetch_add(1, Ordering::Relaxed),
            instances: RwLock::new(HashMap::new()),
        }
    }

    /// A resolver on this container (no scope), for which `requester` describes who asks
    /// (it is only formatted if an error needs it).
    pub fn resolver<'a>(&'a self, requester: &'a dyn fmt::Display) -> Resolver<'a> {
        Resolver::root(self, None, requester)
    }

    /// The value of the shared provider of `T` (singleton or config; a scoped one needs a
    /// [`Scope`]). The requester named in errors is "a caller of the container".
    pub fn resolve<T: ?Sized + Send + Sync + 'static>(&self) -> Result<Arc<T>, ResolveError> {
        self.resolver(&CONTAINER_CALLER).resolve::<T>()
    }

    /// The value of the shared provider of `T` registered under `name`.
    pub fn resolve_named<T: ?Sized + Send + Sync + 'static>(
        &self,
        name: &str,
    ) -> Result<Arc<T>, ResolveError> {
        self.resolver(&CONTAINER_CALLER).resolve_named::<T>(name)
    }

    /// The value of the shared provider of `T`, for `requester` (named in errors).
    pub fn resolve_for<T: ?Sized + Send + Sync + 'static>(
        &self,
        requester: impl fmt::Display,
    ) -> Result<Arc<T>, ResolveError> {
        self.resolver(&requester).resolve::<T>()
    }

    /// A new `T` from the factory `A → T` and `args`.
    pub fn create<A: 'static, T: 'static>(&self, args: A) -> Result<T, ResolveError> {
        self.resolver(&CONTAINER_CALLER).create::<A, T>(args)
    }

    /// A new `T` from the factory `A → T` registered under `name`.
    pub fn create_named<A: 'static, T: 'static>(
        &self,
        name: &str,
        args: A,
    ) -> Result<T, ResolveError> {
        self.resolver(&CONTAINER_CALLER)
            .create_named::<A, T>(name, args)
    }

    /// The handle registered without a name as `P` (`Singleton<Db>`, `Factory<A, T>`, ...),
    /// for instance to override it in a test. `None` if there is none of that kind.
    pub fn provider<P: Clone + 'static>(&self) -> Option<P> {
        self.find_handle(None)
    }

    /// The handle registered under `name` as `P`.
    pub fn provider_named<P: Clone + 'static>(&self, name: &str) -> Option<P> {
        self.find_handle(Some(name))
    }

    fn find_handle<P: Clone + 'static>(&self, name: Option<&str>) -> Option<P> {
        self.inner
            .providers
            .values()
            .flatten()
            .filter(|e| e.name.as_deref() == name)
            .find_map(|e| e.handle.downcast_ref::<P>().cloned())
    }
}

/// One scoped instance, kept with its source (so that the source's address, the key, cannot
/// be reused by another source while the instance lives).
struct Instance {
    /// An `Arc<T>`.
    value: Box<dyn Any + Send + Sync>,
    _source: Arc<dyn Any + Send + Sync>,
}

/// One unit of work's instances of scoped providers (the engine opens one per workflow run;
/// the run's tasks share it). Obtained from [`Container::scope`].
///
/// `Send + Sync`: tasks on many threads resolve through one scope; a scoped instance is
/// created once per scope even if they ask at once. Dropping the scope drops its instances
/// (those still held elsewhere live on until released).
pub struct Scope {
    container: Container,
    id: u64,
    instances: RwLock<HashMap<usize, Instance>>,
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("id", &self.id)
            .field("instances", &self.len())
            .finish()
    }
}

/// The requester named in errors for a scope when none is given.
struct ScopeCaller(u64);

impl fmt::Display for ScopeCaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a caller of scope #{}", self.0)
    }
}

impl Scope {
    /// This scope's id, unique among the scopes of its container (starting at 1).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The container this scope belongs to.
    pub fn container(&self) -> &Container {
        &self.container
    }

    /// How many scoped instances this scope holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether this scope holds no scoped instance yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A resolver on this scope, for which `requester` describes who asks (e.g. a task; it
    /// is only formatted if an error needs it).
    pub fn resolver<'a>(&'a self, requester: &'a dyn fmt::Display) -> Resolver<'a> {
        Resolver::root(&self.container, Some(self), requester)
    }

    /// The value of the shared provider of `T` (singleton, scoped or config).
    pub fn resolve<T: ?Sized + Send + Sync + 'static>(&self) -> Result<Arc<T>, ResolveError> {
        self.resolver(&ScopeCaller(self.id)).resolve::<T>()
    }

    /// The value of the shared provider of `T` registered under `name`.
    pub fn resolve_named<T: ?Sized + Send + Sync + 'static>(
        &self,
        name: &str,
    ) -> Result<Arc<T>, ResolveError> {
        self.resolver(&ScopeCaller(self.id))
            .resolve_named::<T>(name)
    }

    /// The value of the shared provider of `T`, for `requester` (named in errors):
    /// ``scope.resolve_for::<Db>(format_args!("task `{id}` in run {run}"))``.
    pub fn resolve_for<T: ?Sized + Send + Sync + 'static>(
        &self,
        requester: impl fmt::Display,
    ) -> Result<Arc<T>, ResolveError> {
        self.resolver(&requester).resolve::<T>()
    }

    /// A new `T` from the factory `A → T` and `args`.
    pub fn create<A: 'static, T: 'static>(&self, args: A) -> Result<T, ResolveError> {
        self.resolver(&ScopeCaller(self.id)).create::<A, T>(args)
    }

    /// A new `T` from the factory `A → T` and `args`, for `requester` (named in errors).
    pub fn create_for<A: 'static, T: 'static>(
        &self,
        args: A,
        requester: impl fmt::Display,
    ) -> Result<T, ResolveError> {
        self.resolver(&requester).create::<A, T>(args)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<usize, Instance>> {
        self.instances
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The instance of the source at `key`, if created in this scope.
    pub(crate) fn instance<T: ?Sized + 'static>(&self, key: usize) -> Option<Arc<T>> {
        self.read()
            .get(&key)
            .and_then(|i| i.value.downcast_ref::<Arc<T>>())
            .cloned()
    }

    /// Keeps `value` as the instance of the source at `key` unless there already is one;
    /// returns the kept one.
    pub(crate) fn store<T: ?Sized + Send + Sync + 'static>(
        &self,
        key: usize,
        source: Arc<dyn Any + Send + Sync>,
        value: Arc<T>,
    ) -> Arc<T> {
        let mut map = self
            .instances
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let kept = map.entry(key).or_insert_with(|| Instance {
            value: Box::new(value.clone()),
            _source: source,
        });
        kept.value
            .downcast_ref::<Arc<T>>()
            .cloned()
            .unwrap_or(value)
    }
}
