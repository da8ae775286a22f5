//! Memoization: a task's output cached by the task's identity, its inputs and a version, with
//! a time to live (the seed's "Caching").
//!
//! Invariants:
//! - A key is the bytes of `(task id, version, inputs)` serialized with MessagePack: equal
//!   inputs give equal keys in every process and on every machine (no `Hash` of addresses or
//!   of a per-process hasher), so a durable store can keep entries across restarts.
//! - Values are stored serialized with MessagePack (`rmp-serde`): compact like postcard or
//!   bincode, but self-describing, so dynamic values (JSON from workflow files and
//!   `TaskDef`s) round-trip too. A store holds bytes and needs no knowledge of types; an
//!   entry whose bytes do not deserialize into the task's type is a miss.
//! - An entry is returned only before its expiry; expired entries are dropped when met.
//!
//! Lookup, in a memoized task's attempt:
//! 1. build the key; `get` it; a hit deserializes the value: the task completes without
//!    running its work (a `MemoHit` event);
//! 2. a miss (a `MemoMiss` event) runs the work; its output is serialized and `put` with the
//!    task's TTL, then stored as the task's output as usual.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// How a task is memoized: a version (change it when the task's code changes, to invalidate
/// what earlier code computed) and a time to live (`None`: forever).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memo {
    pub(crate) version: String,
    pub(crate) ttl: Option<Duration>,
}

impl Memo {
    /// Memoized for as long as the store keeps entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries expire `ttl` after they were stored.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The task's code version, part of the key.
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = v.into();
        self
    }
}

/// What a store knows of one entry (for listings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoEntry {
    /// The key's bytes.
    pub key: Vec<u8>,
    /// The task's id.
    pub task: String,
    /// The value's size in bytes.
    pub size: usize,
    /// When it was stored.
    pub created: SystemTime,
    /// When it was last returned (or stored).
    pub last_used: SystemTime,
    /// When it expires, if ever.
    pub expires: Option<SystemTime>,
}

/// Where memoized outputs live. The engine's default is [`InMemoryMemo`]; the durable stores
/// (SQLite, PostgreSQL) implement the same trait. Implementations are shared by all workers:
/// they must be cheap to call from many threads.
pub trait MemoStore: Send + Sync + fmt::Debug {
    /// The value stored under `key`, if any and not expired at `now` (updates its last use).
    fn get(&self, key: &[u8], now: SystemTime) -> Option<Vec<u8>>;
    /// Stores `value` under `key` for `task`, expiring at `expires`.
    fn put(
        &self,
        key: &[u8],
        task: &str,
        value: Vec<u8>,
        now: SystemTime,
        expires: Option<SystemTime>,
    );
    /// Every entry not expired at `now`.
    fn entries(&self, now: SystemTime) -> Vec<MemoEntry>;
    /// Removes the entry under `key`; returns whether there was one.
    fn remove(&self, key: &[u8]) -> bool;
    /// Removes every entry of `task`; returns how many.
    fn remove_task(&self, task: &str) -> usize;
    /// Removes everything.
    fn clear(&self);
}

struct Stored {
    task: String,
    value: Vec<u8>,
    created: SystemTime,
    last_used: SystemTime,
    expires: Option<SystemTime>,
}

