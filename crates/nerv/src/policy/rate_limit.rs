//! Rate limits: at most `N` starts per window `W` per key (say, 10 calls per second to one
//! API), across the engine.
//!
//! Invariants:
//! - The guarantee, per key: in any interval `[s, s + W)` of the registry's clock, at most `N`
//!   acquisitions succeed. With a burst `b < N`, also at most `b` in any interval of length
//!   `W_b = ceil(W * b / N)` (so `b = 1` spaces starts `W / N` apart).
//! - The limiter is an exact sliding log. Per key, it keeps the times of the grants that can
//!   still matter (younger than `W`, and reserved ones in the future), sorted. A grant at `t` is
//!   allowed iff fewer than `N` logged grants lie in `(t - W, t]` (and fewer than `b` in
//!   `(t - W_b, t]`). With no reservation waiting, a request is refused only if granting it
//!   would break the guarantee.
//! - Grants are first come, first served: each request gets the earliest time that keeps the
//!   guarantee and is not earlier than any grant before it.
//!   1. [`RateLimits::try_acquire`] succeeds if that time is now, else says how long to wait.
//!      It never jumps ahead of a waiting [`RateLimits::acquire`].
//!   2. [`RateLimits::acquire`] reserves that time when called and returns a [`Reservation`],
//!      a future that sleeps on the clock until then. Dropping it before it completes gives
//!      the slot back (later reservations keep their times).
//! - A key that has no limit is not limited: its requests always succeed at once. Validate the
//!   keys that tasks name with [`RateLimits::limit`] when they are registered, to catch typos.
//!
//! Costs: `try_acquire` takes the registry's read lock, hashes the key, takes the key's mutex
//! (held for a clock read and a few comparisons), and allocates nothing once the key's log has
//! grown to `N` entries. Memory: 8 bytes per logged grant, at most `N` plus the reservations
//! waiting, per key.

use crate::clock::{Clock, Sleep, SystemClock, Timestamp};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

/// A limit: at most `max` starts in any window of length `window`, and at most `burst` in a
/// proportionally shorter one (see the module's invariants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    max: u32,
    window: Duration,
    burst: u32,
}

impl RateLimit {
    /// At most `max` (at least 1) starts in any window of length `window` (at least 1 ns).
    pub fn new(max: u32, window: Duration) -> Self {
        let max = max.max(1);
        RateLimit {
            max,
            window: window.max(Duration::from_nanos(1)),
            burst: max,
        }
    }

    /// At most `max` starts in any second.
    pub fn per_second(max: u32) -> Self {
        Self::new(max, Duration::from_secs(1))
    }

    /// At most `max` starts in any minute.
    pub fn per_minute(max: u32) -> Self {
        Self::new(max, Duration::from_secs(60))
    }

