//! Token patterns (`[redacted:<name>]`), loaded from JSON; see `PATTERNS.md`.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use regex::bytes::Regex;
use serde_json::Value;

use crate::scrubber::Counts;
use crate::SecretError;

const BUILTIN: &str = include_str!("patterns.json");

#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// Redact capture group `group` (0 = whole match) of every match.
    Regex { re: Regex, group: usize },
    /// A block: from `begin` to the end of the line, then whole lines while they match `body`,
    /// up to and including `end`.
    Block { begin: Regex, end: Regex, body: Regex },
}

#[derive(Clone, Debug)]
pub(crate) struct Pattern {
    pub name: String,
    pub literals: Vec<String>,
    pub kind: Kind,
}

/// A set of token patterns. Several entries may share a name (alternative forms of one kind of
/// token); they are applied in order, each to the output of the previous one.
#[derive(Clone, Debug, Default)]
pub struct PatternSet {
    pub(crate) patterns: Vec<Pattern>,
}

fn perr(msg: impl Into<String>) -> SecretError {
    SecretError::Pattern(msg.into())
}

fn compile(name: &str, field: &str, src: &str) -> Result<Regex, SecretError> {
    regex::bytes::RegexBuilder::new(src)
        .size_limit(10 << 20)
        .build()
        .map_err(|e| perr(format!("pattern {name}: field {field}: {e}")))
}

impl PatternSet {
    /// An empty set (values only).
    pub fn empty() -> PatternSet {
        PatternSet::default()
    }

    /// The built-in patterns (`src/patterns.json`, documented in `PATTERNS.md`).
    pub fn builtin() -> PatternSet {
        // The built-in JSON is tested; failing here is a build defect.
        PatternSet::from_json(BUILTIN).expect("built-in patterns.json is valid")
    }

    /// Parses a pattern set:
    ///
    /// ```json
    /// {"patterns": [
    ///   {"name": "my-token", "literals": ["myt_"], "regex": "myt_[a-z0-9]{32}", "group": 0},
    ///   {"name": "my-block", "literals": ["BEGIN SECRET"], "begin": "BEGIN SECRET",
    ///    "end": "END SECRET", "body": "^[A-Za-z0-9+/=]*$"}
    /// ]}
    /// ```
    ///
    /// `name` must be `[a-z0-9-]+`. `literals` are fragments of which at least one occurs in
    /// every match (compared case-sensitively: list the case variants you need); they gate the regexes, so lines without
    /// any of them cost almost nothing. A pattern without literals runs on every line (slow).
    /// `group` selects the capture group to redact (default 0, the whole match). Regexes use
    /// the `regex` crate's syntax over bytes.
    pub fn from_json(text: &str) -> Result<PatternSet, SecretError> {
        let v: Value = serde_json::from_str(text).map_err(|e| perr(format!("JSON: {e}")))?;
        let list = v
            .get("patterns")
            .and_then(Value::as_array)
            .ok_or_else(|| perr("expected an object with a \"patterns\" array"))?;
        let mut patterns = Vec::new();
        for (i, p) in list.iter().enumerate() {
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| perr(format!("pattern #{i}: missing \"name\"")))?;
            if name.is_empty()
                || !name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            {
                return Err(perr(format!("pattern #{i}: name must match [a-z0-9-]+")));
            }
            let literals = match p.get("literals") {
                None => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|l| {
                        l.as_str()
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .ok_or_else(|| perr(format!("pattern {name}: bad literal")))
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(perr(format!("pattern {name}: literals must be an array"))),
            };
            let field = |f: &str| p.get(f).and_then(Value::as_str);
            let kind = if let Some(re) = field("regex") {
                let re = compile(name, "regex", re)?;
                let group = match p.get("group") {
                    None => 0,
                    Some(g) => g.as_u64().ok_or_else(|| perr(format!("pattern {name}: bad group")))? as usize,
                };
                if group >= re.captures_len() {
                    return Err(perr(format!("pattern {name}: no capture group {group}")));
                }
                Kind::Regex { re, group }
            } else if let (Some(b), Some(e), Some(body)) = (field("begin"), field("end"), field("body")) {
                Kind::Block {
                    begin: compile(name, "begin", b)?,
                    end: compile(name, "end", e)?,
                    body: compile(name, "body", body)?,
                }
            } else {
                return Err(perr(format!(
                    "pattern {name}: needs \"regex\", or \"begin\" + \"end\" + \"body\""
                )));
            };
            patterns.push(Pattern { name: name.to_string(), literals, kind });
        }
        Ok(PatternSet { patterns })
    }

