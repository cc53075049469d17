//! kiln's secrets boundary.
//!
//! * [`SecretValue`] / [`Secret`]: secret types whose `Debug`/`Display` print `***`, never the
//!   bytes; the bytes are overwritten with zeros on drop (best effort).
//! * [`validate`] and [`parse_dotenv`]: input checks whose errors never contain a value.
//! * [`Scrubber`]: built once per build from the build's secrets and a [`PatternSet`]; immutable,
//!   `Send + Sync`. [`Scrubber::step`] gives a [`StepScrubber`] for a step's stdout and stderr
//!   together, [`Scrubber::stream`] a [`StreamScrubber`] for one stream alone,
//!   [`Scrubber::scrub_str`] scrubs one-shot strings, [`check_tree`] refuses a directory tree
//!   (artifacts, caches) that contains a secret value.
//!
//! # Value matching
//!
//! Every secret is matched as its raw value and as these encodings: base64 (standard and
//! URL-safe alphabets, padded and unpadded, and the stable inner characters of the value encoded
//! at byte offset 0, 1 and 2 of a longer base64 stream), hex (lower and upper case),
//! URL-encoding (`%2f` and `%2F`, space as `%20` or `+`), JSON string escaping (with and without
//! `\/`), and shell escaping (`'\''` single-quote form, backslash form, double-quote form). Each
//! line of a multi-line secret (a PEM key) that is at least [`MIN_SECRET_LEN`] bytes long is a
//! value as well. All of them are found in one leftmost-longest Aho-Corasick pass and replaced
//! by `***`.
//!
//! Matching runs on a *shadow* view of the output that skips what the log sanitizer drops (CR,
//! LF, the other C0 controls except TAB, DEL, complete ESC sequences), so a secret printed with
//! a line break or colour codes in the middle is still caught. LF bytes inside a redacted range
//! are kept. The bodies of skipped OSC/DCS strings are searched on their own as well.
//!
//! Hex dumps get two more views. The hex digits of `od -An -tx1` and `xxd -p` rows are joined by
//! line breaks alone, so the shadow view reads a dump over many rows as one encoding; `xxd`,
//! `hexdump -C` and `od -tx1` put offsets and ASCII columns between rows, so the rows of such a
//! dump are recognised and read once with only their hex groups (the *hex view*) and once with
//! only their ASCII columns (the *text view*). A value dumped over any number of rows, at any
//! offset, is matched there by its usual encodings, and redacted from its first row to its last.
//! Rows are recognised by their offsets' leading zeros: offsets below 16 MiB (`xxd`,
//! `hexdump -C`) and 32 KiB (`od`'s octal ones).
//!
//! # Two streams
//!
//! A step writes to two pipes, and a reader sees them together: in the log, one stream's lines
//! between the other's, or on a terminal, in the order they were written. A [`StepScrubber`]
//! scrubs each stream alone, the bytes of both in the order they arrived (a value printed half
//! to stdout and half to stderr is redacted in both), and the output in the order it is handed
//! out (a line of one stream that ends with the start of a value, and the next line shown, of
//! the other stream, that completes it).
//!
//! # Patterns
//!
//! Well-known token formats are redacted as `[redacted:<name>]`. The built-in set lives in
//! `src/patterns.json` and is documented in `PATTERNS.md`:
//!
//! | name | what |
//! |---|---|
//! | `github-token` | `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_` + 36 alphanumerics |
//! | `github-pat` | `github_pat_` + 82 characters |
//! | `aws-secret-key` | 40 base64-ish chars after `aws_secret_access_key` (and similar keys) or right after an AWS key id |
//! | `aws-access-key-id` | `AKIA`/`ASIA` + 16 upper-case alphanumerics |
//! | `slack-token` | `xoxb-`, `xoxa-`, `xoxp-`, `xoxr-`, `xoxs-` tokens |
//! | `stripe-key` | `sk_live_`, `rk_live_`, `sk_test_`, `rk_test_` keys |
//! | `google-api-key` | `AIza` + 35 characters |
//! | `private-key` | PEM/PGP private key blocks: the BEGIN line, the body lines, the END line |
//! | `jwt` | `eyJ….eyJ….<signature>` |
//! | `authorization-header` | the value of `Authorization: Bearer|Basic|Token|Digest <value>` |
//! | `url-credentials` | `user:pass` in `scheme://user:pass@host` |
//!
//! Patterns run on released text, one line at a time, and only on lines where a cheap
//! Aho-Corasick prefilter over literal fragments (`ghp_`, `AKIA`, `eyJ`, `://`, …) hits.
//!
//! # Stream hold-back
//!
//! See [`StreamScrubber`] and [`StepScrubber`] for exactly what is held back between pushes. In
//! short: a line comes out on the push that completes it, unless its last bytes could begin a
//! value; then it waits for the next output (or the end of the stream). No possible start of a
//! value is ever released while the stream (or, for a step, either stream) could still
//! complete it.

