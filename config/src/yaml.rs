//! Multi-document YAML -> one `serde_json::Value` per document, built straight from
//! granit-parser events.
//!
//! `serde_saphyr::from_multiple::<Value>` reaches the same values through serde's visitor
//! machinery at about a third of the event parser's speed. This module keeps serde-saphyr
//! 2.1.1's behaviour for a `Value` target under its default `Options`, so a file loads (or
//! fails) exactly as it did before; `config/tests/yaml_diff.rs` holds the two to that:
//! - a document whose root is an untagged null (empty, `~`, `null`, comment-only) or any
//!   `!!null` is skipped; a custom-tagged null root is kept as `null`;
//! - plain scalars resolve null, then YAML 1.1 booleans (`yes`/`no`/`on`/`off`/`y`/`n`, any
//!   case), then integers (`+`/`-`, `0x`/`0o`/`0b`, `_` separators; decimals with a leading zero
//!   are not integers and fall through to floats), then floats; NaN and infinities
//!   (`.nan`, `.inf`, `1e999`) are errors, as `serde_json` cannot hold them; quoted and block
//!   scalars are strings; `!!str`/`!` force strings, core tags force their type, `!!binary`
//!   decodes base64 text, custom tags are ignored;
//! - aliases expand; `<<` merge keys merge (explicit keys win, then earlier merges);
//!   duplicate keys are errors, with integer keys compared by value (`0x1` = `1`), while a
//!   custom-tagged and an untagged spelling of a key are distinct keys (the later one wins);
//!   keys must be non-null scalars;
//! - serde-saphyr's default budget, counted over the whole file with alias expansions
//!   included: 64 levels of nesting, 250 000 nodes, 1 024 documents, 50 000 aliases and
//!   anchors, and so on. That budget is also what stops alias bombs and deep nesting before
//!   any recursion here.
//!
//! Values are built as events arrive, in serde-saphyr's order, so the first error it would
//! report is the one reported here. Nodes that may be read again are also kept in a small
//! arena: anchored content (an alias is a second reference to it, not a copy), and collection
//! keys and merge values, which are judged whole. Merged entries are converted lazily, as in
//! serde-saphyr: one overridden by an explicit key is never converted, so its errors never
//! surface.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use serde_json::{Map, Number, Value};
use serde_saphyr::granit_parser::{Event, Options, Parser, ScalarStyle, ScanError, Span, Tag};

// serde-saphyr's `Budget::default()`, enforced over the whole input.
const MAX_EVENTS: u64 = 1_000_000;
const MAX_NODES: u64 = 250_000;
const MAX_DEPTH: usize = 64;
const MAX_DOCUMENTS: u64 = 1_024;
const MAX_ALIASES: u64 = 50_000;
const MAX_ANCHORS: u64 = 50_000;
const MAX_SCALAR_BYTES: u64 = 64 * 1024 * 1024;
const MAX_MERGE_KEYS: u64 = 10_000;
const MAX_RECORDED_ANCHOR_EVENTS: u64 = 1_000_000;
const MAX_RECORDED_ANCHOR_BYTES: u64 = 64 * 1024 * 1024;
/// Below this many aliases the alias/anchor ratio is not checked.
const RATIO_MIN_ALIASES: u64 = 100;
/// More aliases than this many per anchor is rejected as a likely alias bomb.
const RATIO_ALIASES_PER_ANCHOR: u64 = 10;
// serde-saphyr's `AliasLimits::default()`: events replayed by aliases, per document.
const MAX_REPLAYED_EVENTS: u64 = 1_000_000;
// granit-parser's own limits, as serde-saphyr configures them.
const FLOW_NESTING_LIMIT: usize = 255;
const BLOCK_NESTING_LIMIT: usize = 255;
const SIMPLE_KEY_MAX_LOOKAHEAD: usize = 1024;

const YAML_NS: &str = "tag:yaml.org,2002:";
/// Bytes serde-saphyr's budget charges for the `!!merge` tag of a replayed merge key.
const MERGE_TAG_LEN: u64 = (YAML_NS.len() + "merge".len()) as u64;

/// A syntax error, or input that does not make a JSON value (or exceeds the budget).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} at line {line}, column {column}")]
pub struct YamlError {
    line: usize,
    column: usize,
    message: String,
}

/// Parses every document of `text`: (1-based line of the document's root node, value) for
/// each document that is not null.
pub fn documents(text: &str) -> Result<Vec<(usize, Value)>, YamlError> {
    let mut reader = Reader::default();
    for item in parser(text) {
        match item {
            Ok((event, span)) => reader.event(event, &span)?,
            Err(e) => return Err(YamlError::scan(e)),
        }
    }
    reader.finish()
}

/// The event parser, configured as serde-saphyr configures it.
pub(crate) fn parser(text: &str) -> Parser<'_, serde_saphyr::granit_parser::StrInput<'_>> {
    let mut options = Options::default();
    options.set_emit_comments(false);
    options.flow_nesting_limit = FLOW_NESTING_LIMIT;
    options.block_nesting_limit = BLOCK_NESTING_LIMIT.max(MAX_DEPTH + 1);
    options.simple_key_max_lookahead = SIMPLE_KEY_MAX_LOOKAHEAD;
    Parser::new_from_str_with_options(text, options)
}

/// The 1-based line a node event starts on, as documents report it.
pub(crate) fn line_of(span: &Span) -> usize {
    Pos::of(span).line as usize
}

/// What an untagged scalar in a value position is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Untagged {
    Null,
    Bool(bool),
    Number(Number),
    /// A string: the scalar's own text.
    Str,
}

/// An untagged scalar in a value position, resolved as [`documents`] resolves it; `None`
/// where [`documents`] fails (a non-finite float).
pub(crate) fn untagged(value: &str, plain: bool) -> Option<Untagged> {
    if !plain {
        return Some(Untagged::Str);
    }
    if is_nullish(value, ScalarStyle::Plain) {
        return Some(Untagged::Null);
    }
    infer_plain(value).ok()
}

/// Whether an untagged plain scalar is a key [`documents`] takes as the string it spells,
/// told apart from other keys by its text alone: not null, and not something that could be
/// an integer (integer keys are compared by value).
pub(crate) fn is_text_key(value: &str) -> bool {
    !is_nullish(value, ScalarStyle::Plain)
        && !trim(value)
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'+' || b == b'-')
        && value != "<<"
}

/// Source position (1-based line and column).
#[derive(Clone, Copy, Debug, Default)]
struct Pos {
    line: u32,
    column: u32,
}

/// serde-saphyr's classification of an explicit tag (`SfTag`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum TagKind {
    None,
    Int,
    Float,
    Bool,
    Null,
    Seq,
    Map,
    Timestamp,
    /// The robotics duration and angle tags (`!time`, `!degrees`, `!radians`): recognised,
    /// but without serde-saphyr's `robotics` feature they never make a value.
    Robotics,
    Binary,
    Str,
    Merge,
    /// `!!value`: recognised, without meaning.
    ValueKey,
    /// `!`: forces a string.
    NonSpecific,
    Include,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeKind {
    Scalar,
    Sequence,
    Mapping,
}

type NodeId = u32;

/// A scalar as the parser gave it.
#[derive(Clone, Debug)]
struct Scalar<'a> {
    value: Cow<'a, str>,
    style: ScalarStyle,
    tag: TagKind,
    /// The text of a custom (`TagKind::Other`) tag: it tells keys apart.
    custom: Option<Box<str>>,
}

