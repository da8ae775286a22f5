//! Circuit breakers: stop starting a kind of task that keeps failing, then probe it.
//!
//! Invariants:
//! - One circuit per key (a task kind). A circuit is created on its first `check`, first
//!   recorded failure or `configure`, with the registry's default configuration unless
//!   [`CircuitBreakers::configure`] gave the key its own.
//! - The state machine, per circuit:
//!   1. `Closed`: every check passes. A failure counts while it is younger than `window`; when
//!      the `failure_threshold`-th counted failure is recorded at `t`, the circuit opens until
//!      `t + open_for`. Successes do not move a closed circuit.
//!   2. `Open { until }`: every check fails fast with [`CircuitOpen`] (`retry_after = until -
//!      now`), and outcomes recorded meanwhile are ignored.
//!   3. At `until` the circuit is `HalfOpen`. This happens lazily, when the key is next touched
//!      (`check`, `record`, `state`): there is no timer.
//!   4. `HalfOpen`: at most `probes` permits are out at once; other checks fail with
//!      [`CircuitOpen`] (`half_open` set). A probe success counts; after `successes_to_close`
//!      of them the circuit closes with an empty failure window. A probe failure reopens it for
//!      `open_for` from now (the cool-down restarts). A probe permit dropped without a verdict
//!      frees its slot and counts as neither.
//! - Every transition (and every reset) starts a new epoch. A permit's verdict counts only in
//!   the epoch in which the permit was issued: a call that started before a transition never
//!   moves the circuit after it. [`CircuitBreakers::record`] has no permit and applies to the
//!   current epoch.
//! - Observers ([`CircuitBreakers::on_transition`]) see every transition exactly once, one at a
//!   time, in the order the transitions happened (across keys too), called outside every lock
//!   of the registry, so they may call back into it. A transition is delivered either by the
//!   thread that made it, before its call returns, or by a thread that is delivering already.
//!
//! Costs: a `check` on a closed circuit takes the registry's read lock, hashes the key, clones
//! one `Arc` and loads one atomic; it never allocates once the key's circuit exists. An open
//! circuit adds one clock read. Only failures, half-open checks and transitions take the
//! circuit's own mutex.

use crate::clock::{Clock, SystemClock, Timestamp};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Release};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

/// When a circuit opens, for how long, and how it closes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreakerConfig {
    failure_threshold: u32,
    window: Duration,
    open_for: Duration,
    probes: u32,
    successes_to_close: u32,
}

impl Default for CircuitBreakerConfig {
    /// 5 failures within 60 s open the circuit for 30 s; then 1 probe at a time, and 1 probe
    /// success closes it.
    fn default() -> Self {
        CircuitBreakerConfig {
            failure_threshold: 5,
            window: Duration::from_secs(60),
            open_for: Duration::from_secs(30),
            probes: 1,
            successes_to_close: 1,
        }
    }
}

impl CircuitBreakerConfig {
    /// The default configuration (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens the circuit at the `n`-th failure within the window (at least 1).
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n.max(1);
        self
    }

    /// How long a failure counts (at least 1 ns): failures at `f` count at `t` if `t - f <
    /// window`. `Duration::MAX` counts every failure since the circuit last closed.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window.max(Duration::from_nanos(1));
        self
    }

    /// The cool-down: how long the circuit stays open before it lets probes through.
    pub fn open_for(mut self, cool_down: Duration) -> Self {
        self.open_for = cool_down;
        self
    }

    /// How many probe calls may be out at once while half-open (at least 1).
    pub fn probes(mut self, n: u32) -> Self {
        self.probes = n.max(1);
        self
    }

    /// How many probe successes close a half-open circuit (at least 1).
    pub fn successes_to_close(mut self, n: u32) -> Self {
        self.successes_to_close = n.max(1);
        self
    }
}

/// The state of one circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls pass; failures are counted.
    Closed,
    /// Calls fail fast until `until` (on the registry's clock).
    Open {
        /// When the circuit becomes half-open.
        until: Timestamp,
    },
    /// A limited number of probe calls pass; their outcome closes or reopens the circuit.
    HalfOpen,
}

/// The outcome of a call, as recorded by [`CircuitBreakers::record`] or
/// [`CircuitPermit::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    /// The call succeeded.
    Success,
    /// The call failed (in a way that says the downstream is unhealthy).
    Failure,
}