    /// Adds `other`'s patterns. Entries of `other` replace all entries of `self` that have the
    /// same name.
    pub fn extend(&mut self, other: PatternSet) {
        let names: Vec<String> = other.patterns.iter().map(|p| p.name.clone()).collect();
        self.patterns.retain(|p| !names.contains(&p.name));
        self.patterns.extend(other.patterns);
    }

    /// The distinct pattern names, in order.
    pub fn names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.patterns {
            if !out.contains(&p.name.as_str()) {
                out.push(&p.name);
            }
        }
        out
    }

    /// Number of literal fragments (the size of the prefilter automaton).
    pub fn literal_count(&self) -> usize {
        self.patterns.iter().map(|p| p.literals.len()).sum()
    }
}

/// Per-stream pattern state: the block (pattern index) we are inside of, if any.
pub(crate) type LineState = Option<usize>;

/// A pattern set ready to run.
#[derive(Debug)]
pub(crate) struct Compiled {
    patterns: Vec<Pattern>,
    markers: Vec<Vec<u8>>,
    /// The literals, leftmost-first (finds the leftmost literal occurrence).
    prefilter: Option<AhoCorasick>,
    /// The literal strings, and their indexes by first byte.
    lits: Vec<Vec<u8>>,
    lit_by_first: Vec<Vec<usize>>,
    /// The same literals in a SIMD (Teddy) searcher, to find the next line with a hit fast.
    packed: Option<aho_corasick::packed::Searcher>,
    /// literal index -> pattern index
    lit_owner: Vec<usize>,
    /// Some pattern has no literals: every line is checked.
    all_lines: bool,
}