/// A node kept for later: anchored content (aliases read it again), and collection keys and
/// merge values, which serde-saphyr reads whole before it judges them.
#[derive(Debug)]
struct Node<'a> {
    pos: Pos,
    data: Data<'a>,
}

#[derive(Debug)]
enum Data<'a> {
    Scalar(Scalar<'a>),
    /// `len` children at `first` in `Reader::kids`; `custom`: the tag that sets it apart
    /// as a key (see `container_tag`).
    Seq {
        first: u32,
        len: u32,
        custom: Option<Box<str>>,
    },
    /// `len` children (key, value, key, value...) at `first` in `Reader::kids`.
    Map {
        first: u32,
        len: u32,
        custom: Option<Box<str>>,
    },
    /// An alias to an anchor whose node is still open: only weak pointers could hold it, so
    /// it is an error wherever it is used.
    Recursive(usize),
}

/// What replaying a node through an alias costs, counted as serde-saphyr's budget counts
/// replayed events.
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    events: u64,
    nodes: u64,
    scalar_bytes: u64,
    /// Bytes of owned (escaped, folded or tag) text, which anchor retention is charged for.
    owned_bytes: u64,
    /// Merge keys below the node's root.
    merge_keys: u64,
}

#[derive(Clone, Copy, Debug)]
enum Anchor {
    Open,
    Done {
        node: NodeId,
        cost: Cost,
        height: usize,
    },
}

/// Stream-wide counters of serde-saphyr's default budget.
#[derive(Debug, Default)]
struct Budget {
    events: u64,
    nodes: u64,
    scalar_bytes: u64,
    documents: u64,
    aliases: u64,
    anchors: u64,
    merge_keys: u64,
    recorded_events: u64,
    recorded_bytes: u64,
}

/// Where a node sits, which decides how it is read (as serde-saphyr reads it there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// The root, a sequence item or a mapping value: converted as it is read.
    Value,
    /// A mapping key.
    Key,
    /// The value of a `<<` key.
    Merge,
    /// An item of a sequence that is the value of a `<<` key.
    MergeItem,
    /// Inside a node kept whole (a collection key, a merge value).
    Kept,
}

/// What an open collection builds.
#[derive(Debug)]
enum Build<'a> {
    Seq(Vec<Value>),
    Map(MapBuild<'a>),
    /// A sequence of merge values: the entries of its items so far.
    MergeSeq(Vec<[NodeId; 2]>),
    /// A collection kept whole, sitting in this slot.
    Kept(Slot),
}

#[derive(Debug, Default)]
struct MapBuild<'a> {
    map: Map<String, Value>,
    seen: Seen<'a>,
    /// Entries of `<<` values, merged when the mapping ends.
    merged: Vec<[NodeId; 2]>,
    /// What the next node is the value of (`None`: the next node is a key).
    key: Option<Pending>,
}

#[derive(Debug)]
enum Pending {
    Key(String),
    Merge,
}

/// A sequence or mapping whose end has not been read yet.
#[derive(Debug)]
struct Open<'a> {
    map: bool,
    pos: Pos,
    build: Build<'a>,
    /// Its node, when it is kept (anchored, or inside something kept).
    node: Option<NodeId>,
    /// Tag that sets it apart as a key, for its node.
    custom: Option<Box<str>>,
    /// Where its kept children start in `Reader::pending`.
    first: usize,
    children: u32,
    anchor: usize,
    /// Height of the tallest child collection (0: none).
    height: usize,
    /// `Reader::recorded` before this collection started (read when it is anchored).
    recorded_before: Cost,
    /// Children that advanced serde-saphyr's budget key/value tracking, which a live
    /// recursive alias does not: parity says whether the budget sees the next node as a key.
    toggles: u32,
}

/// What a finished node gives its parent.
#[derive(Debug)]
enum Done<'a> {
    Value(Value),
    Key(Scalar<'a>, Pos),
    Merged(Vec<[NodeId; 2]>),
    /// Nothing: the node is only kept (or was a skipped null document).
    Nothing,
}

/// Reads the event stream: converts documents as their nodes arrive (so errors surface in
/// the order serde-saphyr finds them), keeps the nodes that may be needed again, and
/// enforces the budget.
#[derive(Debug, Default)]
struct Reader<'a> {
    nodes: Vec<Node<'a>>,
    kids: Vec<NodeId>,
    /// Kept children of the open kept collections, innermost last.
    pending: Vec<NodeId>,
    open: Vec<Open<'a>>,
    /// Open collections of `Build::Kept`: everything inside them is kept.
    kept: usize,
    anchors: HashMap<usize, Anchor>,
    /// Replay cost of every node event read so far; an anchored collection's cost is the
    /// difference between its end and its start.
    recorded: Cost,
    /// Anchored collections open now: each event is retained once per open anchor.
    frames: u64,
    /// Events replayed by aliases in the current document.
    replayed: u64,
    budget: Budget,
    /// Position of the last event (errors found at the end are reported there).
    last: Pos,
    root_line: usize,
    docs: Vec<(usize, Value)>,
}

