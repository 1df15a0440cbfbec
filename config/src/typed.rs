//! Fast path for plain manifests: YAML events straight into the `k8s-openapi` types.
//!
//! The general path ([`crate::yaml::documents`], then `T::deserialize(&Value)`) builds a
//! `serde_json::Value` for every document only to read it once: every mapping becomes a
//! `BTreeMap`, every key and string is allocated twice. Manifests are mostly made of block
//! and flow collections of untagged scalars under string keys, and for those this module
//! buffers one document's events and runs the type's `Deserialize` over them directly,
//! resolving every scalar exactly as [`crate::yaml`] does. At 10,000 Services that is most
//! of the difference between a cold load over and under the 2 s goal.
//!
//! It reads a file whole or not at all: [`documents`] returns `None` for anything it does
//! not reproduce exactly, and the caller reads that file the general way, which then also
//! reports every error. Given up on: tags, anchors, aliases, merge keys, keys that are not
//! plain text (null, numeric, collections), duplicate keys, non-finite floats, a document
//! root that is neither a mapping nor null, `List` kinds, a document that does not fit its
//! type, files near the YAML budget, and syntax errors. `config/tests/yaml_diff.rs` holds
//! the two paths to the same [`crate::ParsedFile`] for every input it generates.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::granit_parser::{Event, ScalarStyle};

use crate::yaml::{self, Untagged};

// Well inside the general path's budget (`yaml.rs`), so a file read here never exceeds it.
const MAX_BYTES: usize = 16 * 1024 * 1024;
const MAX_DOCUMENTS: usize = 1_000;
const MAX_NODES: usize = 200_000;
const MAX_DEPTH: usize = 48;
/// Keys compared one by one for duplicates; a bigger mapping takes the general path.
const MAX_KEYS: usize = 256;

/// One document read on the fast path.
#[derive(Debug)]
pub(crate) struct Doc {
    /// 1-based line of the document's root node.
    pub(crate) line: usize,
    pub(crate) object: Typed,
}

/// What a document holds.
#[derive(Debug)]
pub(crate) enum Typed {
    Service(Box<core::Service>),
    Slice(Box<discovery::EndpointSlice>),
    Endpoints(Box<core::Endpoints>),
    Pod(Box<core::Pod>),
    Namespace,
    /// A kind svcplane does not use: what its warning names.
    Other {
        api_version: String,
        kind: String,
        name: Option<String>,
        namespace: Option<String>,
    },
}

/// The documents of `text` that are not null, or `None`: read it the general way.
pub(crate) fn documents(text: &str) -> Option<Vec<Doc>> {
    if text.len() > MAX_BYTES {
        return None;
    }
    let mut buf = Buffer::default();
    let mut docs = Vec::new();
    let mut documents = 0;
    for item in yaml::parser(text) {
        let (event, span) = item.ok()?;
        match event {
            Event::StreamStart | Event::StreamEnd => {}
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > MAX_DOCUMENTS {
                    return None;
                }
                buf.events.clear();
            }
            Event::DocumentEnd => {
                if !buf.events.is_empty() {
                    docs.push(Doc {
                        line: buf.root_line,
                        object: typed(&buf.events)?,
                    });
                }
                buf.events.clear();
            }
            Event::Scalar(value, style, 0, None) => buf.scalar(value, style)?,
            Event::MappingStart(_, 0, None) => buf.start(true, yaml::line_of(&span))?,
            Event::SequenceStart(_, 0, None) => buf.start(false, yaml::line_of(&span))?,
            Event::MappingEnd | Event::SequenceEnd => buf.end()?,
            // Anchors, tags, aliases.
            _ => return None,
        }
    }
    Some(docs)
}