/// Why a circuit changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionCause {
    /// Closed → open: the failure threshold was reached within the window.
    FailureThreshold,
    /// Open → half-open: the cool-down elapsed.
    CoolDownElapsed,
    /// Half-open → closed: enough probes succeeded.
    ProbesSucceeded,
    /// Half-open → open: a probe failed.
    ProbeFailed,
    /// Any → closed: [`CircuitBreakers::reset`].
    Reset,
}

/// A change of a circuit's state, as given to the observers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// The circuit's key.
    pub key: Arc<str>,
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// Why.
    pub cause: TransitionCause,
    /// When (on the registry's clock).
    pub at: Timestamp,
}

/// The circuit of `key` refused a call: it is open, or half-open with every probe slot taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit `{key}` is {}: retry after {retry_after:?}", if *.half_open { "half-open and probing" } else { "open" })]
#[non_exhaustive]
pub struct CircuitOpen {
    /// The circuit's key.
    pub key: Arc<str>,
    /// When open, the rest of the cool-down. When half-open, the probes decide and no exact
    /// time is known: the full cool-down, the longest wait if a probe fails now.
    pub retry_after: Duration,
    /// The circuit is half-open and its probe slots are taken (else it is open).
    pub half_open: bool,
}

impl CircuitOpen {
    /// The circuit's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How long to wait before asking again (see the field).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// True if the circuit is half-open and probing (false: open).
    pub fn is_half_open(&self) -> bool {
        self.half_open
    }
}

type Observer = Arc<dyn Fn(&Transition) + Send + Sync>;

/// Circuit breakers keyed by task kind: one registry for the engine, shared by reference or in
/// an `Arc`. See the module documentation for the state machine.
///
/// ```
/// use nerv::{CircuitBreakerConfig, CircuitBreakers, MockClock};
/// use std::time::Duration;
///
/// let clock = MockClock::new();
/// let breakers = CircuitBreakers::with_clock(
///     CircuitBreakerConfig::new().failure_threshold(2).open_for(Duration::from_secs(10)),
///     clock.clone(),
/// );
/// breakers.check("api").unwrap().failure();
/// breakers.check("api").unwrap().failure();
/// let err = breakers.check("api").unwrap_err();
/// assert_eq!(err.retry_after, Duration::from_secs(10));
///
/// clock.advance(Duration::from_secs(10));
/// let probe = breakers.check("api").unwrap(); // half-open: one probe
/// assert!(breakers.check("api").is_err());
/// probe.success(); // closed again
/// assert!(breakers.check("api").is_ok());
/// ```
pub struct CircuitBreakers {
    default: CircuitBreakerConfig,
    common: Arc<Common>,
    circuits: RwLock<HashMap<Arc<str>, Arc<Circuit>>>,
}

/// What the registry and its circuits share.
struct Common {
    clock: Arc<dyn Clock>,
    /// Copy-on-write, so that delivery clones one `Arc` and calls without the lock.
    observers: Mutex<Arc<Vec<Observer>>>,
    outbox: Mutex<Outbox>,
}

/// Transitions not yet delivered, in the order they happened (pushed under the circuit's lock).
struct Outbox {
    queue: VecDeque<Transition>,
    /// A thread is delivering: it will also deliver what is pushed meanwhile.
    delivering: bool,
}

/// Failure slots allocated with a circuit; a larger threshold grows the window as failures
/// come (amortized, and kept: at most `8 * failure_threshold` bytes per circuit).
const PREALLOCATED_FAILURES: usize = 16;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;

struct Circuit {
    key: Arc<str>,
    common: Arc<Common>,
    /// `epoch << 2 | phase`: a copy of the machine's epoch and phase, written under its lock
    /// and read without it by the fast paths.
    word: AtomicU64,
    /// The open deadline in nanoseconds, meaningful while `word` says open; written before
    /// `word`.
    open_until: AtomicU64,
    machine: Mutex<Machine>,
}

struct Machine {
    config: CircuitBreakerConfig,
    epoch: u64,
    phase: Phase,
    /// The counted failures of the current closed epoch, oldest first; fewer than the
    /// threshold (reaching it opens the circuit and clears them, keeping the capacity).
    failures: VecDeque<Timestamp>,
}

#[derive(Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Timestamp },
    HalfOpen { in_flight: u32, successes: u32 },
}