/// Duplicate-key identity of a mapping key (serde-saphyr's `KeyFingerprint`). Collection
/// keys only matter inside merge values, where they are compared before they are rejected.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fingerprint<'a> {
    Int {
        negative: bool,
        magnitude: u128,
    },
    Str(Cow<'a, str>),
    Custom(Box<str>, Cow<'a, str>),
    Tagged(TagKind, Cow<'a, str>),
    Recursive(usize),
    Seq(Option<Box<str>>, Vec<Fingerprint<'a>>),
    /// Entries sorted: a mapping is a set of entries.
    Map(Option<Box<str>>, Vec<(Fingerprint<'a>, Fingerprint<'a>)>),
}

/// Keys seen in one mapping: a short list (with a digest of each, compared first) for the
/// usual small mappings, a hash set beyond.
#[derive(Debug, Default)]
struct Seen<'a> {
    few: Vec<(u64, Fingerprint<'a>)>,
    many: HashSet<Fingerprint<'a>>,
}

/// Read-only view of the kept nodes, for converting them.
struct Doc<'r, 'a> {
    nodes: &'r [Node<'a>],
    kids: &'r [NodeId],
}

// === impl YamlError ===

impl YamlError {
    fn at(pos: Pos, message: impl Into<String>) -> Self {
        Self {
            line: pos.line as usize,
            column: pos.column as usize,
            message: message.into(),
        }
    }

    fn scan(e: ScanError) -> Self {
        let mark = e.marker();
        Self {
            line: mark.line(),
            column: mark.col() + 1,
            message: e.info(),
        }
    }

    fn internal(pos: Pos) -> Self {
        Self::at(pos, "internal error: inconsistent YAML event stream")
    }

    /// The 1-based line the error is about.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The 1-based column the error is about.
    pub fn column(&self) -> usize {
        self.column
    }

    /// The error without its position.
    pub fn message(&self) -> &str {
        &self.message
    }
}

// === impl Pos ===

impl Pos {
    fn of(span: &Span) -> Self {
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            line: to_u32(span.start.line()),
            column: to_u32(span.start.col().saturating_add(1)),
        }
    }
}

// === impl TagKind ===

impl TagKind {
    /// serde-saphyr's `SfTag::from_optional_cow`, on the resolved tag.
    fn of(tag: &Tag) -> Self {
        for prefix in [
            "!include",
            "tag:yaml.org,2002:include",
            "tag:yaml.org,2002:!include",
        ] {
            if let Some(rest) = tag.suffix_in_namespace(prefix)
                && (rest.is_empty() || rest.starts_with('#'))
            {
                return Self::Include;
            }
        }
        if let Some(core) = tag.core_suffix().and_then(Self::core) {
            return core;
        }
        if let Some(name) = tag.suffix_in_namespace(YAML_NS) {
            match name.as_ref() {
                "merge" => return Self::Merge,
                "value" => return Self::ValueKey,
                name => return Self::named(name.strip_prefix('!').unwrap_or(name)),
            }
        }
        let Some(local) = tag.suffix_in_namespace("!") else {
            return Self::Other;
        };
        match local.as_ref() {
            "" | "!" => Self::NonSpecific,
            "!timestamp" => Self::Timestamp,
            "!binary" => Self::Binary,
            name => match name.strip_prefix('!') {
                Some(name) => Self::core(name).unwrap_or(Self::Other),
                None => Self::named(name),
            },
        }
    }

    fn core(name: &str) -> Option<Self> {
        Some(match name {
            "null" => Self::Null,
            "bool" => Self::Bool,
            "int" => Self::Int,
            "float" => Self::Float,
            "map" => Self::Map,
            "seq" => Self::Seq,
            "str" => Self::Str,
            _ => return None,
        })
    }

    fn named(name: &str) -> Self {
        match name {
            "timestamp" => Self::Timestamp,
            "time" | "degrees" | "radians" => Self::Robotics,
            "binary" => Self::Binary,
            "include" => Self::Include,
            name => Self::core(name).unwrap_or(Self::Other),
        }
    }

    /// The node kind this tag may be put on, if it is restricted.
    fn requires(self) -> Option<NodeKind> {
        match self {
            Self::Seq => Some(NodeKind::Sequence),
            Self::Map => Some(NodeKind::Mapping),
            Self::None | Self::NonSpecific | Self::Other => None,
            _ => Some(NodeKind::Scalar),
        }
    }

    fn forces_string(self) -> bool {
        matches!(self, Self::Str | Self::NonSpecific)
    }

    fn is_core(self) -> bool {
        matches!(
            self,
            Self::Int | Self::Float | Self::Bool | Self::Null | Self::Seq | Self::Map | Self::Str
        )
    }

    fn can_be_string(self) -> bool {
        matches!(
            self,
            Self::None
                | Self::Str
                | Self::Merge
                | Self::ValueKey
                | Self::Other
                | Self::Include
                | Self::NonSpecific
        )
    }
}

/// Bytes serde-saphyr's budget charges for a tag (its resolved handle and suffix).
fn tag_len(tag: Option<&Tag>) -> u64 {
    tag.map_or(0, |t| {
        let (handle, suffix) = t.parts();
        (handle.len() + suffix.len()) as u64
    })
}

/// Rejects a tag on the wrong kind of node (`!!str [1]`, `!!map x`), wherever it is.
fn check_tag(kind: TagKind, tag: Option<&Tag>, node: NodeKind, pos: Pos) -> Result<(), YamlError> {
    if tag.is_none() {
        return Ok(());
    }
    match kind.requires() {
        Some(required) if required != node => {
            let message = if kind == TagKind::Include {
                "`!include` is only supported on scalars".to_owned()
            } else {
                let tag = tag.map(Tag::original).unwrap_or_default();
                format!("unsupported tag `{tag}`")
            };
            Err(YamlError::at(pos, message))
        }
        _ => Ok(()),
    }
}

/// Whether the budget counts a scalar as a merge key when it is replayed (replay drops every
/// tag but `!!merge`).
fn replayed_merge_key(value: &str, style: ScalarStyle, tag: TagKind) -> bool {
    value == "<<" && (tag == TagKind::Merge || style == ScalarStyle::Plain)
}

/// Adds `n` to a budget counter, failing past `max`.
fn charge(total: &mut u64, n: u64, max: u64, what: &str, pos: Pos) -> Result<(), YamlError> {
    *total = total.saturating_add(n);
    if *total > max {
        return Err(YamlError::at(
            pos,
            format!("YAML budget exceeded: more than {max} {what}"),
        ));
    }
    Ok(())
}

// === impl Cost ===

impl Cost {
    fn plus(self, o: Cost) -> Cost {
        Cost {
            events: self.events.saturating_add(o.events),
            nodes: self.nodes.saturating_add(o.nodes),
            scalar_bytes: self.scalar_bytes.saturating_add(o.scalar_bytes),
            owned_bytes: self.owned_bytes.saturating_add(o.owned_bytes),
            merge_keys: self.merge_keys.saturating_add(o.merge_keys),
        }
    }

    fn minus(self, o: Cost) -> Cost {
        Cost {
            events: self.events.saturating_sub(o.events),
            nodes: self.nodes.saturating_sub(o.nodes),
            scalar_bytes: self.scalar_bytes.saturating_sub(o.scalar_bytes),
            owned_bytes: self.owned_bytes.saturating_sub(o.owned_bytes),
            merge_keys: self.merge_keys.saturating_sub(o.merge_keys),
        }
    }
}

// === impl Reader ===

impl<'a> Reader<'a> {
    fn event(&mut self, event: Event<'a>, span: &Span) -> Result<(), YamlError> {
        let pos = Pos::of(span);
        self.last = pos;
        charge(&mut self.budget.events, 1, MAX_EVENTS, "events", pos)?;
        match event {
            Event::Scalar(value, style, anchor, tag) => self.scalar(value, style, anchor, tag, pos),
            Event::SequenceStart(_, anchor, tag) => self.start(false, anchor, tag, pos),
            Event::MappingStart(_, anchor, tag) => self.start(true, anchor, tag, pos),
            Event::SequenceEnd => self.end(false, pos),
            Event::MappingEnd => self.end(true, pos),
            Event::Alias(id) => self.alias(id, pos),
            Event::DocumentStart(..) => {
                charge(
                    &mut self.budget.documents,
                    1,
                    MAX_DOCUMENTS,
                    "documents",
                    pos,
                )?;
                self.reset_document();
                Ok(())
            }
            Event::DocumentEnd | Event::StreamStart | Event::StreamEnd => {
                self.reset_document();
                Ok(())
            }
            _ => Err(YamlError::at(pos, "unsupported YAML event")),
        }
    }

    /// Checks what can only be judged at the end of the input and returns the documents.
    fn finish(self) -> Result<Vec<(usize, Value)>, YamlError> {
        let b = &self.budget;
        if b.aliases >= RATIO_MIN_ALIASES
            && b.aliases > RATIO_ALIASES_PER_ANCHOR.saturating_mul(b.anchors)
        {
            let message = format!(
                "YAML budget exceeded: {} aliases for {} anchors",
                b.aliases, b.anchors
            );
            return Err(YamlError::at(self.last, message));
        }
        Ok(self.docs)
    }

    /// Anchors do not carry across documents.
    fn reset_document(&mut self) {
        self.nodes.clear();
        self.kids.clear();
        self.pending.clear();
        self.open.clear();
        self.anchors.clear();
        self.kept = 0;
        self.frames = 0;
        self.replayed = 0;
    }

    fn doc(&self) -> Doc<'_, 'a> {
        Doc {
            nodes: &self.nodes,
            kids: &self.kids,
        }
    }

    /// How the next node is read.
    fn slot(&self) -> Slot {
        match self.open.last().map(|o| &o.build) {
            None | Some(Build::Seq(_)) => Slot::Value,
            Some(Build::Map(m)) => match m.key {
                None => Slot::Key,
                Some(Pending::Key(_)) => Slot::Value,
                Some(Pending::Merge) => Slot::Merge,
            },
            Some(Build::MergeSeq(_)) => Slot::MergeItem,
            Some(Build::Kept(_)) => Slot::Kept,
        }
    }

    /// Whether the next node is a key: as the document's structure says, and as
    /// serde-saphyr's budget tracking believes.
    fn key_slot(&self) -> (bool, bool) {
        match self.open.last() {
            Some(o) if o.map => (o.children.is_multiple_of(2), o.toggles.is_multiple_of(2)),
            _ => (false, false),
        }
    }

    /// Counts a new child of the innermost collection; `toggle`: one the budget's key/value
    /// tracking sees.
    fn add_child(&mut self, toggle: bool) {
        if let Some(o) = self.open.last_mut() {
            o.children = o.children.wrapping_add(1);
            if toggle {
                o.toggles = o.toggles.wrapping_add(1);
            }
        }
    }

    /// Keeps a node; it becomes a child of the innermost collection when that is kept.
    fn keep(&mut self, pos: Pos, data: Data<'a>) -> Result<NodeId, YamlError> {
        let id = NodeId::try_from(self.nodes.len()).map_err(|_| YamlError::internal(pos))?;
        self.nodes.push(Node { pos, data });
        self.attach(id);
        Ok(id)
    }

    fn attach(&mut self, id: NodeId) {
        if self.open.last().is_some_and(|o| o.node.is_some()) {
            self.pending.push(id);
        }
    }

    /// Gives a finished node to its parent (or, at the root, to the documents).
    fn deliver(&mut self, done: Done<'a>, pos: Pos) -> Result<(), YamlError> {
        let Some(parent) = self.open.last_mut() else {
            if let Done::Value(v) = done {
                self.docs.push((self.root_line, v));
            }
            return Ok(());
        };
        match (&mut parent.build, done) {
            (Build::Seq(items), Done::Value(v)) => items.push(v),
            (Build::Map(m), Done::Value(v)) => match m.key.take() {
                Some(Pending::Key(key)) => {
                    m.map.insert(key, v);
                }
                _ => return Err(YamlError::internal(pos)),
            },
            (Build::Map(m), Done::Key(scalar, pos)) => m.key(scalar, pos)?,
            (Build::Map(m), Done::Merged(entries)) => {
                m.merged.extend(entries);
                m.key = None;
            }
            (Build::MergeSeq(all), Done::Merged(entries)) => all.extend(entries),
            (Build::Kept(_), Done::Nothing) => {}
            _ => return Err(YamlError::internal(pos)),
        }
        Ok(())
    }

    /// Charges anchor retention: every event is copied into each open anchor's recording.
    fn retain(&mut self, copies: u64, bytes: u64, pos: Pos) -> Result<(), YamlError> {
        let b = &mut self.budget;
        let what = "event copies retained for anchors";
        charge(
            &mut b.recorded_events,
            copies,
            MAX_RECORDED_ANCHOR_EVENTS,
            what,
            pos,
        )?;
        let what = "bytes retained for anchors";
        charge(
            &mut b.recorded_bytes,
            bytes,
            MAX_RECORDED_ANCHOR_BYTES,
            what,
            pos,
        )
    }

    fn scalar(
        &mut self,
        value: Cow<'a, str>,
        style: ScalarStyle,
        anchor: usize,
        tag: Option<Cow<'a, Tag>>,
        pos: Pos,
    ) -> Result<(), YamlError> {
        let tag = tag.as_deref();
        let scalar = Scalar {
            tag: tag.map_or(TagKind::None, TagKind::of),
            custom: tag
                .filter(|t| TagKind::of(t) == TagKind::Other)
                .map(|t| t.to_string().into_boxed_str()),
            value,
            style,
        };
        let cost = self.charge_scalar(&scalar, anchor, tag, pos)?;
        let slot = self.slot();
        self.add_child(true);
        let root = self.open.is_empty();
        if root {
            self.root_line = pos.line as usize;
        }
        let kept = (self.kept > 0 || self.frames > 0 || anchor != 0).then(|| scalar.clone());
        let (value, style, tag) = (scalar.value.as_ref(), scalar.style, scalar.tag);
        let done = match slot {
            // serde-saphyr skips null documents, but keeps custom-tagged ones.
            Slot::Value if root && tag != TagKind::Other && is_null(tag, value, style) => {
                Done::Nothing
            }
            Slot::Value => Done::Value(convert(&scalar, pos)?),
            Slot::Key => Done::Key(scalar, pos),
            Slot::Merge | Slot::MergeItem if is_null(tag, value, style) => Done::Merged(Vec::new()),
            Slot::Merge | Slot::MergeItem => return Err(not_mergeable(pos)),
            Slot::Kept => Done::Nothing,
        };
        if let Some(kept) = kept {
            let node = self.keep(pos, Data::Scalar(kept))?;
            if anchor != 0 {
                let height = 0;
                self.anchors
                    .insert(anchor, Anchor::Done { node, cost, height });
            }
        }
        self.deliver(done, pos)
    }

    /// The budget's view of a scalar read from the input; returns its replay cost.
    fn charge_scalar(
        &mut self,
        scalar: &Scalar<'a>,
        anchor: usize,
        tag: Option<&Tag>,
        pos: Pos,
    ) -> Result<Cost, YamlError> {
        let (value, style, kind) = (scalar.value.as_ref(), scalar.style, scalar.tag);
        let len = value.len() as u64;
        let (key, budget_key) = self.key_slot();
        let b = &mut self.budget;
        charge(&mut b.nodes, 1, MAX_NODES, "nodes", pos)?;
        let bytes = len + tag_len(tag);
        charge(
            &mut b.scalar_bytes,
            bytes,
            MAX_SCALAR_BYTES,
            "bytes of scalars",
            pos,
        )?;
        if anchor != 0 {
            charge(&mut b.anchors, 1, MAX_ANCHORS, "anchors", pos)?;
        }
        let plain = style == ScalarStyle::Plain;
        if budget_key && value == "<<" && (kind == TagKind::Merge || tag.is_none() && plain) {
            charge(&mut b.merge_keys, 1, MAX_MERGE_KEYS, "merge keys", pos)?;
        }
        check_tag(kind, tag, NodeKind::Scalar, pos)?;

        let owned = if matches!(scalar.value, Cow::Owned(_)) {
            len
        } else {
            0
        } + tag_len(tag);
        let copies = self.frames + u64::from(anchor != 0);
        self.retain(copies, copies.saturating_mul(owned), pos)?;
        let merge_tag = if kind == TagKind::Merge {
            MERGE_TAG_LEN
        } else {
            0
        };
        let cost = Cost {
            events: 1,
            nodes: 1,
            scalar_bytes: len + merge_tag,
            owned_bytes: owned,
            merge_keys: 0,
        };
        self.recorded = self.recorded.plus(cost);
        if key && replayed_merge_key(value, style, kind) {
            self.recorded.merge_keys += 1;
        }
        Ok(cost)
    }

    fn start(
        &mut self,
        map: bool,
        anchor: usize,
        tag: Option<Cow<'a, Tag>>,
        pos: Pos,
    ) -> Result<(), YamlError> {
        let recorded_before = self.recorded;
        let tag = tag.as_deref();
        self.charge_start(map, anchor, tag, pos)?;
        let slot = self.slot();
        self.add_child(true);
        if self.open.is_empty() {
            self.root_line = pos.line as usize;
        }
        let build = match (slot, map) {
            (Slot::Value, false) => Build::Seq(Vec::new()),
            (Slot::Value, true) => Build::Map(MapBuild::default()),
            (Slot::Merge, false) => Build::MergeSeq(Vec::new()),
            (slot, _) => Build::Kept(slot),
        };
        if matches!(build, Build::Kept(_)) {
            self.kept += 1;
        }
        let node = if self.kept > 0 || self.frames > 0 {
            let placeholder = Data::Seq {
                first: 0,
                len: 0,
                custom: None,
            };
            Some(self.keep(pos, placeholder)?)
        } else {
            None
        };
        if anchor != 0 {
            self.anchors.insert(anchor, Anchor::Open);
        }
        self.open.push(Open {
            map,
            pos,
            build,
            node,
            custom: node.and(tag).and_then(|t| container_tag(t, map)),
            first: self.pending.len(),
            children: 0,
            anchor,
            height: 0,
            recorded_before,
            toggles: 0,
        });
        Ok(())
    }

    /// The budget's view of a collection start read from the input.
    fn charge_start(
        &mut self,
        map: bool,
        anchor: usize,
        tag: Option<&Tag>,
        pos: Pos,
    ) -> Result<(), YamlError> {
        let kind = tag.map_or(TagKind::None, TagKind::of);
        let b = &mut self.budget;
        charge(&mut b.nodes, 1, MAX_NODES, "nodes", pos)?;
        if self.open.len() >= MAX_DEPTH {
            return Err(too_deep(pos));
        }
        let what = "bytes of scalars";
        charge(
            &mut b.scalar_bytes,
            tag_len(tag),
            MAX_SCALAR_BYTES,
            what,
            pos,
        )?;
        if anchor != 0 {
            charge(&mut b.anchors, 1, MAX_ANCHORS, "anchors", pos)?;
        }
        let node = if map {
            NodeKind::Mapping
        } else {
            NodeKind::Sequence
        };
        check_tag(kind, tag, node, pos)?;
        if anchor != 0 {
            self.frames += 1;
        }
        let copies = self.frames;
        self.retain(copies, copies.saturating_mul(tag_len(tag)), pos)?;
        self.recorded = self.recorded.plus(Cost {
            events: 1,
            nodes: 1,
            owned_bytes: tag_len(tag),
            ..Cost::default()
        });
        Ok(())
    }

    fn end(&mut self, map: bool, pos: Pos) -> Result<(), YamlError> {
        let Some(open) = self.open.pop() else {
            return Err(YamlError::internal(pos));
        };
        if open.map != map || open.first > self.pending.len() {
            return Err(YamlError::internal(pos));
        }
        self.retain(self.frames, 0, pos)?;
        self.recorded.events += 1;
        if let Some(id) = open.node {
            self.fill(id, open.first, map, open.custom, pos)?;
        }
        let height = open.height + 1;
        if let Some(parent) = self.open.last_mut() {
            parent.height = parent.height.max(height);
        }
        if open.anchor != 0 {
            self.frames = self.frames.saturating_sub(1);
            let node = open.node.ok_or_else(|| YamlError::internal(pos))?;
            let cost = self.recorded.minus(open.recorded_before);
            let done = Anchor::Done { node, cost, height };
            self.anchors.insert(open.anchor, done);
        }
        let done = match open.build {
            Build::Seq(items) => Done::Value(Value::Array(items)),
            Build::Map(m) => Done::Value(self.doc().finish_map(m)?),
            Build::MergeSeq(entries) => Done::Merged(entries),
            Build::Kept(slot) => {
                self.kept = self.kept.saturating_sub(1);
                let node = open.node.ok_or_else(|| YamlError::internal(pos))?;
                match slot {
                    Slot::Key => return Err(not_a_key(open.pos)),
                    Slot::Merge | Slot::MergeItem => {
                        let mut entries = Vec::new();
                        self.doc().merge_entries(node, &mut entries)?;
                        Done::Merged(entries)
                    }
                    Slot::Value | Slot::Kept => Done::Nothing,
                }
            }
        };
        self.deliver(done, pos)
    }

    /// Gives a kept collection's node its children (kept since `first` in `pending`).
    fn fill(
        &mut self,
        id: NodeId,
        first: usize,
        map: bool,
        custom: Option<Box<str>>,
        pos: Pos,
    ) -> Result<(), YamlError> {
        let to_u32 = |n: usize| u32::try_from(n).map_err(|_| YamlError::internal(pos));
        let start = to_u32(self.kids.len())?;
        self.kids.extend(self.pending.drain(first..));
        let len = to_u32(self.kids.len())? - start;
        let node = self
            .nodes
            .get_mut(id as usize)
            .ok_or_else(|| YamlError::internal(pos))?;
        let first = start;
        node.data = if map {
            Data::Map { first, len, custom }
        } else {
            Data::Seq { first, len, custom }
        };
        Ok(())
    }

    fn alias(&mut self, anchor: usize, pos: Pos) -> Result<(), YamlError> {
        charge(&mut self.budget.aliases, 1, MAX_ALIASES, "aliases", pos)?;
        match self.anchors.get(&anchor).copied() {
            None => Err(YamlError::at(pos, "unknown anchor")),
            Some(Anchor::Open) => {
                // Kept (and later replayed) as a placeholder node; the budget's key/value
                // tracking does not see it.
                self.retain(self.frames, 0, pos)?;
                self.recorded.events += 1;
                self.recorded.nodes += 1;
                let slot = self.slot();
                self.add_child(false);
                if slot != Slot::Kept {
                    return Err(recursive(pos));
                }
                self.keep(pos, Data::Recursive(anchor))?;
                self.deliver(Done::Nothing, pos)
            }
            Some(Anchor::Done { node, cost, height }) => {
                self.charge_replay(node, cost, height, pos)?;
                let slot = self.slot();
                self.add_child(true);
                if let Some(parent) = self.open.last_mut() {
                    parent.height = parent.height.max(height);
                }
                self.attach(node);
                let doc = self.doc();
                let done = match slot {
                    Slot::Value => Done::Value(doc.value(node)?),
                    Slot::Key => match doc.node(node)? {
                        Node {
                            data: Data::Scalar(scalar),
                            ..
                        } => Done::Key(scalar.clone(), pos),
                        // Reported where the collection is defined, as serde-saphyr does.
                        other => return Err(not_a_key(other.pos)),
                    },
                    Slot::Merge | Slot::MergeItem => {
                        let mut entries = Vec::new();
                        doc.merge_entries(node, &mut entries)?;
                        Done::Merged(entries)
                    }
                    Slot::Kept => Done::Nothing,
                };
                self.deliver(done, pos)
            }
        }
    }

    /// Charges an alias's expansion as if its events were read again.
    fn charge_replay(
        &mut self,
        node: NodeId,
        cost: Cost,
        height: usize,
        pos: Pos,
    ) -> Result<(), YamlError> {
        if self.open.len() + height > MAX_DEPTH {
            return Err(too_deep(pos));
        }
        let what = "events replayed by aliases";
        charge(
            &mut self.replayed,
            cost.events,
            MAX_REPLAYED_EVENTS,
            what,
            pos,
        )?;
        let (key, budget_key) = self.key_slot();
        let root_merge_key = match self.nodes.get(node as usize).map(|n| &n.data) {
            Some(Data::Scalar(s)) => replayed_merge_key(&s.value, s.style, s.tag),
            _ => false,
        };
        let b = &mut self.budget;
        charge(&mut b.events, cost.events, MAX_EVENTS, "events", pos)?;
        charge(&mut b.nodes, cost.nodes, MAX_NODES, "nodes", pos)?;
        let what = "bytes of scalars";
        charge(
            &mut b.scalar_bytes,
            cost.scalar_bytes,
            MAX_SCALAR_BYTES,
            what,
            pos,
        )?;
        let merge_keys = cost.merge_keys + u64::from(budget_key && root_merge_key);
        charge(
            &mut b.merge_keys,
            merge_keys,
            MAX_MERGE_KEYS,
            "merge keys",
            pos,
        )?;
        let copies = self.frames.saturating_mul(cost.events);
        self.retain(copies, self.frames.saturating_mul(cost.owned_bytes), pos)?;
        self.recorded = self.recorded.plus(cost);
        if key && root_merge_key {
            self.recorded.merge_keys += 1;
        }
        Ok(())
    }
}

// === impl MapBuild ===

impl<'a> MapBuild<'a> {
    /// Takes a key: a `<<` merge key, or a new (not duplicate) string key.
    fn key(&mut self, scalar: Scalar<'a>, pos: Pos) -> Result<(), YamlError> {
        if is_merge_key(&scalar) {
            self.key = Some(Pending::Merge);
            return Ok(());
        }
        let fp = fingerprint(&scalar);
        if self.seen.contains(&fp) {
            return Err(duplicate(&scalar.value, pos));
        }
        self.key = Some(Pending::Key(string_key(&scalar, pos)?));
        self.seen.insert(fp);
        Ok(())
    }
}

// === impl Seen ===

impl<'a> Seen<'a> {
    const FEW: usize = 16;

    fn contains(&self, fp: &Fingerprint<'a>) -> bool {
        let digest = fp.digest();
        self.few.iter().any(|(d, f)| *d == digest && f == fp)
            || !self.many.is_empty() && self.many.contains(fp)
    }

    fn insert(&mut self, fp: Fingerprint<'a>) {
        if self.few.len() < Self::FEW {
            if self.few.is_empty() {
                self.few.reserve(Self::FEW / 2);
            }
            self.few.push((fp.digest(), fp));
        } else {
            self.many.insert(fp);
        }
    }
}

// === impl Fingerprint ===

impl Fingerprint<'_> {
    /// Equal fingerprints have equal digests: the variant, the text's length and its first
    /// and last bytes (or the integer's low bits).
    fn digest(&self) -> u64 {
        let text = |kind: u64, t: &str| {
            let b = t.as_bytes();
            let edge = |x: Option<&u8>| u64::from(x.copied().unwrap_or(0));
            kind | (t.len() as u64) << 16 | edge(b.first()) << 48 | edge(b.last()) << 56
        };
        match self {
            Self::Int { magnitude, .. } => 1 | (*magnitude as u64) << 8,
            Self::Str(t) => text(2, t),
            Self::Custom(_, t) => text(3, t),
            Self::Tagged(_, t) => text(4, t),
            Self::Recursive(anchor) => 5 | (*anchor as u64) << 8,
            Self::Seq(_, items) => 6 | (items.len() as u64) << 8,
            Self::Map(_, entries) => 7 | (entries.len() as u64) << 8,
        }
    }
}

