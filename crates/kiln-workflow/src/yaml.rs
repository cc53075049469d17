//! A YAML node tree that remembers where every node is, built from
//! `yaml_rust2`'s event parser.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::BuildHasher;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diagnostic::{Diagnostic, Location};

/// How a scalar was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Plain,
    Quoted,
    /// A `|` or `>` block (its location is where its content starts).
    Block,
}

#[derive(Debug, Clone)]
pub(crate) enum NodeKind {
    Scalar { value: String, style: Style },
    Map(Vec<(Node, Node)>),
    Seq(Vec<Node>),
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: NodeKind,
    pub loc: Location,
}

impl Node {
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, style: Style::Plain }
            if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// A plain `true`/`false`.
    pub fn as_bool(&self) -> Option<bool> {
        match &self.kind {
            NodeKind::Scalar { value, style: Style::Plain } => match value.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// A plain number.
    pub fn as_number(&self) -> Option<f64> {
        match &self.kind {
            NodeKind::Scalar { value, style: Style::Plain } => parse_yaml_number(value),
            _ => None,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { .. } => "a scalar",
            NodeKind::Map(_) => "a mapping",
            NodeKind::Seq(_) => "a sequence",
        }
    }

    /// Where the character at byte `offset` of this scalar's value is
    /// (exact for single-line flow scalars, approximate for block scalars).
    pub fn location_at(&self, offset: usize) -> Location {
        let (value, style) = match &self.kind {
            NodeKind::Scalar { value, style } => (value.as_str(), *style),
            _ => return self.loc,
        };
        let offset = offset.min(value.len());
        let before = value.get(..offset).unwrap_or("");
        let newlines = before.matches('\n').count();
        if newlines == 0 {
            let extra = usize::from(style == Style::Quoted);
            return Location {
                line: self.loc.line,
                column: self.loc.column + extra + before.chars().count(),
            };
        }
        let after_last = before.rsplit('\n').next().unwrap_or("");
        // Continuation lines: a block's lines share its indentation; a
        // flow scalar's indentation is unknown (approximate).
        let indent = if style == Style::Block { self.loc.column - 1 } else { 0 };
        Location { line: self.loc.line + newlines, column: indent + after_last.chars().count() + 1 }
    }

    /// Converts to JSON: plain scalars become null/bool/number, quoted or
    /// block scalars strings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Scalar { value, style } => {
                if *style == Style::Plain {
                    if self.is_null() {
                        return Value::Null;
                    }
                    if let Some(b) = self.as_bool() {
                        return Value::Bool(b);
                    }
                    if let Some(n) = parse_yaml_number(value) {
                        return crate::expr::num_value(n);
                    }
                }
                Value::String(value.clone())
            }
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(pairs) => {
                let mut m = serde_json::Map::new();
                for (k, v) in pairs {
                    let key = match k.as_scalar() {
                        Some(s) => s.to_string(),
                        None => k.to_json().to_string(),
                    };
                    m.insert(key, v.to_json());
                }
                Value::Object(m)
            }
        }
    }
}

fn parse_yaml_number(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    if let Some(hex) = t.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok().map(|v| v as f64);
    }
    if let Some(oct) = t.strip_prefix("0o") {
        return u64::from_str_radix(oct, 8).ok().map(|v| v as f64);
    }
    match t {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "-.inf" | ".nan" | ".NaN" | ".NAN" => return None,
        _ => {}
    }
    let ok = t.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'));
    if !ok || !t.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn loc_of(mark: &Marker) -> Location {
    Location { line: mark.line(), column: mark.col() + 1 }
}

enum Frame {
    Map {
        loc: Location,
        anchor: usize,
        pairs: Vec<(Node, Node)>,
        pending_key: Option<Node>,
        /// Where each scalar key first is, once the mapping has
        /// [`KEY_INDEX_AT`] pairs (before that, `pairs` is searched).
        seen: Option<KeyIndex>,
    },
    Seq {
        loc: Location,
        anchor: usize,
        items: Vec<Node>,
    },
}

