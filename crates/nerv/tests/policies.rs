//! Integration tests of the time-based policies (circuit breakers, rate limits) and the
//! injected clock they run on.
//!
//! Every test drives a `MockClock` by hand: nothing sleeps for real, and no test asserts a
//! wall-clock duration. Thread tests only bound their waits with `LIMIT`, reached only when
//! something is broken.

mod util;

use nerv::{
    CallOutcome, CircuitBreakerConfig, CircuitBreakers, CircuitOpen, CircuitPermit, CircuitState,
    Clock, MockClock, RateLimit, RateLimited, RateLimits, Reservation, Sleep, SystemClock,
    Timestamp, Transition, TransitionCause,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use util::ms;

/// Long enough for anything these tests wait for; only reached when something is broken.
const LIMIT: Duration = Duration::from_secs(10);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn at(d: Duration) -> Timestamp {
    Timestamp::ZERO + d
}

struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// Polls a future once, without a runtime.
fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let waker = Waker::from(Arc::new(Noop));
    Pin::new(f).poll(&mut Context::from_waker(&waker))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

/// Yields until `cond` holds (the spawned tasks of a current-thread runtime run meanwhile).
async fn until(mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "condition never held");
        tokio::task::yield_now().await;
    }
}

#[test]
fn public_types_are_thread_safe() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send + 'static>() {}
    send_sync::<MockClock>();
    send_sync::<SystemClock>();
    send_sync::<Arc<dyn Clock>>();
    send_sync::<CircuitBreakers>();
    send_sync::<RateLimits>();
    send_sync::<CircuitOpen>();
    send_sync::<RateLimited>();
    send::<CircuitPermit>();
    send::<Reservation>();
    send::<Sleep>();
}

// ---------------------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------------------

mod clock {
    use super::*;

    #[test]
    fn mock_sleep_resolves_only_after_advance() {
        let clock = MockClock::new();
        let rt = runtime();
        rt.block_on(async {
            let c = clock.clone();
            let sleeper = tokio::spawn(async move {
                c.sleep(secs(5)).await;
                c.now()
            });
            until(|| clock.pending_sleeps() == 1).await;
            clock.advance(secs(4));
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(!sleeper.is_finished());
            clock.advance(secs(1));
            assert_eq!(sleeper.await.unwrap(), at(secs(5)));
        });
    }

    #[test]
    fn one_advance_wakes_every_due_sleep_and_only_those() {
        let clock = MockClock::new();
        let dyn_clock: Arc<dyn Clock> = clock.clone().into();
        let mut sleeps: Vec<Sleep> = (1..=5).map(|s| dyn_clock.sleep(secs(s))).collect();
        for s in &mut sleeps {
            assert!(poll_once(s).is_pending());
        }
        assert_eq!(clock.next_deadline(), Some(at(secs(1))));
        clock.advance(secs(3));
        let ready: Vec<bool> = sleeps.iter_mut().map(|s| poll_once(s).is_ready()).collect();
        assert_eq!(ready, [true, true, true, false, false]);
        assert_eq!(clock.pending_sleeps(), 2);
        assert_eq!(clock.next_deadline(), Some(at(secs(4))));
    }

    #[test]
    fn system_clock_behind_the_trait() {
        let clock: Arc<dyn Clock> = SystemClock::new().into();
        let a = clock.now();
        assert!(clock.now() >= a);
        assert!(clock.system_now() > std::time::SystemTime::UNIX_EPOCH);
        // A sleep whose deadline has passed is ready without a runtime.
        assert!(poll_once(&mut clock.sleep_until(a)).is_ready());
    }
}

// ---------------------------------------------------------------------------------------------
// Circuit breakers
// ---------------------------------------------------------------------------------------------

mod circuit_breaker {
    use super::*;

    type Seen = Arc<Mutex<Vec<Transition>>>;

    fn breakers(config: CircuitBreakerConfig) -> (MockClock, Arc<CircuitBreakers>, Seen) {
        let clock = MockClock::new();
        let b = Arc::new(CircuitBreakers::with_clock(config, clock.clone()));
        let seen: Seen = Arc::default();
        let s = Arc::clone(&seen);
        b.on_transition(move |t| s.lock().unwrap().push(t.clone()));
        (clock, b, seen)
    }