impl Stored {
    fn live(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// A memo store in memory: lives as long as the executor. Bounded by `capacity` entries (the
/// least recently used go first).
pub struct InMemoryMemo {
    map: Mutex<HashMap<Vec<u8>, Stored>>,
    capacity: usize,
}

impl fmt::Debug for InMemoryMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryMemo")
            .field("entries", &self.lock().len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Default for InMemoryMemo {
    fn default() -> Self {
        Self::with_capacity(100_000)
    }
}

impl InMemoryMemo {
    /// A store of at most `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        InMemoryMemo {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Stored>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MemoStore for InMemoryMemo {
    fn get(&self, key: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        let mut m = self.lock();
        match m.get_mut(key) {
            Some(s) if s.live(now) => {
                s.last_used = now;
                Some(s.value.clone())
            }
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(
        &self,
        key: &[u8],
        task: &str,
        value: Vec<u8>,
        now: SystemTime,
        expires: Option<SystemTime>,
    ) {
        let mut m = self.lock();
        if m.len() >= self.capacity && !m.contains_key(key) {
            m.retain(|_, s| s.live(now));
            if m.len() >= self.capacity {
                if let Some(oldest) = m
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(k, _)| k.clone())
                {
                    m.remove(&oldest);
                }
            }
        }
        m.insert(
            key.to_vec(),
            Stored {
                task: task.to_string(),
                value,
                created: now,
                last_used: now,
                expires,
            },
        );
    }

    fn entries(&self, now: SystemTime) -> Vec<MemoEntry> {
        let mut v: Vec<MemoEntry> = self
            .lock()
            .iter()
            .filter(|(_, s)| s.live(now))
            .map(|(k, s)| MemoEntry {
                key: k.clone(),
                task: s.task.clone(),
                size: s.value.len(),
                created: s.created,
                last_used: s.last_used,
                expires: s.expires,
            })
            .collect();
        v.sort_by(|a, b| a.created.cmp(&b.created).then(a.key.cmp(&b.key)));
        v
    }

    fn remove(&self, key: &[u8]) -> bool {
        self.lock().remove(key).is_some()
    }

    fn remove_task(&self, task: &str) -> usize {
        let mut m = self.lock();
        let before = m.len();
        m.retain(|_, s| s.task != task);
        before - m.len()
    }

    fn clear(&self) {
        self.lock().clear();
    }
}

/// The key of a memoized task's attempt: its id, its memo version and its inputs.
pub(crate) fn key<R: Serialize>(task: &str, version: &str, inputs: &R) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec(&(task, version, inputs)).map_err(|e| e.to_string())
}

/// Serializes an output for the store.
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec(v).map_err(|e| e.to_string())
}

/// Reads an output back from the store.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    rmp_serde::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn keys_depend_on_task_version_and_inputs() {
        let a = key("t", "1", &(&1u32, &"x")).unwrap();
        assert_eq!(a, key("t", "1", &(&1u32, &"x")).unwrap());
        assert_ne!(a, key("t", "2", &(&1u32, &"x")).unwrap());
        assert_ne!(a, key("u", "1", &(&1u32, &"x")).unwrap());
        assert_ne!(a, key("t", "1", &(&2u32, &"x")).unwrap());
    }

    #[test]
    fn ttl_listing_and_removal() {
        let s = InMemoryMemo::default();
        s.put(b"k1", "a", vec![1, 2], t(10), Some(t(20)));
        s.put(b"k2", "b", vec![3], t(11), None);
        s.put(b"k3", "b", vec![4], t(12), None);
        assert_eq!(s.get(b"k1", t(15)), Some(vec![1, 2]));
        assert_eq!(s.get(b"k1", t(20)), None);
        let e = s.entries(t(21));
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].task.as_str(), e[0].size), ("b", 1));
        assert_eq!(s.remove_task("b"), 2);
        assert!(s.entries(t(21)).is_empty());
        s.put(b"k4", "c", vec![], t(30), None);
        assert!(s.remove(b"k4"));
        assert!(!s.remove(b"k4"));
    }

    #[test]
    fn capacity_evicts_the_least_recently_used() {
        let s = InMemoryMemo::with_capacity(2);
        s.put(b"a", "t", vec![1], t(1), None);
        s.put(b"b", "t", vec![2], t(2), None);
        assert!(s.get(b"a", t(3)).is_some());
        s.put(b"c", "t", vec![3], t(4), None);
        assert!(s.get(b"b", t(5)).is_none());
        assert!(s.get(b"a", t(5)).is_some());
        assert!(s.get(b"c", t(5)).is_some());
    }
}
