//! Rule files: parsing, validation and compilation into matchers.
//!
//! The format is documented in the crate docs. Validation is strict (unknown fields, empty
//! patterns, fields that do not fit the kind are errors) because a typo in a rule silently
//! disables it.

use std::collections::HashSet;

use regex::bytes::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::{OutputKind, ScanError};

/// The built-in rules.
pub(crate) const BUILTIN: &str = include_str!("rules.json");

/// Default `max_size` of a regex rule without a prefilter.
const DEFAULT_MAX_SIZE: u64 = 1 << 20;
/// Compiled size limit of one regex: rules are small, and a huge one is a mistake.
const REGEX_SIZE_LIMIT: usize = 4 << 20;

/// How sure a rule is that a hit is malicious.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// Flag the artifact for a human; it is still released.
    Low,
    /// Quarantine the artifact.
    High,
}

/// What a rule's patterns are; see the crate docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    /// Strings that occur anywhere in the file.
    Literal,
    /// Byte regexes (Unicode off), run after a literal prefilter.
    Regex,
    /// Executable headers: `elf`, `pe`, `macho`, or `hex:<bytes>`.
    Magic,
    /// File base names.
    Filename,
    /// A long line of high byte entropy.
    Entropy,
    /// A symbolic link.
    Symlink,
}

/// One rule as written in a rule file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique name shown in findings.
    pub id: String,
    /// One line for a human.
    pub description: String,
    /// High quarantines, low flags.
    pub confidence: Confidence,
    /// How `patterns` are matched.
    pub kind: RuleKind,
    /// What to look for.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Output kinds the rule runs on (default: all).
    #[serde(default = "all_kinds")]
    pub applies_to: Vec<OutputKind>,
    /// Only files whose name ends with one of these (default: all files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
    /// ASCII case-insensitive matching (`literal`, `filename`).
    #[serde(default)]
    pub ignore_case: bool,
    /// `regex`: literals, one of which must occur before the regexes run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefilter: Vec<String>,
    /// `regex` without prefilter: largest file the regexes run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// `regex`: matches needed in one file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_matches: Option<usize>,
    /// `entropy`: shortest line considered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_line_length: Option<usize>,
    /// `entropy`: bits per byte at or above which a line hits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_entropy: Option<f64>,
}

fn all_kinds() -> Vec<OutputKind> {
    OutputKind::ALL.to_vec()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    rules: Vec<Rule>,
}

/// Parse a rule file (`{"rules": [...]}`) and validate every rule on its own.
pub(crate) fn parse_rules(json: &str) -> Result<Vec<Rule>, ScanError> {
    let file: RuleFile =
        serde_json::from_str(json).map_err(|e| ScanError::Rules { rule: None, message: e.to_string() })?;
    for rule in &file.rules {
        validate(rule).map_err(|message| ScanError::Rules { rule: Some(rule.id.clone()), message })?;
    }
    Ok(file.rules)
}