impl Compiled {
    pub fn new(set: &PatternSet) -> Compiled {
        let mut lits = Vec::new();
        let mut lit_owner = Vec::new();
        let mut all_lines = false;
        for (i, p) in set.patterns.iter().enumerate() {
            if p.literals.is_empty() {
                all_lines = true;
            }
            for l in &p.literals {
                lits.push(l.as_bytes().to_vec());
                lit_owner.push(i);
            }
        }
        let prefilter = if lits.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .kind(Some(AhoCorasickKind::DFA))
                    .match_kind(MatchKind::LeftmostFirst)
                    .build(&lits)
                    .expect("literal automaton builds"),
            )
        };
        let packed = if lits.is_empty() {
            None
        } else {
            aho_corasick::packed::Config::new()
                .match_kind(aho_corasick::packed::MatchKind::LeftmostFirst)
                .only_teddy_fat(Some(true))
                .builder()
                .extend(&lits)
                .build()
        };
        let mut lit_by_first = vec![Vec::new(); 256];
        for (i, l) in lits.iter().enumerate() {
            lit_by_first[l[0] as usize].push(i);
        }
        Compiled {
            lits,
            lit_by_first,
            packed,
            markers: set.patterns.iter().map(|p| format!("[redacted:{}]", p.name).into_bytes()).collect(),
            patterns: set.patterns.clone(),
            prefilter,
            lit_owner,
            all_lines,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Applies the patterns to `text` (complete lines, except possibly the last piece).
    /// Returns `None` when nothing changed.
    pub fn apply(&self, text: &[u8], st: &mut LineState, counts: &mut Counts) -> Option<Vec<u8>> {
        if self.patterns.is_empty() || text.is_empty() {
            return None;
        }
        let gated = !self.all_lines;
        // Changed lines: (start, end, replacement). Lines that a literal hits but no pattern
        // changes (the common case: `https://host/path`) cost no copy of the text.
        let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
        let mut hit = Hits::new(self.patterns.len());
        // `next`: the first literal occurrence at or after `pos`.
        let mut next = self.find_from(text, 0);
        let mut pos = 0;
        while pos < text.len() {
            let ls = if st.is_none() && gated {
                let Some(h) = next else { break };
                memchr::memrchr(b'\n', &text[pos..h]).map_or(pos, |p| pos + p + 1)
            } else {
                pos
            };
            let le = memchr::memchr(b'\n', &text[ls..]).map_or(text.len(), |p| ls + p + 1);
            // Every literal that occurs inside the line: each start position in turn, and
            // every literal at it (they may overlap).
            hit.clear();
            while let Some(h) = next {
                if h >= le {
                    break;
                }
                for &li in &self.lit_by_first[text[h] as usize] {
                    if text[h..le].starts_with(&self.lits[li]) {
                        hit.set(self.lit_owner[li]);
                    }
                }
                next = self.find_from(text, h + 1);
            }
            if let Some(new) = self.line(&text[ls..le], st, counts, &mut hit) {
                edits.push((ls, le, new));
            }
            pos = le;
        }
        if edits.is_empty() {
            return None;
        }
        let extra: usize = edits.iter().map(|e| e.2.len()).sum();
        let mut out = Vec::with_capacity(text.len() + extra);
        let mut pos = 0;
        for (ls, le, new) in edits {
            out.extend_from_slice(&text[pos..ls]);
            out.extend_from_slice(&new);
            pos = le;
        }
        out.extend_from_slice(&text[pos..]);
        Some(out)
    }

    /// Start of the leftmost literal occurrence in `text[from..]` (absolute offset).
    #[inline]
    fn find_from(&self, text: &[u8], from: usize) -> Option<usize> {
        if from >= text.len() {
            return None;
        }
        let span = aho_corasick::Span { start: from, end: text.len() };
        match &self.packed {
            Some(p) => p.find_in(text, span).map(|m| m.start()),
            None => {
                let input = aho_corasick::Input::new(text).span(span);
                self.prefilter.as_ref()?.find(input).map(|m| m.start())
            }
        }
    }

    /// Scrubs one line (with its terminator); `None` when it is unchanged.
    fn line(&self, full: &[u8], st: &mut LineState, counts: &mut Counts, hit: &mut Hits) -> Option<Vec<u8>> {
        let mut ce = full.len();
        if ce > 0 && full[ce - 1] == b'\n' {
            ce -= 1;
        }
        if ce > 0 && full[ce - 1] == b'\r' {
            ce -= 1;
        }
        let (content, term) = full.split_at(ce);
        let mut rest = content;
        let mut head: &[u8] = &[];
        if let Some(bi) = *st {
            if let Kind::Block { end, body, .. } = &self.patterns[bi].kind {
                if let Some(m) = end.find(content) {
                    head = &self.markers[bi];
                    rest = &content[m.end()..];
                    *st = None;
                } else if body.is_match(content) {
                    let mut out = self.markers[bi].clone();
                    out.extend_from_slice(term);
                    return Some(out);
                } else {
                    *st = None;
                }
            }
        }
        let scrubbed = self.scrub_line(rest, st, counts, hit);
        if head.is_empty() && matches!(scrubbed, Cow::Borrowed(_)) {
            return None;
        }
        let mut out = Vec::with_capacity(head.len() + scrubbed.len() + term.len());
        out.extend_from_slice(head);
        out.extend_from_slice(&scrubbed);
        out.extend_from_slice(term);
        Some(out)
    }

    fn scrub_line<'a>(
        &self,
        line: &'a [u8],
        st: &mut LineState,
        counts: &mut Counts,
        hit: &mut Hits,
    ) -> Cow<'a, [u8]> {
        if self.all_lines {
            for (i, p) in self.patterns.iter().enumerate() {
                if p.literals.is_empty() {
                    hit.set(i);
                }
            }
        }
        let mut cur: Cow<'a, [u8]> = Cow::Borrowed(line);
        for (i, p) in self.patterns.iter().enumerate() {
            if !hit.get(i) {
                continue;
            }
            let marker = &self.markers[i];
            let mut n = 0u64;
            let mut new = Vec::new();
            match &p.kind {
                Kind::Regex { re, group } => {
                    let mut last = 0;
                    if *group == 0 {
                        for m in re.find_iter(&cur) {
                            new.extend_from_slice(&cur[last..m.start()]);
                            new.extend_from_slice(marker);
                            last = m.end();
                            n += 1;
                        }
                    } else if re.is_match(&cur) {
                        // (The gate keeps the common literal-but-no-match line, such as a plain
                        // `https://host/path`, from allocating capture slots.)
                        for caps in re.captures_iter(&cur) {
                            let Some(m) = caps.get(*group) else { continue };
                            if m.start() < last {
                                continue;
                            }
                            new.extend_from_slice(&cur[last..m.start()]);
                            new.extend_from_slice(marker);
                            last = m.end();
                            n += 1;
                        }
                    }
                    if n > 0 {
                        new.extend_from_slice(&cur[last..]);
                    }
                }
                Kind::Block { begin, end, .. } => {
                    if let Some(b) = begin.find(&cur) {
                        new.extend_from_slice(&cur[..b.start()]);
                        new.extend_from_slice(marker);
                        match end.find(&cur[b.end()..]) {
                            Some(e) => new.extend_from_slice(&cur[b.end() + e.end()..]),
                            None => *st = Some(i),
                        }
                        n = 1;
                    }
                }
            }
            if n > 0 {
                cur = Cow::Owned(new);
                *counts.patterns.entry(p.name.clone()).or_insert(0) += n;
            }
        }
        cur
    }
}

