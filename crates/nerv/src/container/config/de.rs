//! The merged configuration tree, and a serde deserializer over it that knows each value's
//! key and origin, so that errors name them.
//!
//! Every `deserialize_*` method that fails stamps the error with its node's key, value and
//! origin unless a deeper node did already (`De::locate`); a missing field is stamped by its
//! table, and `missing_field` records the field's name, so the key is `table.field`.
//! Environment values are strings parsed as the type the target asks for.

use super::ConfigOrigin;
use serde::de::{
    self, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess, Unexpected,
    VariantAccess, Visitor,
};
use std::collections::BTreeMap;
use std::fmt;

/// A node of the merged configuration.
pub(super) enum Node {
    /// A table merged from several sources.
    Table(BTreeMap<String, Node>),
    /// A value (not a table) from the defaults or a file.
    Value(toml::Value, ConfigOrigin),
    /// A raw environment value and its variable's name.
    Env { raw: String, var: String },
}

/// Merges `values` into `table`: tables key by key, anything else replaced.
pub(super) fn merge(
    table: &mut BTreeMap<String, Node>,
    values: toml::Table,
    origin: &ConfigOrigin,
) {
    for (key, value) in values {
        match value {
            toml::Value::Table(t) => merge(subtable(table, key), t, origin),
            v => {
                table.insert(key, Node::Value(v, origin.clone()));
            }
        }
    }
}

/// The table at `key`, replacing whatever else was there.
fn subtable(table: &mut BTreeMap<String, Node>, key: String) -> &mut BTreeMap<String, Node> {
    let node = table
        .entry(key)
        .or_insert_with(|| Node::Table(BTreeMap::new()));
    if !matches!(node, Node::Table(_)) {
        *node = Node::Table(BTreeMap::new());
    }
    match node {
        Node::Table(t) => t,
        _ => unreachable!("the node was just made a table"),
    }
}

/// Sets the key `path` (non-empty) to an environment value.
pub(super) fn insert_env(
    root: &mut BTreeMap<String, Node>,
    path: &[String],
    raw: String,
    var: String,
) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut table = root;
    for p in parents {
        table = subtable(table, p.clone());
    }
    table.insert(last.clone(), Node::Env { raw, var });
}

/// `db.port`, `servers[1].host`.
pub(super) fn join(path: &[String]) -> String {
    let mut key = String::new();
    for segment in path {
        if !key.is_empty() && !segment.starts_with('[') {
            key.push('.');
        }
        key.push_str(segment);
    }
    key
}

/// A deserialization error and where it happened.
#[derive(Debug)]
pub(super) struct DeError {
    pub(super) message: String,
    /// The field that was missing (its table is `at`).
    pub(super) missing: Option<String>,
    /// Boxed: errors are rare, and a small `Result` keeps the deserializer cheap.
    pub(super) at: Option<Box<At>>,
}

/// Where an error happened.
#[derive(Debug, Default)]
pub(super) struct At {
    pub(super) path: Vec<String>,
    pub(super) value: Option<String>,
    pub(super) origin: Option<ConfigOrigin>,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            missing: None,
            at: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            message: format!("missing field `{field}`"),
            missing: Some(field.to_string()),
            at: None,
        }
    }
}

/// What a deserializer reads.
#[derive(Clone, Copy)]
enum Item<'a> {
    Table(&'a BTreeMap<String, Node>),
    Value(&'a toml::Value, &'a ConfigOrigin),
    Env(&'a str, &'a str),
}

impl<'a> Item<'a> {
    fn of(node: &'a Node) -> Self {
        match node {
            Node::Table(t) => Item::Table(t),
            Node::Value(v, origin) => Item::Value(v, origin),
            Node::Env { raw, var } => Item::Env(raw, var),
        }
    }

    /// The value as written, shortened.
    fn render(&self) -> Option<String> {
        let s = match self {
            Item::Table(_) => return None,
            Item::Value(v, _) => v.to_string(),
            Item::Env(raw, _) => format!("{raw:?}"),
        };
        const MAX: usize = 80;
        Some(match s.char_indices().nth(MAX) {
            Some((i, _)) => format!("{}…", &s[..i]),
            None => s,
        })
    }

    fn origin(&self) -> Option<ConfigOrigin> {
        match self {
            Item::Table(_) => None,
            Item::Value(_, origin) => Some((*origin).clone()),
            Item::Env(_, var) => Some(ConfigOrigin::Env(var.to_string())),
        }
    }