/// A buffered event.
#[derive(Debug)]
enum Ev<'a> {
    /// A mapping; `end` is the index of its `End`.
    Map {
        end: usize,
    },
    Seq {
        end: usize,
    },
    End,
    Key(Cow<'a, str>),
    Scalar(Cow<'a, str>, Untagged),
}

#[derive(Debug)]
struct Open {
    at: usize,
    map: bool,
    /// Where this mapping's keys start in `Buffer::keys`.
    keys: usize,
    /// A mapping whose next node is a key.
    want_key: bool,
}

/// One document's events, checked as they arrive.
#[derive(Debug, Default)]
struct Buffer<'a> {
    events: Vec<Ev<'a>>,
    open: Vec<Open>,
    /// Keys of the open mappings, innermost last.
    keys: Vec<Cow<'a, str>>,
    nodes: usize,
    root_line: usize,
}

impl<'a> Buffer<'a> {
    fn node(&mut self) -> Option<()> {
        self.nodes += 1;
        (self.nodes <= MAX_NODES).then_some(())
    }

    fn scalar(&mut self, value: Cow<'a, str>, style: ScalarStyle) -> Option<()> {
        self.node()?;
        let plain = style == ScalarStyle::Plain;
        let Some(top) = self.open.last_mut() else {
            // A null root is an empty document; any other scalar root is an error.
            return (yaml::untagged(&value, plain)? == Untagged::Null).then_some(());
        };
        if top.map && top.want_key {
            if plain && !yaml::is_text_key(&value) {
                return None;
            }
            let mine = &self.keys[top.keys..];
            if mine.len() >= MAX_KEYS || mine.contains(&value) {
                return None;
            }
            top.want_key = false;
            self.keys.push(value.clone());
            self.events.push(Ev::Key(value));
        } else {
            top.want_key = top.map;
            let resolved = yaml::untagged(&value, plain)?;
            self.events.push(Ev::Scalar(value, resolved));
        }
        Some(())
    }

    fn start(&mut self, map: bool, line: usize) -> Option<()> {
        self.node()?;
        match self.open.last_mut() {
            None if map => self.root_line = line,
            None => return None,
            // A collection as a key.
            Some(top) if top.map && top.want_key => return None,
            Some(top) => top.want_key = top.map,
        }
        if self.open.len() >= MAX_DEPTH {
            return None;
        }
        self.open.push(Open {
            at: self.events.len(),
            map,
            keys: self.keys.len(),
            want_key: map,
        });
        self.events.push(if map {
            Ev::Map { end: 0 }
        } else {
            Ev::Seq { end: 0 }
        });
        Some(())
    }

    fn end(&mut self) -> Option<()> {
        let open = self.open.pop()?;
        self.keys.truncate(open.keys);
        let end = self.events.len();
        match self.events.get_mut(open.at)? {
            Ev::Map { end: e } | Ev::Seq { end: e } => *e = end,
            _ => return None,
        }
        self.events.push(Ev::End);
        Some(())
    }
}

/// The entries of the mapping that starts at `at`: (key, index of the value).
fn entries<'e, 'a>(events: &'e [Ev<'a>], at: usize) -> impl Iterator<Item = (&'e str, usize)> {
    let mut i = at + 1;
    std::iter::from_fn(move || {
        let Ev::Key(key) = events.get(i)? else {
            return None;
        };
        let value = i + 1;
        i = match events.get(value)? {
            Ev::Map { end } | Ev::Seq { end } => end + 1,
            _ => value + 1,
        };
        Some((key.as_ref(), value))
    })
}