// === impl Doc ===

impl<'r, 'a> Doc<'r, 'a> {
    fn node(&self, id: NodeId) -> Result<&'r Node<'a>, YamlError> {
        self.nodes
            .get(id as usize)
            .ok_or_else(|| YamlError::internal(Pos::default()))
    }

    fn children(&self, first: u32, len: u32, pos: Pos) -> Result<&'r [NodeId], YamlError> {
        let (first, len) = (first as usize, len as usize);
        self.kids
            .get(first..first + len)
            .ok_or_else(|| YamlError::internal(pos))
    }

    /// Key/value pairs of a mapping node.
    fn pairs(&self, first: u32, len: u32, pos: Pos) -> Result<&'r [[NodeId; 2]], YamlError> {
        let (pairs, rest) = self.children(first, len, pos)?.as_chunks::<2>();
        if !rest.is_empty() {
            return Err(YamlError::internal(pos));
        }
        Ok(pairs)
    }

    /// A kept node in a value position (what an alias there reads).
    fn value(&self, id: NodeId) -> Result<Value, YamlError> {
        let node = self.node(id)?;
        match &node.data {
            Data::Scalar(scalar) => convert(scalar, node.pos),
            Data::Seq { first, len, .. } => self
                .children(*first, *len, node.pos)?
                .iter()
                .map(|&kid| self.value(kid))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Data::Map { first, len, .. } => {
                let mut m = MapBuild::default();
                for &[key, value] in self.pairs(*first, *len, node.pos)? {
                    let pos = self.node(key)?.pos;
                    let Data::Scalar(scalar) = &self.node(key)?.data else {
                        return Err(not_a_key(pos));
                    };
                    m.key(scalar.clone(), pos)?;
                    match m.key {
                        Some(Pending::Merge) => {
                            self.merge_entries(value, &mut m.merged)?;
                            m.key = None;
                        }
                        _ => {
                            let value = self.value(value)?;
                            if let Some(Pending::Key(key)) = m.key.take() {
                                m.map.insert(key, value);
                            }
                        }
                    }
                }
                self.finish_map(m)
            }
            Data::Recursive(_) => Err(recursive(node.pos)),
        }
    }

    /// Ends a mapping: the entries of its merge keys that no explicit key (or earlier merge)
    /// has, in order.
    fn finish_map(&self, mut m: MapBuild<'a>) -> Result<Value, YamlError> {
        for [key, value] in std::mem::take(&mut m.merged) {
            let fp = self.fingerprint(key)?;
            if m.seen.contains(&fp) {
                continue;
            }
            let node = self.node(key)?;
            let Data::Scalar(scalar) = &node.data else {
                return Err(not_a_key(node.pos));
            };
            m.map
                .insert(string_key(scalar, node.pos)?, self.value(value)?);
            m.seen.insert(fp);
        }
        Ok(Value::Object(m.map))
    }

    /// The duplicate-key identity of any node.
    fn fingerprint(&self, id: NodeId) -> Result<Fingerprint<'a>, YamlError> {
        let node = self.node(id)?;
        Ok(match &node.data {
            Data::Scalar(scalar) => fingerprint(scalar),
            Data::Recursive(anchor) => Fingerprint::Recursive(*anchor),
            Data::Seq { first, len, custom } => Fingerprint::Seq(
                custom.clone(),
                self.children(*first, *len, node.pos)?
                    .iter()
                    .map(|&kid| self.fingerprint(kid))
                    .collect::<Result<_, _>>()?,
            ),
            Data::Map { first, len, custom } => {
                let mut entries = self
                    .pairs(*first, *len, node.pos)?
                    .iter()
                    .map(|&[k, v]| Ok((self.fingerprint(k)?, self.fingerprint(v)?)))
                    .collect::<Result<Vec<_>, YamlError>>()?;
                entries.sort();
                Fingerprint::Map(custom.clone(), entries)
            }
        })
    }

    /// Appends the entries a merge value contributes: a mapping's, or those of each mapping
    /// in a (nested) sequence, in order. Nulls contribute nothing.
    fn merge_entries(&self, id: NodeId, out: &mut Vec<[NodeId; 2]>) -> Result<(), YamlError> {
        let node = self.node(id)?;
        match &node.data {
            Data::Scalar(s) if is_null(s.tag, &s.value, s.style) => Ok(()),
            Data::Scalar(_) => Err(not_mergeable(node.pos)),
            Data::Recursive(_) => Err(recursive(node.pos)),
            Data::Seq { first, len, .. } => {
                for &kid in self.children(*first, *len, node.pos)? {
                    self.merge_entries(kid, out)?;
                }
                Ok(())
            }
            Data::Map { first, len, .. } => {
                let mut nested = Vec::new();
                let mut seen = Seen::default();
                for &[key, value] in self.pairs(*first, *len, node.pos)? {
                    let key_node = self.node(key)?;
                    let scalar = match &key_node.data {
                        Data::Scalar(scalar) => Some(scalar),
                        _ => None,
                    };
                    if scalar.is_some_and(is_merge_key) {
                        self.merge_entries(value, &mut nested)?;
                        continue;
                    }
                    // Collection keys are rejected only when merged, after this check.
                    let fp = self.fingerprint(key)?;
                    if seen.contains(&fp) {
                        let text = scalar.map_or("", |s| s.value.as_ref());
                        return Err(duplicate(text, key_node.pos));
                    }
                    seen.insert(fp);
                    out.push([key, value]);
                }
                out.append(&mut nested);
                Ok(())
            }
        }
    }
}