struct Builder<'a> {
    file: &'a str,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize)>,
    /// Collections opened beyond [`MAX_DEPTH`] (ignored).
    skipped_depth: usize,
    /// Nodes copied by aliases so far (guards against alias bombs).
    expanded: usize,
    docs: Vec<Node>,
    errors: Vec<Diagnostic>,
}

impl Builder<'_> {
    fn error(&mut self, loc: Location, message: String) {
        self.errors.push(Diagnostic { file: self.file.to_string(), location: loc, message });
    }

    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            let size = node_count(&node);
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { pairs, pending_key, seen, .. }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    let dup = key.as_scalar().and_then(|k| {
                        first_key(pairs, seen, k).map(|first| {
                            format!(
                                "duplicate key `{k}` (first defined at line {}, column {})",
                                first.line, first.column
                            )
                        })
                    });
                    let key_loc = key.loc;
                    pairs.push((key, node));
                    if let Some(message) = dup {
                        self.error(key_loc, message);
                    }
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let loc = loc_of(&mark);
        if self.skipped_depth > 0 || self.stack.len() >= MAX_DEPTH {
            match ev {
                Event::SequenceStart(..) | Event::MappingStart(..) => {
                    if self.skipped_depth == 0 {
                        self.error(loc, format!("nesting deeper than {MAX_DEPTH} levels"));
                    }
                    self.skipped_depth += 1;
                    return;
                }
                Event::SequenceEnd | Event::MappingEnd if self.skipped_depth > 0 => {
                    self.skipped_depth -= 1;
                    return;
                }
                _ if self.skipped_depth > 0 => return,
                _ => {}
            }
        }
        match ev {
            Event::Scalar(value, style, anchor, _tag) => {
                let style = match style {
                    TScalarStyle::Plain => Style::Plain,
                    TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => Style::Quoted,
                    _ => Style::Block,
                };
                self.push_node(Node { kind: NodeKind::Scalar { value, style }, loc }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq { loc, anchor, items: Vec::new() }),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map { loc, anchor, pairs: Vec::new(), pending_key: None, seen: None })
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq { loc, anchor, items }) => {
                        (Node { kind: NodeKind::Seq(items), loc }, anchor)
                    }
                    Some(Frame::Map { loc, anchor, pairs, .. }) => (
                        Node {
                            // A block mapping's start mark is its first `:`;
                            // its first key is where it really starts.
                            loc: match pairs.first() {
                                Some((k, _)) if k.loc.line > loc.line || k.loc.column < loc.column => k.loc,
                                _ => loc,
                            },
                            kind: NodeKind::Map(pairs),
                        },
                        anchor,
                    ),
                    None => return,
                };
                self.push_node(node, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some((mut node, size)) if self.expanded + size <= MAX_ALIAS_EXPANSION => {
                    self.expanded += size;
                    node.loc = loc;
                    self.push_node(node, 0);
                }
                found => {
                    let message = if found.is_some() {
                        "aliases expand to too many nodes"
                    } else {
                        "alias refers to an unknown anchor"
                    };
                    self.error(loc, message.to_string());
                    self.push_node(
                        Node { kind: NodeKind::Scalar { value: String::new(), style: Style::Plain }, loc },
                        0,
                    );
                }
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// Pairs from which a mapping indexes its keys for the duplicate check;
/// smaller ones (nearly all) compare against their few keys.
const KEY_INDEX_AT: usize = 16;

/// A large mapping's scalar keys by hash: the position in `pairs` of the
/// first key with each hash (the keys themselves stay in the tree).
struct KeyIndex {
    hasher: std::hash::RandomState,
    first: HashMap<u64, usize>,
}

/// Where key `k` (at `loc`) of a mapping already is, if it is a duplicate;
/// records it otherwise (`k` is about to be pushed onto `pairs`).
fn first_key(pairs: &[(Node, Node)], seen: &mut Option<KeyIndex>, k: &str) -> Option<Location> {
    let scan = || pairs.iter().find(|(p, _)| p.as_scalar() == Some(k)).map(|(p, _)| p.loc);
    if seen.is_none() && pairs.len() >= KEY_INDEX_AT {
        let hasher = std::hash::RandomState::new();
        let mut first = HashMap::with_capacity(pairs.len() * 2);
        for (i, (p, _)) in pairs.iter().enumerate() {
            if let Some(s) = p.as_scalar() {
                first.entry(hasher.hash_one(s)).or_insert(i);
            }
        }
        *seen = Some(KeyIndex { hasher, first });
    }
    let Some(index) = seen else { return scan() };
    match index.first.entry(index.hasher.hash_one(k)) {
        Entry::Vacant(slot) => {
            slot.insert(pairs.len());
            None
        }
        Entry::Occupied(i) => match pairs.get(*i.get()) {
            Some((p, _)) if p.as_scalar() == Some(k) => Some(p.loc),
            // Another key with the same hash: compare them all.
            _ => scan(),
        },
    }
}

const MAX_ALIAS_EXPANSION: usize = 100_000;
/// Deeper collections are refused (keeps recursion over the tree bounded).
const MAX_DEPTH: usize = 64;

fn node_count(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar { .. } => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(node_count).sum::<usize>(),
        NodeKind::Map(pairs) => 1 + pairs.iter().map(|(k, v)| node_count(k) + node_count(v)).sum::<usize>(),
    }
}

