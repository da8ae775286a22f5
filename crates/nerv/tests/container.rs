//! Integration tests of the dependency-injection container: what a user of the public API
//! relies on (providers, scopes, overrides, configuration, errors).
//!
//! Threads meet at barriers to make contention certain; a channel with a time limit turns a
//! deadlock into a failure instead of a hang. No test asserts a duration.

use nerv::{
    BoxError, Config, ConfigError, ConfigOrigin, Container, ContainerBuilder, Factory, Register,
    RegisterError, ResolveError, Scope, Scoped, Singleton,
};
use serde::{Deserialize, Serialize};
use std::any::type_name;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::Duration;

/// Long enough for anything these tests wait for; only reached when something is broken.
const LIMIT: Duration = Duration::from_secs(10);

/// `` `path::of::T` ``, as errors name a provider.
fn label<T: ?Sized>() -> String {
    format!("`{}`", type_name::<T>())
}

fn build(providers: &impl Register) -> Container {
    Container::builder()
        .add(providers)
        .build()
        .expect("no duplicates")
}

/// Runs `f` on `n` threads that start together; returns their results (or fails the test
/// if they do not all finish within `LIMIT`, e.g. on a deadlock).
fn on_threads<R: Send + 'static>(
    n: usize,
    f: impl Fn(usize) -> R + Send + Sync + 'static,
) -> Vec<R> {
    let f = Arc::new(f);
    let start = Arc::new(Barrier::new(n));
    let (tx, rx) = mpsc::channel();
    for i in 0..n {
        let (f, start, tx) = (f.clone(), start.clone(), tx.clone());
        thread::spawn(move || {
            start.wait();
            let _ = tx.send((i, f(i)));
        });
    }
    let mut out: Vec<(usize, R)> = (0..n)
        .map(|_| rx.recv_timeout(LIMIT).expect("a thread hung or panicked"))
        .collect();
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

struct Db {
    url: String,
}

struct Repo {
    db: Arc<Db>,
}

// ---------------------------------------------------------------------------------------------
// Singletons
// ---------------------------------------------------------------------------------------------

mod singleton {
    use super::*;

    #[test]
    fn is_created_once_when_eight_threads_resolve_at_once() {
        let made = Arc::new(AtomicUsize::new(0));
        let m = made.clone();
        let db = Singleton::new(move |_| {
            m.fetch_add(1, SeqCst);
            // Keep the construction open while the other threads arrive.
            thread::sleep(Duration::from_millis(20));
            Ok(Db { url: "pg".into() })
        });
        let container = build(&db);
        let got = on_threads(8, move |_| container.resolve::<Db>().expect("resolves"));
        assert_eq!(made.load(SeqCst), 1);
        assert!(got.iter().all(|d| Arc::ptr_eq(d, &got[0])));
        assert_eq!(got[0].url, "pg");
    }

    #[test]
    fn is_lazy_and_shared_by_handle_and_type() {
        let db = Singleton::new(|_| Ok(Db { url: "pg".into() }));
        let container = build(&db);
        assert!(!db.is_created());
        let by_type = container.resolve::<Db>().unwrap();
        assert!(db.is_created());
        let by_handle = db.resolve(&container).unwrap();
        assert!(Arc::ptr_eq(&by_type, &by_handle));
    }

    #[test]
    fn an_error_is_returned_not_cached_and_the_next_resolve_retries() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let db = Singleton::new(move |_| {
            if c.fetch_add(1, SeqCst) == 0 {
                Err("connection refused".into())
            } else {
                Ok(Db { url: "pg".into() })
            }
        });
        let container = build(&db);
        let err = container.resolve_for::<Db>("task `load`").err().unwrap();
        assert!(err.is_failed());
        assert_eq!(err.provider(), label::<Db>());
        let msg = err.to_string();
        assert!(msg.contains("connection refused"), "{msg}");
        assert!(msg.contains("requested by task `load`"), "{msg}");
        assert!(std::error::Error::source(&err).is_some());
        assert!(!db.is_created());

        assert_eq!(container.resolve::<Db>().unwrap().url, "pg");
        assert_eq!(calls.load(SeqCst), 2);
    }

    #[test]
    fn concurrent_waiters_retry_after_a_failed_construction() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let db = Singleton::new(move |_| {
            thread::sleep(Duration::from_millis(10));
            if c.fetch_add(1, SeqCst) == 0 {
                Err("first attempt fails".into())
            } else {
                Ok(Db { url: "pg".into() })
            }
        });
        let container = build(&db);
        let got = on_threads(4, move |_| container.resolve::<Db>().is_ok());
        // One thread saw the failure; later attempts succeeded and were not repeated.
        assert_eq!(got.iter().filter(|ok| !**ok).count(), 1);
        assert_eq!(calls.load(SeqCst), 2);
    }

    #[test]
    fn constructors_resolve_their_dependencies() {
        let db = Singleton::new(|_| Ok(Db { url: "pg".into() }));
        let repo = Singleton::new(|r| {
            Ok(Repo {
                db: r.resolve::<Db>()?,
            })
        });
        let container = Container::builder().add(&db).add(&repo).build().unwrap();
        let repo = container.resolve::<Repo>().unwrap();
        assert!(Arc::ptr_eq(&repo.db, &container.resolve::<Db>().unwrap()));
    }

    trait Store: Send + Sync {
        fn name(&self) -> &'static str;
    }
    struct Disk;
    impl Store for Disk {
        fn name(&self) -> &'static str {
            "disk"
        }
    }
    struct Memory;
    impl Store for Memory {
        fn name(&self) -> &'static str {
            "memory"
        }
    }

    #[test]
    fn a_trait_object_can_be_provided_and_substituted() {
        let store = Singleton::<dyn Store>::new_arc(|_| Ok(Arc::new(Disk)));
        let container = build(&store);
        assert_eq!(container.resolve::<dyn Store>().unwrap().name(), "disk");
        store.override_with(Arc::new(Memory) as Arc<dyn Store>);
        assert_eq!(container.resolve::<dyn Store>().unwrap().name(), "memory");
    }
}