// === keys ===

/// `<<` (plain and untagged, or `!!merge`).
fn is_merge_key(s: &Scalar<'_>) -> bool {
    s.value == "<<"
        && (s.tag == TagKind::Merge || s.tag == TagKind::None && s.style == ScalarStyle::Plain)
}

/// The identity duplicate keys are found by: integers by value, other scalars by text and
/// the kind of their tag.
fn fingerprint<'a>(s: &Scalar<'a>) -> Fingerprint<'a> {
    let (value, style, tag) = (s.value.as_ref(), s.style, s.tag);
    let t = trim(value);
    let numeric = t
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'+' || b == b'-');
    if numeric && (tag == TagKind::Int || tag == TagKind::None && style == ScalarStyle::Plain) {
        let int = if t.starts_with('-') {
            parse_signed(t).map(|v| (v < 0, v.unsigned_abs()))
        } else {
            parse_unsigned(t).map(|v| (false, v))
        };
        if let Some((negative, magnitude)) = int {
            return Fingerprint::Int {
                negative,
                magnitude,
            };
        }
    }
    let tag = if tag == TagKind::None && is_null(tag, value, style) {
        TagKind::Null
    } else {
        tag
    };
    match (tag, &s.custom) {
        (TagKind::Other, Some(custom)) => Fingerprint::Custom(custom.clone(), s.value.clone()),
        (tag, _) if tag.can_be_string() => Fingerprint::Str(s.value.clone()),
        (tag, _) => Fingerprint::Tagged(tag, s.value.clone()),
    }
}

