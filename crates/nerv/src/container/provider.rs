//! The provider handles — [`Singleton`], [`Scoped`], [`Factory`] — and what they share: a
//! slot holding the original source and a stack of overrides.
//!
//! A handle *is* its provider: clones share the constructor, the singleton's instance and the
//! overrides, and registering a handle in a container puts that same slot in its registry.
//! So `services.db.resolve(&container)` and `container.resolve::<Db>()` give the same
//! instance, and overriding through either is seen by both.

use super::error::{BoxError, ResolveError};
use super::{ContainerBuilder, Entry, Register, Resolve, Resolver, Scope, Space};
use std::any::{type_name, Any, TypeId};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

/// A constructor of shared values.
pub(crate) type Ctor<T> =
    Arc<dyn Fn(&Resolver<'_>) -> Result<Arc<T>, BoxError> + Send + Sync + 'static>;

/// A factory's constructor.
pub(crate) type FactoryFn<A, T> =
    Arc<dyn Fn(&Resolver<'_>, A) -> Result<T, BoxError> + Send + Sync + 'static>;

/// A provider of `Arc<T>` as the registry sees it, whatever its kind.
pub(crate) trait Shared<T: ?Sized>: Send + Sync {
    fn resolve(&self, r: &Resolver<'_>) -> Result<Arc<T>, ResolveError>;
}

/// How a provider is named in errors and logs.
pub(crate) struct Meta {
    pub(crate) name: Option<Arc<str>>,
    pub(crate) label: Arc<str>,
    pub(crate) kind: &'static str,
}

impl Meta {
    pub(crate) fn new(kind: &'static str, label: String, name: Option<Arc<str>>) -> Self {
        Meta {
            name,
            label: label.into(),
            kind,
        }
    }
}

/// `` `my_crate::Db` `` or `` `my_crate::Db` (named "primary") ``.
pub(crate) fn type_label<T: ?Sized>(name: Option<&str>) -> String {
    match name {
        None => format!("`{}`", type_name::<T>()),
        Some(n) => format!("`{}` (named {n:?})", type_name::<T>()),
    }
}

/// `` factory of `T` from `A` ``, and its name if any.
pub(crate) fn factory_label<A, T>(name: Option<&str>) -> String {
    let base = format!(
        "factory of `{}` from `{}`",
        type_name::<T>(),
        type_name::<A>()
    );
    match name {
        None => base,
        Some(n) => format!("{base} (named {n:?})"),
    }
}

/// An original and a stack of overrides; the top override, if any, is the current one.
pub(crate) struct Overridable<S> {
    original: S,
    stack: RwLock<Vec<S>>,
    /// Whether `stack` is non-empty: lets the common, non-overridden case skip the lock.
    overridden: AtomicBool,
}

impl<S: Clone> Overridable<S> {
    pub(crate) fn new(original: S) -> Self {
        Overridable {
            original,
            stack: RwLock::new(Vec::new()),
            overridden: AtomicBool::new(false),
        }
    }

    /// Runs `f` on the current source. No lock is held while `f` runs (it may construct
    /// values, which may resolve this very provider again or override it).
    pub(crate) fn with_current<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        if self.overridden.load(Ordering::Acquire) {
            let top = self
                .stack
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .last()
                .cloned();
            if let Some(top) = top {
                return f(&top);
            }
        }
        f(&self.original)
    }

    pub(crate) fn original(&self) -> &S {
        &self.original
    }

    fn edit(&self, f: impl FnOnce(&mut Vec<S>)) {
        let mut stack = self.stack.write().unwrap_or_else(PoisonError::into_inner);
        f(&mut stack);
        self.overridden.store(!stack.is_empty(), Ordering::Release);
    }

    pub(crate) fn push(&self, s: S) {
        self.edit(|stack| stack.push(s));
    }

    pub(crate) fn pop(&self) -> bool {
        let mut popped = false;
        self.edit(|stack| popped = stack.pop().is_some());
        popped
    }

    pub(crate) fn clear(&self) {
        self.edit(Vec::clear);
    }

    pub(crate) fn is_overridden(&self) -> bool {
        self.overridden.load(Ordering::Acquire)
    }

    /// A copy with the same original and overrides (for a renamed handle).
    pub(crate) fn copy(&self) -> Self {
        let stack = self
            .stack
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let overridden = AtomicBool::new(!stack.is_empty());
        Overridable {
            original: self.original.clone(),
            stack: RwLock::new(stack),
            overridden,
        }
    }
}

/// Where shared values come from. Its address identifies it (instances of a scoped source
/// are stored in each scope under that address).
pub(crate) enum Source<T: ?Sized> {
    /// Built once, on first use, kept in `cell`.
    Singleton {
        ctor: Ctor<T>,
        cell: OnceLock<Arc<T>>,
    },
    /// Built once per scope, kept in the scope.
    Scoped { ctor: Ctor<T> },
    /// A value given up front.
    Value(Arc<T>),
}

fn addr<S>(s: &Arc<S>) -> usize {
    Arc::as_ptr(s) as usize
}

/// Somewhere a built value is kept: a singleton's cell, or a scope.
pub(crate) trait Store<T: ?Sized> {
    /// The value, if built.
    fn get(&self) -> Option<Arc<T>>;
    /// Keeps `value` unless one is already kept; returns the kept one.
    fn put(&self, value: Arc<T>) -> Arc<T>;
}

impl<T: ?Sized> Store<T> for OnceLock<Arc<T>> {
    fn get(&self) -> Option<Arc<T>> {
        OnceLock::get(self).cloned()
    }
    fn put(&self, value: Arc<T>) -> Arc<T> {
        self.get_or_init(|| value).clone()
    }
}

/// A scoped source's place in one scope.
struct InScope<'s, T: ?Sized> {
    scope: &'s Scope,
    source: &'s Arc<Source<T>>,
}

impl<T: ?Sized + Send + Sync + 'static> Store<T> for InScope<'_, T> {
    fn get(&self) -> Option<Arc<T>> {
        self.scope.instance::<T>(addr(self.source))
    }
    fn put(&self, value: Arc<T>) -> Arc<T> {
        let keep: Arc<dyn Any + Send + Sync> = self.source.clone();
        self.scope.store(addr(self.source), keep, value)
    }
}

/// The state behind [`Singleton`] and [`Scoped`] handles.
pub(crate) struct Slot<T: ?Sized> {
    pub(crate) meta: Meta,
    sources: Overridable<Arc<Source<T>>>,
}

impl<T: ?Sized + Send + Sync + 'static> Slot<T> {
    fn new(kind: &'static str, source: Source<T>) -> Self {
        Slot {
            meta: Meta::new(kind, type_label::<T>(None), None),
            sources: Overridable::new(Arc::new(source)),
        }
    }

    fn renamed(&self, name: Arc<str>) -> Self {
        Slot {
            meta: Meta::new(
                self.meta.kind,
                type_label::<T>(Some(&name)),
                Some(name.clone()),
            ),
            sources: self.sources.copy(),
        }
    }

    /// This slot's identity in resolution chains.
    fn id(&self) -> usize {
        self as *const Self as usize
    }

    fn resolve_source(
        &self,
        source: &Arc<Source<T>>,
        r: &Resolver<'_>,
    ) -> Result<Arc<T>, ResolveError> {
        let label = &self.meta.label;
        match &**source {
            Source::Value(v) => Ok(v.clone()),
            Source::Singleton { ctor, cell } => match cell.get() {
                Some(v) => Ok(v.clone()),
                // No scope for the constructor: a singleton must not capture a scoped value.
                None => r.build(self.id(), label, (addr(source), 0), None, ctor, cell),
            },
            Source::Scoped { ctor } => {
                let Some(scope) = r.scope() else {
                    return Err(r.outside_scope(label));
                };
                let store = InScope { scope, source };
                match store.get() {
                    Some(v) => Ok(v),
                    None => {
                        let cell = (addr(source), scope.id());
                        r.build(self.id(), label, cell, Some(scope), ctor, &store)
                    }
                }
            }
        }
    }

    fn register(self: &Arc<Self>, handle: Box<dyn Any + Send + Sync>, b: &mut ContainerBuilder) {
        let provider: Arc<dyn Shared<T>> = self.clone();
        b.push(Entry {
            space: Space::Shared,
            type_id: TypeId::of::<T>(),
            name: self.meta.name.clone(),
            label: self.meta.label.clone(),
            kind: self.meta.kind,
            identity: addr(self),
            provider: Box::new(provider),
            handle,
        });
    }
}