    /// Also at most `burst` (clamped to `1..=max`) starts in any window of length
    /// `ceil(window * burst / max)`: spreads the starts instead of letting `max` go at once.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst.clamp(1, self.max);
        self
    }

    /// Starts allowed per window.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Starts allowed at once (in the burst window).
    pub fn burst_size(&self) -> u32 {
        self.burst
    }

    /// The window in which at most [`burst_size`](Self::burst_size) starts are allowed:
    /// `ceil(window * burst / max)`, `window` itself without a burst.
    pub fn burst_window(&self) -> Duration {
        let nanos = self.window.as_nanos() * u128::from(self.burst);
        let nanos = nanos.div_ceil(u128::from(self.max));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A rate limit refused a start: the key's slots in the current window are taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit `{key}` reached: retry after {retry_after:?}")]
#[non_exhaustive]
pub struct RateLimited {
    /// The limit's key.
    pub key: Arc<str>,
    /// How long until a start would be allowed, if nobody else asks first.
    pub retry_after: Duration,
}

impl RateLimited {
    /// The limit's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How long until a start would be allowed, if nobody else asks first.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

/// Named rate limits, shared by the engine (by reference or in an `Arc`).
///
/// ```
/// use nerv::{MockClock, RateLimit, RateLimits};
/// use std::time::Duration;
///
/// let clock = MockClock::new();
/// let limits = RateLimits::with_clock(clock.clone()).with_limit("api", RateLimit::per_second(2));
/// assert!(limits.try_acquire("api").is_ok());
/// assert!(limits.try_acquire("api").is_ok());
/// let err = limits.try_acquire("api").unwrap_err();
/// assert_eq!(err.retry_after, Duration::from_secs(1));
/// assert!(limits.try_acquire("other").is_ok()); // no limit
/// clock.advance(Duration::from_secs(1));
/// assert!(limits.try_acquire("api").is_ok());
/// ```
pub struct RateLimits {
    clock: Arc<dyn Clock>,
    limiters: RwLock<HashMap<Arc<str>, Arc<Limiter>>>,
}

struct Limiter {
    key: Arc<str>,
    state: Mutex<LimiterState>,
}

struct LimiterState {
    limit: RateLimit,
    burst_window: Duration,
    /// Grant times, sorted; only those that can still matter (see `prune`).
    log: VecDeque<Timestamp>,
}

impl LimiterState {
    fn new(limit: RateLimit) -> Self {
        LimiterState {
            limit,
            burst_window: limit.burst_window(),
            log: VecDeque::with_capacity((limit.max as usize).min(1024)),
        }
    }

    /// Forgets grants that no request at `now` or later can see: those at or before
    /// `now - W`.
    fn prune(&mut self, now: Timestamp) {
        if let Some(cut) = now.checked_sub(self.limit.window) {
            while self.log.front().is_some_and(|&e| e <= cut) {
                self.log.pop_front();
            }
        }
    }

    /// The earliest time at or after `now` and after every logged grant at which one more
    /// grant keeps the guarantee. Since it is the latest grant, only the windows ending at it
    /// matter: their grants are a suffix of the log.
    fn earliest(&self, now: Timestamp) -> Timestamp {
        let log = &self.log;
        let mut t = now.max(log.back().copied().unwrap_or(Timestamp::ZERO));
        let mut fits = |k: u32, window: Duration| {
            let k = k as usize;
            if log.len() >= k {
                t = t.max(log[log.len() - k].saturating_add(window));
            }
        };
        fits(self.limit.max, self.limit.window);
        if self.limit.burst < self.limit.max {
            fits(self.limit.burst, self.burst_window);
        }
        t
    }
}

impl Limiter {
    fn lock(&self) -> MutexGuard<'_, LimiterState> {
        // Every critical section is a few arithmetic steps and a push or pop: the state is
        // consistent even after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs the earliest grant; returns (its time, now).
    fn reserve(&self, clock: &dyn Clock) -> (Timestamp, Timestamp) {
        let mut st = self.lock();
        // Read under the lock, so that grants are logged in clock order.
        let now = clock.now();
        st.prune(now);
        let at = st.earliest(now);
        st.log.push_back(at);
        (at, now)
    }

    fn try_acquire(&self, clock: &dyn Clock) -> Result<(), Duration> {
        let mut st = self.lock();
        let now = clock.now();
        st.prune(now);
        let at = st.earliest(now);
        if at <= now {
            st.log.push_back(now);
            Ok(())
        } else {
            Err(at.saturating_duration_since(now))
        }
    }

    /// Takes back a reservation that was never granted.
    fn cancel(&self, at: Timestamp) {
        let mut st = self.lock();
        // Grants with equal times are interchangeable; if none is left, `at` was pruned and
        // matters no more.
        if let Some(i) = st.log.iter().rposition(|&e| e == at) {
            st.log.remove(i);
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits::new()
    }
}

impl fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimits")
            .field("limits", &self.limits())
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    /// An empty registry on the real clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock::new())
    }

    /// An empty registry on `clock` (a [`MockClock`](crate::MockClock) in tests).
    pub fn with_clock(clock: impl Into<Arc<dyn Clock>>) -> Self {
        RateLimits {
            clock: clock.into(),
            limiters: RwLock::new(HashMap::new()),
        }
    }

    /// Adds (or replaces) the limit of `key`: builder style.
    pub fn with_limit(self, key: &str, limit: RateLimit) -> Self {
        self.set_limit(key, limit);
        self
    }

    /// Adds the limit of `key`, or replaces it: the new limit applies from the next request,
    /// against the grants already logged.
    pub fn set_limit(&self, key: &str, limit: RateLimit) {
        let mut map = self
            .limiters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = map.get(key) {
            let mut st = l.lock();
            st.limit = limit;
            st.burst_window = limit.burst_window();
            return;
        }
        let key: Arc<str> = key.into();
        let limiter = Limiter {
            key: Arc::clone(&key),
            state: Mutex::new(LimiterState::new(limit)),
        };
        map.insert(key, Arc::new(limiter));
    }

    /// Removes the limit of `key` (its requests are no longer limited; reservations already
    /// made keep their times).
    pub fn remove_limit(&self, key: &str) -> Option<RateLimit> {
        let mut map = self
            .limiters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.remove(key).map(|l| l.lock().limit)
    }

    /// The limit of `key`, if it has one.
    pub fn limit(&self, key: &str) -> Option<RateLimit> {
        self.read().get(key).map(|l| l.lock().limit)
    }

    /// Every key and its limit, sorted by key.
    pub fn limits(&self) -> Vec<(Arc<str>, RateLimit)> {
        let mut out: Vec<_> = self
            .read()
            .iter()
            .map(|(k, l)| (Arc::clone(k), l.lock().limit))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The decision: may a call of `key` start now? `Ok` counts the start; `Err` says how long
    /// until one would be allowed. Never waits; never jumps ahead of waiting reservations.
    pub fn try_acquire(&self, key: &str) -> Result<(), RateLimited> {
        let map = self.read();
        let Some(l) = map.get(key) else {
            return Ok(());
        };
        l.try_acquire(&*self.clock)
            .map_err(|retry_after| RateLimited {
                key: Arc::clone(&l.key),
                retry_after,
            })
    }

    /// Reserves the earliest allowed start of `key` now, and returns a future that completes
    /// at that time (at once if it is now, or if `key` has no limit). Await it to wait; drop it
    /// to give the slot back. The wait uses the registry's clock, so a
    /// [`MockClock`](crate::MockClock) test never sleeps.
    pub fn acquire(&self, key: &str) -> Reservation {
        let limiter = self.read().get(key).cloned();
        let Some(limiter) = limiter else {
            return Reservation {
                pending: None,
                at: None,
            };
        };
        let (at, now) = limiter.reserve(&*self.clock);
        if at <= now {
            return Reservation {
                pending: None,
                at: Some(at),
            };
        }
        Reservation {
            pending: Some(Pending {
                sleep: self.clock.sleep_until(at),
                limiter,
                at,
            }),
            at: Some(at),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Arc<Limiter>>> {
        self.limiters.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A start reserved by [`RateLimits::acquire`]: a future that completes at the reserved time.
/// Dropping it before then gives the slot back.
#[must_use = "a reservation does nothing unless awaited; dropping it gives the slot back"]
pub struct Reservation {
    /// Set while the reserved time is ahead and the future has not completed.
    pending: Option<Pending>,
    at: Option<Timestamp>,
}

struct Pending {
    sleep: Sleep,
    limiter: Arc<Limiter>,
    at: Timestamp,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Still waiting: the start never happened, give the slot back.
        if let Some(p) = &self.pending {
            p.limiter.cancel(p.at);
        }
    }
}

impl Reservation {
    /// The reserved start time on the registry's clock (`None` if the key has no limit).
    pub fn at(&self) -> Option<Timestamp> {
        self.at
    }

    /// True once the start is granted: at once by `acquire`, or when the future completed.
    pub fn is_granted(&self) -> bool {
        self.pending.is_none()
    }
}

impl Future for Reservation {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(p) = self.pending.as_mut() else {
            return Poll::Ready(());
        };
        if Pin::new(&mut p.sleep).poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Granted: the slot is kept (no cancel on drop).
        self.pending = None;
        Poll::Ready(())
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("at", &self.at)
            .field("granted", &self.is_granted())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MockClock;
    use std::task::{Wake, Waker};

    struct Noop;

    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn poll(r: &mut Reservation) -> Poll<()> {
        let waker = Waker::from(Arc::new(Noop));
        Pin::new(r).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn burst_window_rounds_up() {
        assert_eq!(RateLimit::per_second(10).burst_window(), ms(1000));
        assert_eq!(RateLimit::per_second(10).burst(1).burst_window(), ms(100));
        let odd = RateLimit::new(3, Duration::from_nanos(10)).burst(1);
        assert_eq!(odd.burst_window(), Duration::from_nanos(4));
        assert_eq!(RateLimit::new(0, Duration::ZERO).max(), 1);
        assert_eq!(RateLimit::per_second(4).burst(9).burst_size(), 4);
    }

    #[test]
    fn burst_spreads_starts() {
        let clock = MockClock::new();
        let l = RateLimits::with_clock(clock.clone())
            .with_limit("k", RateLimit::per_second(10).burst(2));
        assert!(l.try_acquire("k").is_ok());
        assert!(l.try_acquire("k").is_ok());
        // 2 per 200 ms.
        assert_eq!(l.try_acquire("k").unwrap_err().retry_after, ms(200));
        clock.advance(ms(200));
        assert!(l.try_acquire("k").is_ok());
    }

    #[test]
    fn try_acquire_never_jumps_the_queue_and_dropped_reservations_give_back() {
        let clock = MockClock::new();
        let l = RateLimits::with_clock(clock.clone()).with_limit("k", RateLimit::new(1, ms(100)));
        let mut first = l.acquire("k");
        assert!(first.is_granted());
        assert!(poll(&mut first).is_ready());
        let mut second = l.acquire("k");
        assert_eq!(second.at(), Some(Timestamp::ZERO + ms(100)));
        let third = l.acquire("k");
        assert_eq!(third.at(), Some(Timestamp::ZERO + ms(200)));
        assert!(poll(&mut second).is_pending());
        clock.advance(ms(100));
        // `second`'s slot is due but not yet taken: a try must not steal it.
        assert_eq!(l.try_acquire("k").unwrap_err().retry_after, ms(200));
        assert!(poll(&mut second).is_ready());
        drop(third); // gives back 200 ms
        assert_eq!(l.try_acquire("k").unwrap_err().retry_after, ms(100));
        clock.advance(ms(100));
        assert!(l.try_acquire("k").is_ok());
    }

    #[test]
    fn a_newcomer_never_gets_a_slot_before_an_earlier_reservation() {
        let clock = MockClock::new();
        let l = RateLimits::with_clock(clock).with_limit("k", RateLimit::new(2, ms(100)));
        let rs: Vec<_> = (0..5).map(|_| l.acquire("k")).collect();
        let at: Vec<_> = rs.iter().map(|r| r.at().unwrap().as_duration()).collect();
        assert_eq!(at, [ms(0), ms(0), ms(100), ms(100), ms(200)]);
        let mut rs = rs.into_iter();
        let kept: Vec<_> = [rs.next(), rs.next(), rs.nth(2)]
            .into_iter()
            .flatten()
            .collect();
        drop(rs); // the two at 100 ms: a hole before the one at 200 ms
        let newcomer = l.acquire("k");
        assert_eq!(newcomer.at().unwrap().as_duration(), ms(200));
        assert!(l.lock_log_is_sorted("k"));
        drop(kept);
    }

    impl RateLimits {
        fn lock_log_is_sorted(&self, key: &str) -> bool {
            let l = Arc::clone(self.read().get(key).unwrap());
            let st = l.lock();
            st.log
                .iter()
                .zip(st.log.iter().skip(1))
                .all(|(a, b)| a <= b)
        }
    }

    #[test]
    fn a_due_but_unpolled_reservation_dropped_is_not_counted() {
        let clock = MockClock::new();
        let l = RateLimits::with_clock(clock.clone()).with_limit("k", RateLimit::new(1, ms(100)));
        l.try_acquire("k").unwrap();
        let r = l.acquire("k");
        clock.advance(ms(150));
        drop(r);
        assert!(l.try_acquire("k").is_ok());
    }

    #[test]
    fn set_limit_keeps_history_and_remove_unlimits() {
        let clock = MockClock::new();
        let l = RateLimits::with_clock(clock.clone()).with_limit("k", RateLimit::per_second(5));
        for _ in 0..3 {
            l.try_acquire("k").unwrap();
        }
        l.set_limit("k", RateLimit::per_second(3));
        assert!(l.try_acquire("k").is_err());
        assert_eq!(l.limit("k"), Some(RateLimit::per_second(3)));
        assert_eq!(l.limits().len(), 1);
        assert_eq!(l.remove_limit("k"), Some(RateLimit::per_second(3)));
        assert!(l.try_acquire("k").is_ok());
        assert!(l.limit("k").is_none());
        let mut r = l.acquire("k");
        assert_eq!(r.at(), None);
        assert!(poll(&mut r).is_ready());
    }

    #[test]
    fn the_log_stays_bounded_by_the_limit() {
        let clock = MockClock::new();
        let l = RateLimits::with_clock(clock.clone()).with_limit("k", RateLimit::new(4, ms(10)));
        for _ in 0..1000 {
            let _ = l.try_acquire("k");
            clock.advance(ms(1));
        }
        let limiter = Arc::clone(l.read().get("k").unwrap());
        let st = limiter.lock();
        assert!(st.log.len() <= 4);
        assert!(st.log.capacity() <= 8);
    }
}