// ---------------------------------------------------------------------------------------------
// Factories
// ---------------------------------------------------------------------------------------------

mod factory {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct TaskDef {
        id: String,
        retries: u32,
        db_url: String,
    }

    #[test]
    fn gives_a_new_value_at_each_call() {
        let made = Arc::new(AtomicUsize::new(0));
        let m = made.clone();
        let conn = Factory::new(move |_, ()| Ok(Box::new(m.fetch_add(1, SeqCst))));
        let container = build(&conn);
        let a = container.create::<(), Box<usize>>(()).unwrap();
        let b = conn.create(&container, ()).unwrap();
        assert_ne!(a, b);
        assert_eq!(made.load(SeqCst), 2);
    }

    #[test]
    fn takes_arguments_and_resolves_dependencies() {
        let db = Singleton::new(|_| Ok(Db { url: "pg".into() }));
        let task = Factory::new(|r, (id, retries): (String, u32)| {
            Ok(TaskDef {
                id,
                retries,
                db_url: r.resolve::<Db>()?.url.clone(),
            })
        });
        let container = Container::builder().add(&db).add(&task).build().unwrap();
        let made = container
            .create::<(String, u32), TaskDef>(("load".into(), 3))
            .unwrap();
        assert_eq!(
            made,
            TaskDef {
                id: "load".into(),
                retries: 3,
                db_url: "pg".into()
            }
        );
        let other = task.create(&container, ("save".into(), 0)).unwrap();
        assert_eq!((other.id.as_str(), other.retries), ("save", 0));
    }

