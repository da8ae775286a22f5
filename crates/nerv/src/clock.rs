//! Time, injected: a [`Clock`] tells monotonic time ([`Timestamp`]) and wall-clock time, and
//! sleeps. Time-based policies (circuit breakers, rate limits) take an `Arc<dyn Clock>`, so that
//! their tests drive a [`MockClock`] by hand instead of sleeping.
//!
//! Invariants:
//! - A clock's [`Timestamp`]s never decrease: a `now()` that happens after another `now()` of the
//!   same clock (on any thread) returns a value at least as large.
//! - Timestamps are nanoseconds since the clock's own origin: compare and subtract only
//!   timestamps of one clock (a [`MockClock`] and its clones count as one clock).
//! - A sleep never completes early: `sleep_until(t)` completes only once `now() >= t`.
//!   [`SystemClock`] sleeps on the Tokio timer (it needs a Tokio runtime with time enabled,
//!   when polled); [`MockClock`] sleeps complete when [`MockClock::advance`] reaches their
//!   deadline, and never otherwise.
//! - A [`MockClock`]'s time moves only when a test calls [`advance`](MockClock::advance) or
//!   [`advance_to`](MockClock::advance_to). `advance` wakes the sleeps it completes after it
//!   released the mock's lock, so a woken task may call back into the clock.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::{Add, AddAssign, Sub};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

