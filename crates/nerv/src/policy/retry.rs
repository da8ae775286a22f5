//! Retries with exponential back-off, jitter and a cap, and an optional predicate that says
//! which errors are worth retrying.

use crate::task::{ErrorKind, TaskError};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

type RetryIf = Arc<dyn Fn(&TaskError) -> bool + Send + Sync>;

/// How often and how patiently a failed task is tried again.
///
/// The delay before attempt `n + 1` (after `n` failed attempts) is
/// `min(max_backoff, initial_backoff * multiplier^(n-1))`, then scaled by a random factor in
/// `[1 - jitter, 1]` so that many tasks failing together do not retry in lock-step.
/// Cancellations are never retried.
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    multiplier: f64,
    max_backoff: Duration,
    jitter: f64,
    retry_if: Option<RetryIf>,
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("multiplier", &self.multiplier)
            .field("max_backoff", &self.max_backoff)
            .field("jitter", &self.jitter)
            .field("retry_if", &self.retry_if.is_some())
            .finish()
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::attempts(1)
    }
}

impl RetryPolicy {
    /// At most `max_attempts` attempts in all (1 = no retry), with a 100 ms initial back-off
    /// doubling up to 30 s, and 50% jitter.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(30),
            jitter: 0.5,
            retry_if: None,
        }
    }

    /// `retries` retries after the first attempt.
    pub fn retries(retries: u32) -> Self {
        Self::attempts(retries.saturating_add(1))
    }

    /// Sets the first back-off delay.
    pub fn backoff(mut self, initial: Duration) -> Self {
        self.initial_backoff = initial;
        self
    }

    /// Sets the growth factor of the back-off (at least 1).
    pub fn multiplier(mut self, m: f64) -> Self {
        self.multiplier = if m.is_finite() { m.max(1.0) } else { 1.0 };
        self
    }

    /// Caps the back-off delay.
    pub fn max_backoff(mut self, cap: Duration) -> Self {
        self.max_backoff = cap;
        self
    }

    /// Sets the jitter fraction (0 = none, 1 = anywhere between 0 and the delay).
    pub fn jitter(mut self, j: f64) -> Self {
        self.jitter = if j.is_finite() {
            j.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Retries only the errors for which `pred` returns true.
    pub fn retry_if(mut self, pred: impl Fn(&TaskError) -> bool + Send + Sync + 'static) -> Self {
        self.retry_if = Some(Arc::new(pred));
        self
    }

    /// Attempts allowed in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The back-off before the next attempt, before jitter, after `failed` failed attempts.
    pub fn base_delay(&self, failed: u32) -> Duration {
        let exp = failed.saturating_sub(1).min(64) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exp);
        let cap = self.max_backoff.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(cap) } else { cap })
    }

    /// The decision: after `failed` failed attempts ending in `err`, wait this long and try
    /// again, or (`None`) give up.
    pub fn next_delay(&self, failed: u32, err: &TaskError) -> Option<Duration> {
        if failed >= self.max_attempts || err.kind() == ErrorKind::Cancelled {
            return None;
        }
        if let Some(pred) = &self.retry_if {
            if !pred(err) {
                return None;
            }
        }
        let base = self.base_delay(failed);
        let factor = 1.0 - self.jitter * fastrand::f64();
        Some(base.mul_f64(factor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        let p = RetryPolicy::attempts(10)
            .backoff(Duration::from_millis(10))
            .max_backoff(Duration::from_millis(50))
            .jitter(0.5);
        assert_eq!(p.base_delay(1), Duration::from_millis(10));
        assert_eq!(p.base_delay(2), Duration::from_millis(20));
        assert_eq!(p.base_delay(3), Duration::from_millis(40));
        assert_eq!(p.base_delay(4), Duration::from_millis(50));
        let e = TaskError::msg("x");
        for _ in 0..100 {
            let d = p.next_delay(2, &e).unwrap();
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(20));
        }
        assert_eq!(p.next_delay(10, &e), None);
    }

    #[test]
    fn predicate_and_cancellation_stop_retries() {
        let p = RetryPolicy::attempts(5).retry_if(|e| e.is_timeout());
        assert!(p.next_delay(1, &TaskError::msg("no")).is_none());
        assert!(p
            .next_delay(1, &TaskError::timeout(Duration::ZERO))
            .is_some());
        assert!(RetryPolicy::attempts(5)
            .next_delay(1, &TaskError::cancelled())
            .is_none());
    }
}
