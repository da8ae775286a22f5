//! Typed configuration (the seed's `providers.Configuration`): a struct deserialized with
//! serde from defaults, TOML files and environment variables, registered in a container
//! like any shared provider.
//!
//! Loading, in order of precedence (each step overrides the keys it sets):
//! 1. the defaults (a value of the struct, serialized), then
//! 2. each TOML file, in the order given, then
//! 3. the environment variables with the chosen prefix: `PREFIX_DB__URL` sets `db.url`
//!    (`__` separates levels, a single `_` stays in the key, names are lowercased).
//!
//! Tables merge key by key; anything else is replaced whole. The merged tree remembers where
//! each value came from, and deserializing walks it with its keys (`de.rs`), so an error
//! names the key, the bad value and its origin (file, environment variable or defaults).

mod de;

use super::error::ResolveError;
use super::provider::{type_label, Meta, Overridable, Shared};
use super::{ContainerBuilder, Entry, Register, Resolver, Space};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::TypeId;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigOrigin {
    /// The defaults given to [`ConfigBuilder::defaults`].
    Defaults,
    /// A TOML file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigOrigin::Defaults => f.write_str("the defaults"),
            ConfigOrigin::File(path) => write!(f, "file {}", path.display()),
            ConfigOrigin::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// Why a configuration could not be loaded. Each variant names the file, the key, the value
/// and where it came from, as far as they apply.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A configuration file could not be read.
    #[error("cannot read config file {}: {source}", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file is not valid TOML.
    #[error("config file {}{} is not valid TOML: {message}", .file.display(), line_suffix(*.line))]
    Parse {
        /// The file.
        file: PathBuf,
        /// The line of the error (1-based), when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// An environment variable with the prefix holds something that is not UTF-8.
    #[error("environment variable {var} is not valid UTF-8")]
    NotUnicode {
        /// The variable's name.
        var: String,
    },
    /// The defaults could not be turned into TOML (they must serialize as a table).
    #[error("the configuration defaults cannot be written as TOML: {message}")]
    Defaults {
        /// Why.
        message: String,
    },
    /// A value does not fit the type of its key.
    #[error("{}", invalid_message(.key, .value.as_deref(), .origin.as_ref(), .message))]
    Invalid {
        /// The key, with dots (`db.port`, `servers[1].host`); empty for the whole.
        key: String,
        /// The bad value as written (strings quoted), when there is one.
        value: Option<String>,
        /// Where the value came from.
        origin: Option<ConfigOrigin>,
        /// What serde expected.
        message: String,
    },
    /// A key without a default was set nowhere.
    #[error("{}", missing_message(.key, .files, .env_var.as_deref()))]
    Missing {
        /// The key.
        key: String,
        /// The files that were consulted (those that exist and those that do not).
        files: Vec<PathBuf>,
        /// The environment variable that would set it, if a prefix was given.
        env_var: Option<String>,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

fn invalid_message(
    key: &str,
    value: Option<&str>,
    origin: Option<&ConfigOrigin>,
    message: &str,
) -> String {
    let mut s = match value {
        Some(v) => format!("invalid value {v}"),
        None => "invalid configuration".to_string(),
    };
    if !key.is_empty() {
        s.push_str(&format!(" for key `{key}`"));
    }
    if let Some(o) = origin {
        s.push_str(&format!(" from {o}"));
    }
    format!("{s}: {message}")
}

fn missing_message(key: &str, files: &[PathBuf], env_var: Option<&str>) -> String {
    let mut places: Vec<String> = files
        .iter()
        .map(|f| format!("in file {}", f.display()))
        .collect();
    places.extend(env_var.map(|v| format!("with environment variable {v}")));
    if places.is_empty() {
        format!("missing key `{key}` (it has no default)")
    } else {
        format!(
            "missing key `{key}` (it has no default): set it {}",
            places.join(" or ")
        )
    }
}

impl ConfigError {
    /// The key at fault, if the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } | ConfigError::Missing { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The file at fault: the one that could not be read or parsed, or the one the bad value
    /// came from.
    pub fn file(&self) -> Option<&Path> {
        match self {
            ConfigError::Read { file, .. } | ConfigError::Parse { file, .. } => Some(file),
            ConfigError::Invalid {
                origin: Some(ConfigOrigin::File(file)),
                ..
            } => Some(file),
            _ => None,
        }
    }

    /// The bad value as written, if the error is about one.
    pub fn value(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { value, .. } => value.as_deref(),
            _ => None,
        }
    }

    /// Where the bad value came from, if the error is about one.
    pub fn origin(&self) -> Option<&ConfigOrigin> {
        match self {
            ConfigError::Invalid { origin, .. } => origin.as_ref(),
            _ => None,
        }
    }

    /// Whether a required key was set nowhere.
    pub fn is_missing(&self) -> bool {
        matches!(self, ConfigError::Missing { .. })
    }

    /// Whether a value does not fit its key's type.
    pub fn is_invalid(&self) -> bool {
        matches!(self, ConfigError::Invalid { .. })
    }
}

/// The state behind a [`Config`] handle.
struct ConfigSlot<C> {
    meta: Meta,
    values: Overridable<Arc<C>>,
}

impl<C: Send + Sync + 'static> Shared<C> for ConfigSlot<C> {
    fn resolve(&self, _: &Resolver<'_>) -> Result<Arc<C>, ResolveError> {
        Ok(self.values.with_current(Arc::clone))
    }
}

/// A provider of a loaded configuration of type `C`, resolved by type like any shared
/// provider (`r.resolve::<AppConfig>()`) or read through the handle ([`Config::get`]).
///
/// Load one with [`Config::builder`] — environment variables override files, which override
/// the defaults; `PREFIX_DB__URL` sets the key `db.url` — or wrap a value with
/// [`Config::from_value`]. Tests replace it with [`Config::override_with`]. Errors name the
/// file, the key and the bad value ([`ConfigError`]).
///
/// ```
/// use nerv::Config;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Db { url: String, pool: u32 }
/// #[derive(Serialize, Deserialize)]
/// struct AppConfig { db: Db }
///
/// let defaults = AppConfig { db: Db { url: "sqlite::memory:".into(), pool: 4 } };
/// // Here with a prefix no variable has, and no file: the defaults win.
/// let config = Config::<AppConfig>::builder()
///     .defaults(&defaults)
///     .optional_file("/nonexistent/app.toml")
///     .env_prefix("DOCTEST_NO_SUCH_PREFIX")
///     .load()?;
/// assert_eq!(config.get().db.pool, 4);
/// # Ok::<(), nerv::ConfigError>(())
/// ```
pub struct Config<C> {
    slot: Arc<ConfigSlot<C>>,
}

impl<C: Send + Sync + 'static> Config<C> {
    /// A loader: add defaults, files and an environment prefix, then
    /// [`load`](ConfigBuilder::load).
    pub fn builder() -> ConfigBuilder<C> {
        ConfigBuilder {
            defaults: None,
            files: Vec::new(),
            env_prefix: None,
            config: PhantomData,
        }
    }

    /// A configuration that is already a value.
    pub fn from_value(value: C) -> Self {
        Config {
            slot: Arc::new(ConfigSlot {
                meta: Meta::new("config", type_label::<C>(None), None),
                values: Overridable::new(Arc::new(value)),
            }),
        }
    }

    /// The configuration (the override's, if there is one). Costs an atomic load and an
    /// `Arc` clone.
    pub fn get(&self) -> Arc<C> {
        self.slot.values.with_current(Arc::clone)
    }

    /// The same configuration under `name`, to register several of one type.
    pub fn named(self, name: impl Into<Arc<str>>) -> Self {
        let name: Arc<str> = name.into();
        Config {
            slot: Arc::new(ConfigSlot {
                meta: Meta::new("config", type_label::<C>(Some(&name)), Some(name.clone())),
                values: self.slot.values.copy(),
            }),
        }
    }

    /// The name this configuration is registered under, if any.
    pub fn name(&self) -> Option<&str> {
        self.slot.meta.name.as_deref()
    }

    /// Makes resolvers get `value` instead, from the next resolution on. Overrides stack.
    pub fn override_with(&self, value: C) {
        tracing::debug!(provider = %self.slot.meta.label, "overridden");
        self.slot.values.push(Arc::new(value));
    }

    /// Removes every override: the loaded configuration returns.
    pub fn reset_override(&self) {
        self.slot.values.clear();
    }

    /// Removes the last override only; returns whether there was one.
    pub fn reset_last_override(&self) -> bool {
        self.slot.values.pop()
    }

    /// Whether an override is in place.
    pub fn is_overridden(&self) -> bool {
        self.slot.values.is_overridden()
    }
}