fn validate(rule: &Rule) -> Result<(), String> {
    if rule.id.is_empty() || !rule.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err("the id must be non-empty and made of ASCII letters, digits, `-` and `_`".into());
    }
    if rule.applies_to.is_empty() {
        return Err("`applies_to` is empty, so the rule never runs".into());
    }
    if rule.extensions.iter().any(|e| !e.starts_with('.') || e.len() < 2) {
        return Err("every extension starts with `.` (\".js\")".into());
    }
    if rule.patterns.iter().any(String::is_empty) || rule.prefilter.iter().any(String::is_empty) {
        return Err("empty pattern".into());
    }
    let wants_patterns = !matches!(rule.kind, RuleKind::Entropy | RuleKind::Symlink);
    if wants_patterns == rule.patterns.is_empty() {
        return Err(if wants_patterns {
            "the rule has no patterns".into()
        } else {
            format!("a `{:?}` rule takes no patterns", rule.kind).to_lowercase()
        });
    }
    let only = |name: &str, set: bool, kinds: &[RuleKind]| -> Result<(), String> {
        if set && !kinds.contains(&rule.kind) {
            Err(format!("`{name}` does not apply to this kind of rule"))
        } else {
            Ok(())
        }
    };
    only("ignore_case", rule.ignore_case, &[RuleKind::Literal, RuleKind::Filename])?;
    only("prefilter", !rule.prefilter.is_empty(), &[RuleKind::Regex])?;
    only("max_size", rule.max_size.is_some(), &[RuleKind::Regex])?;
    only("min_matches", rule.min_matches.is_some(), &[RuleKind::Regex])?;
    only("min_line_length", rule.min_line_length.is_some(), &[RuleKind::Entropy])?;
    only("min_entropy", rule.min_entropy.is_some(), &[RuleKind::Entropy])?;
    if rule.min_matches == Some(0) {
        return Err("`min_matches` must be at least 1".into());
    }
    match rule.kind {
        RuleKind::Regex => {
            for p in &rule.patterns {
                build_regex(p)?;
            }
        }
        RuleKind::Magic => {
            for p in &rule.patterns {
                Magic::parse(p)?;
            }
        }
        RuleKind::Entropy => match (rule.min_line_length, rule.min_entropy) {
            (Some(len), Some(bits)) if len > 0 && (0.0..=8.0).contains(&bits) => {}
            _ => return Err("an entropy rule needs `min_line_length` > 0 and `min_entropy` in 0..=8".into()),
        },
        RuleKind::Filename => {
            if rule.patterns.iter().any(|p| p.contains('/')) {
                return Err("filename patterns are base names, without `/`".into());
            }
        }
        RuleKind::Literal | RuleKind::Symlink => {}
    }
    Ok(())
}

fn build_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("regex {pattern:?}: {e}"))
}

/// A recognised executable header.
#[derive(Debug, Clone)]
pub(crate) enum Magic {
    Elf,
    Pe,
    MachO,
    Hex(Vec<u8>),
}

impl Magic {
    fn parse(s: &str) -> Result<Magic, String> {
        match s {
            "elf" => Ok(Magic::Elf),
            "pe" => Ok(Magic::Pe),
            "macho" => Ok(Magic::MachO),
            _ => {
                let hex = s
                    .strip_prefix("hex:")
                    .ok_or_else(|| format!("unknown magic {s:?} (elf, pe, macho or hex:<bytes>)"))?;
                decode_hex(hex)
                    .filter(|b| !b.is_empty())
                    .map(Magic::Hex)
                    .ok_or_else(|| format!("bad hex in {s:?}"))
            }
        }
    }

    /// The format's name when `data` starts with this header.
    pub(crate) fn check(&self, data: &[u8]) -> Option<String> {
        match self {
            Magic::Elf => data.starts_with(b"\x7fELF").then(|| "ELF executable".to_string()),
            Magic::Pe => {
                if !data.starts_with(b"MZ") || data.len() < 0x40 {
                    return None;
                }
                let at = u32::from_le_bytes([data[0x3c], data[0x3d], data[0x3e], data[0x3f]]) as usize;
                let sig = data.get(at..at.checked_add(4)?)?;
                (sig == b"PE\0\0").then(|| "PE executable".to_string())
            }
            Magic::MachO => {
                let head: [u8; 4] = data.get(..4)?.try_into().ok()?;
                match head {
                    [0xfe, 0xed, 0xfa, 0xce | 0xcf] | [0xce | 0xcf, 0xfa, 0xed, 0xfe] => {
                        Some("Mach-O executable".to_string())
                    }
                    [0xca, 0xfe, 0xba, 0xbe] => {
                        // Shared with Java class files, whose next u32 (minor, major version)
                        // is 45 or more; a universal binary's is its architecture count.
                        let n: [u8; 4] = data.get(4..8)?.try_into().ok()?;
                        (1..=16)
                            .contains(&u32::from_be_bytes(n))
                            .then(|| "Mach-O universal binary".to_string())
                    }
                    _ => None,
                }
            }
            Magic::Hex(prefix) => data.starts_with(prefix).then(|| format!("header {}", encode_hex(prefix))),
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    s.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => u8::from_str_radix(std::str::from_utf8(&[*hi, *lo]).ok()?, 16).ok(),
            _ => None,
        })
        .collect()
}