    #[test]
    fn missing_factory_names_its_argument_and_output_types() {
        let container = Container::new();
        let err = container
            .create::<(String, u32), TaskDef>(("x".into(), 1))
            .err()
            .unwrap();
        assert!(err.is_missing());
        let msg = err.to_string();
        assert!(msg.contains(type_name::<TaskDef>()), "{msg}");
        assert!(msg.contains(type_name::<(String, u32)>()), "{msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// Scoped providers
// ---------------------------------------------------------------------------------------------

mod scoped {
    use super::*;

    struct Session {
        _n: usize,
        dropped: Arc<AtomicUsize>,
    }
    impl Drop for Session {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, SeqCst);
        }
    }

    fn sessions() -> (Scoped<Session>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let made = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (m, d) = (made.clone(), dropped.clone());
        let p = Scoped::new(move |_| {
            Ok(Session {
                _n: m.fetch_add(1, SeqCst),
                dropped: d.clone(),
            })
        });
        (p, made, dropped)
    }

    #[test]
    fn same_within_a_scope_different_across_scopes_dropped_with_the_scope() {
        let (session, made, dropped) = sessions();
        let container = build(&session);
        let run1 = container.scope();
        let run2 = container.scope();
        assert_ne!(run1.id(), run2.id());

        let a = run1.resolve::<Session>().unwrap();
        let b = session.resolve(&run1).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = run2.resolve::<Session>().unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(made.load(SeqCst), 2);
        assert_eq!(run1.len(), 1);

        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert_eq!(dropped.load(SeqCst), 0, "the scope still holds it");
        drop(run1);
        assert!(weak.upgrade().is_none());
        assert_eq!(dropped.load(SeqCst), 1);
        drop(c);
        drop(run2);
        assert_eq!(dropped.load(SeqCst), 2);
    }

    #[test]
    fn is_created_once_per_scope_when_threads_resolve_at_once() {
        let made = Arc::new(AtomicUsize::new(0));
        let m = made.clone();
        let p = Scoped::new(move |_| {
            thread::sleep(Duration::from_millis(20));
            Ok(m.fetch_add(1, SeqCst))
        });
        let scope = Arc::new(build(&p).scope());
        let s = scope.clone();
        let got = on_threads(8, move |i| {
            *s.resolve_for::<usize>(format_args!("task {i}")).unwrap()
        });
        assert_eq!(made.load(SeqCst), 1);
        assert!(got.iter().all(|&v| v == got[0]));
    }

    #[test]
    fn outside_a_scope_is_an_error_naming_the_provider() {
        let (session, _, _) = sessions();
        let container = build(&session);
        let err = container.resolve::<Session>().err().unwrap();
        assert!(err.is_outside_scope());
        assert_eq!(err.provider(), label::<Session>());
    }

    #[test]
    fn a_singleton_cannot_capture_a_scoped_value() {
        struct Holder(#[allow(dead_code)] Arc<Session>);
        let (session, _, _) = sessions();
        let holder = Singleton::new(|r| Ok(Holder(r.resolve::<Session>()?)));
        let container = Container::builder()
            .add(&session)
            .add(&holder)
            .build()
            .unwrap();
        let err = container
            .scope()
            .resolve_for::<Holder>("task `t`")
            .err()
            .unwrap();
        assert!(err.is_outside_scope(), "{err}");
        assert_eq!(err.requester(), format!("provider {}", label::<Holder>()));
    }

    #[test]
    fn scoped_may_depend_on_scoped_and_singletons() {
        struct Tx {
            session: Arc<usize>,
            db: Arc<Db>,
        }
        let counter = Arc::new(AtomicUsize::new(0));
        let session = Scoped::new(move |_| Ok(counter.fetch_add(1, SeqCst)));
        let db = Singleton::new(|_| Ok(Db { url: "pg".into() }));
        let tx = Scoped::new(|r| {
            Ok(Tx {
                session: r.resolve::<usize>()?,
                db: r.resolve::<Db>()?,
            })
        });
        let container = Container::builder()
            .add(&session)
            .add(&db)
            .add(&tx)
            .build()
            .unwrap();
        let (s1, s2) = (container.scope(), container.scope());
        let (t1, t2) = (s1.resolve::<Tx>().unwrap(), s2.resolve::<Tx>().unwrap());
        assert_ne!(*t1.session, *t2.session);
        assert!(Arc::ptr_eq(&t1.session, &s1.resolve::<usize>().unwrap()));
        assert!(Arc::ptr_eq(&t1.db, &t2.db));
    }
}

// ---------------------------------------------------------------------------------------------
// Overrides
// ---------------------------------------------------------------------------------------------

mod overrides {
    use super::*;

    fn counted_db(url: &'static str) -> (Singleton<Db>, Arc<AtomicUsize>) {
        let made = Arc::new(AtomicUsize::new(0));
        let m = made.clone();
        let p = Singleton::new(move |_| {
            m.fetch_add(1, SeqCst);
            Ok(Db { url: url.into() })
        });
        (p, made)
    }

    #[test]
    fn an_override_of_a_created_singleton_is_seen_and_reset_restores_the_same_instance() {
        let (db, made) = counted_db("real");
        let container = build(&db);
        let original = container.resolve::<Db>().unwrap();

        db.override_with(Singleton::from_value(Db { url: "mock".into() }));
        assert!(db.is_overridden());
        assert_eq!(container.resolve::<Db>().unwrap().url, "mock");
        assert_eq!(db.resolve(&container).unwrap().url, "mock");

        db.reset_override();
        assert!(!db.is_overridden());
        let back = container.resolve::<Db>().unwrap();
        assert!(Arc::ptr_eq(&original, &back));
        assert_eq!(made.load(SeqCst), 1);
    }

    #[test]
    fn after_resetting_an_override_made_before_first_use_the_original_is_created_then() {
        let (db, made) = counted_db("real");
        let container = build(&db);
        db.override_with(Arc::new(Db { url: "mock".into() }));
        assert_eq!(container.resolve::<Db>().unwrap().url, "mock");
        assert_eq!(made.load(SeqCst), 0);
        db.reset_override();
        assert_eq!(container.resolve::<Db>().unwrap().url, "real");
        assert_eq!(made.load(SeqCst), 1);
    }

    #[test]
    fn overrides_stack_and_reset_last_pops_one() {
        let (db, _) = counted_db("real");
        let container = build(&db);
        db.override_with(Arc::new(Db { url: "a".into() }));
        db.override_with(Arc::new(Db { url: "b".into() }));
        assert_eq!(container.resolve::<Db>().unwrap().url, "b");
        assert!(db.reset_last_override());
        assert_eq!(container.resolve::<Db>().unwrap().url, "a");
        assert!(db.reset_last_override());
        assert!(!db.reset_last_override());
        assert_eq!(container.resolve::<Db>().unwrap().url, "real");
    }

    #[test]
    fn a_singleton_can_be_overridden_by_a_scoped_provider() {
        let (db, _) = counted_db("real");
        let container = build(&db);
        let per_run = Scoped::new(|_| {
            Ok(Db {
                url: "per-run".into(),
            })
        });
        db.override_with(per_run);
        let (s1, s2) = (container.scope(), container.scope());
        let (a, b) = (s1.resolve::<Db>().unwrap(), s2.resolve::<Db>().unwrap());
        assert_eq!(a.url, "per-run");
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&a, &s1.resolve::<Db>().unwrap()));
    }

