//! Strings with `${{ }}` expressions in them.

use std::fmt;

use super::{advance, to_text, Contexts, Expr, ExprError, StatusFns, Value};
use crate::diagnostic::{Diagnostic, Location};

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Expr(Expr),
}

/// A string that may contain `${{ }}` expressions.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// The byte offset just past the `}}` closing an expression whose text starts
/// at `from` (a `}}` inside a `'string'` does not count).
fn find_close(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = from;
    let mut in_str = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => in_str = !in_str,
            b'}' if !in_str && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

impl Template {
    pub fn parse(source: &str, location: Location, file: &str) -> Result<Template, Diagnostic> {
        Template::parse_mapped(source, &|off| advance(location, source, off), file)
    }

    /// Parses with `locate` mapping byte offsets of `source` to the file.
    pub(crate) fn parse_mapped(
        source: &str,
        locate: &dyn Fn(usize) -> Location,
        file: &str,
    ) -> Result<Template, Diagnostic> {
        let mut parts = Vec::new();
        let mut rest_start = 0;
        while let Some(rel) = source[rest_start..].find("${{") {
            let open = rest_start + rel;
            if open > rest_start {
                parts.push(Part::Text(source[rest_start..open].to_string()));
            }
            let inner_start = open + 3;
            let Some(close) = find_close(source, inner_start) else {
                return Err(Diagnostic {
                    file: file.to_string(),
                    location: locate(open),
                    message: "unterminated `${{`: no matching `}}`".to_string(),
                });
            };
            let inner = &source[inner_start..close];
            let expr = Expr::parse_mapped(inner, &|off| locate(inner_start + off), file)?;
            parts.push(Part::Expr(expr));
            rest_start = close + 2;
        }
        if rest_start < source.len() {
            parts.push(Part::Text(source[rest_start..].to_string()));
        }
        Ok(Template { source: source.to_string(), parts })
    }

    /// A template with no expression in it.
    pub fn literal(source: &str) -> Template {
        Template { source: source.to_string(), parts: vec![Part::Text(source.to_string())] }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when there is no `${{ }}` in the template.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The expressions in the template, in order.
    /// Secrets this template reads (see [`Expr::secret_refs`]).
    pub fn secret_refs(&self) -> Vec<Option<String>> {
        self.expressions().flat_map(|e| e.secret_refs()).collect()
    }

    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e),
            Part::Text(_) => None,
        })
    }

    /// The expression, when the template is exactly one `${{ }}` (blank text
    /// around it aside).
    pub fn single_expr(&self) -> Option<&Expr> {
        let mut found = None;
        for p in &self.parts {
            match p {
                Part::Text(t) if t.trim().is_empty() => {}
                Part::Text(_) => return None,
                Part::Expr(e) if found.is_none() => found = Some(e),
                Part::Expr(_) => return None,
            }
        }
        found
    }

    /// Renders to text (values are converted as GitHub does: `true`, numbers
    /// without trailing `.0`, objects/arrays as JSON, null as empty).
    pub fn render(&self, ctx: &Contexts, status: StatusFns) -> Result<String, ExprError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Expr(e) => out.push_str(&to_text(&e.eval(ctx, status)?)),
            }
        }
        Ok(out)
    }

    /// Evaluates to a value: the expression's own value if the template is
    /// exactly one `${{ }}`, else the rendered string.
    pub fn eval(&self, ctx: &Contexts, status: StatusFns) -> Result<Value, ExprError> {
        match self.single_expr() {
            Some(e) => e.eval(ctx, status),
            None => self.render(ctx, status).map(Value::String),
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}