impl<C> Clone for Config<C> {
    fn clone(&self) -> Self {
        Config {
            slot: self.slot.clone(),
        }
    }
}

impl<C> fmt::Debug for Config<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("provider", &self.slot.meta.label)
            .field("overridden", &self.slot.values.is_overridden())
            .finish()
    }
}

impl<C: Send + Sync + 'static> Register for Config<C> {
    fn register(&self, builder: &mut ContainerBuilder) {
        let provider: Arc<dyn Shared<C>> = self.slot.clone();
        builder.push(Entry {
            space: Space::Shared,
            type_id: TypeId::of::<C>(),
            name: self.slot.meta.name.clone(),
            label: self.slot.meta.label.clone(),
            kind: self.slot.meta.kind,
            identity: Arc::as_ptr(&self.slot) as usize,
            provider: Box::new(provider),
            handle: Box::new(self.clone()),
        });
    }
}

/// Loads a [`Config`]: the defaults, then each file in order, then the environment
/// variables with the prefix; each source overrides the keys it sets (environment > files >
/// defaults), tables merging key by key.
pub struct ConfigBuilder<C> {
    defaults: Option<Result<toml::Table, String>>,
    files: Vec<(PathBuf, bool)>,
    env_prefix: Option<String>,
    config: PhantomData<fn() -> C>,
}