    fn config() -> CircuitBreakerConfig {
        CircuitBreakerConfig::new()
            .failure_threshold(3)
            .window(secs(10))
            .open_for(secs(30))
    }

    fn fail(b: &CircuitBreakers, key: &str) {
        b.check(key).expect("closed").failure();
    }

    /// The (from, to, cause) of each transition seen.
    fn steps(seen: &Seen) -> Vec<(CircuitState, CircuitState, TransitionCause)> {
        seen.lock()
            .unwrap()
            .iter()
            .map(|t| (t.from, t.to, t.cause))
            .collect()
    }

    #[test]
    fn opens_after_exactly_n_failures_within_the_window() {
        let (clock, b, seen) = breakers(config());
        fail(&b, "api");
        clock.advance(secs(4));
        fail(&b, "api");
        clock.advance(secs(5));
        assert_eq!(b.state("api"), CircuitState::Closed);
        assert!(seen.lock().unwrap().is_empty());
        fail(&b, "api"); // 3 failures within 9 s < 10 s
        assert_eq!(
            b.state("api"),
            CircuitState::Open {
                until: at(secs(9 + 30))
            }
        );
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_open() {
        let (clock, b, _) = breakers(config());
        // One failure every 5 s: any 3 consecutive span exactly 10 s, which is not within.
        for _ in 0..20 {
            fail(&b, "api");
            assert_eq!(b.state("api"), CircuitState::Closed);
            clock.advance(secs(5));
        }
        // 1 ns closer, and it opens.
        b.reset("api");
        fail(&b, "api");
        clock.advance(secs(5));
        fail(&b, "api");
        clock.advance(secs(5) - Duration::from_nanos(1));
        fail(&b, "api");
        assert!(matches!(b.state("api"), CircuitState::Open { .. }));
    }

    #[test]
    fn successes_do_not_reset_a_closed_window() {
        let (_, b, _) = breakers(config());
        fail(&b, "api");
        b.check("api").unwrap().success();
        fail(&b, "api");
        b.record("api", CallOutcome::Success);
        fail(&b, "api");
        assert!(matches!(b.state("api"), CircuitState::Open { .. }));
    }

    #[test]
    fn open_fails_fast_with_the_rest_of_the_cool_down() {
        let (clock, b, _) = breakers(config());
        for _ in 0..3 {
            fail(&b, "api");
        }
        let ran = AtomicUsize::new(0);
        clock.advance(secs(12));
        for _ in 0..5 {
            match b.check("api") {
                Ok(p) => {
                    ran.fetch_add(1, SeqCst);
                    p.success();
                }
                Err(e) => {
                    assert_eq!(e.key(), "api");
                    assert_eq!(e.retry_after(), secs(18));
                    assert!(!e.is_half_open());
                }
            }
        }
        assert_eq!(ran.load(SeqCst), 0, "no call ran while open");
        // Outcomes recorded while open are ignored: the cool-down does not restart.
        b.record("api", CallOutcome::Failure);
        clock.advance(secs(18) - Duration::from_nanos(1));
        assert_eq!(
            b.check("api").unwrap_err().retry_after,
            Duration::from_nanos(1)
        );
        clock.advance(Duration::from_nanos(1));
        assert!(b.check("api").unwrap().is_probe());
    }

    #[test]
    fn half_open_lets_exactly_the_probe_count_through_with_8_threads_racing() {
        for probes in [1, 2, 3] {
            let (clock, b, _) = breakers(config().probes(probes));
            for round in 0..50 {
                for _ in 0..3 {
                    b.record("api", CallOutcome::Failure);
                }
                clock.advance(secs(30));
                let start = Arc::new(Barrier::new(8));
                let threads: Vec<_> = (0..8)
                    .map(|_| {
                        let (b, start) = (Arc::clone(&b), Arc::clone(&start));
                        std::thread::spawn(move || {
                            start.wait();
                            (0..10)
                                .filter_map(|_| b.check("api").ok())
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                let permits: Vec<CircuitPermit> = threads
                    .into_iter()
                    .flat_map(|t| t.join().unwrap())
                    .collect();
                assert_eq!(permits.len(), probes as usize, "round {round}");
                assert!(permits.iter().all(CircuitPermit::is_probe));
                assert_eq!(b.state("api"), CircuitState::HalfOpen);
                // Fail one probe: reopens; the others lose their say.
                let mut permits = permits.into_iter();
                permits.next().unwrap().failure();
                for p in permits {
                    p.success();
                }
                assert!(matches!(b.state("api"), CircuitState::Open { .. }));
                clock.advance(secs(30));
                b.check("api").unwrap().success();
                assert_eq!(b.state("api"), CircuitState::Closed);
            }
        }
    }

    #[test]
    fn refused_while_probing_says_half_open() {
        let (clock, b, _) = breakers(config());
        for _ in 0..3 {
            fail(&b, "api");
        }
        clock.advance(secs(30));
        let probe = b.check("api").unwrap();
        let e = b.check("api").unwrap_err();
        assert!(e.is_half_open());
        assert_eq!(e.retry_after, secs(30));
        assert_eq!(
            e.to_string(),
            "circuit `api` is half-open and probing: retry after 30s"
        );
        // A probe dropped without a verdict frees its slot and counts as neither.
        drop(probe);
        assert_eq!(b.state("api"), CircuitState::HalfOpen);
        assert!(b.check("api").is_ok());
    }

    #[test]
    fn probe_success_closes_and_probe_failure_reopens_with_a_fresh_cool_down() {
        let (clock, b, _) = breakers(config());
        for _ in 0..3 {
            fail(&b, "api");
        }
        clock.advance(secs(31)); // 1 s late: the cool-down restarts from the probe's failure
        b.check("api").unwrap().failure();
        assert_eq!(
            b.state("api"),
            CircuitState::Open {
                until: at(secs(61))
            }
        );
        clock.advance(secs(30));
        b.check("api").unwrap().success();
        assert_eq!(b.state("api"), CircuitState::Closed);
        // Closed again with an empty window: 2 failures do not reopen it.
        fail(&b, "api");
        fail(&b, "api");
        assert_eq!(b.state("api"), CircuitState::Closed);
    }

    #[test]
    fn closing_takes_m_probe_successes() {
        let (clock, b, _) = breakers(config().successes_to_close(3).probes(1));
        for _ in 0..3 {
            fail(&b, "api");
        }
        clock.advance(secs(30));
        for i in 0..3 {
            assert_eq!(b.state("api"), CircuitState::HalfOpen, "probe {i}");
            let p = b.check("api").unwrap();
            assert!(b.check("api").is_err(), "one probe at a time");
            p.success();
        }
        assert_eq!(b.state("api"), CircuitState::Closed);
    }

    #[test]
    fn transitions_are_observed_in_order() {
        let (clock, b, seen) = breakers(config().successes_to_close(2));
        use CircuitState::*;
        use TransitionCause::*;
        for _ in 0..3 {
            fail(&b, "api");
        }
        clock.advance(secs(30));
        b.check("api").unwrap().failure();
        clock.advance(secs(30));
        b.check("api").unwrap().success();
        b.record("api", CallOutcome::Success);
        for _ in 0..3 {
            fail(&b, "api");
        }
        b.reset("api");
        let open = |s| Open { until: at(secs(s)) };
        assert_eq!(
            steps(&seen),
            [
                (Closed, open(30), FailureThreshold),
                (open(30), HalfOpen, CoolDownElapsed),
                (HalfOpen, open(60), ProbeFailed),
                (open(60), HalfOpen, CoolDownElapsed),
                (HalfOpen, Closed, ProbesSucceeded),
                (Closed, open(90), FailureThreshold),
                (open(90), Closed, Reset),
            ]
        );
        let seen = seen.lock().unwrap();
        assert!(seen.iter().all(|t| &*t.key == "api"));
        let times: Vec<_> = seen.iter().map(|t| t.at).collect();
        assert_eq!(
            times,
            [0, 30, 30, 60, 60, 60, 60].map(|s| at(secs(s))).to_vec()
        );
    }

    #[test]
    fn reset_closes_and_forgets() {
        let (clock, b, _) = breakers(config());
        for _ in 0..3 {
            fail(&b, "api");
        }
        assert!(b.check("api").is_err());
        b.reset("api");
        assert_eq!(b.state("api"), CircuitState::Closed);
        assert!(b.check("api").is_ok());
        fail(&b, "api");
        fail(&b, "api");
        assert_eq!(b.state("api"), CircuitState::Closed);
        clock.advance(secs(1));
        fail(&b, "api");
        assert!(matches!(b.state("api"), CircuitState::Open { .. }));
    }

    #[test]
    fn driven_by_recorded_events() {
        let (clock, b, seen) = breakers(config());
        for _ in 0..3 {
            b.record("etl", CallOutcome::Failure);
        }
        assert!(b.check("etl").is_err());
        clock.advance(secs(30));
        assert_eq!(b.state("etl"), CircuitState::HalfOpen);
        b.record("etl", CallOutcome::Success);
        assert_eq!(b.state("etl"), CircuitState::Closed);
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn keys_are_independent_and_configurable() {
        let (_, b, _) = breakers(config());
        b.configure("fragile", config().failure_threshold(1));
        fail(&b, "fragile");
        fail(&b, "sturdy");
        assert!(b.check("fragile").is_err());
        assert!(b.check("sturdy").is_ok());
        let states = b.states();
        assert_eq!(states.len(), 2);
        assert_eq!(&*states[0].0, "fragile");
        assert!(matches!(states[0].1, CircuitState::Open { .. }));
        assert_eq!(states[1], ("sturdy".into(), CircuitState::Closed));
        assert_eq!(b.state("never-seen"), CircuitState::Closed);
    }

    #[test]
    fn concurrent_transitions_are_each_delivered_once_as_a_chain() {
        let (clock, b, seen) = breakers(config().failure_threshold(2).probes(2));
        let keys = ["a", "b", "c"];
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (b, clock) = (Arc::clone(&b), clock.clone());
                std::thread::spawn(move || {
                    let mut rng = i as u64 * 7919 + 1;
                    for _ in 0..2000 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let key = keys[(rng % 3) as usize];
                        match rng % 11 {
                            0 => clock.advance(secs(10)),
                            1 => b.reset(key),
                            2..=5 => b.record(key, CallOutcome::Failure),
                            _ => {
                                if let Ok(p) = b.check(key) {
                                    if rng.is_multiple_of(3) {
                                        p.failure();
                                    } else {
                                        p.success();
                                    }
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let seen = seen.lock().unwrap();
        assert!(seen.len() > 100, "only {} transitions", seen.len());
        for key in keys {
            let mut state = CircuitState::Closed;
            let mut last = Timestamp::ZERO;
            for t in seen.iter().filter(|t| &*t.key == key) {
                assert_eq!(t.from, state, "{key}: broken chain at {t:?}");
                assert!(t.at >= last);
                state = t.to;
                last = t.at;
            }
            let now = b.state(key);
            // The last delivered state is the current one (or its lazy successor).
            let lazy = matches!(
                (state, now),
                (CircuitState::Open { .. }, CircuitState::HalfOpen)
            );
            assert!(state == now || lazy, "{key}: {state:?} vs {now:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------------

mod rate_limit {
    use super::*;
    use proptest::prelude::*;

    fn limits(key: &str, limit: RateLimit) -> (MockClock, Arc<RateLimits>) {
        let clock = MockClock::new();
        let l = RateLimits::with_clock(clock.clone()).with_limit(key, limit);
        (clock, Arc::new(l))
    }

    /// Brute force: how many of `grants` lie in `(t - w, t]`.
    fn in_window(grants: &[Timestamp], t: Timestamp, w: Duration) -> usize {
        grants
            .iter()
            .filter(|&&g| g <= t && t.saturating_duration_since(g) < w)
            .count()
    }

    /// The guarantee, checked on every window that starts at a grant (the windows holding the
    /// most grants start at one).
    fn assert_guarantee(grants: &[Timestamp], limit: RateLimit) {
        for (k, w) in [
            (limit.max(), limit.window()),
            (limit.burst_size(), limit.burst_window()),
        ] {
            for &s in grants {
                let n = grants
                    .iter()
                    .filter(|&&g| g >= s && g.saturating_duration_since(s) < w)
                    .count();
                assert!(n <= k as usize, "{n} grants in [{s:?}, +{w:?}) > {k}");
            }
        }
    }

    /// Brute force: may a grant happen at `t` (not earlier than any grant) given `grants`?
    fn allowed(grants: &[Timestamp], t: Timestamp, limit: RateLimit) -> bool {
        in_window(grants, t, limit.window()) < limit.max() as usize
            && in_window(grants, t, limit.burst_window()) < limit.burst_size() as usize
    }

    #[test]
    fn at_most_n_per_window_then_a_slot_frees() {
        let (clock, l) = limits("api", RateLimit::per_second(10));
        for _ in 0..10 {
            l.try_acquire("api").unwrap();
            clock.advance(ms(50));
        }
        // 10 grants at 0, 50, ..., 450 ms; now 500 ms.
        let e = l.try_acquire("api").unwrap_err();
        assert_eq!(e.key(), "api");
        assert_eq!(e.retry_after(), ms(500));
        assert_eq!(e.to_string(), "rate limit `api` reached: retry after 500ms");
        clock.advance(ms(499));
        assert!(l.try_acquire("api").is_err());
        clock.advance(ms(1));
        l.try_acquire("api").unwrap();
        assert_eq!(l.try_acquire("api").unwrap_err().retry_after(), ms(50));
    }

    #[test]
    fn unknown_keys_are_not_limited() {
        let (_, l) = limits("api", RateLimit::per_second(1));
        for _ in 0..100 {
            l.try_acquire("other").unwrap();
        }
        assert!(l.limit("other").is_none());
        assert!(poll_once(&mut l.acquire("other")).is_ready());
    }

    #[test]
    fn keys_are_independent() {
        let clock = MockClock::new();
        let l = RateLimits::with_clock(clock.clone())
            .with_limit("a", RateLimit::per_second(1))
            .with_limit("b", RateLimit::per_second(2));
        l.try_acquire("a").unwrap();
        assert!(l.try_acquire("a").is_err());
        l.try_acquire("b").unwrap();
        l.try_acquire("b").unwrap();
        assert!(l.try_acquire("b").is_err());
        clock.advance(secs(1));
        l.try_acquire("a").unwrap();
        assert_eq!(
            l.limits(),
            [
                ("a".into(), RateLimit::per_second(1)),
                ("b".into(), RateLimit::per_second(2))
            ]
        );
    }

    #[test]
    fn async_acquire_waits_until_advance_frees_a_slot() {
        let (clock, l) = limits("api", RateLimit::new(2, secs(1)));
        let rt = runtime();
        rt.block_on(async {
            l.acquire("api").await;
            l.acquire("api").await;
            let waiters: Vec<_> = (0..4)
                .map(|_| {
                    let (l, clock) = (Arc::clone(&l), clock.clone());
                    tokio::spawn(async move {
                        l.acquire("api").await;
                        clock.now()
                    })
                })
                .collect();
            until(|| clock.pending_sleeps() == 4).await;
            clock.advance(ms(999));
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(waiters.iter().all(|w| !w.is_finished()));
            clock.advance(ms(1));
            until(|| waiters.iter().filter(|w| w.is_finished()).count() == 2).await;
            assert_eq!(clock.pending_sleeps(), 2);
            clock.advance(secs(1));
            let mut done = Vec::new();
            for w in waiters {
                done.push(w.await.unwrap());
            }
            done.sort();
            assert_eq!(done, [at(secs(1)), at(secs(1)), at(secs(2)), at(secs(2))]);
        });
    }

    #[test]
    fn reservations_are_first_come_first_served() {
        let (clock, l) = limits("api", RateLimit::new(1, ms(100)));
        let mut rs: Vec<Reservation> = (0..5).map(|_| l.acquire("api")).collect();
        let times: Vec<_> = rs.iter().map(|r| r.at().unwrap()).collect();
        assert_eq!(times, (0..5).map(|i| at(ms(100 * i))).collect::<Vec<_>>());
        assert!(rs[0].is_granted());
        assert!(!rs[1].is_granted());
        for i in 0..5 {
            assert!(poll_once(&mut rs[i]).is_ready(), "reservation {i}");
            assert!(rs[i].is_granted());
            for later in &mut rs[i + 1..] {
                assert!(poll_once(later).is_pending());
            }
            clock.advance(ms(100));
        }
    }

    #[test]
    fn many_threads_share_one_window() {
        let (clock, l) = limits("api", RateLimit::per_second(25));
        let granted = Arc::new(AtomicUsize::new(0));
        let round = |expected: usize| {
            let start = Arc::new(Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (l, start, granted) =
                        (Arc::clone(&l), Arc::clone(&start), Arc::clone(&granted));
                    std::thread::spawn(move || {
                        start.wait();
                        for _ in 0..200 {
                            if l.try_acquire("api").is_ok() {
                                granted.fetch_add(1, SeqCst);
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(granted.swap(0, SeqCst), expected);
        };
        round(25);
        clock.advance(ms(999));
        round(0);
        clock.advance(ms(1));
        round(25);
    }

    #[test]
    fn many_threads_reserving_while_time_moves_keep_the_guarantee() {
        let limit = RateLimit::new(5, ms(100)).burst(3);
        let (clock, l) = limits("api", limit);
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (l, clock) = (Arc::clone(&l), clock.clone());
                std::thread::spawn(move || {
                    let mut kept = Vec::new();
                    for j in 0..300 {
                        if (i + j) % 7 == 0 {
                            clock.advance(ms(3));
                        }
                        let r = l.acquire("api");
                        // Every third reservation that must wait is abandoned.
                        if r.is_granted() || j % 3 != 0 {
                            kept.push(r);
                        }
                    }
                    kept
                })
            })
            .collect();
        let mut kept: Vec<Reservation> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        clock.advance(Duration::from_secs(3600));
        let mut grants: Vec<Timestamp> = kept
            .iter_mut()
            .map(|r| {
                assert!(poll_once(r).is_ready());
                r.at().unwrap()
            })
            .collect();
        assert!(grants.len() >= 1600, "{} grants", grants.len());
        grants.sort();
        assert_guarantee(&grants, limit);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// `try_acquire` at random times: the grants keep the guarantee, and the limiter is
        /// exact: it grants exactly when brute force says a grant is allowed, and its
        /// `retry_after` is the first instant at which one is.
        #[test]
        fn try_acquire_grants_exactly_what_the_guarantee_allows(
            max in 1u32..8,
            window_ms in 1u64..50,
            burst in 1u32..8,
            steps in prop::collection::vec((0u64..30, 1usize..4), 1..120),
        ) {
            let limit = RateLimit::new(max, ms(window_ms)).burst(burst);
            let (clock, l) = limits("k", limit);
            let mut grants = Vec::new();
            for (gap, tries) in steps {
                clock.advance(ms(gap) / 3); // sub-millisecond steps too
                for _ in 0..tries {
                    let now = clock.now();
                    match l.try_acquire("k") {
                        Ok(()) => {
                            prop_assert!(allowed(&grants, now, limit));
                            grants.push(now);
                        }
                        Err(e) => {
                            prop_assert!(!allowed(&grants, now, limit));
                            let r = e.retry_after();
                            prop_assert!(r > Duration::ZERO);
                            prop_assert!(allowed(&grants, now + r, limit));
                            prop_assert!(!allowed(&grants, now + r - Duration::from_nanos(1), limit));
                        }
                    }
                }
            }
            assert_guarantee(&grants, limit);
        }

        /// Reservations, abandoned reservations and tries, interleaved at random times: the
        /// starts that happened keep the guarantee, and no reservation completes early.
        #[test]
        fn reservations_and_cancellations_keep_the_guarantee(
            max in 1u32..6,
            window_ms in 1u64..40,
            burst in 1u32..6,
            ops in prop::collection::vec((0u8..4, 0u64..20, any::<prop::sample::Index>()), 1..150),
        ) {
            let limit = RateLimit::new(max, ms(window_ms)).burst(burst);
            let (clock, l) = limits("k", limit);
            let mut grants = Vec::new();
            let mut waiting: Vec<Reservation> = Vec::new();
            for (op, gap, pick) in ops {
                match op {
                    0 => clock.advance(ms(gap) / 2),
                    1 => waiting.push(l.acquire("k")),
                    2 if !waiting.is_empty() => {
                        drop(waiting.remove(pick.index(waiting.len())));
                    }
                    _ => {
                        if l.try_acquire("k").is_ok() {
                            grants.push(clock.now());
                        }
                    }
                }
                let now = clock.now();
                let mut still = Vec::new();
                for mut r in waiting.drain(..) {
                    let at = r.at().unwrap();
                    if poll_once(&mut r).is_ready() {
                        prop_assert!(now >= at, "completed early");
                        grants.push(at);
                    } else {
                        prop_assert!(now < at);
                        still.push(r);
                    }
                }
                waiting = still;
            }
            grants.sort();
            assert_guarantee(&grants, limit);
        }
    }
}

// ---- The policies inside runs: tasks that name a circuit breaker or a rate limit ----

mod in_runs {
    use super::*;
    use nerv::{
        ErrorKind, Event, EventBus, EventFilter, EventKind, Executor, Graph, RunOptions, TaskError,
        TaskStatus, CIRCUIT_SIGNAL,
    };

    /// Two failures within a minute open the circuit for 10 s.
    fn breakers(clock: &MockClock) -> CircuitBreakers {
        CircuitBreakers::with_clock(
            CircuitBreakerConfig::new()
                .failure_threshold(2)
                .window(secs(60))
                .open_for(secs(10)),
            clock.clone(),
        )
    }

    /// A graph of one task of kind `api` that counts its calls and fails while `failing`.
    fn api_call(calls: &Arc<AtomicUsize>, failing: bool, fallback: bool) -> Graph {
        let mut g = Graph::builder();
        let c = calls.clone();
        let work = move |_: &nerv::TaskContext<'_>, (): ()| {
            c.fetch_add(1, SeqCst);
            if failing {
                Err(TaskError::msg("503 from the service"))
            } else {
                Ok::<_, TaskError>("fresh".to_string())
            }
        };
        let tb = g.task("call").circuit_breaker("api");
        if fallback {
            tb.run_with_fallback((), work, |_, ()| Ok("cached".to_string()));
        } else {
            tb.run((), work);
        }
        g.build().unwrap()
    }

    #[test]
    fn an_open_circuit_skips_the_call_and_a_probe_closes_it() {
        let clock = MockClock::new();
        let bus = EventBus::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let _sub = bus.subscribe(EventFilter::kind(EventKind::Custom), move |e: &Event| {
            if let nerv::EventData::Custom { name, payload } = &e.data {
                if &**name == CIRCUIT_SIGNAL {
                    let t: &Transition = payload.get().expect("a transition");
                    s.lock().unwrap().push((t.from, t.to));
                }
            }
        });
        let exec = Executor::builder()
            .workers(1)
            .events(bus.clone())
            .circuit_breakers(breakers(&clock))
            .build();
        let calls = Arc::new(AtomicUsize::new(0));
        let failing = api_call(&calls, true, false);
        for _ in 0..2 {
            assert_eq!(exec.run(&failing).counts().failed, 1);
        }
        assert_eq!(calls.load(SeqCst), 2);
        assert!(matches!(
            exec.circuit_breakers().state("api"),
            CircuitState::Open { .. }
        ));

        // Open: the task fails fast without being called.
        let healthy = api_call(&calls, false, false);
        let report = exec.run(&healthy);
        let r = report.task("call").unwrap();
        assert_eq!(r.status, TaskStatus::Failed);
        assert_eq!(r.error.as_ref().unwrap().kind(), ErrorKind::CircuitOpen);
        assert!(r
            .error
            .unwrap()
            .to_string()
            .contains("circuit `api` is open"));
        assert_eq!(calls.load(SeqCst), 2, "the call was skipped");

        // After the cool-down a probe runs; its success closes the circuit.
        clock.advance(secs(10));
        assert_eq!(exec.run(&healthy).counts().completed, 1);
        assert_eq!(calls.load(SeqCst), 3);
        assert_eq!(exec.circuit_breakers().state("api"), CircuitState::Closed);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "open, half-open, closed: {seen:?}");
        assert_eq!(seen[2].1, CircuitState::Closed);
    }

    #[test]
    fn an_open_circuit_routes_to_the_fallback() {
        let clock = MockClock::new();
        let exec = Executor::builder()
            .workers(1)
            .circuit_breakers(breakers(&clock))
            .build();
        let calls = Arc::new(AtomicUsize::new(0));
        for _ in 0..2 {
            exec.run(&api_call(&calls, true, false));
        }
        let mut g = Graph::builder();
        let c = calls.clone();
        let call = g.task("call").circuit_breaker("api").run_with_fallback(
            (),
            move |_, ()| {
                c.fetch_add(1, SeqCst);
                Ok::<_, TaskError>("fresh".to_string())
            },
            |_, ()| Ok("cached".to_string()),
        );
        let shown = g.task("show").run(call, |_, s| Ok(format!("shown: {s}")));
        let report = exec.run(&g.build().unwrap());
        assert_eq!(
            report.output(shown).map(String::as_str),
            Some("shown: cached")
        );
        assert_eq!(calls.load(SeqCst), 2, "the open circuit skipped the call");
    }

    #[test]
    fn a_cancelled_attempt_does_not_count_against_the_circuit() {
        let clock = MockClock::new();
        let exec = Executor::builder()
            .workers(2)
            .circuit_breakers(breakers(&clock))
            .build();
        let mut g = Graph::builder();
        for i in 0..3 {
            g.task(format!("slow{i}"))
                .circuit_breaker("api")
                .run_async((), |ctx, ()| {
                    let stop = ctx.cancellation();
                    async move {
                        stop.cancelled().await;
                        Err::<(), _>(TaskError::cancelled())
                    }
                });
        }
        let run = exec.start(&g.build().unwrap());
        std::thread::sleep(ms(20));
        run.cancel();
        assert_eq!(run.wait().counts().cancelled, 3);
        assert_eq!(exec.circuit_breakers().state("api"), CircuitState::Closed);
    }

    #[test]
    fn a_rate_limit_bounds_starts_per_window_across_runs() {
        let clock = MockClock::new();
        let exec = Executor::builder()
            .workers(2)
            .rate_limits(
                RateLimits::with_clock(clock.clone()).with_limit("api", RateLimit::new(2, ms(50))),
            )
            .build();
        let started = Arc::new(AtomicUsize::new(0));
        let graph = |started: &Arc<AtomicUsize>| {
            let mut g = Graph::builder();
            for i in 0..3 {
                let s = started.clone();
                g.task(format!("call{i}"))
                    .rate_limit("api")
                    .run((), move |_, ()| {
                        s.fetch_add(1, SeqCst);
                        Ok::<_, TaskError>(())
                    });
            }
            g.build().unwrap()
        };
        // Two runs of three calls each share the limit of two per window.
        let a = exec.start_with(&graph(&started), RunOptions::default());
        let b = exec.start_with(&graph(&started), RunOptions::default());
        let wait_for = |n: usize| {
            let t0 = Instant::now();
            while started.load(SeqCst) < n {
                assert!(
                    t0.elapsed() < LIMIT,
                    "only {} started",
                    started.load(SeqCst)
                );
                std::thread::sleep(ms(1));
            }
        };
        wait_for(2);
        // The mock clock stands still: the others wait (requeued, no worker held) however
        // long we look.
        std::thread::sleep(ms(120));
        assert_eq!(started.load(SeqCst), 2);
        clock.advance(ms(50));
        wait_for(4);
        std::thread::sleep(ms(120));
        assert_eq!(started.load(SeqCst), 4);
        clock.advance(ms(50));
        wait_for(6);
        assert_eq!(a.wait().counts().completed, 3);
        assert_eq!(b.wait().counts().completed, 3);
    }
}
