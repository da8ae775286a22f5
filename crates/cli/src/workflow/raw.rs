//! The file's shape as serde sees it: every key, with `deny_unknown_fields`, and values
//! checked while they are read (durations, priorities, `run`), so that the TOML or YAML
//! parser reports the line and column of a bad value itself.

use nerv::Priority;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub name: Option<String>,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub resources: BTreeMap<String, u64>,
    #[serde(default)]
    pub tasks: UniqueMap<RawTask>,
}

/// A map that rejects a key given twice (TOML parsers do; YAML ones keep the last).
#[derive(Debug)]
pub(crate) struct UniqueMap<T>(pub BTreeMap<String, T>);

impl<T> Default for UniqueMap<T> {
    fn default() -> Self {
        UniqueMap(BTreeMap::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for UniqueMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = UniqueMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of tasks")
            }
            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueMap<T>, A::Error> {
                let mut m = BTreeMap::new();
                while let Some(k) = map.next_key::<String>()? {
                    if m.contains_key(&k) {
                        return Err(de::Error::custom(format!("duplicate task `{k}`")));
                    }
                    let v = map.next_value()?;
                    m.insert(k, v);
                }
                Ok(UniqueMap(m))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// `[defaults]`: applies to every task that does not set the key itself (`env` is merged).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDefaults {
    pub priority: Option<RawPriority>,
    pub timeout: Option<RawDuration>,
    pub retries: Option<u32>,
    pub retry: Option<RawRetry>,
    pub env: Option<BTreeMap<String, Scalar>>,
    pub cwd: Option<String>,
    pub estimate: Option<RawDuration>,
}

/// `[tasks.NAME]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTask {
    pub run: Option<RawRun>,
    pub description: Option<String>,
    pub priority: Option<RawPriority>,
    pub timeout: Option<RawDuration>,
    pub retries: Option<u32>,
    pub retry: Option<RawRetry>,
    pub env: Option<BTreeMap<String, Scalar>>,
    pub cwd: Option<String>,
    pub uses: Option<BTreeMap<String, u64>>,
    pub needs: Option<Vec<String>>,
    pub for_each: Option<Vec<Scalar>>,
    pub estimate: Option<RawDuration>,
    pub cache: Option<RawCache>,
    pub inputs: Option<Vec<String>>,
}

/// `cache = true | false | { ttl = "1d" }`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RawCache {
    /// `cache = false`.
    Off,
    /// `cache = true` or a table: with an optional time to live.
    On { ttl: Option<RawDuration> },
}

impl<'de> Deserialize<'de> for RawCache {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            ttl: Option<RawDuration>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCache;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or a table such as { ttl = \"1d\" }")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawCache, E> {
                Ok(if v {
                    RawCache::On { ttl: None }
                } else {
                    RawCache::Off
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawCache, A::Error> {
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawCache::On { ttl: t.ttl })
            }
        }
        d.deserialize_any(V)
    }
}

/// `retry = { attempts = 3, backoff = "2s", max_backoff = "1m" }`.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub attempts: u32,
    pub backoff: Option<RawDuration>,
    pub max_backoff: Option<RawDuration>,
}

/// `run`: a string (through `sh -c`) or an array (the program and its arguments).
#[derive(Debug, Clone)]
pub(crate) enum RawRun {
    Shell(String),
    Argv(Vec<String>),
}

impl<'de> Deserialize<'de> for RawRun {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRun;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command string (run by `sh -c`) or an array of strings (a program and its arguments)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawRun, E> {
                Ok(RawRun::Shell(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawRun, A::Error> {
                let mut argv = Vec::new();
                while let Some(Scalar(s)) = seq.next_element::<Scalar>()? {
                    argv.push(s);
                }
                Ok(RawRun::Argv(argv))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration: `"30s"`, `"10m"`, `"1h 30m"`, `"250ms"`, or a number of seconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawDuration(pub Duration);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"10m\" or \"1h 30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                humantime::parse_duration(v.trim())
                    .map(RawDuration)
                    .map_err(|e| {
                        E::custom(format!(
                            "invalid duration {v:?} ({e}); write e.g. \"500ms\", \"30s\", \"10m\" or \"1h 30m\""
                        ))
                    })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
                Ok(RawDuration(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
                u64::try_from(v)
                    .map(|v| RawDuration(Duration::from_secs(v)))
                    .map_err(|_| E::custom(format!("invalid duration {v}: negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawDuration, E> {
                Duration::try_from_secs_f64(v)
                    .map(RawDuration)
                    .map_err(|_| E::custom(format!("invalid duration {v}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// `low | medium | high | critical`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawPriority(pub Priority);

impl<'de> Deserialize<'de> for RawPriority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<Priority>()
            .map(RawPriority)
            .map_err(de::Error::custom)
    }
}

/// A string, number or boolean, kept as text (`for_each` items, `env` values, arguments).
#[derive(Debug, Clone)]
pub(crate) struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}