/// The string at `path` of keys from the mapping at `at` (a JSON pointer's `as_str`).
fn text_at<'e>(events: &'e [Ev<'_>], at: usize, path: &[&str]) -> Option<&'e str> {
    let (first, rest) = path.split_first()?;
    let (_, value) = entries(events, at).find(|(k, _)| k == first)?;
    match events.get(value)? {
        Ev::Scalar(s, Untagged::Str) if rest.is_empty() => Some(s),
        Ev::Map { .. } if !rest.is_empty() => text_at(events, value, rest),
        _ => None,
    }
}

/// Dispatches a document on `apiVersion` + `kind` as `parse` does.
fn typed(events: &[Ev<'_>]) -> Option<Typed> {
    let kind = text_at(events, 0, &["kind"])?;
    let api_version = text_at(events, 0, &["apiVersion"])?;
    Some(match (api_version, kind) {
        ("v1", "Service") => Typed::Service(read(events)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => Typed::Slice(read(events)?),
        ("v1", "Endpoints") => Typed::Endpoints(read(events)?),
        ("v1", "Pod") => Typed::Pod(read(events)?),
        ("v1", "Namespace") => Typed::Namespace,
        (api, k) if crate::parse::is_list_kind(api, k) => return None,
        _ => Typed::Other {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            name: text_at(events, 0, &["metadata", "name"]).map(str::to_owned),
            namespace: text_at(events, 0, &["metadata", "namespace"]).map(str::to_owned),
        },
    })
}

fn read<T: de::DeserializeOwned>(events: &[Ev<'_>]) -> Option<Box<T>> {
    let mut de = De { events, at: 0 };
    let value = T::deserialize(&mut de).ok()?;
    (de.at == events.len()).then(|| Box::new(value))
}

/// Any failure: the caller takes the general path, which finds the reason.
#[derive(Debug)]
struct GiveUp;

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not on the fast path")
    }
}

impl std::error::Error for GiveUp {}

impl de::Error for GiveUp {
    fn custom<T: fmt::Display>(_: T) -> Self {
        GiveUp
    }
}

/// A deserializer over buffered events that calls the visitor as `&serde_json::Value` does
/// for the value [`crate::yaml::documents`] would build.
#[derive(Debug)]
struct De<'e, 'a> {
    events: &'e [Ev<'a>],
    at: usize,
}

impl<'e, 'a> De<'e, 'a> {
    fn next(&mut self) -> Result<&'e Ev<'a>, GiveUp> {
        let ev = self.events.get(self.at).ok_or(GiveUp)?;
        self.at += 1;
        Ok(ev)
    }

    fn peek_null(&self) -> bool {
        matches!(
            self.events.get(self.at),
            Some(Ev::Scalar(_, Untagged::Null))
        )
    }

    /// The end of the collection just visited: a visitor that stops early is an error, as
    /// it is for `serde_json::Value`.
    fn end(&mut self) -> Result<(), GiveUp> {
        match self.next()? {
            Ev::End => Ok(()),
            _ => Err(GiveUp),
        }
    }
}

impl<'de> Deserializer<'de> for &mut De<'_, '_> {
    type Error = GiveUp;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self.next()? {
            Ev::Scalar(_, Untagged::Null) => visitor.visit_unit(),
            Ev::Scalar(_, Untagged::Bool(b)) => visitor.visit_bool(*b),
            Ev::Scalar(_, Untagged::Number(n)) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().ok_or(GiveUp)?)
                }
            }
            Ev::Scalar(s, Untagged::Str) => visitor.visit_str(s),
            Ev::Map { .. } => {
                let value = visitor.visit_map(Children { de: &mut *self })?;
                self.end()?;
                Ok(value)
            }
            Ev::Seq { .. } => {
                let value = visitor.visit_seq(Children { de: &mut *self })?;
                self.end()?;
                Ok(value)
            }
            Ev::End | Ev::Key(_) => Err(GiveUp),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        if self.peek_null() {
            self.at += 1;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        if self.peek_null() {
            self.at += 1;
            visitor.visit_unit()
        } else {
            Err(GiveUp)
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, GiveUp> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, GiveUp> {
        visitor.visit_newtype_struct(self)
    }

    /// The manifest types have no enums; one that does takes the general path.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, GiveUp> {
        Err(GiveUp)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        // Every scalar was resolved and every key checked as it was buffered.
        self.at = match self.next()? {
            Ev::Map { end } | Ev::Seq { end } => end + 1,
            Ev::Scalar(..) => self.at,
            Ev::End | Ev::Key(_) => return Err(GiveUp),
        };
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        seq tuple tuple_struct map struct identifier
    }
}

