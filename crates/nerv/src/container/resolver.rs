//! The resolver: what resolution runs through. It carries the container, the scope, who
//! asked first and the chain of providers under construction, so that errors name who asked
//! and cycles are refused (steps 1, 4 and 5 of the resolution protocol in `mod.rs`).

use super::error::{BoxError, ResolveError};
use super::init::{CellId, Link};
use super::provider::{self, Ctor, FactorySlot, Shared, Store};
use super::{Container, Scope, ScopeCaller, Space, CONTAINER_CALLER};
use std::any::TypeId;
use std::fmt;
use std::sync::Arc;

/// A provider being constructed, linked to the one that asked for it.
struct Frame<'a> {
    slot: usize,
    label: &'a Arc<str>,
    parent: Option<&'a Frame<'a>>,
}

/// Resolves providers for one requester: what a constructor receives to ask for its
/// dependencies, and what [`Container::resolver`] and [`Scope::resolver`] return.
///
/// It carries the container, the scope (if any), who asked first, and the chain of
/// providers being constructed (so that errors name who asked, and cycles are refused). It
/// lives on the stack: creating one costs nothing, and it is neither `Send` nor `Sync`
/// (resolve from another thread through a [`Container`] or [`Scope`]):
///
/// ```compile_fail
/// fn send<T: Send>() {}
/// send::<nerv::Resolver<'static>>();
/// ```
pub struct Resolver<'a> {
    container: &'a Container,
    scope: Option<&'a Scope>,
    requester: &'a dyn fmt::Display,
    frame: Option<&'a Frame<'a>>,
}

impl fmt::Debug for Resolver<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("scope", &self.scope.map(Scope::id))
            .field("path", &self.path_to(None))
            .finish()
    }
}

