//! Execution policies. Each has the same anatomy: a configuration value and a decision method.
//! Retries live here; the circuit breaker, fallbacks, memoization and rate limits come with the
//! workflow manager.

pub mod circuit_breaker;
pub mod rate_limit;
pub mod retry;
