//! Expression syntax tree and a precedence-climbing parser.

use super::functions::Func;
use super::lexer::{lex, Tok};
use super::Value;

/// The contexts an expression may name.
pub(crate) const CONTEXTS: &[&str] = &[
    "github", "env", "matrix", "needs", "steps", "job", "jobs", "runner", "strategy", "secrets", "inputs",
    "vars",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

#[derive(Debug, Clone)]
pub(crate) enum Ast {
    Lit(Value),
    /// A context, by its lowercase name.
    Context(String),
    Prop(Box<Ast>, String),
    Index(Box<Ast>, Box<Ast>),
    /// `a.*` or `a[*]`: the object filter.
    Star(Box<Ast>),
    Not(Box<Ast>),
    Bin(BinOp, Box<Ast>, Box<Ast>),
    Call(Func, Vec<Ast>),
}

impl Ast {
    /// Every use of the `secrets` context: `Some(name)` for `secrets.NAME` or
    /// `secrets['NAME']`, `None` for a use whose name is not literal.
    pub fn secret_refs(&self, out: &mut Vec<Option<String>>) {
        match self {
            Ast::Prop(inner, name) if matches!(&**inner, Ast::Context(c) if c == "secrets") => {
                out.push(Some(name.clone()))
            }
            Ast::Index(inner, key) if matches!(&**inner, Ast::Context(c) if c == "secrets") => match &**key {
                Ast::Lit(Value::String(name)) => out.push(Some(name.clone())),
                other => {
                    out.push(None);
                    other.secret_refs(out);
                }
            },
            Ast::Context(c) if c == "secrets" => out.push(None),
            Ast::Lit(_) | Ast::Context(_) => {}
            Ast::Prop(a, _) | Ast::Star(a) | Ast::Not(a) => a.secret_refs(out),
            Ast::Index(a, b) | Ast::Bin(_, a, b) => {
                a.secret_refs(out);
                b.secret_refs(out);
            }
            Ast::Call(_, args) => args.iter().for_each(|a| a.secret_refs(out)),
        }
    }

    pub fn uses_status(&self) -> bool {
        match self {
            Ast::Lit(_) | Ast::Context(_) => false,
            Ast::Prop(a, _) | Ast::Star(a) | Ast::Not(a) => a.uses_status(),
            Ast::Index(a, b) | Ast::Bin(_, a, b) => a.uses_status() || b.uses_status(),
            Ast::Call(f, args) => f.is_status() || args.iter().any(Ast::uses_status),
        }
    }
}

/// A parse error: message and byte offset in the expression.
pub(crate) type ParseError = (String, usize);

const MAX_DEPTH: usize = 64;
/// Bounds the depth of the tree (left-nested operator chains).
const MAX_TOKENS: usize = 2000;

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    end: usize,
    depth: usize,
}