    #[test]
    fn the_registered_handle_can_be_found_by_type_and_overridden() {
        let (db, _) = counted_db("real");
        let container = build(&db);
        let found: Singleton<Db> = container.provider().expect("registered");
        found.override_with(Replacement::value(Db { url: "mock".into() }));
        assert_eq!(container.resolve::<Db>().unwrap().url, "mock");
        assert!(db.is_overridden(), "the found handle is the same provider");
        assert!(container.provider::<Scoped<Db>>().is_none());
    }

    #[test]
    fn factories_and_configs_can_be_overridden_and_reset() {
        let greet = Factory::new(|_, name: String| Ok(format!("hello {name}")));
        let config = Config::from_value(7u32);
        let container = Container::builder()
            .add(&greet)
            .add(&config)
            .build()
            .unwrap();

        greet.override_with(Factory::new(|_, name: String| Ok(format!("mock {name}"))));
        config.override_with(8);
        assert_eq!(
            container.create::<String, String>("x".into()).unwrap(),
            "mock x"
        );
        assert_eq!(*container.resolve::<u32>().unwrap(), 8);
        assert_eq!(*config.get(), 8);

        greet.reset_override();
        config.reset_override();
        assert_eq!(
            container.create::<String, String>("x".into()).unwrap(),
            "hello x"
        );
        assert_eq!(*container.resolve::<u32>().unwrap(), 7);
    }

    use nerv::Replacement;
}

// ---------------------------------------------------------------------------------------------
// Declarative grouping
// ---------------------------------------------------------------------------------------------

mod declarative {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct AppConfig {
        db_url: String,
    }

    struct Job {
        name: String,
        db: Arc<Db>,
    }

    /// The program's services, declared in one place.
    #[derive(Clone)]
    struct Services {
        config: Config<AppConfig>,
        db: Singleton<Db>,
        replica: Singleton<Db>,
        repo: Singleton<Repo>,
        run_id: Scoped<String>,
        job: Factory<String, Job>,
    }

    impl Services {
        fn new(config: AppConfig) -> Services {
            let runs = Arc::new(AtomicUsize::new(0));
            Services {
                config: Config::from_value(config),
                db: Singleton::new(|r| {
                    Ok(Db {
                        url: r.resolve::<AppConfig>()?.db_url.clone(),
                    })
                }),
                replica: Singleton::new(|_| {
                    Ok(Db {
                        url: "replica".into(),
                    })
                })
                .named("replica"),
                repo: Singleton::new(|r| {
                    Ok(Repo {
                        db: r.resolve::<Db>()?,
                    })
                }),
                run_id: Scoped::new(move |_| Ok(format!("run-{}", runs.fetch_add(1, SeqCst)))),
                job: Factory::new(|r, name| {
                    Ok(Job {
                        name,
                        db: r.resolve_named::<Db>("replica")?,
                    })
                }),
            }
        }
    }

    impl Register for Services {
        fn register(&self, b: &mut ContainerBuilder) {
            b.add(&self.config)
                .add(&self.db)
                .add(&self.replica)
                .add(&self.repo)
                .add(&self.run_id)
                .add(&self.job);
        }
    }

    #[test]
    fn a_struct_of_handles_registers_and_resolves_as_one() {
        let services = Services::new(AppConfig {
            db_url: "pg://main".into(),
        });
        let container = build(&services);

        let repo = services.repo.resolve(&container).unwrap();
        assert_eq!(repo.db.url, "pg://main");
        assert!(Arc::ptr_eq(
            &repo.db,
            &services.db.resolve(&container).unwrap()
        ));
        assert_eq!(
            container.resolve_named::<Db>("replica").unwrap().url,
            "replica"
        );
        assert_eq!(services.config.get().db_url, "pg://main");

        let run = container.scope();
        assert_eq!(*services.run_id.resolve(&run).unwrap(), "run-0");
        let job = services.job.create(&run, "load".into()).unwrap();
        assert_eq!(
            (job.name.as_str(), job.db.url.as_str()),
            ("load", "replica")
        );

        // Registering the same group twice is harmless: the handles are the same providers.
        assert!(Container::builder()
            .add(&services)
            .add(&services.clone())
            .build()
            .is_ok());
    }