    fn unexpected(&self) -> Unexpected<'a> {
        match *self {
            Item::Table(_) => Unexpected::Map,
            Item::Env(raw, _) => Unexpected::Str(raw),
            Item::Value(v, _) => match v {
                toml::Value::String(s) => Unexpected::Str(s),
                toml::Value::Integer(i) => Unexpected::Signed(*i),
                toml::Value::Float(f) => Unexpected::Float(*f),
                toml::Value::Boolean(b) => Unexpected::Bool(*b),
                toml::Value::Datetime(_) => Unexpected::Other("a datetime"),
                toml::Value::Array(_) => Unexpected::Seq,
                toml::Value::Table(_) => Unexpected::Map,
            },
        }
    }
}

/// An environment value read as a TOML literal (`8`, `true`, `[1, 2]`, `{ a = 1 }`,
/// `"quoted"`), if it is one.
fn literal(raw: &str) -> Option<toml::Value> {
    let mut table: toml::Table = toml::from_str(&format!("v = {raw}")).ok()?;
    table.remove("v")
}

fn str_de(s: &str) -> de::value::StrDeserializer<'_, DeError> {
    s.into_deserializer()
}

/// Deserializes one node, knowing its key.
pub(super) struct De<'a> {
    item: Item<'a>,
    path: Vec<String>,
}

impl<'a> De<'a> {
    pub(super) fn root(table: &'a BTreeMap<String, Node>) -> Self {
        De {
            item: Item::Table(table),
            path: Vec::new(),
        }
    }

    fn child(&self, key: String, item: Item<'a>) -> De<'a> {
        let mut path = self.path.clone();
        path.push(key);
        De { item, path }
    }

    /// Stamps `e` with this node's key, value and origin, unless a deeper node did.
    fn locate(&self, mut e: DeError) -> DeError {
        if e.at.is_none() {
            e.at = Some(Box::new(At {
                path: self.path.clone(),
                value: self.item.render(),
                origin: self.item.origin(),
            }));
        }
        e
    }

    /// Calls `f` on a deserializer of `value`, the literal of the environment variable `var`.
    fn on_literal<R>(&self, value: &toml::Value, var: &str, f: impl FnOnce(De<'_>) -> R) -> R {
        let origin = ConfigOrigin::Env(var.to_string());
        f(De {
            item: Item::Value(value, &origin),
            path: self.path.clone(),
        })
    }

    /// Deserializes by what the node holds.
    fn any<'de, V: Visitor<'de>>(&self, v: V) -> Result<V::Value, DeError> {
        match self.item {
            Item::Table(t) => v.visit_map(Map {
                parent: self,
                iter: t.iter().map(|(k, n)| (k.as_str(), Item::of(n))),
                pending: None,
            }),
            Item::Value(value, origin) => match value {
                toml::Value::String(s) => v.visit_str(s),
                toml::Value::Integer(i) => v.visit_i64(*i),
                toml::Value::Float(f) => v.visit_f64(*f),
                toml::Value::Boolean(b) => v.visit_bool(*b),
                toml::Value::Datetime(d) => v.visit_string(d.to_string()),
                toml::Value::Array(a) => v.visit_seq(Seq {
                    parent: self,
                    iter: a.iter().enumerate(),
                    origin,
                }),
                toml::Value::Table(t) => v.visit_map(Map {
                    parent: self,
                    iter: t
                        .iter()
                        .map(move |(k, x)| (k.as_str(), Item::Value(x, origin))),
                    pending: None,
                }),
            },
            Item::Env(raw, var) => match literal(raw) {
                Some(value) => self.on_literal(&value, var, |de| de.any(v)),
                None => v.visit_str(raw),
            },
        }
    }

    /// Deserializes a sequence, table or struct: an environment value must be a literal.
    fn structured<'de, V: Visitor<'de>>(&self, v: V) -> Result<V::Value, DeError> {
        match self.item {
            Item::Env(raw, var) => match literal(raw) {
                Some(value) => self.on_literal(&value, var, |de| de.any(v)),
                None => Err(de::Error::invalid_type(Unexpected::Str(raw), &v)),
            },
            _ => self.any(v),
        }
    }

    fn variant<'de, V: Visitor<'de>>(&self, v: V) -> Result<V::Value, DeError> {
        let one = |key: &'a str, item: Item<'a>| Enum {
            variant: key,
            value: self.child(key.to_string(), item),
        };
        match self.item {
            Item::Env(raw, var) => match literal(raw) {
                Some(value @ toml::Value::Table(_)) => {
                    self.on_literal(&value, var, |de| de.variant(v))
                }
                Some(toml::Value::String(s)) => v.visit_enum(str_de(&s)),
                _ => v.visit_enum(str_de(raw)),
            },
            Item::Value(toml::Value::String(s), _) => v.visit_enum(str_de(s)),
            Item::Value(toml::Value::Table(t), origin) if t.len() == 1 => match t.iter().next() {
                Some((k, x)) => v.visit_enum(one(k, Item::Value(x, origin))),
                None => Err(de::Error::invalid_type(Unexpected::Map, &v)),
            },
            Item::Table(t) if t.len() == 1 => match t.iter().next() {
                Some((k, n)) => v.visit_enum(one(k, Item::of(n))),
                None => Err(de::Error::invalid_type(Unexpected::Map, &v)),
            },
            _ => Err(de::Error::invalid_type(self.item.unexpected(), &v)),
        }
    }
}

/// Scalars: an environment value is parsed as the asked type, anything else deserialized
/// by what it holds (serde's visitors convert and range-check numbers).
macro_rules! scalars {
    ($($method:ident: $ty:ty => $visit:ident,)*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            let r = match self.item {
                Item::Env(raw, _) => match raw.trim().parse::<$ty>() {
                    Ok(x) => v.$visit(x),
                    Err(_) => Err(de::Error::invalid_value(Unexpected::Str(raw), &v)),
                },
                _ => self.any(v),
            };
            r.map_err(|e| self.locate(e))
        }
    )*};
}