/// A mapping key as a JSON object key.
fn string_key(s: &Scalar<'_>, pos: Pos) -> Result<String, YamlError> {
    if (s.tag == TagKind::Null || is_nullish(&s.value, s.style)) && !s.tag.forces_string() {
        return Err(YamlError::at(pos, "mapping key is null"));
    }
    if s.tag == TagKind::Binary {
        return binary(&s.value, pos);
    }
    if !s.tag.can_be_string() {
        return Err(YamlError::at(pos, "tagged scalar cannot be a mapping key"));
    }
    Ok(s.value.to_string())
}

/// A collection's tag as key identity: custom tags, and a local `!map` on a mapping, set
/// keys apart; core and absent tags do not.
fn container_tag(tag: &Tag, map: bool) -> Option<Box<str>> {
    let kind = TagKind::of(tag);
    let text = tag.to_string();
    (kind == TagKind::Other || map && kind == TagKind::Map && text == "!map")
        .then(|| text.into_boxed_str())
}

fn duplicate(key: &str, pos: Pos) -> YamlError {
    YamlError::at(pos, format!("duplicate mapping key: {key}"))
}

fn not_a_key(pos: Pos) -> YamlError {
    YamlError::at(pos, "mapping keys must be strings")
}

fn not_mergeable(pos: Pos) -> YamlError {
    YamlError::at(
        pos,
        "merge value must be a mapping or a sequence of mappings",
    )
}