impl<T: ?Sized + Send + Sync + 'static> Shared<T> for Slot<T> {
    fn resolve(&self, r: &Resolver<'_>) -> Result<Arc<T>, ResolveError> {
        self.sources.with_current(|s| self.resolve_source(s, r))
    }
}

fn shared_ctor<T, F>(ctor: F) -> Ctor<T>
where
    T: Send + Sync + 'static,
    F: Fn(&Resolver<'_>) -> Result<T, BoxError> + Send + Sync + 'static,
{
    Arc::new(move |r| ctor(r).map(Arc::new))
}

/// What a [`Singleton`] or [`Scoped`] provider can be overridden with: another singleton
/// (its instance is shared with it), a scoped provider (one instance per scope), or a fixed
/// value (`Arc<T>`, or [`Replacement::value`]).
pub struct Replacement<T: ?Sized>(Arc<Source<T>>);

impl<T: Send + Sync + 'static> Replacement<T> {
    /// A fixed value.
    pub fn value(value: T) -> Self {
        Replacement(Arc::new(Source::Value(Arc::new(value))))
    }
}

impl<T: ?Sized> From<Arc<T>> for Replacement<T> {
    fn from(value: Arc<T>) -> Self {
        Replacement(Arc::new(Source::Value(value)))
    }
}