impl Phase {
    fn public(self) -> CircuitState {
        match self {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { until } => CircuitState::Open { until },
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn code(self) -> u64 {
        match self {
            Phase::Closed => CLOSED,
            Phase::Open { .. } => OPEN,
            Phase::HalfOpen { .. } => HALF_OPEN,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent before anything that could panic
    // (user code never runs under these locks), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Leave to a circuit's verdict: run the call, then say how it went. Dropping it without a
/// verdict counts as neither (and frees a half-open probe slot).
#[must_use = "a permit is the verdict's channel: call success() or failure() when the call ends"]
pub struct CircuitPermit {
    circuit: Arc<Circuit>,
    epoch: u64,
    probe: bool,
    settled: bool,
}

impl CircuitPermit {
    /// The call succeeded.
    pub fn success(self) {
        self.record(CallOutcome::Success);
    }

    /// The call failed.
    pub fn failure(self) {
        self.record(CallOutcome::Failure);
    }

    /// The call ended with `outcome`.
    pub fn record(mut self, outcome: CallOutcome) {
        self.settled = true;
        // A success on a closed-epoch permit never moves anything: skip the lock.
        if self.probe || outcome == CallOutcome::Failure {
            self.circuit.settle(Some((self.epoch, self.probe)), outcome);
        }
    }

    /// True if this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The circuit's key.
    pub fn key(&self) -> &str {
        &self.circuit.key
    }
}

impl Drop for CircuitPermit {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.circuit.release_probe(self.epoch);
        }
    }
}

impl fmt::Debug for CircuitPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitPermit")
            .field("key", &self.circuit.key)
            .field("probe", &self.probe)
            .finish()
    }
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers::new(CircuitBreakerConfig::default())
    }
}

impl fmt::Debug for CircuitBreakers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakers")
            .field("default", &self.default)
            .field("states", &self.states())
            .finish()
    }
}

impl CircuitBreakers {
    /// A registry on the real clock whose circuits use `default` unless configured.
    pub fn new(default: CircuitBreakerConfig) -> Self {
        Self::with_clock(default, SystemClock::new())
    }

    /// A registry on `clock` (a [`MockClock`](crate::MockClock) in tests).
    pub fn with_clock(default: CircuitBreakerConfig, clock: impl Into<Arc<dyn Clock>>) -> Self {
        CircuitBreakers {
            default,
            common: Arc::new(Common {
                clock: clock.into(),
                observers: Mutex::new(Arc::new(Vec::new())),
                outbox: Mutex::new(Outbox {
                    queue: VecDeque::new(),
                    delivering: false,
                }),
            }),
            circuits: RwLock::new(HashMap::new()),
        }
    }

    /// Gives `key` its own configuration. An existing circuit keeps its state and counted
    /// failures; the new thresholds apply from its next decision.
    pub fn configure(&self, key: &str, config: CircuitBreakerConfig) {
        let circuit = self.circuit(key);
        lock(&circuit.machine).config = config;
    }

    /// Calls `f` at every transition of every circuit (see the module's invariants for when and
    /// in which order).
    pub fn on_transition(&self, f: impl Fn(&Transition) + Send + Sync + 'static) {
        let mut obs = lock(&self.common.observers);
        Arc::make_mut(&mut obs).push(Arc::new(f));
    }

    /// The decision: may a call of kind `key` start now? `Ok` carries the permit through which
    /// the call reports its outcome; `Err` says the circuit refused it, and for how long.
    pub fn check(&self, key: &str) -> Result<CircuitPermit, CircuitOpen> {
        self.circuit(key).check()
    }

    /// Records the outcome of a call of kind `key` that has no permit (driven by events: a
    /// task of that kind completed or failed). It applies to the current state: counted while
    /// closed, ignored while open, decisive while half-open. Record each call once: through its
    /// permit or here, not both.
    pub fn record(&self, key: &str, outcome: CallOutcome) {
        let circuit = match outcome {
            CallOutcome::Failure => self.circuit(key),
            CallOutcome::Success => match self.existing(key) {
                Some(c) if c.word.load(Acquire) & 3 != CLOSED => c,
                _ => return,
            },
        };
        circuit.settle(None, outcome);
    }

    /// The state of `key`'s circuit (closed if it has none). An open circuit whose cool-down
    /// elapsed becomes half-open here.
    pub fn state(&self, key: &str) -> CircuitState {
        match self.existing(key) {
            Some(c) => c.state(),
            None => CircuitState::Closed,
        }
    }