fn recursive(pos: Pos) -> YamlError {
    YamlError::at(pos, "alias refers to a node that contains it")
}

fn too_deep(pos: Pos) -> YamlError {
    YamlError::at(
        pos,
        format!("YAML budget exceeded: nesting deeper than {MAX_DEPTH}"),
    )
}

// === scalars ===

/// A scalar in a value position (serde-saphyr's `deserialize_any`).
fn convert(s: &Scalar<'_>, pos: Pos) -> Result<Value, YamlError> {
    let (value, style, tag) = (s.value.as_ref(), s.style, s.tag);
    match tag {
        TagKind::Null => return Ok(Value::Null),
        TagKind::Bool => {
            return bool_11(value)
                .map(Value::Bool)
                .ok_or_else(|| YamlError::at(pos, "invalid boolean"));
        }
        TagKind::Int => {
            let t = trim(value);
            let int = if t.starts_with('-') {
                parse_signed(t)
                    .and_then(|v| i64::try_from(v).ok())
                    .map(Number::from)
            } else {
                parse_unsigned(t)
                    .and_then(|v| u64::try_from(v).ok())
                    .map(Number::from)
            };
            return int
                .map(Value::Number)
                .ok_or_else(|| YamlError::at(pos, "invalid integer"));
        }
        TagKind::Float => {
            let v = float(value).ok_or_else(|| YamlError::at(pos, "invalid floating point"))?;
            return finite(v, value, pos);
        }
        TagKind::Robotics => return Err(YamlError::at(pos, "invalid floating point")),
        _ => {}
    }
    if is_null(tag, value, style) {
        return Ok(Value::Null);
    }
    if style != ScalarStyle::Plain || !tag.can_be_string() || tag.forces_string() {
        return match tag {
            TagKind::Binary => binary(value, pos).map(Value::String),
            tag if tag.can_be_string() => Ok(Value::String(value.to_owned())),
            _ => Err(YamlError::at(pos, "tagged scalar cannot be a string")),
        };
    }
    infer(value, pos)
}

/// A plain scalar without a meaningful tag: bool, integer, float or string.
fn infer(value: &str, pos: Pos) -> Result<Value, YamlError> {
    match infer_plain(value) {
        Ok(Untagged::Null) => Ok(Value::Null),
        Ok(Untagged::Bool(b)) => Ok(Value::Bool(b)),
        Ok(Untagged::Number(n)) => Ok(Value::Number(n)),
        Ok(Untagged::Str) => Ok(Value::String(value.to_owned())),
        Err(message) => Err(YamlError::at(pos, message)),
    }
}