/// A point in a clock's monotonic time: nanoseconds since the clock's origin.
///
/// Unlike [`std::time::Instant`], a `Timestamp` can be built from a number, which is what lets
/// a [`MockClock`] hand out any time. `+` and `-` saturate (at the origin and 584 years after
/// it) instead of panicking; `checked_*` say when they would.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The clock's origin.
    pub const ZERO: Timestamp = Timestamp(0);

    /// The timestamp `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Timestamp {
        Timestamp(nanos)
    }

    /// The timestamp `since_origin` after the origin (saturating).
    pub fn from_duration(since_origin: Duration) -> Timestamp {
        Timestamp(u64::try_from(since_origin.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time since the origin.
    pub const fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, or `None` past the end of time.
    pub fn checked_add(self, d: Duration) -> Option<Timestamp> {
        let d = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_add(d).map(Timestamp)
    }

    /// `self - d`, or `None` before the origin.
    pub fn checked_sub(self, d: Duration) -> Option<Timestamp> {
        let d = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_sub(d).map(Timestamp)
    }

    /// `self + d`, capped at the end of time.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        self.checked_add(d).unwrap_or(Timestamp(u64::MAX))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    /// Saturating: see [`Timestamp::saturating_add`].
    fn add(self, d: Duration) -> Timestamp {
        self.saturating_add(d)
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;

    /// Saturating at the origin: see [`Timestamp::checked_sub`].
    fn sub(self, d: Duration) -> Timestamp {
        self.checked_sub(d).unwrap_or(Timestamp::ZERO)
    }
}

impl AddAssign<Duration> for Timestamp {
    fn add_assign(&mut self, d: Duration) {
        *self = self.saturating_add(d);
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "T+{:?}", self.as_duration())
    }
}

/// A source of time: monotonic time, wall-clock time and sleeps.
///
/// Object safe: policies hold an `Arc<dyn Clock>`. Implement it to run policies on another
/// timer than Tokio's; tests use [`MockClock`].
pub trait Clock: Send + Sync {
    /// The current monotonic time (never decreases; see the module's invariants).
    fn now(&self) -> Timestamp;

    /// The current wall-clock time, for records and events (it may jump; never use it to
    /// measure durations).
    fn system_now(&self) -> SystemTime;

    /// A future that completes once `now() >= deadline` (at once if it already is).
    fn sleep_until(&self, deadline: Timestamp) -> Sleep;

    /// A future that completes once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> Sleep {
        self.sleep_until(self.now().saturating_add(d))
    }
}

/// The future returned by [`Clock::sleep`] and [`Clock::sleep_until`]: completes at its
/// deadline. Dropping it cancels the sleep.
///
/// It is boxed so that [`Clock`] stays object safe; sleeping is a slow path, and one
/// allocation per sleep is small beside the timer's own work.
pub struct Sleep {
    inner: Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
}

impl Sleep {
    /// Wraps the future that a [`Clock`] implementation uses to sleep.
    pub fn new(fut: impl Future<Output = ()> + Send + 'static) -> Sleep {
        Sleep {
            inner: Box::pin(fut),
        }
    }

    /// A sleep that is already over.
    pub fn ready() -> Sleep {
        Sleep::new(std::future::ready(()))
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep").finish_non_exhaustive()
    }
}

/// The real clock: monotonic time from `quanta` (TSC where available: a `now()` costs a few
/// nanoseconds), wall-clock time from the system, and sleeps on the Tokio timer.
///
/// Sleeps must be polled inside a Tokio runtime with its time driver enabled (a runtime built
/// with `enable_time` or `enable_all`, like the executor's); polling one elsewhere panics.
#[derive(Debug, Clone)]
pub struct SystemClock {
    clock: quanta::Clock,
    origin: quanta::Instant,
}

impl SystemClock {
    /// A clock whose origin is now. The first `quanta` clock of the process calibrates the TSC
    /// (tens of milliseconds at most); later ones are cheap.
    pub fn new() -> SystemClock {
        let clock = quanta::Clock::new();
        let origin = clock.now();
        SystemClock { clock, origin }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_duration(self.clock.now().saturating_duration_since(self.origin))
    }

    fn system_now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep_until(&self, deadline: Timestamp) -> Sleep {
        if self.now() >= deadline {
            return Sleep::ready();
        }
        let clock = self.clone();
        // The Tokio timer rounds up to its millisecond tick, but its clock is not ours: loop
        // until ours agrees, so that the sleep never ends early.
        Sleep::new(async move {
            loop {
                let now = clock.now();
                if now >= deadline {
                    return;
                }
                tokio::time::sleep(deadline.saturating_duration_since(now)).await;
            }
        })
    }
}

impl From<SystemClock> for Arc<dyn Clock> {
    fn from(c: SystemClock) -> Self {
        Arc::new(c)
    }
}

/// A clock for tests: its time moves only when the test calls [`advance`](Self::advance) or
/// [`advance_to`](Self::advance_to), and its sleeps complete when an advance reaches their
/// deadline. Clones share one time, so a test keeps a clone and hands another to the code under
/// test (`Arc<dyn Clock>: From<MockClock>`).
///
/// ```
/// use nerv::{Clock, MockClock};
/// use std::time::Duration;
///
/// let clock = MockClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now().saturating_duration_since(t0), Duration::from_secs(5));
/// ```
#[derive(Clone)]
pub struct MockClock {
    shared: Arc<MockShared>,
}

struct MockShared {
    system_origin: SystemTime,
    state: Mutex<MockState>,
}

struct MockState {
    now: Timestamp,
    /// Pending sleeps by (deadline, id); an entry is removed when its sleep completes, is
    /// dropped, or is woken by an advance.
    sleepers: BTreeMap<(Timestamp, u64), Waker>,
    next_id: u64,
}

impl MockShared {
    fn lock(&self) -> MutexGuard<'_, MockState> {
        // The state stays consistent across a panic (every update is one assignment), so a
        // poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MockClock {
    /// The wall-clock time of a new mock's origin: 2024-01-01T00:00:00Z, fixed so that tests
    /// are deterministic.
    pub const DEFAULT_SYSTEM_ORIGIN_SECS: u64 = 1_704_067_200;

    /// A mock clock at [`Timestamp::ZERO`], whose wall clock starts at
    /// [`DEFAULT_SYSTEM_ORIGIN_SECS`](Self::DEFAULT_SYSTEM_ORIGIN_SECS) after the Unix epoch.
    pub fn new() -> MockClock {
        Self::with_system_origin(
            SystemTime::UNIX_EPOCH + Duration::from_secs(Self::DEFAULT_SYSTEM_ORIGIN_SECS),
        )
    }

    /// A mock clock at [`Timestamp::ZERO`] whose wall clock reads `system_origin` there.
    pub fn with_system_origin(system_origin: SystemTime) -> MockClock {
        MockClock {
            shared: Arc::new(MockShared {
                system_origin,
                state: Mutex::new(MockState {
                    now: Timestamp::ZERO,
                    sleepers: BTreeMap::new(),
                    next_id: 0,
                }),
            }),
        }
    }

    /// Moves time forward by `d` and completes every sleep whose deadline is reached.
    pub fn advance(&self, d: Duration) {
        let st = self.shared.lock();
        let to = st.now.saturating_add(d);
        Self::advance_locked(st, to);
    }

    /// Moves time forward to `t` (no-op if `t` is not later than now), completing every sleep
    /// whose deadline is reached.
    pub fn advance_to(&self, t: Timestamp) {
        let st = self.shared.lock();
        Self::advance_locked(st, t);
    }

    fn advance_locked(mut st: MutexGuard<'_, MockState>, to: Timestamp) {
        if to <= st.now {
            return;
        }
        st.now = to;
        let due = match to.as_nanos().checked_add(1) {
            Some(after) => {
                let later = st.sleepers.split_off(&(Timestamp(after), 0));
                std::mem::replace(&mut st.sleepers, later)
            }
            None => std::mem::take(&mut st.sleepers),
        };
        drop(st);
        for waker in due.into_values() {
            waker.wake();
        }
    }

    /// How many sleeps are waiting (polled at least once and not yet due). A test waits for
    /// this to reach the expected count before it advances, to be sure that a task is asleep.
    pub fn pending_sleeps(&self) -> usize {
        self.shared.lock().sleepers.len()
    }

    /// The earliest deadline of the waiting sleeps.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.shared.lock().sleepers.keys().next().map(|k| k.0)
    }
}