    /// Every circuit's key and state, sorted by key.
    pub fn states(&self) -> Vec<(Arc<str>, CircuitState)> {
        let circuits: Vec<Arc<Circuit>> = self.read().values().cloned().collect();
        let mut out: Vec<_> = circuits
            .iter()
            .map(|c| (Arc::clone(&c.key), c.state()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Closes `key`'s circuit and forgets its failures; outstanding permits lose their say.
    pub fn reset(&self, key: &str) {
        if let Some(c) = self.existing(key) {
            c.reset();
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Arc<Circuit>>> {
        self.circuits.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn existing(&self, key: &str) -> Option<Arc<Circuit>> {
        self.read().get(key).cloned()
    }

    fn circuit(&self, key: &str) -> Arc<Circuit> {
        if let Some(c) = self.existing(key) {
            return c;
        }
        let mut map = self
            .circuits
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = map.get(key) {
            return Arc::clone(c);
        }
        let key: Arc<str> = key.into();
        let config = self.default.clone();
        let circuit = Arc::new(Circuit {
            key: Arc::clone(&key),
            common: Arc::clone(&self.common),
            word: AtomicU64::new(CLOSED),
            open_until: AtomicU64::new(0),
            machine: Mutex::new(Machine {
                failures: VecDeque::with_capacity(
                    (config.failure_threshold as usize).min(PREALLOCATED_FAILURES),
                ),
                config,
                epoch: 0,
                phase: Phase::Closed,
            }),
        });
        map.insert(key, Arc::clone(&circuit));
        circuit
    }
}

impl Circuit {
    fn now(&self) -> Timestamp {
        self.common.clock.now()
    }

    fn check(self: Arc<Self>) -> Result<CircuitPermit, CircuitOpen> {
        let word = self.word.load(Acquire);
        match word & 3 {
            CLOSED => {
                return Ok(CircuitPermit {
                    circuit: self,
                    epoch: word >> 2,
                    probe: false,
                    settled: false,
                })
            }
            OPEN => {
                let until = Timestamp::from_nanos(self.open_until.load(Acquire));
                let now = self.now();
                if now < until {
                    return Err(self.refusal(until.saturating_duration_since(now), false));
                }
            }
            _ => {}
        }
        let mut guard = lock(&self.machine);
        let now = self.now();
        let moved = self.refresh(&mut guard, now);
        let m = &mut *guard;
        let res = match m.phase {
            Phase::Closed => Ok((m.epoch, false)),
            Phase::Open { until } => Err((until.saturating_duration_since(now), false)),
            Phase::HalfOpen {
                ref mut in_flight, ..
            } => {
                if *in_flight < m.config.probes {
                    *in_flight += 1;
                    Ok((m.epoch, true))
                } else {
                    Err((m.config.open_for, true))
                }
            }
        };
        drop(guard);
        if moved {
            self.common.deliver();
        }
        match res {
            Ok((epoch, probe)) => Ok(CircuitPermit {
                circuit: self,
                epoch,
                probe,
                settled: false,
            }),
            Err((retry_after, half_open)) => Err(self.refusal(retry_after, half_open)),
        }
    }

    fn refusal(&self, retry_after: Duration, half_open: bool) -> CircuitOpen {
        CircuitOpen {
            key: Arc::clone(&self.key),
            retry_after,
            half_open,
        }
    }

    fn state(&self) -> CircuitState {
        let mut m = lock(&self.machine);
        let moved = self.refresh(&mut m, self.now());
        let state = m.phase.public();
        drop(m);
        if moved {
            self.common.deliver();
        }
        state
    }

    /// Applies a verdict: from a permit (`Some((epoch, probe))`) or from `record` (`None`).
    fn settle(&self, permit: Option<(u64, bool)>, outcome: CallOutcome) {
        let mut m = lock(&self.machine);
        let now = self.now();
        let mut moved = self.refresh(&mut m, now);
        // A permit of another epoch has no say; `record` speaks for the current one.
        let (current, probe) = match permit {
            Some((epoch, probe)) => (epoch == m.epoch, probe),
            None => (true, false),
        };
        if current {
            match (m.phase, outcome) {
                (Phase::Closed, CallOutcome::Failure) => {
                    let window = m.config.window;
                    while let Some(&oldest) = m.failures.front() {
                        if now.saturating_duration_since(oldest) < window {
                            break;
                        }
                        m.failures.pop_front();
                    }
                    m.failures.push_back(now);
                    if m.failures.len() >= m.config.failure_threshold as usize {
                        let until = now.saturating_add(m.config.open_for);
                        self.transition(
                            &mut m,
                            Phase::Open { until },
                            TransitionCause::FailureThreshold,
                            now,
                        );
                        moved = true;
                    }
                }
                (
                    Phase::HalfOpen {
                        in_flight,
                        successes,
                    },
                    CallOutcome::Success,
                ) => {
                    let successes = successes + 1;
                    if successes >= m.config.successes_to_close {
                        self.transition(
                            &mut m,
                            Phase::Closed,
                            TransitionCause::ProbesSucceeded,
                            now,
                        );
                        moved = true;
                    } else {
                        let in_flight = if probe { in_flight - 1 } else { in_flight };
                        m.phase = Phase::HalfOpen {
                            in_flight,
                            successes,
                        };
                    }
                }
                (Phase::HalfOpen { .. }, CallOutcome::Failure) => {
                    let until = now.saturating_add(m.config.open_for);
                    self.transition(
                        &mut m,
                        Phase::Open { until },
                        TransitionCause::ProbeFailed,
                        now,
                    );
                    moved = true;
                }
                (Phase::Closed, CallOutcome::Success) | (Phase::Open { .. }, _) => {}
            }
        }
        drop(m);
        if moved {
            self.common.deliver();
        }
    }

    fn release_probe(&self, epoch: u64) {
        let mut m = lock(&self.machine);
        if m.epoch != epoch {
            return;
        }
        if let Phase::HalfOpen {
            ref mut in_flight, ..
        } = m.phase
        {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    fn reset(&self) {
        let mut m = lock(&self.machine);
        let now = self.now();
        if let Phase::Closed = m.phase {
            // Not a transition, but permits of the old epoch lose their say.
            m.epoch += 1;
            m.failures.clear();
            self.word.store(m.epoch << 2 | CLOSED, Release);
            return;
        }
        self.transition(&mut m, Phase::Closed, TransitionCause::Reset, now);
        drop(m);
        self.common.deliver();
    }

    /// Open → half-open once the cool-down has elapsed. True if it moved: the caller delivers
    /// the transition after unlocking.
    #[must_use]
    fn refresh(&self, m: &mut Machine, now: Timestamp) -> bool {
        match m.phase {
            Phase::Open { until } if now >= until => {
                let to = Phase::HalfOpen {
                    in_flight: 0,
                    successes: 0,
                };
                self.transition(m, to, TransitionCause::CoolDownElapsed, now);
                true
            }
            _ => false,
        }
    }

    /// Moves to `to` in a new epoch and queues the transition for the observers (the caller
    /// delivers it after unlocking).
    fn transition(&self, m: &mut Machine, to: Phase, cause: TransitionCause, now: Timestamp) {
        let from = m.phase.public();
        m.epoch += 1;
        m.phase = to;
        match to {
            Phase::Closed => m.failures.clear(),
            Phase::Open { until } => self.open_until.store(until.as_nanos(), Release),
            Phase::HalfOpen { .. } => {}
        }
        self.word.store(m.epoch << 2 | to.code(), Release);
        let t = Transition {
            key: Arc::clone(&self.key),
            from,
            to: to.public(),
            cause,
            at: now,
        };
        lock(&self.common.outbox).queue.push_back(t);
    }
}

impl Common {
    /// Delivers queued transitions unless another thread is delivering (it will deliver them).
    fn deliver(&self) {
        let mut ob = lock(&self.outbox);
        if ob.delivering {
            return;
        }
        ob.delivering = true;
        // Clears the flag if an observer panics, so that later transitions are delivered.
        struct Unwinding<'a>(&'a Mutex<Outbox>);
        impl Drop for Unwinding<'_> {
            fn drop(&mut self) {
                lock(self.0).delivering = false;
            }
        }
        let guard = Unwinding(&self.outbox);
        while let Some(t) = ob.queue.pop_front() {
            drop(ob);
            let observers = Arc::clone(&lock(&self.observers));
            for o in observers.iter() {
                o(&t);
            }
            ob = lock(&self.outbox);
        }
        // Cleared under the same lock that saw the queue empty: a transition pushed after this
        // finds `delivering` false and is delivered by its own thread.
        ob.delivering = false;
        drop(ob);
        std::mem::forget(guard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MockClock;

    fn setup(
        config: CircuitBreakerConfig,
    ) -> (MockClock, CircuitBreakers, Arc<Mutex<Vec<Transition>>>) {
        let clock = MockClock::new();
        let b = CircuitBreakers::with_clock(config, clock.clone());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        b.on_transition(move |t| s.lock().unwrap().push(t.clone()));
        (clock, b, seen)
    }

    #[test]
    fn stale_permits_have_no_say() {
        let (clock, b, _) = setup(CircuitBreakerConfig::new().failure_threshold(2));
        let old = b.check("k").unwrap();
        b.record("k", CallOutcome::Failure);
        b.record("k", CallOutcome::Failure);
        assert!(matches!(b.state("k"), CircuitState::Open { .. }));
        clock.advance(Duration::from_secs(30));
        let probe = b.check("k").unwrap();
        old.failure(); // issued while closed: ignored in half-open
        assert_eq!(b.state("k"), CircuitState::HalfOpen);
        probe.success();
        assert_eq!(b.state("k"), CircuitState::Closed);
    }

    #[test]
    fn reset_of_a_closed_circuit_forgets_failures_and_permits() {
        let (_, b, seen) = setup(CircuitBreakerConfig::new().failure_threshold(2));
        let p = b.check("k").unwrap();
        b.record("k", CallOutcome::Failure);
        b.reset("k");
        p.failure(); // old epoch
        b.record("k", CallOutcome::Failure);
        assert_eq!(b.state("k"), CircuitState::Closed);
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn success_recorded_on_unknown_or_closed_key_creates_nothing() {
        let (_, b, _) = setup(CircuitBreakerConfig::new());
        b.record("ghost", CallOutcome::Success);
        assert!(b.states().is_empty());
        b.reset("ghost");
        assert_eq!(b.state("ghost"), CircuitState::Closed);
        assert!(b.states().is_empty());
    }

    #[test]
    fn configure_changes_thresholds_of_a_live_circuit() {
        let (_, b, _) = setup(CircuitBreakerConfig::new().failure_threshold(10));
        b.record("k", CallOutcome::Failure);
        b.configure("k", CircuitBreakerConfig::new().failure_threshold(2));
        b.record("k", CallOutcome::Failure);
        assert!(matches!(b.state("k"), CircuitState::Open { .. }));
    }

    #[test]
    fn observers_may_call_back_into_the_registry() {
        let clock = MockClock::new();
        let b = Arc::new(CircuitBreakers::with_clock(
            CircuitBreakerConfig::new().failure_threshold(1),
            clock.clone(),
        ));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (b2, s) = (Arc::downgrade(&b), Arc::clone(&seen));
        b.on_transition(move |t| {
            let b = b2.upgrade().unwrap();
            // Re-entrant: reads the state and makes another transition (on another key).
            s.lock().unwrap().push((t.key.to_string(), b.state(&t.key)));
            if &*t.key == "a" {
                b.record("b", CallOutcome::Failure);
            }
        });
        b.record("a", CallOutcome::Failure);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0, "a");
        assert_eq!(seen[1].0, "b");
    }

    #[test]
    fn a_panicking_observer_does_not_stop_later_deliveries() {
        let (clock, b, seen) = setup(CircuitBreakerConfig::new().failure_threshold(1));
        b.on_transition(|t| {
            if t.cause == TransitionCause::FailureThreshold {
                panic!("expected panic: an observer bug");
            }
        });
        // Prints the panic: the test harness's hook is process-global, leave it alone.
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.record("k", CallOutcome::Failure)
        }));
        assert!(res.is_err());
        clock.advance(Duration::from_secs(30));
        assert_eq!(b.state("k"), CircuitState::HalfOpen);
        let causes: Vec<_> = seen.lock().unwrap().iter().map(|t| t.cause).collect();
        assert_eq!(
            causes,
            [
                TransitionCause::FailureThreshold,
                TransitionCause::CoolDownElapsed
            ]
        );
    }

    #[test]
    fn error_message_names_the_key() {
        let (_, b, _) = setup(CircuitBreakerConfig::new().failure_threshold(1));
        b.record("payments", CallOutcome::Failure);
        let e = b.check("payments").unwrap_err();
        assert_eq!(e.to_string(), "circuit `payments` is open: retry after 30s");
        assert_eq!(e.key(), "payments");
        assert!(!e.is_half_open());
    }
}