/// Text: an environment value is taken as it is.
macro_rules! texts {
    ($($method:ident,)*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            let r = match self.item {
                Item::Env(raw, _) => v.visit_str(raw),
                _ => self.any(v),
            };
            r.map_err(|e| self.locate(e))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for De<'_> {
    type Error = DeError;

    scalars! {
        deserialize_bool: bool => visit_bool,
        deserialize_i8: i64 => visit_i64,
        deserialize_i16: i64 => visit_i64,
        deserialize_i32: i64 => visit_i64,
        deserialize_i64: i64 => visit_i64,
        deserialize_i128: i128 => visit_i128,
        deserialize_u8: u64 => visit_u64,
        deserialize_u16: u64 => visit_u64,
        deserialize_u32: u64 => visit_u64,
        deserialize_u64: u64 => visit_u64,
        deserialize_u128: u128 => visit_u128,
        deserialize_f32: f64 => visit_f64,
        deserialize_f64: f64 => visit_f64,
    }

    texts! {
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_identifier,
    }

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.any(v).map_err(|e| self.locate(e))
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.item {
            Item::Env("", _) => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match self.item {
            Item::Env(..) => v.visit_unit(),
            _ => self.any(v),
        };
        r.map_err(|e| self.locate(e))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.structured(v).map_err(|e| self.locate(e))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.structured(v).map_err(|e| self.locate(e))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        self.variant(v).map_err(|e| self.locate(e))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }
}

/// The entries of a table.
struct Map<'p, 'a, I> {
    parent: &'p De<'a>,
    iter: I,
    pending: Option<De<'a>>,
}

impl<'de, 'a, I> MapAccess<'de> for Map<'_, 'a, I>
where
    I: Iterator<Item = (&'a str, Item<'a>)>,
{
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, item)) = self.iter.next() else {
            return Ok(None);
        };
        let child = self.parent.child(key.to_string(), item);
        // An unknown field is reported here, at the child's key.
        let key = seed.deserialize(str_de(key)).map_err(|e| child.locate(e))?;
        self.pending = Some(child);
        Ok(Some(key))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.pending.take() {
            Some(child) => seed.deserialize(child),
            None => Err(de::Error::custom("a value was asked for before its key")),
        }
    }
}

/// The elements of an array.
struct Seq<'p, 'a, I> {
    parent: &'p De<'a>,
    iter: I,
    origin: &'a ConfigOrigin,
}

impl<'de, 'a, I> SeqAccess<'de> for Seq<'_, 'a, I>
where
    I: Iterator<Item = (usize, &'a toml::Value)>,
{
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.iter.next() {
            None => Ok(None),
            Some((i, v)) => {
                let child = self
                    .parent
                    .child(format!("[{i}]"), Item::Value(v, self.origin));
                seed.deserialize(child).map(Some)
            }
        }
    }
}

/// An enum variant written as a one-entry table `{ variant = value }`.
struct Enum<'a> {
    variant: &'a str,
    value: De<'a>,
}

impl<'de, 'a> EnumAccess<'de> for Enum<'a> {
    type Error = DeError;
    type Variant = De<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, De<'a>), DeError> {
        let variant = seed
            .deserialize(str_de(self.variant))
            .map_err(|e| self.value.locate(e))?;
        Ok((variant, self.value))
    }
}

impl<'de> VariantAccess<'de> for De<'_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(self, v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(self, v)
    }
}