fn encode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a compiled rule does with a file, beyond the shared literal pass.
#[derive(Debug)]
pub(crate) enum Matcher {
    /// Hits when any of its literals (indices into the shared automaton) occurred.
    Literal(Vec<usize>),
    Regex {
        /// Indices of prefilter literals in the shared automaton; empty: run on small files.
        prefilter: Vec<usize>,
        max_size: u64,
        min_matches: usize,
        regexes: Vec<Regex>,
    },
    Magic(Vec<Magic>),
    /// Base names, lower-cased when `ignore_case`.
    Filename {
        names: Vec<String>,
        ignore_case: bool,
    },
    Entropy {
        min_line_length: usize,
        min_entropy: f64,
    },
    Symlink,
}

/// A rule ready to run.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) rule: Rule,
    pub(crate) matcher: Matcher,
}

/// One literal of the shared automaton.
#[derive(Debug)]
pub(crate) struct Needle {
    pub(crate) bytes: Vec<u8>,
    /// The automaton is case-insensitive; a case-sensitive needle's hit is checked again.
    pub(crate) case_sensitive: bool,
}

/// Compile validated rules; fails on duplicate ids.
pub(crate) fn compile(rules: Vec<Rule>) -> Result<(Vec<Compiled>, Vec<Needle>), ScanError> {
    let mut ids = HashSet::new();
    let mut needles = Vec::new();
    let mut compiled = Vec::with_capacity(rules.len());
    let mut add_needles = |list: &[String], case_sensitive: bool| -> Vec<usize> {
        list.iter()
            .map(|p| {
                needles.push(Needle { bytes: p.as_bytes().to_vec(), case_sensitive });
                needles.len() - 1
            })
            .collect()
    };
    for rule in rules {
        if !ids.insert(rule.id.clone()) {
            return Err(ScanError::Rules { rule: Some(rule.id), message: "duplicate rule id".into() });
        }
        let err = |message: String| ScanError::Rules { rule: Some(rule.id.clone()), message };
        let matcher = match rule.kind {
            RuleKind::Literal => Matcher::Literal(add_needles(&rule.patterns, !rule.ignore_case)),
            RuleKind::Regex => Matcher::Regex {
                prefilter: add_needles(&rule.prefilter, true),
                max_size: rule.max_size.unwrap_or(DEFAULT_MAX_SIZE),
                min_matches: rule.min_matches.unwrap_or(1),
                regexes: rule
                    .patterns
                    .iter()
                    .map(|p| build_regex(p))
                    .collect::<Result<_, _>>()
                    .map_err(err)?,
            },
            RuleKind::Magic => Matcher::Magic(
                rule.patterns.iter().map(|p| Magic::parse(p)).collect::<Result<_, _>>().map_err(err)?,
            ),
            RuleKind::Filename => Matcher::Filename {
                names: rule
                    .patterns
                    .iter()
                    .map(|p| if rule.ignore_case { p.to_ascii_lowercase() } else { p.clone() })
                    .collect(),
                ignore_case: rule.ignore_case,
            },
            RuleKind::Entropy => Matcher::Entropy {
                min_line_length: rule.min_line_length.unwrap_or(usize::MAX),
                min_entropy: rule.min_entropy.unwrap_or(8.0),
            },
            RuleKind::Symlink => Matcher::Symlink,
        };
        compiled.push(Compiled { rule, matcher });
    }
    Ok((compiled, needles))
}