impl<T: ?Sized> From<Singleton<T>> for Replacement<T> {
    fn from(s: Singleton<T>) -> Self {
        Replacement(s.slot.sources.original().clone())
    }
}

impl<T: ?Sized> From<Scoped<T>> for Replacement<T> {
    fn from(s: Scoped<T>) -> Self {
        Replacement(s.slot.sources.original().clone())
    }
}

impl<T: ?Sized> fmt::Debug for Replacement<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &*self.0 {
            Source::Singleton { .. } => "singleton",
            Source::Scoped { .. } => "scoped",
            Source::Value(_) => "value",
        };
        f.debug_tuple("Replacement").field(&kind).finish()
    }
}

macro_rules! override_methods {
    () => {
        /// Makes resolvers get `by` instead of this provider's own values, from the next
        /// resolution on (values already handed out stay with their holders). Overrides
        /// stack: the last one wins until it is reset.
        pub fn override_with(&self, by: impl Into<Replacement<T>>) {
            tracing::debug!(provider = %self.slot.meta.label, "overridden");
            self.slot.sources.push(by.into().0);
        }

        /// Removes every override: the original provider returns, with the instance it had
        /// created before being overridden, if any (it is kept, not created again).
        pub fn reset_override(&self) {
            tracing::debug!(provider = %self.slot.meta.label, "override reset");
            self.slot.sources.clear();
        }

        /// Removes the last override only (the one before it, or the original, returns);
        /// returns whether there was one.
        pub fn reset_last_override(&self) -> bool {
            self.slot.sources.pop()
        }

        /// Whether an override is in place.
        pub fn is_overridden(&self) -> bool {
            self.slot.sources.is_overridden()
        }

        /// The name this provider is registered under, if any.
        pub fn name(&self) -> Option<&str> {
            self.slot.meta.name.as_deref()
        }

        /// The same provider (constructor, instances, overrides) under `name`, so that
        /// several providers of one type can be registered and resolved by name. Call it
        /// when declaring the provider: clones made before keep the old name.
        pub fn named(self, name: impl Into<Arc<str>>) -> Self {
            Self {
                slot: Arc::new(self.slot.renamed(name.into())),
            }
        }
    };
}

/// A provider of one shared instance of `T`, created on first use (the seed's
/// `providers.Singleton`).
///
/// - **Lazy and once**: the constructor runs on the first resolution; threads resolving at
///   the same time wait for that one construction instead of running their own.
/// - **Errors are not cached**: if the constructor fails, that resolution (and those waiting
///   for it) get the error; the next resolution runs the constructor again.
/// - **No scope**: the constructor's [`Resolver`] has no scope, so asking it for a
///   [`Scoped`] value is an error (a singleton would otherwise keep one run's value forever).
/// - **Cost** once created: through the handle, two atomic loads and an `Arc` clone (no lock,
///   no allocation); by type, add one hash-map lookup in the container's frozen registry.
///
/// `T` may be unsized (`Singleton<dyn Store>`, with [`Singleton::new_arc`]) so that an
/// implementation can be substituted at run time.
pub struct Singleton<T: ?Sized> {
    slot: Arc<Slot<T>>,
}

impl<T: Send + Sync + 'static> Singleton<T> {
    /// A singleton built by `ctor`, which may resolve its dependencies through the
    /// [`Resolver`] it is given (`r.resolve::<Config>()?`).
    pub fn new<F>(ctor: F) -> Self
    where
        F: Fn(&Resolver<'_>) -> Result<T, BoxError> + Send + Sync + 'static,
    {
        Self::from_source(Source::Singleton {
            ctor: shared_ctor(ctor),
            cell: OnceLock::new(),
        })
    }

    /// A singleton of an existing value (the seed's `providers.Object`).
    pub fn from_value(value: T) -> Self {
        Self::from_arc(Arc::new(value))
    }
}