mod dotenv;
mod dump;
mod encode;
mod patterns;
mod scrubber;
mod shadow;
mod step;
mod tree;

use std::fmt;

pub use dotenv::parse_dotenv;
pub use patterns::PatternSet;
pub use scrubber::{Counts, ScrubbedBytes, Scrubber, StreamScrubber, MAX_LINE};
pub use step::{Pieces, Pipe, StepScrubber};
pub use tree::{check_tree, TreeError};

/// Minimum length of a secret value, in bytes.
pub const MIN_SECRET_LEN: usize = 8;

/// A secret's value. `Debug` and `Display` print `***`; the bytes are zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    /// Wraps `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretValue(bytes)
    }

    /// The secret bytes. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            *b = 0;
        }
        // Keep the writes from being optimised away (best effort, no unsafe).
        std::hint::black_box(&mut self.0);
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A named secret. `Debug` shows the name and `***`; `Display` shows `NAME=***`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    /// Variable name, `^[A-Za-z_][A-Za-z0-9_]*$`.
    pub name: String,
    /// The value.
    pub value: SecretValue,
}

impl Secret {
    /// Convenience constructor (does not validate; see [`validate`]).
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Secret { name: name.into(), value: SecretValue::new(value.into()) }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=***", self.name)
    }
}

/// Errors about secrets and pattern sets. No variant ever contains a secret value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The value is shorter than [`MIN_SECRET_LEN`].
    #[error(
        "secret {name} is too short: values shorter than {min} bytes (not counting control \
         characters) cannot be scrubbed safely from logs — they occur by chance in ordinary \
         output, and the redaction marks would reveal where they occur"
    )]
    TooShort {
        /// Secret name.
        name: String,
        /// The minimum length.
        min: usize,
    },
    /// The name is not `^[A-Za-z_][A-Za-z0-9_]*$`.
    #[error("invalid secret name {name:?}: names must match ^[A-Za-z_][A-Za-z0-9_]*$")]
    BadName {
        /// The offending name.
        name: String,
    },
    /// A dotenv file could not be parsed. The message never contains a value.
    #[error("dotenv line {line}: {message}")]
    Dotenv {
        /// 1-based line number.
        line: usize,
        /// What is wrong (never contains a value).
        message: String,
    },
    /// A pattern set (JSON) is invalid.
    #[error("invalid pattern set: {0}")]
    Pattern(String),
}

pub(crate) fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Checks a secret: the name must match `^[A-Za-z_][A-Za-z0-9_]*$` and the value must be at
/// least [`MIN_SECRET_LEN`] bytes long, not counting the control characters that the scrubber
/// ignores (CR, LF, other C0 controls except TAB, DEL).
pub fn validate(name: &str, value: &[u8]) -> Result<(), SecretError> {
    if !valid_name(name) {
        return Err(SecretError::BadName { name: name.to_string() });
    }
    let visible = value.iter().filter(|b| !shadow::is_skip(**b)).count();
    if value.len() < MIN_SECRET_LEN || visible < MIN_SECRET_LEN {
        return Err(SecretError::TooShort { name: name.to_string(), min: MIN_SECRET_LEN });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_display_never_show_value() {
        let s = Secret::new("TOKEN", "hunter2hunter2");
        for text in [
            format!("{s:?}"),
            format!("{s}"),
            format!("{:?}", s.value),
            format!("{}", s.value),
            format!("{s:#?}"),
        ] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("***"), "{text}");
        }
        assert_eq!(s.value.expose(), b"hunter2hunter2");
    }

    #[test]
    fn shareable() {
        fn ok<T: Send + Sync + 'static>() {}
        ok::<Scrubber>();
        ok::<StreamScrubber>();
        ok::<PatternSet>();
    }

    #[test]
    fn validate_rules() {
        assert!(validate("A_b9", b"12345678").is_ok());
        assert!(validate("_x", b"12345678").is_ok());
        for bad in ["", "9A", "A-B", "A B", "É"] {
            assert!(matches!(validate(bad, b"12345678"), Err(SecretError::BadName { .. })));
        }
        let e = validate("SHORT", b"1234567").unwrap_err();
        assert!(matches!(e, SecretError::TooShort { min: 8, .. }));
        let msg = e.to_string();
        assert!(msg.contains("cannot be scrubbed safely"), "{msg}");
        assert!(!msg.contains("1234567"));
        // Control characters do not count.
        assert!(validate("X", b"1234\n\n\n\n567").is_err());
    }
}