/// [`infer`] without building the value (never `Untagged::Null`).
fn infer_plain(value: &str) -> Result<Untagged, String> {
    if let Some(b) = bool_11(value) {
        return Ok(Untagged::Bool(b));
    }
    let t = trim(value);
    // Cheap exit for words: every number starts with a digit, a sign or a dot.
    if !t
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Ok(Untagged::Str);
    }
    if t.starts_with('-') {
        if !leading_zero_decimal(t)
            && let Some(v) = parse_signed(t).and_then(|v| i64::try_from(v).ok())
        {
            return Ok(Untagged::Number(v.into()));
        }
    } else if let Some(v) = parse_unsigned(t).and_then(|v| u64::try_from(v).ok()) {
        return Ok(Untagged::Number(v.into()));
    }
    match float(value) {
        Some(v) => finite_number(v, value).map(Untagged::Number),
        None => Ok(Untagged::Str),
    }
}

fn finite(v: f64, raw: &str, pos: Pos) -> Result<Value, YamlError> {
    finite_number(v, raw)
        .map(Value::Number)
        .map_err(|message| YamlError::at(pos, message))
}

/// A JSON number, which cannot hold NaN or the infinities.
fn finite_number(v: f64, raw: &str) -> Result<Number, String> {
    Number::from_f64(v).ok_or_else(|| format!("non-finite float `{raw}` is not supported"))
}

/// The padding serde-saphyr trims before converting a scalar (ASCII only, so byte
/// positions are char boundaries).
fn trim(s: &str) -> &str {
    let pad = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let bytes = s.as_bytes();
    let start = bytes.iter().position(|b| !pad(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !pad(b)).map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or(s)
}

/// Plain null spellings (also the empty scalar).
fn is_nullish(value: &str, style: ScalarStyle) -> bool {
    style == ScalarStyle::Plain && matches!(value, "" | "~" | "null" | "Null" | "NULL")
}

/// Whether a scalar is null, honouring tags that give it another type.
fn is_null(tag: TagKind, value: &str, style: ScalarStyle) -> bool {
    tag == TagKind::Null
        || !tag.is_core()
            && !tag.forces_string()
            && !matches!(
                tag,
                TagKind::Binary | TagKind::Timestamp | TagKind::Robotics
            )
            && is_nullish(value, style)
}

/// YAML 1.1 booleans, as serde-saphyr accepts them by default.
fn bool_11(s: &str) -> Option<bool> {
    let t = trim(s);
    if t.is_empty() || t.len() > 5 {
        return None;
    }
    let is = |word: &str| t.eq_ignore_ascii_case(word);
    if is("true") || is("yes") || is("y") || is("on") {
        Some(true)
    } else if is("false") || is("no") || is("n") || is("off") {
        Some(false)
    } else {
        None
    }
}

/// `0755`, `-007`: decimal digits with a redundant leading zero.
fn leading_zero_decimal(t: &str) -> bool {
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    digits.len() > 1 && digits.starts_with('0') && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Radix prefix (`0x`, `0o`, `0b`) and the digits after it.
fn radix(rest: &str) -> (u32, &str) {
    for (prefixes, radix) in [(["0x", "0X"], 16), (["0o", "0O"], 8), (["0b", "0B"], 2)] {
        for prefix in prefixes {
            if let Some(digits) = rest.strip_prefix(prefix) {
                return (radix, digits);
            }
        }
    }
    (10, rest)
}

/// Digits in `radix` with single `_` separators between digits.
fn digits(digits: &str, radix: u32) -> Option<u128> {
    let bytes = digits.as_bytes();
    let mut value: u128 = 0;
    let mut any = false;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'_' {
            let prev_ok = i > 0 && bytes[i - 1] != b'_';
            let next_ok = bytes.get(i + 1).is_some_and(|&n| n != b'_');
            if !prev_ok || !next_ok {
                return None;
            }
            continue;
        }
        let d = char::from(b).to_digit(radix)?;
        value = value
            .checked_mul(u128::from(radix))?
            .checked_add(u128::from(d))?;
        any = true;
    }
    any.then_some(value)
}

/// An unsigned integer (optional `+`), as serde-saphyr's `parse_int_unsigned`.
fn parse_unsigned(t: &str) -> Option<u128> {
    if t.starts_with('-') {
        return None;
    }
    let (radix, ds) = radix(t.strip_prefix('+').unwrap_or(t));
    if radix == 10 && ds.starts_with('0') && ds != "0" {
        return None;
    }
    digits(ds, radix)
}

/// A signed integer, as serde-saphyr's `parse_int_signed`.
fn parse_signed(t: &str) -> Option<i128> {
    let (negative, rest) = match (t.strip_prefix('+'), t.strip_prefix('-')) {
        (Some(rest), _) => (false, rest),
        (None, Some(rest)) => (true, rest),
        (None, None) => (false, t),
    };
    let (radix, ds) = radix(rest);
    if radix == 10 && ds.starts_with('0') && ds != "0" {
        return None;
    }
    let magnitude = digits(ds, radix)?;
    if negative {
        0i128.checked_sub_unsigned(magnitude)
    } else {
        i128::try_from(magnitude).ok()
    }
}

/// A float, as serde-saphyr's `try_parse_float_incl_overflow`: YAML's `.inf`/`.nan`
/// spellings, Rust's decimal syntax, and decimal literals too large for `f64` (infinite).
fn float(s: &str) -> Option<f64> {
    let t = trim(s);
    let (negative, unsigned) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    match unsigned {
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        ".inf" | ".Inf" | ".INF" if negative => return Some(f64::NEG_INFINITY),
        ".inf" | ".Inf" | ".INF" => return Some(f64::INFINITY),
        _ => {}
    }
    let parsed = t.parse::<f64>().ok()?;
    if parsed.is_finite() {
        return Some(parsed);
    }
    // Rust also reads `inf` and `nan`, which YAML keeps as strings: only numerals overflow.
    let numeral = t
        .strip_prefix(['+', '-'])
        .unwrap_or(t)
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit());
    (numeral && parsed.is_infinite()).then_some(parsed)
}

/// A `!!binary` scalar: base64 (whitespace ignored) of UTF-8 text.
fn binary(s: &str, pos: Pos) -> Result<String, YamlError> {
    let bytes = base64(s).ok_or_else(|| YamlError::at(pos, "invalid base64 in !!binary"))?;
    String::from_utf8(bytes).map_err(|_| YamlError::at(pos, "!!binary data is not UTF-8"))
}

/// serde-saphyr's `decode_base64_yaml`: padded base64, strict about trailing bits.
fn base64(s: &str) -> Option<Vec<u8>> {
    fn sextet(b: u8) -> Option<u32> {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    }
    let clean: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let (chunks, rest) = clean.as_chunks::<4>();
    if !rest.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(chunks.len() * 3);
    for (i, &[c0, c1, c2, c3]) in chunks.iter().enumerate() {
        let pad = [c0, c1, c2, c3]
            .iter()
            .rev()
            .take_while(|&&c| c == b'=')
            .count();
        if pad > 2 || pad > 0 && i + 1 != chunks.len() {
            return None;
        }
        let (a, b) = (sextet(c0)?, sextet(c1)?);
        let c = if c2 == b'=' { 0 } else { sextet(c2)? };
        let d = if c3 == b'=' { 0 } else { sextet(c3)? };
        // `=` may only end a chunk, and the bits it drops must be zero.
        if c2 == b'=' && pad < 2 || pad == 2 && b & 0x0F != 0 || pad == 1 && c & 0x03 != 0 {
            return None;
        }
        let triple = (a << 18) | (b << 12) | (c << 6) | d;
        let [_, x, y, z] = triple.to_be_bytes();
        out.push(x);
        if pad < 2 {
            out.push(y);
        }
        if pad == 0 {
            out.push(z);
        }
    }
    Some(out)
}
