//! `${{ }}` expressions: parser and evaluator with GitHub's semantics
//! (loose equality, falsy values, case-insensitive string comparison, the
//! status functions and the usual function library).

mod eval;
mod functions;
mod lexer;
mod parser;
mod template;
mod value;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::diagnostic::{Diagnostic, Location};

pub use value::{format_number, loose_eq, num_value, to_text, truthy};

/// Values of expressions are JSON values (GitHub's model is JSON too).
pub type Value = serde_json::Value;

/// The contexts an expression may read. Each is a JSON object (or `Null`
/// when not available at that place).
#[derive(Debug, Clone, Default)]
pub struct Contexts {
    pub github: Value,
    pub env: Value,
    pub matrix: Value,
    pub needs: Value,
    pub steps: Value,
    pub job: Value,
    pub runner: Value,
    pub strategy: Value,
    pub secrets: Value,
    /// A composite action's or a called workflow's inputs.
    pub inputs: Value,
    /// The jobs of a called workflow (`result`, `outputs`), for its
    /// `on.workflow_call.outputs` values.
    pub jobs: Value,
}

/// The answers of `success()`, `failure()` and `cancelled()` at the place
/// of evaluation (computed by the engine; `always()` is always true), and
/// what `hashFiles()` reads, where there is a workspace.
#[derive(Clone, Copy)]
pub struct StatusFns<'a> {
    pub success: bool,
    pub failure: bool,
    pub cancelled: bool,
    /// The job's workspace, for `hashFiles()`; `None` outside a step.
    pub files: Option<&'a dyn FileHasher>,
}

impl std::fmt::Debug for StatusFns<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusFns")
            .field("success", &self.success)
            .field("failure", &self.failure)
            .field("cancelled", &self.cancelled)
            .field("files", &self.files.is_some())
            .finish()
    }
}

impl StatusFns<'static> {
    /// Status answers only (no workspace: `hashFiles()` is an error).
    pub const fn new(success: bool, failure: bool, cancelled: bool) -> StatusFns<'static> {
        StatusFns { success, failure, cancelled, files: None }
    }
}

/// `hashFiles(patterns...)`: implemented by the engine, which owns the
/// workspace (this crate does no I/O). Returns the hex digest, or `""` when
/// no file matches, as GitHub does.
pub trait FileHasher {
    fn hash_files(&self, patterns: &[String]) -> Result<String, String>;
}

/// An error while evaluating (never while parsing: those are diagnostics).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (in `{expression}`)")]
pub struct ExprError {
    pub expression: String,
    pub message: String,
}

/// A parsed expression (the inside of `${{ }}`, or a bare `if:` value).
#[derive(Debug, Clone)]
pub struct Expr {
    source: String,
    ast: Arc<parser::Ast>,
    uses_status: bool,
}

impl Expr {
    /// Secrets this expression reads: `Some(name)`, or `None` for a use whose
    /// name is not a literal (refused by validation).
    pub fn secret_refs(&self) -> Vec<Option<String>> {
        let mut out = Vec::new();
        self.ast.secret_refs(&mut out);
        out
    }

    /// Parses an expression; `location` is where it starts in the file.
    pub fn parse(source: &str, location: Location, file: &str) -> Result<Expr, Diagnostic> {
        Expr::parse_mapped(source, &|off| advance(location, source, off), file)
    }
    /// Parses with `locate` mapping byte offsets of `source` to the file.
    pub(crate) fn parse_mapped(
        source: &str,
        locate: &dyn Fn(usize) -> Location,
        file: &str,
    ) -> Result<Expr, Diagnostic> {
        match parser::parse(source) {
            Ok(ast) => Ok(Expr {
                source: source.trim().to_string(),
                uses_status: ast.uses_status(),
                ast: Arc::new(ast),
            }),
            Err((message, offset)) => Err(Diagnostic {
                file: file.to_string(),
                location: locate(offset),
                message: format!("invalid expression `{}`: {message}", source.trim()),
            }),
        }
    }
    /// Parses an `if:` value: a bare expression, or one whole `${{ }}`.
    pub fn parse_condition(source: &str, location: Location, file: &str) -> Result<Expr, Diagnostic> {
        Expr::parse_condition_mapped(source, &|off| advance(location, source, off), file)
    }
    pub(crate) fn parse_condition_mapped(
        source: &str,
        locate: &dyn Fn(usize) -> Location,
        file: &str,
    ) -> Result<Expr, Diagnostic> {
        if source.contains("${{") {
            let t = Template::parse_mapped(source, locate, file)?;
            if let Some(e) = t.single_expr() {
                return Ok(e.clone());
            }
            return Err(Diagnostic {
                file: file.to_string(),
                location: locate(0),
                message: "an `if:` condition must be one expression: write it without `${{ }}`, \
                          or wrap the whole condition in one `${{ }}`"
                    .to_string(),
            });
        }
        Expr::parse_mapped(source, locate, file)
    }
    /// True when the expression calls `success()`, `failure()`,
    /// `cancelled()` or `always()`.
    pub fn uses_status(&self) -> bool {
        self.uses_status
    }
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn eval(&self, ctx: &Contexts, status: StatusFns) -> Result<Value, ExprError> {
        eval::eval(&self.ast, ctx, status)
            .map_err(|message| ExprError { expression: self.source.clone(), message })
    }
    /// Evaluates as an `if:` condition: truthiness, with an implicit
    /// `success() && (...)` unless the expression calls a status function.
    pub fn eval_condition(&self, ctx: &Contexts, status: StatusFns) -> Result<bool, ExprError> {
        if !self.uses_status && !status.success {
            return Ok(false);
        }
        Ok(truthy(&self.eval(ctx, status)?))
    }
}

pub use template::Template;

/// Where byte `offset` of `text` is, when `text` starts at `start`.
pub(crate) fn advance(start: Location, text: &str, offset: usize) -> Location {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    match before.rfind('\n') {
        None => Location { line: start.line, column: start.column + before.chars().count() },
        Some(nl) => Location {
            line: start.line + before.matches('\n').count(),
            column: before[nl + 1..].chars().count() + 1,
        },
    }
}