impl<T: ?Sized + Send + Sync + 'static> Singleton<T> {
    fn from_source(source: Source<T>) -> Self {
        Singleton {
            slot: Arc::new(Slot::new("singleton", source)),
        }
    }

    /// A singleton whose constructor returns an `Arc<T>`: for unsized `T` such as
    /// `dyn Trait`.
    pub fn new_arc<F>(ctor: F) -> Self
    where
        F: Fn(&Resolver<'_>) -> Result<Arc<T>, BoxError> + Send + Sync + 'static,
    {
        Self::from_source(Source::Singleton {
            ctor: Arc::new(ctor),
            cell: OnceLock::new(),
        })
    }

    /// A singleton of an existing shared value.
    pub fn from_arc(value: Arc<T>) -> Self {
        Self::from_source(Source::Value(value))
    }

    /// The instance, created now if needed, resolving dependencies from `from` (a
    /// [`Container`](crate::Container), a [`Scope`] or a [`Resolver`]).
    pub fn resolve(&self, from: &impl Resolve) -> Result<Arc<T>, ResolveError> {
        from.with_resolver(|r| self.slot.resolve(r))
    }

    /// Whether this provider's own instance exists (overrides aside).
    pub fn is_created(&self) -> bool {
        match &**self.slot.sources.original() {
            Source::Singleton { cell, .. } => cell.get().is_some(),
            Source::Scoped { .. } => false,
            Source::Value(_) => true,
        }
    }

    override_methods!();
}

/// A provider of one instance of `T` per [`Scope`]: the engine opens one scope per workflow
/// run, so every run gets its own instance, shared by that run's tasks, and dropped with
/// the run's scope. Created on first use in each scope, once even under contention; errors
/// are not cached. Resolving it outside a scope is [`ResolveError::OutsideScope`].
///
/// Cost once created in a scope: one read lock of the scope's table, a hash lookup and an
/// `Arc` clone.
pub struct Scoped<T: ?Sized> {
    slot: Arc<Slot<T>>,
}

impl<T: Send + Sync + 'static> Scoped<T> {
    /// A scoped provider built by `ctor`; its [`Resolver`] has the scope, so it may depend on
    /// other scoped providers as well as on singletons.
    pub fn new<F>(ctor: F) -> Self
    where
        F: Fn(&Resolver<'_>) -> Result<T, BoxError> + Send + Sync + 'static,
    {
        Self::from_source(Source::Scoped {
            ctor: shared_ctor(ctor),
        })
    }
}

impl<T: ?Sized + Send + Sync + 'static> Scoped<T> {
    fn from_source(source: Source<T>) -> Self {
        Scoped {
            slot: Arc::new(Slot::new("scoped", source)),
        }
    }

    /// A scoped provider whose constructor returns an `Arc<T>` (for unsized `T`).
    pub fn new_arc<F>(ctor: F) -> Self
    where
        F: Fn(&Resolver<'_>) -> Result<Arc<T>, BoxError> + Send + Sync + 'static,
    {
        Self::from_source(Source::Scoped {
            ctor: Arc::new(ctor),
        })
    }

    /// The instance of the scope that `from` belongs to (created now if needed).
    pub fn resolve(&self, from: &impl Resolve) -> Result<Arc<T>, ResolveError> {
        from.with_resolver(|r| self.slot.resolve(r))
    }

    override_methods!();
}

/// The state behind a [`Factory`] handle.
pub(crate) struct FactorySlot<A, T> {
    meta: Meta,
    fns: Overridable<FactoryFn<A, T>>,
}

impl<A: 'static, T: 'static> FactorySlot<A, T> {
    fn id(&self) -> usize {
        self as *const Self as usize
    }

    pub(crate) fn create(&self, r: &Resolver<'_>, args: A) -> Result<T, ResolveError> {
        let label = &self.meta.label;
        r.check_cycle(self.id(), label)?;
        self.fns.with_current(|f| {
            r.enter(self.id(), label, r.scope(), |child| f(child, args))
                .map_err(|e| r.failed(label, e))
        })
    }
}

/// A provider of a new `T` at every call, made from arguments `A` (the seed's
/// `providers.Factory`): `Factory<(String, u32), TaskDef>` takes a name and a count. Use
/// `Factory<(), T>` for one without arguments.
///
/// The constructor gets a [`Resolver`] (with the caller's scope, if any) for its
/// dependencies. Cost: the constructor's, plus a walk of the resolution chain (to refuse
/// cycles) and, by type, a hash-map lookup.
pub struct Factory<A, T> {
    slot: Arc<FactorySlot<A, T>>,
}

