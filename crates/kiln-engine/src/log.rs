//! Log entries, and the framing of untrusted step output into them.
//!
//! A sandbox's stdout and stderr are hostile bytes. Before anything stores or
//! prints them they are cut into lines of bounded length and sanitised: every
//! terminal control sequence is removed except SGR colour codes, so step
//! output can colour text but cannot move the cursor, clear the screen, set
//! the window title, or write hyperlinks that hide their target. kiln never
//! interprets step output as commands (no `::set-env::`): the step files are
//! the only channel from a step to the engine.

use std::sync::Arc;

use kiln_secrets::{Pipe, Scrubber, StepScrubber};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest line kept as one entry; longer lines are split.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Which pipe a line came from, or `system` for kiln's own markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub ts: String,
    #[serde(default)]
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

/// A step's stdout and stderr, scrubbed together and framed into lines per stream.
///
/// The two streams go through one [`StepScrubber`], so a secret split between them (half
/// printed to stdout, the rest to stderr) is redacted in both, in the order the bytes arrived
/// and in the order the lines come out. Lines stay whole per stream: a partial line of one
/// stream does not hold back the other's lines.
#[derive(Debug)]
pub struct StepOutput {
    scrub: StepScrubber,
    framers: [LineFramer; 2],
    ended: [bool; 2],
}

fn pipe(stream: Stream) -> Pipe {
    match stream {
        Stream::Stderr => Pipe::Stderr,
        _ => Pipe::Stdout,
    }
}

impl StepOutput {
    pub fn new(scrubber: &Arc<Scrubber>) -> StepOutput {
        StepOutput { scrub: scrubber.step(), framers: Default::default(), ended: [false; 2] }
    }

    /// Raw bytes read from one pipe; returns the lines (of either stream) that may be shown
    /// now, in order.
    pub fn push(&mut self, stream: Stream, bytes: &[u8]) -> Vec<(Stream, String)> {
        let pieces = self.scrub.push(pipe(stream), bytes);
        self.frame(pieces)
    }

    /// End of one pipe: its last lines, unless the other stream could still complete a
    /// secret they end with (then they come with the other stream's output).
    pub fn finish(&mut self, stream: Stream) -> Vec<(Stream, String)> {
        let i = usize::from(stream == Stream::Stderr);
        self.ended[i] = true;
        let pieces = self.scrub.finish(pipe(stream));
        self.frame(pieces)
    }

    /// Secret values and token patterns redacted so far.
    pub fn redactions(&self) -> u64 {
        self.scrub.counts().total()
    }

    fn frame(&mut self, pieces: kiln_secrets::Pieces) -> Vec<(Stream, String)> {
        let mut lines = Vec::new();
        for (p, bytes) in pieces {
            let (i, stream) = match p {
                Pipe::Stdout => (0, Stream::Stdout),
                Pipe::Stderr => (1, Stream::Stderr),
            };
            lines.extend(self.framers[i].push(&bytes).into_iter().map(|l| (stream, l)));
        }
        // A stream's unterminated last line, once the scrubber holds nothing more of it.
        for (i, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            let p = pipe(stream);
            if self.ended[i] && self.scrub.held_by(p) == 0 {
                if let Some(rest) = self.framers[i].finish() {
                    lines.push((stream, rest));
                }
            }
        }
        lines
    }
}