impl<'a> Resolver<'a> {
    /// The value of the shared provider of `T` (singleton, scoped or config), or an error
    /// naming `T` and who asked.
    pub fn resolve<T: ?Sized + Send + Sync + 'static>(&self) -> Result<Arc<T>, ResolveError> {
        self.resolve_as::<T>(None)
    }

    /// The value of the shared provider of `T` registered under `name`.
    pub fn resolve_named<T: ?Sized + Send + Sync + 'static>(
        &self,
        name: &str,
    ) -> Result<Arc<T>, ResolveError> {
        self.resolve_as::<T>(Some(name))
    }

    /// A new `T` from the factory `A → T` and `args`.
    pub fn create<A: 'static, T: 'static>(&self, args: A) -> Result<T, ResolveError> {
        self.create_as::<A, T>(None, args)
    }

    /// A new `T` from the factory `A → T` registered under `name`.
    pub fn create_named<A: 'static, T: 'static>(
        &self,
        name: &str,
        args: A,
    ) -> Result<T, ResolveError> {
        self.create_as::<A, T>(Some(name), args)
    }

    /// The container resolved from (to keep, e.g. for a service that creates values later).
    pub fn container(&self) -> &'a Container {
        self.container
    }

    /// The scope resolved in, if any (a singleton's constructor has none).
    pub fn scope(&self) -> Option<&'a Scope> {
        self.scope
    }

    fn resolve_as<T: ?Sized + Send + Sync + 'static>(
        &self,
        name: Option<&str>,
    ) -> Result<Arc<T>, ResolveError> {
        let inner = &self.container.inner;
        let id = TypeId::of::<T>();
        let provider = inner
            .find(Space::Shared, id, name)
            .and_then(|e| e.provider.downcast_ref::<Arc<dyn Shared<T>>>());
        match provider {
            Some(p) => p.resolve(self),
            None => Err(self.missing(
                provider::type_label::<T>(name),
                inner.registered(Space::Shared, id),
            )),
        }
    }

    fn create_as<A: 'static, T: 'static>(
        &self,
        name: Option<&str>,
        args: A,
    ) -> Result<T, ResolveError> {
        let inner = &self.container.inner;
        let id = TypeId::of::<fn(A) -> T>();
        let factory = inner
            .find(Space::Factory, id, name)
            .and_then(|e| e.provider.downcast_ref::<Arc<FactorySlot<A, T>>>());
        match factory {
            Some(f) => f.create(self, args),
            None => Err(self.missing(
                provider::factory_label::<A, T>(name),
                inner.registered(Space::Factory, id),
            )),
        }
    }

    /// Runs `f` with a child resolver whose chain ends with the provider `slot`.
    pub(crate) fn enter<R>(
        &self,
        slot: usize,
        label: &Arc<str>,
        scope: Option<&Scope>,
        f: impl FnOnce(&Resolver<'_>) -> R,
    ) -> R {
        let frame = Frame {
            slot,
            label,
            parent: self.frame,
        };
        f(&Resolver {
            container: self.container,
            scope,
            requester: self.requester,
            frame: Some(&frame),
        })
    }

    /// A resolver with no chain yet.
    pub(crate) fn root(
        container: &'a Container,
        scope: Option<&'a Scope>,
        requester: &'a dyn fmt::Display,
    ) -> Self {
        Resolver {
            container,
            scope,
            requester,
            frame: None,
        }
    }

    /// Steps 4 to 6 of the protocol for a singleton or scoped instance kept in `store`.
    pub(crate) fn build<T: ?Sized>(
        &self,
        slot: usize,
        label: &Arc<str>,
        cell: CellId,
        scope: Option<&Scope>,
        ctor: &Ctor<T>,
        store: &dyn Store<T>,
    ) -> Result<Arc<T>, ResolveError> {
        self.check_cycle(slot, label)?;
        let wanted = Link {
            slot,
            label: label.clone(),
        };
        let coordinator = &self.container.inner.coordinator;
        let claim = loop {
            match coordinator.claim(cell, &wanted, || self.links(), || store.get().is_some()) {
                Ok(Some(claim)) => break claim,
                Ok(None) => {
                    if let Some(value) = store.get() {
                        return Ok(value);
                    }
                }
                Err(cycle) => {
                    return Err(ResolveError::Cycle {
                        cycle: cycle.iter().map(|l| l.label.to_string()).collect(),
                        requester: self.requester.to_string(),
                    })
                }
            }
        };
        let value = self
            .enter(slot, label, scope, |child| ctor(child))
            .map_err(|e| self.failed(label, e))?;
        let value = store.put(value);
        drop(claim);
        tracing::debug!(provider = %label, scope = ?scope.map(Scope::id), "created");
        Ok(value)
    }

    /// The chain of providers being constructed, outermost first.
    fn links(&self) -> Vec<Link> {
        let mut links = Vec::new();
        let mut frame = self.frame;
        while let Some(f) = frame {
            links.push(Link {
                slot: f.slot,
                label: f.label.clone(),
            });
            frame = f.parent;
        }
        links.reverse();
        links
    }

    /// Refuses to construct `slot` if it is already being constructed in this chain.
    pub(crate) fn check_cycle(&self, slot: usize, label: &Arc<str>) -> Result<(), ResolveError> {
        let mut frame = self.frame;
        while let Some(f) = frame {
            if f.slot == slot {
                let links = self.links();
                let start = links.iter().position(|l| l.slot == slot).unwrap_or(0);
                let mut cycle: Vec<String> =
                    links[start..].iter().map(|l| l.label.to_string()).collect();
                cycle.push(label.to_string());
                return Err(ResolveError::Cycle {
                    cycle,
                    requester: self.requester.to_string(),
                });
            }
            frame = f.parent;
        }
        Ok(())
    }

    /// Who asked: the innermost provider being constructed, else the first requester.
    fn asker(&self) -> String {
        match self.frame {
            Some(f) => format!("provider {}", f.label),
            None => self.requester.to_string(),
        }
    }

    /// The first requester, the providers being constructed, then `target` if given.
    fn path_to(&self, target: Option<&str>) -> Vec<String> {
        let mut path = vec![self.requester.to_string()];
        path.extend(self.links().iter().map(|l| l.label.to_string()));
        path.extend(target.map(str::to_string));
        path
    }

    fn missing(&self, provider: String, registered: Vec<String>) -> ResolveError {
        ResolveError::Missing {
            path: self.path_to(Some(&provider)),
            requester: self.asker(),
            provider,
            registered,
        }
    }

    pub(crate) fn outside_scope(&self, label: &str) -> ResolveError {
        ResolveError::OutsideScope {
            provider: label.to_string(),
            requester: self.asker(),
            path: self.path_to(Some(label)),
        }
    }

    /// The error for a constructor of `label` that returned `e`.
    pub(crate) fn failed(&self, label: &str, e: BoxError) -> ResolveError {
        match e.downcast::<ResolveError>() {
            Ok(dependency) => *dependency,
            Err(source) => ResolveError::Failed {
                provider: label.to_string(),
                requester: self.asker(),
                path: self.path_to(Some(label)),
                source,
            },
        }
    }
}

mod sealed {
    /// Where handles resolve from; sealed so that its method stays internal.
    pub trait Sealed {
        fn with_resolver<R>(&self, f: impl FnOnce(&super::Resolver<'_>) -> R) -> R;
    }
}

/// Where a handle can resolve from: a [`Container`] (no scope), a [`Scope`], or the
/// [`Resolver`] a constructor receives (which keeps the chain, so errors name who asked).
pub trait Resolve: sealed::Sealed {}

impl sealed::Sealed for Container {
    fn with_resolver<R>(&self, f: impl FnOnce(&Resolver<'_>) -> R) -> R {
        f(&self.resolver(&CONTAINER_CALLER))
    }
}
impl Resolve for Container {}

impl sealed::Sealed for Scope {
    fn with_resolver<R>(&self, f: impl FnOnce(&Resolver<'_>) -> R) -> R {
        f(&self.resolver(&ScopeCaller(self.id)))
    }
}
impl Resolve for Scope {}

impl sealed::Sealed for Resolver<'_> {
    fn with_resolver<R>(&self, f: impl FnOnce(&Resolver<'_>) -> R) -> R {
        f(self)
    }
}
impl Resolve for Resolver<'_> {}