    #[test]
    fn two_different_providers_of_one_type_and_name_are_refused() {
        let a = Singleton::new(|_| Ok(Db { url: "a".into() }));
        let b = Scoped::new(|_| Ok(Db { url: "b".into() }));
        let err = Container::builder().add(&a).add(&b).build().err().unwrap();
        let RegisterError::Duplicate {
            provider,
            first,
            second,
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(provider, &label::<Db>());
        assert_eq!((*first, *second), ("singleton", "scoped"));
        // Named apart, they coexist.
        assert!(Container::builder()
            .add(&a)
            .add(&b.named("per-run"))
            .build()
            .is_ok());
    }
}

// ---------------------------------------------------------------------------------------------
// Resolution errors
// ---------------------------------------------------------------------------------------------

mod errors {
    use super::*;

    #[test]
    fn a_missing_provider_names_the_type_and_the_requester() {
        let container = Container::new();
        let run = container.scope();
        let err = run
            .resolve_for::<Db>(format_args!("task `{}` in run {}", "load", 7))
            .err()
            .unwrap();
        assert!(err.is_missing());
        assert_eq!(
            err.to_string(),
            format!(
                "no provider for {}, requested by task `load` in run 7",
                label::<Db>()
            )
        );
        assert_eq!(err.requester(), "task `load` in run 7");
    }

    #[test]
    fn a_missing_named_provider_lists_the_names_registered() {
        let primary = Singleton::new(|_| Ok(Db { url: "p".into() })).named("primary");
        let container = build(&primary);
        let err = container
            .scope()
            .resolver(&"task `load`")
            .resolve_named::<Db>("primray")
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "no provider for {} (named \"primray\"), requested by task `load`",
                label::<Db>()
            )),
            "{msg}"
        );
        assert!(msg.contains("\"primary\""), "{msg}");
        assert!(container.resolve::<Db>().err().unwrap().is_missing());
        assert_eq!(container.resolve_named::<Db>("primary").unwrap().url, "p");
    }

    #[test]
    fn a_missing_dependency_names_the_provider_that_asked_and_the_path() {
        let repo = Singleton::new(|r| {
            Ok(Repo {
                db: r.resolve::<Db>()?,
            })
        });
        let container = build(&repo);
        let err = container
            .scope()
            .resolve_for::<Repo>("task `load` in run 7")
            .err()
            .unwrap();
        assert!(err.is_missing(), "{err}");
        assert_eq!(err.provider(), label::<Db>());
        assert_eq!(err.requester(), format!("provider {}", label::<Repo>()));
        assert_eq!(
            err.path(),
            [
                "task `load` in run 7".to_string(),
                label::<Repo>(),
                label::<Db>()
            ]
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("requested by provider {}", label::<Repo>())),
            "{msg}"
        );
        assert!(msg.contains("task `load` in run 7"), "{msg}");
    }

    #[test]
    fn a_dependency_failure_is_passed_on_with_the_path() {
        let db = Singleton::<Db>::new(|_| Err("refused".into()));
        let repo = Singleton::new(|r| {
            Ok(Repo {
                db: r.resolve::<Db>()?,
            })
        });
        let container = Container::builder().add(&db).add(&repo).build().unwrap();
        let err = container.resolve_for::<Repo>("task `t`").err().unwrap();
        assert!(err.is_failed());
        assert_eq!(err.provider(), label::<Db>());
        assert_eq!(err.requester(), format!("provider {}", label::<Repo>()));
        assert!(err.to_string().contains("refused"));
    }

    struct A;
    struct B;

    #[test]
    fn a_cycle_is_an_error_naming_the_chain() {
        let a = Singleton::new(|r| {
            r.resolve::<B>()?;
            Ok(A)
        });
        let b = Singleton::new(|r| {
            r.resolve::<A>()?;
            Ok(B)
        });
        let container = Container::builder().add(&a).add(&b).build().unwrap();
        let err = container.resolve_for::<A>("task `t`").err().unwrap();
        assert!(err.is_cycle(), "{err}");
        let (la, lb) = (label::<A>(), label::<B>());
        assert_eq!(err.path(), [la.clone(), lb.clone(), la.clone()]);
        assert!(
            err.to_string()
                .contains(&format!("dependency cycle: {la} → {lb} → {la}")),
            "{err}"
        );
        // Nothing was stored: both are still unbuilt.
        assert!(!a.is_created() && !b.is_created());
    }

    #[test]
    fn a_factory_that_calls_itself_is_a_cycle_not_a_stack_overflow() {
        let f = Factory::new(|r, n: u32| r.create::<u32, u32>(n + 1).map_err(BoxError::from));
        let container = build(&f);
        let err = container.create::<u32, u32>(0).err().unwrap();
        assert!(err.is_cycle(), "{err}");
    }

    #[test]
    fn a_cycle_split_across_two_threads_is_reported_instead_of_deadlocking() {
        // Each constructor waits (on its first run only) until both are running, so thread 0
        // builds A while thread 1 builds B; then each asks for the other.
        let meet = Arc::new(Barrier::new(2));
        let (m1, m2) = (meet.clone(), meet);
        let (first_a, first_b) = (AtomicBool::new(true), AtomicBool::new(true));
        let a = Singleton::new(move |r| {
            if first_a.swap(false, SeqCst) {
                m1.wait();
            }
            r.resolve::<B>()?;
            Ok(A)
        });
        let b = Singleton::new(move |r| {
            if first_b.swap(false, SeqCst) {
                m2.wait();
            }
            r.resolve::<A>()?;
            Ok(B)
        });
        let container = Container::builder().add(&a).add(&b).build().unwrap();
        let errs = on_threads(2, move |i| {
            let r = if i == 0 {
                container.resolve::<A>().map(drop)
            } else {
                container.resolve::<B>().map(drop)
            };
            r.expect_err("a cycle cannot resolve")
        });
        for err in &errs {
            assert!(err.is_cycle(), "{err}");
            let path = err.path();
            assert_eq!(path.first(), path.last());
            assert!(
                path.contains(&label::<A>()) && path.contains(&label::<B>()),
                "{err}"
            );
        }
    }

    #[test]
    fn errors_are_send_sync_and_convert_into_task_errors() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<ResolveError>();
        send_sync::<ConfigError>();
        let err = Container::new().resolve::<Db>().err().unwrap();
        let task_error: nerv::TaskError = err.into();
        assert!(task_error.message().contains(type_name::<Db>()));
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

