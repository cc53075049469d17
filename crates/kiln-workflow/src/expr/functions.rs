//! The function library.

use super::value::{loose_eq, to_json_pretty, to_text};
use super::{StatusFns, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Success,
    Failure,
    Always,
    Cancelled,
    Contains,
    StartsWith,
    EndsWith,
    Format,
    Join,
    ToJson,
    FromJson,
    HashFiles,
}

impl Func {
    pub const NAMES: &'static [&'static str] = &[
        "success",
        "failure",
        "always",
        "cancelled",
        "contains",
        "startsWith",
        "endsWith",
        "format",
        "join",
        "toJSON",
        "fromJSON",
        "hashFiles",
    ];
    const ALL: [Func; 12] = [
        Func::Success,
        Func::Failure,
        Func::Always,
        Func::Cancelled,
        Func::Contains,
        Func::StartsWith,
        Func::EndsWith,
        Func::Format,
        Func::Join,
        Func::ToJson,
        Func::FromJson,
        Func::HashFiles,
    ];

    /// Function names are case-insensitive.
    pub fn lookup(name: &str) -> Option<Func> {
        Func::NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)).map(|i| Func::ALL[i])
    }

    pub fn name(self) -> &'static str {
        Func::NAMES[Func::ALL.iter().position(|f| *f == self).unwrap_or(0)]
    }

    pub fn is_status(self) -> bool {
        matches!(self, Func::Success | Func::Failure | Func::Always | Func::Cancelled)
    }

    pub fn arity(self) -> (usize, usize) {
        match self {
            Func::Success | Func::Failure | Func::Always | Func::Cancelled => (0, 0),
            Func::Contains | Func::StartsWith | Func::EndsWith => (2, 2),
            Func::Format | Func::HashFiles => (1, usize::MAX),
            Func::Join => (1, 2),
            Func::ToJson | Func::FromJson => (1, 1),
        }
    }

    /// Calls the function on evaluated arguments (arity already checked).
    pub fn call(self, args: &[Value], status: StatusFns) -> Result<Value, String> {
        let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Null);
        Ok(match self {
            Func::Success => Value::Bool(status.success),
            Func::Failure => Value::Bool(status.failure),
            Func::Cancelled => Value::Bool(status.cancelled),
            Func::Always => Value::Bool(true),
            Func::Contains => Value::Bool(contains(&arg(0), &arg(1))),
            Func::StartsWith => Value::Bool(fold(&arg(0)).starts_with(&fold(&arg(1)))),
            Func::EndsWith => Value::Bool(fold(&arg(0)).ends_with(&fold(&arg(1)))),
            Func::Format => Value::String(format(&to_text(&arg(0)), &args[1..])?),
            Func::Join => {
                let sep = if args.len() > 1 { to_text(&arg(1)) } else { ",".to_string() };
                match arg(0) {
                    Value::Array(items) => {
                        Value::String(items.iter().map(to_text).collect::<Vec<_>>().join(&sep))
                    }
                    other => Value::String(to_text(&other)),
                }
            }
            Func::ToJson => Value::String(to_json_pretty(&arg(0))),
            Func::FromJson => {
                let text = to_text(&arg(0));
                serde_json::from_str(text.trim())
                    .map_err(|e| format!("fromJSON: invalid JSON `{text}`: {e}"))?
            }
            Func::HashFiles => {
                let files = status
                    .files
                    .ok_or("hashFiles() is only available in a step (it reads the job's workspace)")?;
                let patterns: Vec<String> = args.iter().map(to_text).collect();
                Value::String(files.hash_files(&patterns)?)
            }
        })
    }
}

fn fold(v: &Value) -> String {
    to_text(v).to_uppercase()
}

fn contains(search: &Value, item: &Value) -> bool {
    match search {
        Value::Array(items) => items.iter().any(|i| loose_eq(i, item)),
        _ => fold(search).contains(&fold(item)),
    }
}

/// `format('{0} {{x}}', a)`.
fn format(fmt: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut digits = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(d) if d.is_ascii_digit() => digits.push(d),
                        _ => return Err(format!("format: invalid format string `{fmt}`")),
                    }
                }
                let i: usize =
                    digits.parse().map_err(|_| format!("format: invalid format string `{fmt}`"))?;
                let v = args.get(i).ok_or_else(|| {
                    format!("format: `{{{i}}}` refers to a missing argument ({} given)", args.len())
                })?;
                out.push_str(&to_text(v));
            }
            '}' => return Err(format!("format: unmatched `}}` in `{fmt}`")),
            c => out.push(c),
        }
    }
    Ok(out)
}