/// Shannon entropy of `data` in bits per byte (0 for empty input).
pub(crate) fn entropy(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let mut counts = [0u64; 256];
    for &b in data {
        counts[b as usize] += 1;
    }
    let n = data.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| c as f64 / n).map(|p| -p * p.log2()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_json(extra: &str) -> String {
        format!(
            r#"{{"rules": [{{"id": "t", "description": "d", "confidence": "low", "kind": "literal", "patterns": ["x"]{extra}}}]}}"#
        )
    }

    #[test]
    fn builtin_rules_parse_and_compile() {
        let rules = parse_rules(BUILTIN).unwrap();
        assert!(rules.len() >= 15);
        compile(rules).unwrap();
    }

    #[test]
    fn defaults_apply() {
        let rules = parse_rules(&rule_json("")).unwrap();
        assert_eq!(rules[0].applies_to, OutputKind::ALL.to_vec());
        assert!(!rules[0].ignore_case);
    }

    #[test]
    fn invalid_rules_are_refused_with_their_id() {
        for (extra, want) in [
            (r#", "prefilter": ["a"]"#, "`prefilter` does not apply"),
            (r#", "applies_to": []"#, "never runs"),
            (r#", "extensions": ["js"]"#, "starts with `.`"),
            (r#", "min_entropy": 2.0"#, "`min_entropy` does not apply"),
            (r#", "bogus": 1"#, "unknown field"),
        ] {
            let err = parse_rules(&rule_json(extra)).unwrap_err().to_string();
            assert!(err.contains(want), "{extra}: {err}");
        }
        let bad = [
            r#"{"rules": [{"id": "r", "description": "d", "confidence": "high", "kind": "regex", "patterns": ["("]}]}"#,
            r#"{"rules": [{"id": "m", "description": "d", "confidence": "high", "kind": "magic", "patterns": ["hex:zz"]}]}"#,
            r#"{"rules": [{"id": "e", "description": "d", "confidence": "low", "kind": "entropy"}]}"#,
            r#"{"rules": [{"id": "s", "description": "d", "confidence": "low", "kind": "symlink", "patterns": ["x"]}]}"#,
            r#"{"rules": [{"id": "l", "description": "d", "confidence": "low", "kind": "literal", "patterns": [""]}]}"#,
            r#"{"rules": [{"id": "f", "description": "d", "confidence": "low", "kind": "filename", "patterns": ["a/b"]}]}"#,
            r#"{"rules": [{"id": "c", "description": "d", "confidence": "medium", "kind": "literal", "patterns": ["x"]}]}"#,
        ];
        for json in bad {
            assert!(parse_rules(json).is_err(), "{json}");
        }
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let mut rules = parse_rules(&rule_json("")).unwrap();
        rules.push(rules[0].clone());
        let err = compile(rules).unwrap_err().to_string();
        assert!(err.contains("duplicate"), "{err}");
    }

    #[test]
    fn magic_headers() {
        let mut pe = vec![0u8; 0x80];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x40;
        pe[0x40..0x44].copy_from_slice(b"PE\0\0");
        assert!(Magic::Pe.check(&pe).is_some());
        // `MZ` text without a PE header is not an executable.
        assert!(Magic::Pe
            .check(b"MZ is a file that starts like a DOS program but is only text, long enough....")
            .is_none());
        let mut dangling = pe.clone();
        dangling[0x3c] = 0xff;
        assert!(Magic::Pe.check(&dangling).is_none());

        assert!(Magic::Elf.check(b"\x7fELF\x02\x01\x01").is_some());
        assert!(Magic::Elf.check(b"ELF").is_none());
        for head in [[0xfe, 0xed, 0xfa, 0xcf], [0xcf, 0xfa, 0xed, 0xfe], [0xce, 0xfa, 0xed, 0xfe]] {
            assert!(Magic::MachO.check(&head).is_some());
        }
        assert!(Magic::MachO.check(&[0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 2]).is_some());
        // A Java class file (major version 52) is not a universal binary.
        assert!(Magic::MachO.check(&[0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 52]).is_none());
        let hex = Magic::parse("hex:0061736d").unwrap();
        assert!(hex.check(b"\0asm\x01").is_some());
        assert!(hex.check(b"\0as").is_none());
    }

    #[test]
    fn entropy_bounds() {
        assert_eq!(entropy(b""), 0.0);
        assert_eq!(entropy(b"aaaa"), 0.0);
        let all: Vec<u8> = (0..=255).collect();
        assert!((entropy(&all) - 8.0).abs() < 1e-9);
        assert!((entropy(b"abab") - 1.0).abs() < 1e-9);
    }
}