mod config {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct DbConfig {
        url: String,
        port: u16,
        pool: u32,
        replica: Option<String>,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct AppConfig {
        name: String,
        verbose: bool,
        db: DbConfig,
    }

    fn defaults() -> AppConfig {
        AppConfig {
            name: "default".into(),
            verbose: false,
            db: DbConfig {
                url: "default-url".into(),
                port: 1,
                pool: 1,
                replica: None,
            },
        }
    }

    /// A config file unique to this test, removed when dropped.
    struct TempFile(PathBuf);
    impl TempFile {
        fn new(test: &str, text: &str) -> TempFile {
            let path = std::env::temp_dir()
                .join(format!("nerv-container-{}-{test}.toml", std::process::id()));
            std::fs::write(&path, text).expect("write temp file");
            TempFile(path)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// An environment prefix unique to this test and process.
    fn prefix(test: &str) -> String {
        format!("NERVTEST_{}_{}", std::process::id(), test.to_uppercase())
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let file = TempFile::new(
            "precedence",
            "name = \"from-file\"\n[db]\nurl = \"file-url\"\nport = 2\n",
        );
        let prefix = prefix("precedence");
        std::env::set_var(format!("{prefix}_DB__PORT"), "3");
        std::env::set_var(format!("{prefix}_VERBOSE"), "true");
        std::env::set_var(format!("{prefix}_DB__REPLICA"), "pg://replica");

        let config = Config::<AppConfig>::builder()
            .defaults(&defaults())
            .file(&file.0)
            .env_prefix(&prefix)
            .load()
            .unwrap();
        assert_eq!(
            *config.get(),
            AppConfig {
                name: "from-file".into(),
                verbose: true,
                db: DbConfig {
                    url: "file-url".into(),
                    port: 3,
                    pool: 1,
                    replica: Some("pg://replica".into()),
                },
            }
        );
        // Registered, it resolves by type.
        let container = build(&config);
        assert_eq!(container.resolve::<AppConfig>().unwrap().db.port, 3);
    }

    #[test]
    fn a_bad_value_in_a_file_names_the_file_the_key_and_the_value() {
        let file = TempFile::new("bad-file", "[db]\nport = \"abc\"\n");
        let err = Config::<AppConfig>::builder()
            .defaults(&defaults())
            .file(&file.0)
            .load()
            .err()
            .unwrap();
        assert!(err.is_invalid(), "{err}");
        assert_eq!(err.key(), Some("db.port"));
        assert_eq!(err.value(), Some("\"abc\""));
        assert_eq!(err.file(), Some(file.0.as_path()));
        let msg = err.to_string();
        assert!(msg.contains(&file.0.display().to_string()), "{msg}");
        assert!(
            msg.contains("`db.port`") && msg.contains("\"abc\""),
            "{msg}"
        );
    }

    #[test]
    fn a_bad_value_in_the_environment_names_the_variable() {
        let prefix = prefix("bad_env");
        let var = format!("{prefix}_DB__POOL");
        std::env::set_var(&var, "many");
        let err = Config::<AppConfig>::builder()
            .defaults(&defaults())
            .env_prefix(&prefix)
            .load()
            .err()
            .unwrap();
        assert_eq!(err.key(), Some("db.pool"));
        assert_eq!(err.value(), Some("\"many\""));
        assert_eq!(err.origin(), Some(&ConfigOrigin::Env(var.clone())));
        assert!(err.to_string().contains(&var), "{err}");
    }

    #[test]
    fn an_out_of_range_number_is_refused() {
        let file = TempFile::new("range", "[db]\nport = 70000\n");
        let err = Config::<AppConfig>::builder()
            .defaults(&defaults())
            .file(&file.0)
            .load_value()
            .err()
            .unwrap();
        assert_eq!((err.key(), err.value()), (Some("db.port"), Some("70000")));
    }

    #[test]
    fn a_missing_key_names_the_key_and_where_it_could_be_set() {
        let file = TempFile::new(
            "missing",
            "name = \"x\"\nverbose = true\n[db]\nport = 5\npool = 2\n",
        );
        let prefix = prefix("missing");
        let err = Config::<AppConfig>::builder()
            .file(&file.0)
            .env_prefix(&prefix)
            .load()
            .err()
            .unwrap();
        assert!(err.is_missing(), "{err}");
        assert_eq!(err.key(), Some("db.url"));
        let msg = err.to_string();
        assert!(msg.contains(&format!("{prefix}_DB__URL")), "{msg}");
        assert!(msg.contains(&file.0.display().to_string()), "{msg}");
    }

    #[test]
    fn invalid_toml_names_the_file_and_the_line() {
        let file = TempFile::new("syntax", "name = \"x\"\n[db\n");
        let err = Config::<AppConfig>::builder()
            .file(&file.0)
            .load()
            .err()
            .unwrap();
        let ConfigError::Parse { file: f, line, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(f, &file.0);
        assert_eq!(*line, Some(2));
    }

    #[test]
    fn a_required_file_that_does_not_exist_is_an_error_an_optional_one_is_skipped() {
        let path = std::env::temp_dir().join(format!("nerv-none-{}.toml", std::process::id()));
        let err = Config::<AppConfig>::builder()
            .defaults(&defaults())
            .file(&path)
            .load()
            .err()
            .unwrap();
        assert_eq!(err.file(), Some(path.as_path()));
        let ok = Config::<AppConfig>::builder()
            .defaults(&defaults())
            .optional_file(&path)
            .load()
            .unwrap();
        assert_eq!(*ok.get(), defaults());
    }

    #[test]
    fn env_values_take_the_type_their_key_asks_for() {
        #[derive(Debug, Deserialize, PartialEq)]
        #[serde(rename_all = "lowercase")]
        enum Mode {
            Fast,
            Safe,
        }
        #[derive(Debug, Deserialize)]
        struct Settings {
            id: String,
            ratio: f64,
            mode: Mode,
            ports: Vec<u16>,
            limit: Option<u32>,
        }
        let prefix = prefix("typed");
        // A numeric-looking value stays text for a `String` key.
        std::env::set_var(format!("{prefix}_ID"), "0042");
        std::env::set_var(format!("{prefix}_RATIO"), "0.5");
        std::env::set_var(format!("{prefix}_MODE"), "safe");
        std::env::set_var(format!("{prefix}_PORTS"), "[80, 443]");
        std::env::set_var(format!("{prefix}_LIMIT"), "");
        let s = Config::<Settings>::builder()
            .env_prefix(&prefix)
            .load_value()
            .unwrap();
        assert_eq!(s.id, "0042");
        assert_eq!(s.ratio, 0.5);
        assert_eq!(s.mode, Mode::Safe);
        assert_eq!(s.ports, [80, 443]);
        assert_eq!(s.limit, None);
        assert_ne!(s.mode, Mode::Fast);
    }
}

// ---------------------------------------------------------------------------------------------
// Thread-safety promises
// ---------------------------------------------------------------------------------------------

#[test]
fn containers_scopes_and_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn clone_send_sync<T: Clone + Send + Sync>() {}
    clone_send_sync::<Container>();
    send_sync::<Scope>();
    clone_send_sync::<Singleton<Db>>();
    clone_send_sync::<Scoped<Db>>();
    clone_send_sync::<Factory<(String, u32), std::rc::Rc<u8>>>();
    clone_send_sync::<Config<u32>>();
}

// ---- The container inside runs: tasks obtain their dependencies through their context ----

mod in_tasks {
    use super::*;
    use nerv::{Executor, Graph, TaskError, TaskStatus};

