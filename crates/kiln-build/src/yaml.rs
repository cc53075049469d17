//! A small YAML tree with line numbers, for the lockfiles and settings kiln checks
//! (`pnpm-lock.yaml`, Yarn berry's `yarn.lock`, `.yarnrc.yml`).
//!
//! Built from yaml-rust2's event parser rather than its document loader because the loader
//! copies a node for every alias, so a few kilobytes of nested aliases expand to gigabytes.
//! These files never use aliases; any alias is an error. Nesting is capped as well.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Yaml {
    Scalar(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Yaml,
    /// 1-based line where the node starts.
    pub(crate) line: usize,
}

impl Node {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.value {
            Yaml::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        self.entries().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (&Node, &Node)> {
        let pairs: &[(Node, Node)] = match &self.value {
            Yaml::Map(pairs) => pairs,
            _ => &[],
        };
        pairs.iter().map(|(k, v)| (k, v))
    }

    pub(crate) fn items(&self) -> &[Node] {
        match &self.value {
            Yaml::Seq(items) => items,
            _ => &[],
        }
    }
}

enum Frame {
    Seq(usize, Vec<Node>),
    Map(usize, Vec<(Node, Node)>, Option<Node>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    doc: Option<Node>,
    error: Option<(usize, String)>,
}

impl Builder {
    fn push(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.doc.is_none() {
                    self.doc = Some(node);
                }
            }
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, pairs, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => pairs.push((key, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => self.push(Node { value: Yaml::Scalar(value), line }),
            Event::SequenceStart(..) | Event::MappingStart(..) if self.stack.len() >= MAX_DEPTH => {
                self.error = Some((line, format!("nesting deeper than {MAX_DEPTH} levels")));
            }
            Event::SequenceStart(..) => self.stack.push(Frame::Seq(line, Vec::new())),
            Event::MappingStart(..) => self.stack.push(Frame::Map(line, Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq(line, items)) => Node { value: Yaml::Seq(items), line },
                    Some(Frame::Map(line, pairs, _)) => {
                        let line = pairs.first().map_or(line, |(k, _)| k.line.min(line));
                        Node { value: Yaml::Map(pairs), line }
                    }
                    None => return,
                };
                self.push(node);
            }
            Event::Alias(_) => self.error = Some((line, "YAML aliases are not accepted here".into())),
            _ => {}
        }
    }
}

/// Parse the first document of `text`; errors carry a 1-based line.
pub(crate) fn parse(text: &str) -> Result<Node, (usize, String)> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|e| (e.marker().line(), e.info().to_string()))?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.doc.unwrap_or(Node { value: Yaml::Map(Vec::new()), line: 1 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_with_lines() {
        let doc = parse("a: 1\nb:\n  c: [x, y]\n  d: {e: f}\n").unwrap();
        assert_eq!(doc.get("a").unwrap().as_str(), Some("1"));
        let b = doc.get("b").unwrap();
        assert_eq!(b.get("c").unwrap().items().len(), 2);
        assert_eq!(b.get("d").unwrap().get("e").unwrap().as_str(), Some("f"));
        assert_eq!(b.get("d").unwrap().get("e").unwrap().line, 4);
        assert_eq!(doc.get("a").unwrap().line, 1);
    }

    #[test]
    fn refuses_aliases_and_deep_nesting() {
        let bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n";
        assert!(parse(bomb).unwrap_err().1.contains("alias"));
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(&deep).unwrap_err().1.contains("nesting"));
        let (line, _) = parse("a: 1\nb: [\n").unwrap_err();
        assert!(line >= 2);
    }
}