/// Which patterns a line's literals hit (a reusable bit set).
#[derive(Debug)]
struct Hits(Vec<u64>);

impl Hits {
    fn new(n: usize) -> Hits {
        Hits(vec![0; n.div_ceil(64)])
    }
    #[inline]
    fn clear(&mut self) {
        self.0.iter_mut().for_each(|w| *w = 0);
    }
    #[inline]
    fn set(&mut self, i: usize) {
        self.0[i >> 6] |= 1 << (i & 63);
    }
    #[inline]
    fn get(&self, i: usize) -> bool {
        self.0[i >> 6] & (1 << (i & 63)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_parses() {
        let set = PatternSet::builtin();
        let names = set.names();
        for n in [
            "github-token",
            "github-pat",
            "aws-access-key-id",
            "aws-secret-key",
            "slack-token",
            "stripe-key",
            "google-api-key",
            "private-key",
            "jwt",
            "authorization-header",
            "url-credentials",
        ] {
            assert!(names.contains(&n), "{n}");
        }
    }

    #[test]
    fn from_json_errors_and_extend() {
        assert!(PatternSet::from_json("[]").is_err());
        assert!(PatternSet::from_json(r#"{"patterns":[{"name":"Bad Name","regex":"x"}]}"#).is_err());
        assert!(PatternSet::from_json(r#"{"patterns":[{"name":"a","regex":"("}]}"#).is_err());
        assert!(PatternSet::from_json(r#"{"patterns":[{"name":"a","regex":"x","group":1}]}"#).is_err());
        assert!(PatternSet::from_json(r#"{"patterns":[{"name":"a"}]}"#).is_err());
        let mut set = PatternSet::builtin();
        let n = set.names().len();
        set.extend(
            PatternSet::from_json(
                r#"{"patterns":[{"name":"jwt","literals":["x"],"regex":"x"},{"name":"mine","regex":"m"}]}"#,
            )
            .unwrap(),
        );
        assert_eq!(set.names().len(), n + 1);
        assert_eq!(set.names().iter().filter(|x| **x == "jwt").count(), 1);
    }
}