impl Default for MockClock {
    fn default() -> Self {
        MockClock::new()
    }
}

impl fmt::Debug for MockClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("MockClock")
            .field("now", &st.now)
            .field("pending_sleeps", &st.sleepers.len())
            .finish()
    }
}

impl Clock for MockClock {
    fn now(&self) -> Timestamp {
        self.shared.lock().now
    }

    fn system_now(&self) -> SystemTime {
        self.shared.system_origin + self.now().as_duration()
    }

    fn sleep_until(&self, deadline: Timestamp) -> Sleep {
        let id = {
            let mut st = self.shared.lock();
            st.next_id += 1;
            st.next_id
        };
        Sleep::new(MockSleep {
            shared: Arc::clone(&self.shared),
            deadline,
            id,
        })
    }
}

impl From<MockClock> for Arc<dyn Clock> {
    fn from(c: MockClock) -> Self {
        Arc::new(c)
    }
}

/// A sleep on a [`MockClock`]: registered in the mock's sleepers while pending.
struct MockSleep {
    shared: Arc<MockShared>,
    deadline: Timestamp,
    id: u64,
}

impl Future for MockSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.shared.lock();
        let key = (self.deadline, self.id);
        if st.now >= self.deadline {
            st.sleepers.remove(&key);
            return Poll::Ready(());
        }
        match st.sleepers.get_mut(&key) {
            Some(w) if w.will_wake(cx.waker()) => {}
            Some(w) => w.clone_from(cx.waker()),
            None => {
                st.sleepers.insert(key, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for MockSleep {
    fn drop(&mut self) {
        self.shared
            .lock()
            .sleepers
            .remove(&(self.deadline, self.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::task::Wake;

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    fn poll_once(s: &mut Sleep, wakes: &Arc<CountWakes>) -> Poll<()> {
        let waker = Waker::from(Arc::clone(wakes));
        Pin::new(s).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn timestamp_arithmetic_saturates() {
        let t = Timestamp::from_nanos(10);
        assert_eq!(t + Duration::from_nanos(5), Timestamp::from_nanos(15));
        assert_eq!(t.checked_sub(Duration::from_nanos(11)), None);
        assert_eq!(
            Timestamp::from_nanos(u64::MAX) + Duration::from_secs(1),
            Timestamp::from_nanos(u64::MAX)
        );
        assert_eq!(
            t.saturating_duration_since(Timestamp::from_nanos(20)),
            Duration::ZERO
        );
        assert_eq!(Timestamp::from_duration(Duration::MAX).as_nanos(), u64::MAX);
        assert_eq!(format!("{:?}", Timestamp::from_nanos(1_500_000)), "T+1.5ms");
    }

    #[test]
    fn mock_time_moves_only_on_advance_and_clones_share_it() {
        let c = MockClock::new();
        let c2 = c.clone();
        assert_eq!(c.now(), Timestamp::ZERO);
        assert_eq!(c.now(), Timestamp::ZERO);
        c2.advance(Duration::from_millis(7));
        assert_eq!(c.now(), Timestamp::from_nanos(7_000_000));
        c.advance_to(Timestamp::from_nanos(1)); // backwards: ignored
        assert_eq!(c.now(), Timestamp::from_nanos(7_000_000));
        assert_eq!(
            c.system_now(),
            SystemTime::UNIX_EPOCH
                + Duration::from_secs(MockClock::DEFAULT_SYSTEM_ORIGIN_SECS)
                + Duration::from_millis(7)
        );
    }

    #[test]
    fn mock_sleep_completes_exactly_when_advance_reaches_its_deadline() {
        let c = MockClock::new();
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let mut s = c.sleep(Duration::from_millis(10));
        assert_eq!(c.pending_sleeps(), 0, "registered on first poll only");
        assert!(poll_once(&mut s, &wakes).is_pending());
        assert!(poll_once(&mut s, &wakes).is_pending());
        assert_eq!(c.pending_sleeps(), 1, "a re-poll replaces, not adds");
        assert_eq!(c.next_deadline(), Some(Timestamp::from_nanos(10_000_000)));
        c.advance(Duration::from_millis(9));
        assert_eq!(wakes.0.load(SeqCst), 0);
        assert!(poll_once(&mut s, &wakes).is_pending());
        c.advance(Duration::from_millis(1));
        assert_eq!(wakes.0.load(SeqCst), 1);
        assert_eq!(c.pending_sleeps(), 0);
        assert!(poll_once(&mut s, &wakes).is_ready());
    }

    #[test]
    fn mock_sleep_in_the_past_is_ready_and_dropped_sleeps_unregister() {
        let c = MockClock::new();
        c.advance(Duration::from_secs(1));
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let mut past = c.sleep_until(Timestamp::from_nanos(5));
        assert!(poll_once(&mut past, &wakes).is_ready());
        let mut zero = c.sleep(Duration::ZERO);
        assert!(poll_once(&mut zero, &wakes).is_ready());

        let mut a = c.sleep(Duration::from_secs(1));
        let mut b = c.sleep(Duration::from_secs(1));
        assert!(poll_once(&mut a, &wakes).is_pending());
        assert!(poll_once(&mut b, &wakes).is_pending());
        assert_eq!(c.pending_sleeps(), 2, "same deadline, distinct sleeps");
        drop(a);
        assert_eq!(c.pending_sleeps(), 1);
        c.advance(Duration::from_secs(2));
        assert_eq!(wakes.0.load(SeqCst), 1);
        assert!(poll_once(&mut b, &wakes).is_ready());
    }

    #[test]
    fn system_clock_is_monotonic_and_sleeps_at_least_the_duration() {
        let c = SystemClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let start = c.now();
        rt.block_on(c.sleep(Duration::from_millis(2)));
        assert!(c.now().saturating_duration_since(start) >= Duration::from_millis(2));
        let dyn_clock: Arc<dyn Clock> = c.into();
        rt.block_on(dyn_clock.sleep_until(Timestamp::ZERO));
    }
}