pub(crate) fn parse(src: &str) -> Result<Ast, ParseError> {
    let toks = lex(src)?;
    if toks.is_empty() {
        return Err(("empty expression".to_string(), 0));
    }
    if toks.len() > MAX_TOKENS {
        return Err(("expression is too long".to_string(), toks[MAX_TOKENS].1));
    }
    let mut p = Parser { toks, pos: 0, end: src.len(), depth: 0 };
    let ast = p.or()?;
    if let Some((t, off)) = p.toks.get(p.pos) {
        return Err((format!("unexpected {} after the expression", t.describe()), *off));
    }
    Ok(ast)
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(_, o)| *o)
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &Tok) -> Result<(), ParseError> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("expected {}", t.describe())))
        }
    }

    fn unexpected(&self, what: &str) -> ParseError {
        match self.peek() {
            Some(t) => (format!("{what}, found {}", t.describe()), self.offset()),
            None => (format!("{what}, found the end of the expression"), self.end),
        }
    }

    fn binary(
        &mut self,
        ops: &[(Tok, BinOp)],
        next: fn(&mut Parser) -> Result<Ast, ParseError>,
    ) -> Result<Ast, ParseError> {
        let mut left = next(self)?;
        'outer: loop {
            for (t, op) in ops {
                if self.eat(t) {
                    let right = next(self)?;
                    left = Ast::Bin(*op, Box::new(left), Box::new(right));
                    continue 'outer;
                }
            }
            return Ok(left);
        }
    }

    fn or(&mut self) -> Result<Ast, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(("expression is nested too deeply".to_string(), self.offset()));
        }
        let r = self.binary(&[(Tok::Or, BinOp::Or)], Parser::and);
        self.depth -= 1;
        r
    }

    fn and(&mut self) -> Result<Ast, ParseError> {
        self.binary(&[(Tok::And, BinOp::And)], Parser::equality)
    }

    fn equality(&mut self) -> Result<Ast, ParseError> {
        self.binary(&[(Tok::Eq, BinOp::Eq), (Tok::Ne, BinOp::Ne)], Parser::comparison)
    }

    fn comparison(&mut self) -> Result<Ast, ParseError> {
        self.binary(
            &[(Tok::Le, BinOp::Le), (Tok::Ge, BinOp::Ge), (Tok::Lt, BinOp::Lt), (Tok::Gt, BinOp::Gt)],
            Parser::unary,
        )
    }

    fn unary(&mut self) -> Result<Ast, ParseError> {
        if self.eat(&Tok::Not) {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(("expression is nested too deeply".to_string(), self.offset()));
            }
            let inner = self.unary();
            self.depth -= 1;
            return Ok(Ast::Not(Box::new(inner?)));
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Ast, ParseError> {
        let mut e = self.primary()?;
        loop {
            if self.eat(&Tok::Dot) {
                match self.peek().cloned() {
                    Some(Tok::Ident(name)) => {
                        self.pos += 1;
                        e = Ast::Prop(Box::new(e), name);
                    }
                    Some(Tok::Star) => {
                        self.pos += 1;
                        e = Ast::Star(Box::new(e));
                    }
                    _ => return Err(self.unexpected("expected a property name after `.`")),
                }
            } else if self.eat(&Tok::LBracket) {
                if self.eat(&Tok::Star) {
                    e = Ast::Star(Box::new(e));
                } else {
                    let i = self.or()?;
                    e = Ast::Index(Box::new(e), Box::new(i));
                }
                self.expect(&Tok::RBracket)?;
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Ast, ParseError> {
        let offset = self.offset();
        let Some(tok) = self.peek().cloned() else {
            return Err(self.unexpected("expected a value"));
        };
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(Ast::Lit(super::value::num_value(n))),
            Tok::Str(s) => Ok(Ast::Lit(Value::String(s))),
            Tok::LParen => {
                let e = self.or()?;
                self.expect(&Tok::RParen)?;
                Ok(e)
            }
            Tok::Ident(name) => {
                if self.peek() == Some(&Tok::LParen) {
                    self.pos += 1;
                    return self.call(&name, offset);
                }
                match name.as_str() {
                    "true" => return Ok(Ast::Lit(Value::Bool(true))),
                    "false" => return Ok(Ast::Lit(Value::Bool(false))),
                    "null" => return Ok(Ast::Lit(Value::Null)),
                    _ => {}
                }
                let lower = name.to_ascii_lowercase();
                if CONTEXTS.contains(&lower.as_str()) {
                    return Ok(Ast::Context(lower));
                }
                let mut msg = format!("unknown context `{name}`");
                if let Some(s) = crate::parse::did_you_mean(&name, CONTEXTS.iter().copied()) {
                    msg.push_str(&format!("; did you mean `{s}`?"));
                } else {
                    msg.push_str(&format!(" (available: {})", CONTEXTS.join(", ")));
                }
                Err((msg, offset))
            }
            _ => {
                self.pos -= 1;
                Err(self.unexpected("expected a value"))
            }
        }
    }

    fn call(&mut self, name: &str, offset: usize) -> Result<Ast, ParseError> {
        let Some(func) = Func::lookup(name) else {
            let mut msg = format!("unknown function `{name}`");
            if let Some(s) = crate::parse::did_you_mean(name, Func::NAMES.iter().copied()) {
                msg.push_str(&format!("; did you mean `{s}`?"));
            }
            return Err((msg, offset));
        };
        let mut args = Vec::new();
        if !self.eat(&Tok::RParen) {
            loop {
                args.push(self.or()?);
                if self.eat(&Tok::RParen) {
                    break;
                }
                self.expect(&Tok::Comma)?;
            }
        }
        let (min, max) = func.arity();
        if args.len() < min || args.len() > max {
            let expected = if min == max {
                format!("{min}")
            } else if max == usize::MAX {
                format!("at least {min}")
            } else {
                format!("{min} to {max}")
            };
            return Err((
                format!("`{}` takes {expected} argument(s), got {}", func.name(), args.len()),
                offset,
            ));
        }
        Ok(Ast::Call(func, args))
    }
}
