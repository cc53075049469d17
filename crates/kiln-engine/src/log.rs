//! Log entries, and the framing of untrusted step output into them.
//!
//! A sandbox's stdout and stderr are hostile bytes. Before anything stores or
//! prints them they are cut into lines of bounded length and sanitised: every
//! terminal control sequence is removed except SGR colour codes, so step
//! output can colour text but cannot move the cursor, clear the screen, set
//! the window title, or write hyperlinks that hide their target. kiln never
//! interprets step output as commands (no `::set-env::`): the step files are
//! the only channel from a step to the engine.

use serde::Serialize;

/// Longest line kept as one entry; longer lines are split.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Which pipe a line came from, or `system` for kiln's own markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    System,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        }
    }

    pub fn parse(s: &str) -> Stream {
        match s {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            _ => Stream::System,
        }
    }
}

/// One line of a build's log (DESIGN.md's shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogEntry {
    pub ts: String,
    pub build: String,
    /// The job's id (`test (shard: 2)`), empty for build-level entries.
    pub job: String,
    /// The step's display name, empty for job-level entries.
    pub step: String,
    pub phase: String,
    pub stream: Stream,
    /// Per-build sequence number, gap-free, assigned by the build loop.
    pub seq: u64,
    pub text: String,
}

/// Splits a byte stream into lines of at most [`MAX_LINE_BYTES`].
#[derive(Debug, Default)]
pub struct LineFramer {
    buf: Vec<u8>,
}

impl LineFramer {
    /// Feeds bytes; returns the complete lines they finish.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                out.push(sanitize(&std::mem::take(&mut self.buf)));
            } else {
                self.buf.push(b);
                if self.buf.len() >= MAX_LINE_BYTES {
                    out.push(sanitize(&std::mem::take(&mut self.buf)));
                }
            }
        }
        out
    }

    /// The unterminated rest, if any (at end of stream).
    pub fn finish(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            None
        } else {
            Some(sanitize(&std::mem::take(&mut self.buf)))
        }
    }
}

/// Makes one line of untrusted output safe to print on a terminal.
///
/// Keeps printable text (invalid UTF-8 becomes U+FFFD), tabs, and SGR
/// sequences (`ESC [ <digits;> m`); drops every other C0/C1 control and
/// escape sequence, including CR (so a line cannot overwrite the one before).
pub fn sanitize(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    let mut params = String::new();
                    let mut fin = None;
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            fin = Some(c);
                            break;
                        }
                        params.push(c);
                        if params.len() > 64 {
                            break;
                        }
                    }
                    let sgr = fin == Some('m') && params.chars().all(|c| c.is_ascii_digit() || c == ';');
                    if sgr {
                        out.push_str("\u{1b}[");
                        out.push_str(&params);
                        out.push('m');
                    }
                }
                Some(']') | Some('P') | Some('_') | Some('^') | Some('X') => {
                    // OSC/DCS/APC/PM/SOS: skip to the string terminator (BEL or ESC \).
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Removes the SGR sequences [`sanitize`] kept (for plain-text output).
pub fn strip_sgr(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_colour_drops_cursor_control() {
        assert_eq!(sanitize(b"\x1b[31mred\x1b[0m"), "\x1b[31mred\x1b[0m");
        assert_eq!(sanitize(b"a\x1b[2Jb\x1b[Hc"), "abc");
        assert_eq!(sanitize(b"\x1b]0;pwned title\x07ok"), "ok");
        assert_eq!(sanitize(b"\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\"), "link");
        assert_eq!(sanitize(b"over\rwrite"), "overwrite");
        assert_eq!(sanitize(b"bell\x07 nul\x00 del\x7f"), "bell nul del");
        assert_eq!(sanitize("\u{9b}2J c1".as_bytes()), "2J c1");
        assert_eq!(sanitize(b"bad \xff utf8"), "bad \u{fffd} utf8");
    }

    #[test]
    fn frames_lines_across_reads_and_bounds_them() {
        let mut f = LineFramer::default();
        assert!(f.push(b"hel").is_empty());
        assert_eq!(f.push(b"lo\nwor"), vec!["hello"]);
        assert_eq!(f.finish().as_deref(), Some("wor"));
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 5];
        let lines = f.push(&long);
        assert_eq!(lines.len(), 2);
        assert_eq!(f.finish().map(|s| s.len()), Some(5));
    }

    #[test]
    fn strip_sgr_leaves_text() {
        assert_eq!(strip_sgr("\x1b[1;32mok\x1b[0m"), "ok");
    }
}