/// Reads a step's stdout and stderr until both end, and hands their scrubbed lines to `emit`
/// as they come (stdout first when both have bytes, the order a step that writes one then the
/// other most likely used). `admit` is told the size of every read; once it says no (the log
/// limit), the pipes are still drained, so the step never blocks on a full pipe, but nothing
/// more is emitted. Returns the number of redactions.
pub async fn pump_pipes<O, E>(
    out: O,
    err: E,
    scrubber: &Arc<Scrubber>,
    mut admit: impl FnMut(usize) -> bool,
    mut emit: impl FnMut(Stream, String),
) -> u64
where
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    async fn read(pipe: &mut Option<impl AsyncRead + Unpin>, buf: &mut [u8]) -> usize {
        match pipe {
            // A read error ends the stream like EOF does.
            Some(p) => p.read(buf).await.unwrap_or(0),
            None => std::future::pending().await,
        }
    }
    let mut output = StepOutput::new(scrubber);
    let (mut out, mut err) = (Some(out), Some(err));
    let (mut out_buf, mut err_buf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let mut dropping = false;
    while out.is_some() || err.is_some() {
        let (stream, n) = tokio::select! {
            biased;
            n = read(&mut out, &mut out_buf), if out.is_some() => (Stream::Stdout, n),
            n = read(&mut err, &mut err_buf), if err.is_some() => (Stream::Stderr, n),
        };
        let lines = if n == 0 {
            match stream {
                Stream::Stderr => err = None,
                _ => out = None,
            }
            output.finish(stream)
        } else {
            if !admit(n) {
                dropping = true;
            }
            if dropping {
                continue;
            }
            let buf = if stream == Stream::Stderr { &err_buf } else { &out_buf };
            output.push(stream, &buf[..n])
        };
        if !dropping {
            for (stream, line) in lines {
                emit(stream, line);
            }
        }
    }
    output.redactions()
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

    /// A secret printed half to stdout and half to stderr, read from two pipes the way the
    /// runner reads a step's.
    #[tokio::test]
    async fn secret_split_between_stdout_and_stderr_is_scrubbed() {
        use tokio::io::AsyncWriteExt;
        let value = "s3cr3t-V4lue/x+y";
        let sc = Arc::new(Scrubber::new(
            &[kiln_secrets::Secret::new("S", value)],
            &kiln_secrets::PatternSet::builtin(),
        ));
        for k in [1, 3, 5, 8, 15] {
            for (first, second, tail) in [("", "", ""), ("", "", "\n"), ("\n", "", ""), ("x ", " y\n", "\n")]
            {
                let (mut ow, or) = tokio::io::duplex(1024);
                let (mut ew, er) = tokio::io::duplex(1024);
                let lines = std::sync::Mutex::new(Vec::new());
                let pump = pump_pipes(or, er, &sc, |_| true, |s, l| lines.lock().unwrap().push((s, l)));
                let write = async {
                    // printf %s "${S:0:k}"; printf %s "${S:k}" >&2 (with some surroundings).
                    ow.write_all(format!("{first}{}{tail}", &value[..k]).as_bytes()).await.unwrap();
                    tokio::task::yield_now().await;
                    ew.write_all(format!("{}{second}", &value[k..]).as_bytes()).await.unwrap();
                    drop(ow);
                    drop(ew);
                };
                let (redactions, ()) = tokio::join!(pump, write);
                let lines = lines.into_inner().unwrap();
                let merged: Vec<u8> =
                    lines.iter().flat_map(|(_, l)| [l.as_bytes(), b"\n"].concat()).collect();
                let text = String::from_utf8_lossy(&merged);
                assert_eq!(sc.contains_secret(&merged), None, "k={k} {first:?}/{tail:?}: {text:?}");
                for stream in [Stream::Stdout, Stream::Stderr] {
                    let one: String =
                        lines.iter().filter(|(s, _)| *s == stream).map(|(_, l)| format!("{l}\n")).collect();
                    assert!(one.contains("***"), "k={k} {stream:?}: {text:?}");
                }
                for part in [&value[..k], &value[k..]] {
                    assert!(part.len() < 4 || !text.contains(part), "k={k}: {text:?}");
                }
                assert!(redactions >= 1);
            }
        }
    }

    /// The same from a real process's pipes, read as the runner reads a sandbox's.
    #[tokio::test]
    async fn secret_split_between_stdout_and_stderr_of_a_process_is_scrubbed() {
        let value = "s3cr3t-V4lue/x+y";
        let sc = Arc::new(Scrubber::new(
            &[kiln_secrets::Secret::new("S", value)],
            &kiln_secrets::PatternSet::builtin(),
        ));
        for k in [1, 5, 12] {
            let script = format!("printf %s '{}'; printf %s '{}' >&2", &value[..k], &value[k..]);
            let mut child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("sh runs");
            let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
            let mut lines = Vec::new();
            pump_pipes(out, err, &sc, |_| true, |s, l| lines.push((s, l))).await;
            child.wait().await.unwrap();
            let merged: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
            assert_eq!(sc.contains_secret(merged.as_bytes()), None, "k={k}: {merged:?}");
            // Each stream's part is redacted (the lines come in the order the pipes end).
            for stream in [Stream::Stdout, Stream::Stderr] {
                assert!(lines.contains(&(stream, "***".to_string())), "k={k}: {lines:?}");
            }
            assert_eq!(lines.len(), 2, "k={k}: {lines:?}");
        }
    }

    #[tokio::test]
    async fn both_pipes_framed_in_order_and_limit_stops_output() {
        use tokio::io::AsyncWriteExt;
        let sc = Arc::new(Scrubber::new(&[], &kiln_secrets::PatternSet::builtin()));
        let (mut ow, or) = tokio::io::duplex(1024);
        let (mut ew, er) = tokio::io::duplex(1024);
        let mut lines = Vec::new();
        let write = async {
            ow.write_all(b"one\ntw").await.unwrap();
            tokio::task::yield_now().await;
            ew.write_all(b"warn\n").await.unwrap();
            tokio::task::yield_now().await;
            ow.write_all(b"o\nlast").await.unwrap();
            drop(ow);
            drop(ew);
        };
        let pump = pump_pipes(or, er, &sc, |_| true, |s, l| lines.push((s, l)));
        tokio::join!(pump, write);
        let want = [
            (Stream::Stdout, "one"),
            (Stream::Stderr, "warn"),
            (Stream::Stdout, "two"),
            (Stream::Stdout, "last"),
        ];
        assert_eq!(lines, want.map(|(s, l)| (s, l.to_string())));
        // Over the limit: drained, not shown.
        let (mut ow, or) = tokio::io::duplex(64);
        let (ew, er) = tokio::io::duplex(64);
        let mut lines = Vec::new();
        let mut budget = 10usize;
        let write = async {
            for _ in 0..100 {
                ow.write_all(b"0123456789\n").await.unwrap();
            }
            drop(ow);
            drop(ew);
        };
        let pump = pump_pipes(
            or,
            er,
            &sc,
            |n| {
                let ok = n <= budget;
                budget = budget.saturating_sub(n);
                ok
            },
            |s, l| lines.push((s, l)),
        );
        tokio::join!(pump, write);
        assert!(lines.len() <= 1, "{lines:?}");
    }

    #[test]
    fn strip_sgr_leaves_text() {
        assert_eq!(strip_sgr("\x1b[1;32mok\x1b[0m"), "ok");
    }
}