impl<C> fmt::Debug for ConfigBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("defaults", &self.defaults.is_some())
            .field("files", &self.files)
            .field("env_prefix", &self.env_prefix)
            .finish()
    }
}

impl<C: Send + Sync + 'static> ConfigBuilder<C> {
    /// The values used for keys that no file and no environment variable sets.
    /// (Fields with `#[serde(default)]` work too, without this.)
    pub fn defaults(mut self, defaults: &C) -> Self
    where
        C: Serialize,
    {
        self.defaults = Some(match toml::Value::try_from(defaults) {
            Ok(toml::Value::Table(t)) => Ok(t),
            Ok(other) => Err(format!("they are a {}, not a table", other.type_str())),
            Err(e) => Err(e.to_string()),
        });
        self
    }

    /// A TOML file that must exist; later files override earlier ones.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push((path.into(), true));
        self
    }

    /// A TOML file read only if it exists.
    pub fn optional_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push((path.into(), false));
        self
    }

    /// Reads environment variables named `PREFIX_…`: `PREFIX_DB__URL=…` sets `db.url`.
    /// A value is parsed as the type its key asks for (`PREFIX_DB__POOL=8` for a number);
    /// sequences, tables and data-carrying enum variants are written as TOML literals
    /// (`[1, 2]`, `{ a = 1 }`); an empty value is `None` for an optional key.
    pub fn env_prefix(mut self, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.ends_with('_') {
            prefix.push('_');
        }
        self.env_prefix = Some(prefix);
        self
    }

    /// Loads and wraps the configuration in a provider.
    pub fn load(&self) -> Result<Config<C>, ConfigError>
    where
        C: DeserializeOwned,
    {
        self.load_value().map(Config::from_value)
    }

    /// Loads the configuration value.
    pub fn load_value(&self) -> Result<C, ConfigError>
    where
        C: DeserializeOwned,
    {
        let mut root = BTreeMap::new();
        if let Some(defaults) = &self.defaults {
            let table = defaults
                .clone()
                .map_err(|message| ConfigError::Defaults { message })?;
            de::merge(&mut root, table, &ConfigOrigin::Defaults);
        }
        for (file, required) in &self.files {
            let text = match std::fs::read_to_string(file) {
                Ok(text) => text,
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(ConfigError::Read {
                        file: file.clone(),
                        source,
                    })
                }
            };
            let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                file: file.clone(),
                line: e.span().map(|s| 1 + text[..s.start].matches('\n').count()),
                message: e.message().trim_end().replace('\n', "; "),
            })?;
            de::merge(&mut root, table, &ConfigOrigin::File(file.clone()));
        }
        if let Some(prefix) = &self.env_prefix {
            for (var, raw) in env_vars(prefix)? {
                let key: Vec<String> = var[prefix.len()..]
                    .split("__")
                    .map(str::to_lowercase)
                    .collect();
                if key.iter().all(|k| !k.is_empty()) {
                    de::insert_env(&mut root, &key, raw, var);
                }
            }
        }
        C::deserialize(de::De::root(&root)).map_err(|e| self.error(e))
    }

    fn error(&self, e: de::DeError) -> ConfigError {
        let at = e.at.map(|at| *at).unwrap_or_default();
        match e.missing {
            Some(field) => {
                let mut path = at.path;
                path.push(field);
                let key = de::join(&path);
                ConfigError::Missing {
                    env_var: self.env_prefix.as_ref().map(|p| env_var(p, &path)),
                    files: self.files.iter().map(|(f, _)| f.clone()).collect(),
                    key,
                }
            }
            None => ConfigError::Invalid {
                key: de::join(&at.path),
                value: at.value,
                origin: at.origin,
                message: e.message,
            },
        }
    }
}

/// The environment variable that sets the key `path`.
fn env_var(prefix: &str, path: &[String]) -> String {
    let key: Vec<String> = path.iter().map(|s| s.to_uppercase()).collect();
    format!("{prefix}{}", key.join("__"))
}

/// The environment variables starting with `prefix`, sorted by name.
fn env_vars(prefix: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(prefix) {
            continue;
        }
        let value = value.into_string().map_err(|_| ConfigError::NotUnicode {
            var: name.to_string(),
        })?;
        vars.push((name.to_string(), value));
    }
    vars.sort();
    Ok(vars)
}