/// The children of the collection being visited: entries of a mapping, items of a sequence.
struct Children<'d, 'e, 'a> {
    de: &'d mut De<'e, 'a>,
}

impl<'de> MapAccess<'de> for Children<'_, '_, '_> {
    type Error = GiveUp;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, GiveUp> {
        match self.de.events.get(self.de.at) {
            Some(Ev::End) => Ok(None),
            Some(Ev::Key(key)) => {
                self.de.at += 1;
                seed.deserialize(Key(key)).map(Some)
            }
            _ => Err(GiveUp),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, GiveUp> {
        seed.deserialize(&mut *self.de)
    }
}

impl<'de> SeqAccess<'de> for Children<'_, '_, '_> {
    type Error = GiveUp;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, GiveUp> {
        match self.de.events.get(self.de.at) {
            Some(Ev::End) => Ok(None),
            Some(_) => seed.deserialize(&mut *self.de).map(Some),
            None => Err(GiveUp),
        }
    }
}

/// A mapping key: always the string it spells, as a JSON object key is.
struct Key<'k>(&'k str);

impl<'de> Deserializer<'de> for Key<'_> {
    type Error = GiveUp;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        visitor.visit_str(self.0)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, GiveUp> {
        Err(GiveUp)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Option<Vec<(usize, String)>> {
        documents(text).map(|docs| {
            docs.into_iter()
                .map(|d| {
                    let what = match d.object {
                        Typed::Service(s) => format!("Service {:?}", s.metadata.name),
                        Typed::Slice(s) => {
                            format!("EndpointSlice {:?}", s.endpoints.map(|e| e.len()))
                        }
                        Typed::Endpoints(_) => "Endpoints".to_owned(),
                        Typed::Pod(_) => "Pod".to_owned(),
                        Typed::Namespace => "Namespace".to_owned(),
                        Typed::Other { kind, name, .. } => format!("{kind} {name:?}"),
                    };
                    (d.line, what)
                })
                .collect()
        })
    }

    #[test]
    fn plain_manifests_are_read() {
        let text = "\
# a comment
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: \"shop\"}
spec:
  ports:
  - port: 80
    targetPort: http
---
~
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
addressType: IPv4
endpoints:
- addresses: ['10.0.0.1']
  conditions: {ready: yes}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec: {replicas: 3}
---
kind: Namespace
apiVersion: v1
metadata: {name: shop}
";
        assert_eq!(
            kinds(text),
            Some(vec![
                (3, "Service Some(\"web\")".to_owned()),
                (13, "EndpointSlice Some(1)".to_owned()),
                (22, "Deployment Some(\"web\")".to_owned()),
                (28, "Namespace".to_owned()),
            ])
        );
    }

    #[test]
    fn what_it_does_not_reproduce_is_given_up() {
        let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n";
        assert!(documents(service).is_some());
        for (what, extra) in [
            ("duplicate key", "  name: other\n"),
            ("duplicate quoted key", "  'name': other\n"),
            ("anchor", "  labels: &l {a: b}\n"),
            ("tag", "  labels: !!map {a: b}\n"),
            ("merge key", "  <<: {a: b}\n"),
            ("numeric key", "  labels: {1: b}\n"),
            ("null key", "  labels: {~: b}\n"),
            ("collection key", "  labels: {[a]: b}\n"),
            ("non-finite float", "  uid: .nan\n"),
            ("wrong type", "  labels: [a]\n"),
            ("syntax error", "  labels: {a: b\n"),
        ] {
            assert!(documents(&format!("{service}{extra}")).is_none(), "{what}");
        }
        assert!(documents("apiVersion: v1\nkind: List\nitems: []\n").is_none());
        assert!(documents("just a string\n").is_none());
        assert!(documents("- a\n").is_none());
        assert!(documents("kind: Service\n").is_none(), "no apiVersion");
    }
}