/// Parses a YAML document into a located tree.
pub(crate) fn parse(file: &str, source: &str) -> Result<Node, Vec<Diagnostic>> {
    // GitHub's parser accepts a flow collection closed on a line of its own
    // at (or left of) the indentation of its key (`os: [\n  a,\n]`);
    // `yaml_rust2` follows the YAML spec and refuses it. Where the refusal
    // is at such a closing line, indent that line to the column of the line
    // before it and parse again: only that line's columns move, and every
    // other node keeps its line and column.
    let mut text = std::borrow::Cow::Borrowed(source);
    for _ in 0..64 {
        match parse_once(file, &text) {
            Err(e) if e.len() == 1 && e[0].message == "YAML syntax error: invalid indentation" => {
                match reindent_flow_close(&text, e[0].location.line) {
                    Some(fixed) => text = std::borrow::Cow::Owned(fixed),
                    None => return Err(e),
                }
            }
            other => return other,
        }
    }
    parse_once(file, &text)
}

/// `source` with line `line` (1-based) indented like the line before it,
/// when that line starts with a flow collection's closing `]` or `}`.
fn reindent_flow_close(source: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = source.split_inclusive('\n').collect();
    let idx = line.checked_sub(1)?;
    let this = lines.get(idx)?;
    let trimmed = this.trim_start_matches(' ');
    if !(trimmed.starts_with(']') || trimmed.starts_with('}')) {
        return None;
    }
    let indent_of = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let prev = lines[..idx].iter().rev().find(|l| !l.trim().is_empty())?;
    let want = indent_of(prev).max(indent_of(this) + 1);
    if want <= indent_of(this) {
        return None;
    }
    let mut out = String::with_capacity(source.len() + want);
    for (i, l) in lines.iter().enumerate() {
        if i == idx {
            out.extend(std::iter::repeat_n(' ', want));
            out.push_str(trimmed);
        } else {
            out.push_str(l);
        }
    }
    Some(out)
}

