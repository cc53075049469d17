//! Tokens of `${{ }}` expressions.

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Dot,
    Comma,
    Star,
    Not,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl Tok {
    pub fn describe(&self) -> String {
        match self {
            Tok::Num(n) => format!("number {}", super::value::format_number(*n)),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Ident(s) => format!("`{s}`"),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Dot => "`.`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Star => "`*`".into(),
            Tok::Not => "`!`".into(),
            Tok::Lt => "`<`".into(),
            Tok::Le => "`<=`".into(),
            Tok::Gt => "`>`".into(),
            Tok::Ge => "`>=`".into(),
            Tok::Eq => "`==`".into(),
            Tok::Ne => "`!=`".into(),
            Tok::And => "`&&`".into(),
            Tok::Or => "`||`".into(),
        }
    }
}

/// A token and the byte offset where it starts.
pub(crate) type Spanned = (Tok, usize);

/// A lexing error: message and byte offset.
pub(crate) type LexError = (String, usize);

pub(crate) fn lex(src: &str) -> Result<Vec<Spanned>, LexError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let two = |a: u8, b: u8| c == a && bytes.get(i + 1) == Some(&b);
        let tok = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => Tok::LParen,
            b')' => Tok::RParen,
            b'[' => Tok::LBracket,
            b']' => Tok::RBracket,
            b',' => Tok::Comma,
            b'*' => Tok::Star,
            _ if two(b'<', b'=') => Tok::Le,
            _ if two(b'>', b'=') => Tok::Ge,
            _ if two(b'=', b'=') => Tok::Eq,
            _ if two(b'!', b'=') => Tok::Ne,
            _ if two(b'&', b'&') => Tok::And,
            _ if two(b'|', b'|') => Tok::Or,
            b'<' => Tok::Lt,
            b'>' => Tok::Gt,
            b'!' => Tok::Not,
            b'.' if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
                || matches!(out.last(), Some((Tok::Ident(_) | Tok::RBracket | Tok::RParen, _))) =>
            {
                Tok::Dot
            }
            b'\'' => {
                let (s, end) = lex_string(src, i)?;
                out.push((Tok::Str(s), start));
                i = end;
                continue;
            }
            b'0'..=b'9' | b'-' | b'+' | b'.' => {
                let end = scan_while(bytes, i + 1, |b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
                // exponent sign: 1e-5
                let mut end = end;
                while end < bytes.len()
                    && matches!(bytes[end], b'-' | b'+')
                    && matches!(bytes[end - 1], b'e' | b'E')
                    && !src[start..end].starts_with("0x")
                {
                    end = scan_while(bytes, end + 1, |b| b.is_ascii_alphanumeric() || b == b'.');
                }
                let text = &src[start..end];
                match parse_number(text) {
                    Some(n) => {
                        out.push((Tok::Num(n), start));
                        i = end;
                        continue;
                    }
                    None => return Err((format!("invalid number `{text}`"), start)),
                }
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                let end = scan_while(bytes, i + 1, |b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                out.push((Tok::Ident(src[start..end].to_string()), start));
                i = end;
                continue;
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                let hint = if ch == '"' { " (strings use single quotes: 'text')" } else { "" };
                return Err((format!("unexpected character `{ch}`{hint}"), start));
            }
        };
        i += match tok {
            Tok::Le | Tok::Ge | Tok::Eq | Tok::Ne | Tok::And | Tok::Or => 2,
            _ => 1,
        };
        out.push((tok, start));
    }
    Ok(out)
}

fn scan_while(bytes: &[u8], mut i: usize, f: impl Fn(u8) -> bool) -> usize {
    while i < bytes.len() && f(bytes[i]) {
        i += 1;
    }
    i
}

/// A single-quoted string starting at `start`; `''` is an escaped quote.
fn lex_string(src: &str, start: usize) -> Result<(String, usize), LexError> {
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices().peekable();
    while let Some((off, ch)) = chars.next() {
        if ch == '\'' {
            if chars.peek().map(|&(_, c)| c) == Some('\'') {
                chars.next();
                out.push('\'');
            } else {
                return Ok((out, start + 1 + off + 1));
            }
        } else {
            out.push(ch);
        }
    }
    Err(("unterminated string literal".to_string(), start))
}

/// GitHub's number literals: decimal, exponent, hexadecimal, with a sign.
pub(crate) fn parse_number(text: &str) -> Option<f64> {
    let (neg, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let v = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()? as f64
    } else if let Some(oct) = body.strip_prefix("0o") {
        u64::from_str_radix(oct, 8).ok()? as f64
    } else {
        if body.is_empty()
            || !body.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
            || !body.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'.')
        {
            return None;
        }
        body.parse::<f64>().ok()?
    };
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t: Vec<Tok> =
            lex("a.b['c'] == 'it''s' && !x || 0xff >= -1.5e2").unwrap().into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            t,
            vec![
                Tok::Ident("a".into()),
                Tok::Dot,
                Tok::Ident("b".into()),
                Tok::LBracket,
                Tok::Str("c".into()),
                Tok::RBracket,
                Tok::Eq,
                Tok::Str("it's".into()),
                Tok::And,
                Tok::Not,
                Tok::Ident("x".into()),
                Tok::Or,
                Tok::Num(255.0),
                Tok::Ge,
                Tok::Num(-150.0),
            ]
        );
    }

    #[test]
    fn errors() {
        assert_eq!(lex("'abc").unwrap_err().1, 0);
        assert_eq!(lex("a == \"x\"").unwrap_err().1, 5);
        assert!(lex("12abc").is_err());
    }
}