    struct Client {
        calls: AtomicUsize,
    }

    struct RunCache {
        id: usize,
    }

    #[test]
    fn a_task_resolves_a_singleton_shared_by_all_tasks_and_runs() {
        let client = Singleton::new(|_| {
            Ok(Client {
                calls: AtomicUsize::new(0),
            })
        });
        let exec = Executor::builder()
            .workers(2)
            .container(build(&client))
            .build();
        let mut g = Graph::builder();
        for i in 0..8 {
            g.task(format!("call{i}")).run((), |ctx, ()| {
                let c = ctx.resolve::<Client>()?;
                c.calls.fetch_add(1, SeqCst);
                Ok::<_, TaskError>(())
            });
        }
        let graph = g.build().unwrap();
        assert_eq!(exec.run(&graph).counts().completed, 8);
        assert_eq!(exec.run(&graph).counts().completed, 8);
        let c = exec.container().resolve::<Client>().unwrap();
        assert_eq!(c.calls.load(SeqCst), 16, "one client served both runs");
    }

    #[test]
    fn scoped_providers_give_one_instance_per_run() {
        let next = Arc::new(AtomicUsize::new(0));
        let n = next.clone();
        let cache = Scoped::new(move |_| {
            Ok(RunCache {
                id: n.fetch_add(1, SeqCst),
            })
        });
        let exec = Executor::builder()
            .workers(2)
            .container(build(&cache))
            .build();
        let mut g = Graph::builder();
        let a = g.task("a").run((), |ctx, ()| {
            Ok::<_, TaskError>(ctx.resolve::<RunCache>()?.id)
        });
        let b = g.task("b").run((), |ctx, ()| {
            Ok::<_, TaskError>(ctx.resolve::<RunCache>()?.id)
        });
        let graph = g.build().unwrap();
        let r1 = exec.run(&graph);
        let r2 = exec.run(&graph);
        assert_eq!(r1.output(a), r1.output(b), "one instance within a run");
        assert_ne!(
            r1.output(a),
            r2.output(a),
            "a new instance for the next run"
        );
        assert_eq!(next.load(SeqCst), 2);
    }

