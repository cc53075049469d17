//! A small, strict dotenv parser whose errors never contain a value.

use crate::{valid_name, SecretError, SecretValue};

fn err(line: usize, message: &str) -> SecretError {
    SecretError::Dotenv { line, message: message.to_string() }
}

/// Parses dotenv text.
///
/// Supported: `KEY=VALUE`, `export KEY=VALUE`, blank lines, `#` comment lines and trailing
/// ` # comments` after unquoted or quoted values, single-quoted values (literal, may span
/// lines), double-quoted values with the escapes `\n`, `\r`, `\t`, `\"`, `\\` and `\$` (may span
/// lines, e.g. PEM keys). Unquoted values are trimmed. Errors name the (1-based) line where the
/// problem starts and never contain any part of a value. Value length is not checked here: call
/// [`crate::validate`] on each entry.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, SecretValue)>, SecretError> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    let mut line = 1;
    while i < b.len() {
        let start_line = line;
        let eol = memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |p| i + p);
        let raw = &text[i..eol];
        let trimmed = raw.trim_start();
        if trimmed.trim_end().is_empty() || trimmed.starts_with('#') {
            i = eol + 1;
            line += 1;
            continue;
        }
        // Key.
        let mut rest = trimmed;
        if let Some(r) = rest.strip_prefix("export") {
            if r.starts_with([' ', '\t']) {
                rest = r.trim_start();
            }
        }
        let Some(eq) = rest.find('=') else {
            return Err(err(start_line, "expected KEY=VALUE"));
        };
        let key = rest[..eq].trim_end();
        if !valid_name(key) {
            return Err(err(start_line, "invalid variable name (names must match ^[A-Za-z_][A-Za-z0-9_]*$)"));
        }
        let key = key.to_string();
        // Value starts here (absolute index into `b`).
        let mut v = eol - rest[eq + 1..].len();
        while v < eol && (b[v] == b' ' || b[v] == b'\t') {
            v += 1;
        }
        let mut value = Vec::new();
        let after; // absolute index just after the value (and its closing quote)
        match b.get(v) {
            Some(b'\'') => {
                let Some(p) = memchr::memchr(b'\'', &b[v + 1..]) else {
                    return Err(err(start_line, "unterminated single-quoted value"));
                };
                let end = v + 1 + p;
                value.extend_from_slice(&b[v + 1..end]);
                line += b[v + 1..end].iter().filter(|c| **c == b'\n').count();
                after = end + 1;
            }
            Some(b'"') => {
                let mut k = v + 1;
                loop {
                    match b.get(k) {
                        None => return Err(err(start_line, "unterminated double-quoted value")),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            let c = match b.get(k + 1) {
                                Some(b'n') => b'\n',
                                Some(b'r') => b'\r',
                                Some(b't') => b'\t',
                                Some(b'"') => b'"',
                                Some(b'\\') => b'\\',
                                Some(b'$') => b'$',
                                Some(_) => {
                                    return Err(err(
                                        line,
                                        "unsupported escape in double-quoted value \
                                         (supported: \\n \\r \\t \\\" \\\\ \\$)",
                                    ))
                                }
                                None => return Err(err(start_line, "unterminated double-quoted value")),
                            };
                            value.push(c);
                            k += 2;
                        }
                        Some(&c) => {
                            if c == b'\n' {
                                line += 1;
                            }
                            value.push(c);
                            k += 1;
                        }
                    }
                }
                after = k + 1;
            }
            _ => {
                // Unquoted: up to a ` #` comment or end of line.
                let seg = &b[v..eol];
                let mut end = seg.len();
                for j in 0..seg.len() {
                    if seg[j] == b'#' && j > 0 && (seg[j - 1] == b' ' || seg[j - 1] == b'\t') {
                        end = j;
                        break;
                    }
                }
                let s = &seg[..end];
                let s = s.trim_ascii_end();
                if s.contains(&b'"') || s.contains(&b'\'') {
                    // Quotes in the middle of an unquoted value are almost always a mistake.
                    return Err(err(start_line, "unexpected quote in unquoted value"));
                }
                value.extend_from_slice(s);
                after = eol;
            }
        }
        // After a quoted value: only whitespace and an optional comment.
        let line_end = memchr::memchr(b'\n', &b[after.min(b.len())..]).map_or(b.len(), |p| after + p);
        let tail = text[after.min(b.len())..line_end].trim();
        if !tail.is_empty() && !tail.starts_with('#') {
            return Err(err(line, "unexpected characters after closing quote"));
        }
        out.push((key, SecretValue::new(value)));
        i = line_end + 1;
        line += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Vec<(String, Vec<u8>)> {
        parse_dotenv(t).unwrap().into_iter().map(|(k, v)| (k, v.expose().to_vec())).collect()
    }

    #[test]
    fn basic_forms() {
        let got = parse(
            "# comment\n\nA=plainvalue\nexport B = spaced value  # trailing\n\
             C='single # not comment \\n'\nD=\"dq \\\"x\\\" \\\\ \\n end\"  # c\nexport=1x\n\
             E=\n",
        );
        assert_eq!(
            got,
            vec![
                ("A".into(), b"plainvalue".to_vec()),
                ("B".into(), b"spaced value".to_vec()),
                ("C".into(), b"single # not comment \\n".to_vec()),
                ("D".into(), b"dq \"x\" \\ \n end".to_vec()),
                ("export".into(), b"1x".to_vec()),
                ("E".into(), b"".to_vec()),
            ]
        );
    }

    #[test]
    fn multiline_pem() {
        let text = "KEY=\"-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\ndef==\n-----END RSA PRIVATE KEY-----\"\nNEXT=v\n";
        let got = parse(text);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].1,
            b"-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\ndef==\n-----END RSA PRIVATE KEY-----"
        );
        assert_eq!(got[1], ("NEXT".into(), b"v".to_vec()));
        // Single-quoted multi-line too, with CRLF line ends.
        let got = parse("K='line1\r\nline2'\r\nN=x\r\n");
        assert_eq!(got[0].1, b"line1\r\nline2");
        assert_eq!(got[1].1, b"x");
    }

    #[test]
    fn errors_name_line_not_value() {
        let cases = [
            ("A=ok\nB=\"supersecretvalue\n", 2, "unterminated"),
            ("A=ok\n\nsupersecretvalue\n", 3, "KEY=VALUE"),
            ("9BAD=supersecretvalue\n", 1, "invalid variable name"),
            ("A='supersecretvalue' trailing\n", 1, "after closing quote"),
            ("A=\"x\ny\" supersecretvalue\n", 2, "after closing quote"),
            ("A=super\"secretvalue\n", 1, "unexpected quote"),
            ("A=\"supersecret\\qvalue\"\n", 1, "unsupported escape"),
            ("A='supersecretvalue\n", 1, "unterminated single"),
        ];
        for (text, line, what) in cases {
            let e = parse_dotenv(text).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, SecretError::Dotenv { line: l, .. } if l == line), "{text:?}: {msg}");
            assert!(msg.contains(what), "{msg}");
            assert!(!msg.contains("secret"), "{msg}");
        }
    }
}