impl<A: 'static, T: 'static> Factory<A, T> {
    /// A factory calling `f` with a resolver and the arguments.
    pub fn new<F>(f: F) -> Self
    where
        F: Fn(&Resolver<'_>, A) -> Result<T, BoxError> + Send + Sync + 'static,
    {
        let f: FactoryFn<A, T> = Arc::new(f);
        Factory {
            slot: Arc::new(FactorySlot {
                meta: Meta::new("factory", factory_label::<A, T>(None), None),
                fns: Overridable::new(f),
            }),
        }
    }

    /// A new value from `args`, resolving dependencies from `from` (a
    /// [`Container`](crate::Container), a [`Scope`] or a [`Resolver`]).
    pub fn create(&self, from: &impl Resolve, args: A) -> Result<T, ResolveError> {
        from.with_resolver(|r| self.slot.create(r, args))
    }

    /// The same factory under `name` (see [`Singleton::named`]).
    pub fn named(self, name: impl Into<Arc<str>>) -> Self {
        let name: Arc<str> = name.into();
        Factory {
            slot: Arc::new(FactorySlot {
                meta: Meta::new(
                    "factory",
                    factory_label::<A, T>(Some(&name)),
                    Some(name.clone()),
                ),
                fns: self.slot.fns.copy(),
            }),
        }
    }

    /// The name this factory is registered under, if any.
    pub fn name(&self) -> Option<&str> {
        self.slot.meta.name.as_deref()
    }

    /// Makes calls use `by`'s constructor instead of this one's, from the next call on.
    /// Overrides stack: the last one wins until it is reset.
    pub fn override_with(&self, by: Factory<A, T>) {
        tracing::debug!(provider = %self.slot.meta.label, "overridden");
        self.slot.fns.push(by.slot.fns.original().clone());
    }

    /// Removes every override: the original constructor returns.
    pub fn reset_override(&self) {
        self.slot.fns.clear();
    }

    /// Removes the last override only; returns whether there was one.
    pub fn reset_last_override(&self) -> bool {
        self.slot.fns.pop()
    }

    /// Whether an override is in place.
    pub fn is_overridden(&self) -> bool {
        self.slot.fns.is_overridden()
    }
}

// Handles are cheap clones of an `Arc`, whatever `T` is (so no derive, which would ask
// for `T: Clone`).
impl<T: ?Sized> Clone for Singleton<T> {
    fn clone(&self) -> Self {
        Singleton {
            slot: self.slot.clone(),
        }
    }
}

impl<T: ?Sized> Clone for Scoped<T> {
    fn clone(&self) -> Self {
        Scoped {
            slot: self.slot.clone(),
        }
    }
}

impl<A, T> Clone for Factory<A, T> {
    fn clone(&self) -> Self {
        Factory {
            slot: self.slot.clone(),
        }
    }
}

impl<T: ?Sized + Send + Sync + 'static> Register for Singleton<T> {
    fn register(&self, builder: &mut ContainerBuilder) {
        self.slot.register(Box::new(self.clone()), builder);
    }
}

impl<T: ?Sized + Send + Sync + 'static> Register for Scoped<T> {
    fn register(&self, builder: &mut ContainerBuilder) {
        self.slot.register(Box::new(self.clone()), builder);
    }
}

impl<A: 'static, T: 'static> Register for Factory<A, T> {
    fn register(&self, builder: &mut ContainerBuilder) {
        let slot = &self.slot;
        builder.push(Entry {
            space: Space::Factory,
            type_id: TypeId::of::<fn(A) -> T>(),
            name: slot.meta.name.clone(),
            label: slot.meta.label.clone(),
            kind: slot.meta.kind,
            identity: addr(slot),
            provider: Box::new(slot.clone()),
            handle: Box::new(self.clone()),
        });
    }
}

impl<T: ?Sized> fmt::Debug for Singleton<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Singleton")
            .field("provider", &self.slot.meta.label)
            .field("overridden", &self.slot.sources.is_overridden())
            .finish()
    }
}

impl<T: ?Sized> fmt::Debug for Scoped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped")
            .field("provider", &self.slot.meta.label)
            .field("overridden", &self.slot.sources.is_overridden())
            .finish()
    }
}

impl<A, T> fmt::Debug for Factory<A, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Factory")
            .field("provider", &self.slot.meta.label)
            .field("overridden", &self.slot.fns.is_overridden())
            .finish()
    }
}