fn parse_once(file: &str, source: &str) -> Result<Node, Vec<Diagnostic>> {
    let mut builder = Builder {
        file,
        stack: Vec::new(),
        anchors: HashMap::new(),
        expanded: 0,
        skipped_depth: 0,
        docs: Vec::new(),
        errors: Vec::new(),
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut parser = Parser::new_from_str(source);
        let r = parser.load(&mut builder, true);
        (r, builder)
    }));
    let (result, builder) = match result {
        Ok(v) => v,
        Err(_) => {
            return Err(vec![Diagnostic {
                file: file.to_string(),
                location: Location { line: 1, column: 1 },
                message: "YAML parser failed on this file".to_string(),
            }])
        }
    };
    if let Err(e) = result {
        return Err(vec![Diagnostic {
            file: file.to_string(),
            location: loc_of(e.marker()),
            message: format!("YAML syntax error: {}", e.info()),
        }]);
    }
    if !builder.errors.is_empty() {
        return Err(builder.errors);
    }
    let mut docs = builder.docs;
    match docs.len() {
        0 => Err(vec![Diagnostic {
            file: file.to_string(),
            location: Location { line: 1, column: 1 },
            message: "the file is empty; expected a workflow mapping".to_string(),
        }]),
        1 => Ok(docs.remove(0)),
        _ => Err(vec![Diagnostic {
            file: file.to_string(),
            location: docs[1].loc,
            message: "a workflow file must contain exactly one YAML document".to_string(),
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_styles() {
        let n = parse("f", "a: 1\nb:\n  - 'x'\n  - y\n").unwrap();
        let NodeKind::Map(pairs) = &n.kind else { panic!() };
        assert_eq!(pairs[0].0.loc, Location { line: 1, column: 1 });
        assert_eq!(pairs[0].1.to_json(), serde_json::json!(1));
        let NodeKind::Seq(items) = &pairs[1].1.kind else { panic!() };
        assert_eq!(items[0].loc, Location { line: 3, column: 5 });
        assert_eq!(items[0].to_json(), serde_json::json!("x"));
        assert_eq!(items[1].loc, Location { line: 4, column: 5 });
    }

    #[test]
    fn duplicate_keys_in_a_large_mapping() {
        let mut y: String = (0..40).map(|i| format!("k{i}: {i}\n")).collect();
        y.push_str("k7: again\nk40: 40\n");
        let e = parse("f", &y).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].location, Location { line: 41, column: 1 });
        assert!(
            e[0].message.contains("duplicate key `k7` (first defined at line 8, column 1)"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn duplicate_keys() {
        let e = parse("f", "a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e[0].location, Location { line: 3, column: 1 });
        assert!(e[0].message.contains("duplicate key `a`"), "{}", e[0].message);
    }

    #[test]
    fn syntax_error() {
        let e = parse("f", "a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e[0].message.starts_with("YAML syntax error"));
        assert!(e[0].location.line >= 1);
    }

    #[test]
    fn limits() {
        let deep = format!("a: {}{}\n", "[".repeat(100), "]".repeat(100));
        let e = parse("f", &deep).unwrap_err();
        assert!(e[0].message.contains("nesting deeper"), "{}", e[0].message);
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..10 {
            let prev = if i == 0 { "a".to_string() } else { format!("b{}", i - 1) };
            bomb.push_str(&format!("b{i}: &b{i} [{}]\n", vec![format!("*{prev}"); 10].join(", ")));
        }
        let e = parse("f", &bomb).unwrap_err();
        assert!(e[0].message.contains("too many nodes"), "{}", e[0].message);
    }

    #[test]
    fn aliases_resolve() {
        let n = parse("f", "a: &x {k: v}\nb: *x\n").unwrap();
        assert_eq!(n.to_json(), serde_json::json!({"a": {"k": "v"}, "b": {"k": "v"}}));
    }

    #[test]
    fn quoted_scalars_are_strings() {
        let n = parse("f", "a: 'true'\nb: true\nc: \"12\"\nd: 12.5\n").unwrap();
        assert_eq!(n.to_json(), serde_json::json!({"a": "true", "b": true, "c": "12", "d": 12.5}));
    }
}