    #[test]
    fn a_task_creates_from_a_factory_with_arguments() {
        let agents = Factory::new(|_, name: String| Ok(format!("agent {name}")));
        let exec = Executor::builder()
            .workers(1)
            .container(build(&agents))
            .build();
        let mut g = Graph::builder();
        let t = g.task("spawn").run((), |ctx, ()| {
            Ok::<_, TaskError>(ctx.create::<String, String>("ada".to_string())?)
        });
        let report = exec.run(&g.build().unwrap());
        assert_eq!(report.output(t).map(String::as_str), Some("agent ada"));
    }

    #[test]
    fn an_overridden_provider_is_what_tasks_get_until_reset() {
        let greeting = Singleton::new(|_| Ok(String::from("real")));
        let exec = Executor::builder()
            .workers(1)
            .container(build(&greeting))
            .build();
        let mut g = Graph::builder();
        let t = g.task("read").run((), |ctx, ()| {
            Ok::<_, TaskError>(ctx.resolve::<String>()?.as_str().to_string())
        });
        let graph = g.build().unwrap();
        greeting.override_with(nerv::Replacement::value(String::from("fake")));
        assert_eq!(exec.run(&graph).output(t).map(String::as_str), Some("fake"));
        greeting.reset_override();
        assert_eq!(exec.run(&graph).output(t).map(String::as_str), Some("real"));
    }

    #[test]
    fn a_missing_provider_fails_the_task_and_names_it_and_the_task() {
        let exec = Executor::builder().workers(1).build();
        let mut g = Graph::builder();
        g.task("needs_db").run((), |ctx, ()| {
            Ok::<_, TaskError>(ctx.resolve::<Client>().map(|_| ())?)
        });
        let report = exec.run(&g.build().unwrap());
        let r = report.task("needs_db").unwrap();
        assert_eq!(r.status, TaskStatus::Failed);
        let msg = r.error.unwrap().to_string();
        assert!(msg.contains("Client"), "names the provider: {msg}");
        assert!(
            msg.contains("task `needs_db` in run"),
            "names the task: {msg}"
        );
    }

    #[test]
    fn async_tasks_resolve_through_their_reporter() {
        let client = Singleton::new(|_| {
            Ok(Client {
                calls: AtomicUsize::new(7),
            })
        });
        let exec = Executor::builder()
            .workers(1)
            .container(build(&client))
            .build();
        let mut g = Graph::builder();
        let t = g.task("io").run_async((), |ctx, ()| {
            let reporter = ctx.reporter();
            async move {
                let c = reporter.resolve::<Client>()?;
                Ok::<_, TaskError>(c.calls.load(SeqCst))
            }
        });
        assert_eq!(exec.run(&g.build().unwrap()).output(t), Some(&7));
    }
}
