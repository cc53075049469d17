//! Scrubbing a step's stdout and stderr together.
//!
//! Each stream has its own [`Core`] (the stream alone is one view a reader has). On top of
//! those, two views mix the streams:
//!
//! * the *arrival order*: the bytes of both pipes in the order they were read, which is the
//!   order the step wrote them as far as the reader can tell, and what a terminal attached to
//!   both would show. A value split between the pipes (`printf %s "${S:0:5}"; printf %s
//!   "${S:5}" >&2`) is whole there;
//! * the *output order*: the released pieces in the order they are handed out, which is the
//!   order of the log. Lines come out whole, per stream, so a line can follow one of the other
//!   stream that was not next to it on arrival (a partial line waits for its end).
//!
//! Arrival order: the bytes not yet released are kept in arrival order (`StepScrubber::runs`)
//! and, whenever bytes arrive next to the other pipe's, the stretch around that seam is matched
//! as one text. A match there is redacted in both streams (its bytes are not released yet), and
//! a seam that may still be inside a value holds back, in both streams, every byte from the
//! value's possible start. A stream's core already holds any possible start of a value at its
//! own end while the stream is open, so a value that crosses a seam always starts in bytes that
//! are still held. When a stream ends while the other is open, its last bytes are held while
//! they could begin a value that the other stream completes.
//!
//! Output order: released pieces pass a last stage, the *joint*, that holds the end of the
//! output while it could begin a value (the next piece may come from the other stream), and
//! matches across every place where the output switches streams. The cores' releases end in a
//! possible start of a value only when more of the same stream is held behind it, so the joint
//! usually passes pieces through untouched.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use crate::scrubber::{redact, sort_merge, Core, Counts, Scratch, Scrubber};
use crate::shadow::{is_skip, Skips};

/// One of a step's two output pipes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pipe {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Pipe {
    fn index(self) -> usize {
        match self {
            Pipe::Stdout => 0,
            Pipe::Stderr => 1,
        }
    }

    fn from_index(i: usize) -> Pipe {
        if i == 0 {
            Pipe::Stdout
        } else {
            Pipe::Stderr
        }
    }
}

/// A stretch of text assembled from pieces of both streams (or of the joint), with where each
/// piece came from.
#[derive(Debug, Default)]
struct Window {
    bytes: Vec<u8>,
    /// (pipe, source index, source offset, window offset, length), in order.
    parts: Vec<(usize, usize, usize, usize, usize)>,
    skips: Skips,
    found: Vec<(usize, usize)>,
}

impl Window {
    fn clear(&mut self) {
        self.bytes.clear();
        self.parts.clear();
    }

    /// Appends `bytes` (from `src` at `off`) as a part.
    fn push(&mut self, pipe: usize, src: usize, off: usize, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.parts.push((pipe, src, off, self.bytes.len(), bytes.len()));
            self.bytes.extend_from_slice(bytes);
        }
    }

    /// The parts that the window range `[a, b)` overlaps, as (part index, part-relative range).
    fn overlaps(&self, a: usize, b: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.parts.iter().enumerate().filter_map(move |(i, &(_, _, _, w, len))| {
            let (x, y) = (a.max(w), b.min(w + len));
            (x < y).then(|| (i, x - w, y - w))
        })
    }

    /// Does the window range `[a, b)` hold bytes of both pipes?
    fn crosses(&self, a: usize, b: usize) -> bool {
        let mut pipes = self.overlaps(a, b).map(|(i, _, _)| self.parts[i].0);
        let first = pipes.next();
        pipes.any(|p| Some(p) != first)
    }
}

/// How many bytes from the end of `s` hold `want` bytes that are not skipped (all of `s` when
/// fewer do).
fn tail_len(s: &[u8], want: usize) -> usize {
    let mut got = 0;
    for (i, &c) in s.iter().enumerate().rev() {
        if !is_skip(c) {
            got += 1;
            if got >= want {
                return s.len() - i;
            }
        }
    }
    s.len()
}

/// How many bytes from the start of `s` hold `want` bytes that are not skipped.
fn head_len(s: &[u8], want: usize) -> usize {
    let mut got = 0;
    for (i, &c) in s.iter().enumerate() {
        if !is_skip(c) {
            got += 1;
            if got >= want {
                return i + 1;
            }
        }
    }
    s.len()
}

/// Scrubs both output streams of one step: each stream alone, the bytes of both in the order
/// they arrived, and the pieces in the order they are handed out are kept clean of values.
///
/// # What is held back
///
/// Each stream is held back as a [`crate::StreamScrubber`] holds it back. On top of that:
///
/// * bytes that may be part of a value running across both streams in arrival order (a
///   stream's unterminated tail, say, followed by the other stream's bytes that could continue
///   the value) are held in both streams until the value is complete (then both parts are
///   redacted) or cannot be; a stream's last bytes at its end, while the other stream is open
///   and they could begin a value;
/// * the end of the output while it could begin a value: a released line whose last bytes
///   could begin a value, with more of its stream held behind it, waits for the next release of
///   either stream.
///
/// Lines stay whole per stream, and nothing is held for the sake of the other stream beyond
/// what could begin or continue a value.
pub struct StepScrubber {
    scrubber: Arc<Scrubber>,
    cores: [Core; 2],
    open: [bool; 2],
    /// The bytes not yet released, in the order they arrived: (pipe, stream range).
    runs: VecDeque<(usize, u64, u64)>,
    /// Per pipe, the stream offset from which nothing is released, because a value may be in
    /// progress across the pipes in arrival order.
    holds: [Option<u64>; 2],
    /// Released, not handed out yet: the end of the output that could begin a value.
    joint: Vec<(usize, Vec<u8>)>,
    /// Redactions made across the streams.
    counts: Counts,
    scratch: Scratch,
    window: Window,
}

impl fmt::Debug for StepScrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepScrubber")
            .field("held_bytes", &self.held())
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

/// Released bytes, in the order they are to be shown: (pipe, bytes) pieces.
pub type Pieces = Vec<(Pipe, Vec<u8>)>;

impl StepScrubber {
    pub(crate) fn new(scrubber: Arc<Scrubber>) -> StepScrubber {
        StepScrubber {
            scrubber,
            cores: [Core::default(), Core::default()],
            open: [true, true],
            runs: VecDeque::new(),
            holds: [None, None],
            joint: Vec::new(),
            counts: Counts::default(),
            scratch: Scratch::default(),
            window: Window::default(),
        }
    }

    /// Feeds raw bytes read from `pipe`; returns the pieces (of either stream) that are safe to
    /// show now, in order. Bytes pushed after [`finish`](Self::finish) of their pipe are
    /// ignored.
    pub fn push(&mut self, pipe: Pipe, bytes: &[u8]) -> Pieces {
        let x = pipe.index();
        if bytes.is_empty() || !self.open[x] {
            return Vec::new();
        }
        let start = self.cores[x].end();
        self.cores[x].append(bytes);
        match self.runs.back_mut() {
            Some(last) if last.0 == x && last.2 == start => last.2 += bytes.len() as u64,
            _ => self.runs.push_back((x, start, start + bytes.len() as u64)),
        }
        let holds = if self.cores[1 - x].pending().is_empty() {
            // Every byte of the other stream is out: no value in progress can reach into it.
            [None, None]
        } else {
            self.seam(Some((x, start)))
        };
        let wants = has_term(bytes) || self.cores[x].pending().len() >= crate::MAX_LINE;
        self.settle(holds, x, wants)
    }

    /// End of `pipe`'s stream: releases what it holds, unless the other stream, still open,
    /// could complete a value that its last bytes begin.
    pub fn finish(&mut self, pipe: Pipe) -> Pieces {
        let x = pipe.index();
        self.open[x] = false;
        let holds = if self.open.iter().any(|o| *o) { self.seam(None) } else { [None, None] };
        self.settle(holds, x, true)
    }

    /// Redactions so far, in both streams.
    pub fn counts(&self) -> Counts {
        let mut c = self.counts.clone();
        for core in &self.cores {
            c.values += core.counts.values;
            for (k, v) in &core.counts.patterns {
                *c.patterns.entry(k.clone()).or_default() += v;
            }
        }
        c
    }

    /// Number of bytes currently held back (both streams).
    pub fn held(&self) -> usize {
        self.cores.iter().map(|c| c.pending().len()).sum::<usize>()
            + self.joint.iter().map(|(_, b)| b.len()).sum::<usize>()
    }

    /// Number of bytes of `pipe`'s stream currently held back.
    pub fn held_by(&self, pipe: Pipe) -> usize {
        let p = pipe.index();
        self.cores[p].pending().len()
            + self.joint.iter().filter(|(q, _)| *q == p).map(|(_, b)| b.len()).sum::<usize>()
    }

    /// Applies new holds, releases what each stream may release (`x`'s when `wants`, the
    /// other's when its hold moved), and passes the releases through the joint.
    fn settle(&mut self, holds: [Option<u64>; 2], x: usize, wants: bool) -> Pieces {
        let old = std::mem::replace(&mut self.holds, holds);
        let sc = Arc::clone(&self.scrubber);
        let mut released: Vec<(usize, Vec<u8>)> = Vec::new();
        // The stream whose held bytes arrived first goes first.
        let mut order = [0usize, 1];
        if let Some(&(p, _, _)) = self.runs.front() {
            order = [p, 1 - p];
        }
        for p in order {
            let moved = old[p] != holds[p];
            let go = (p == x && wants) || (moved && !self.cores[p].pending().is_empty());
            if go {
                let out = self.cores[p].release(&sc, !self.open[p], holds[p]);
                if !out.is_empty() {
                    released.push((p, out));
                }
            }
        }
        // Forget what is released.
        let bases = [self.cores[0].base(), self.cores[1].base()];
        self.runs.retain_mut(|r| {
            r.1 = r.1.max(bases[r.0]);
            r.1 < r.2
        });
        self.join(released)
    }

    /// Matches the text around the seams between the streams' held bytes in arrival order, and
    /// redacts what crosses a seam (in both streams). `new`: the pipe and stream offset of the
    /// bytes that just arrived (the last run), or `None` at the end of a stream. Returns the
    /// holds for a value that may be in progress across the streams.
    fn seam(&mut self, new: Option<(usize, u64)>) -> [Option<u64>; 2] {
        let sc = Arc::clone(&self.scrubber);
        let Some(vm) = sc.value_matcher() else { return [None, None] };
        // Enough bytes to hold max_len - 1 shadow bytes, with room for escape sequences (whose
        // bytes are not control bytes but are skipped).
        let want = 2 * vm.max_len() + 16;
        let mut w = std::mem::take(&mut self.window);
        w.clear();
        // Before the new bytes: the held bytes that arrived last, newest first.
        let mut before: Vec<(usize, usize, usize)> = Vec::new();
        let mut got = 0;
        for &(p, a, b) in self.runs.iter().rev() {
            let b = match new {
                Some((x, start)) if p == x && b > start => start.max(a),
                _ => b,
            };
            let core = &self.cores[p];
            let (a, b) = ((a.max(core.base()) - core.base()) as usize, (b - core.base()) as usize);
            if a >= b {
                continue;
            }
            let piece = &core.pending()[a..b];
            let k = tail_len(piece, want - got);
            got += piece[piece.len() - k..].iter().filter(|c| !is_skip(**c)).count();
            before.push((p, b - k, b));
            if got >= want {
                break;
            }
        }
        for &(p, a, b) in before.iter().rev() {
            w.push(p, p, a, &self.cores[p].pending()[a..b]);
        }
        let mut at_end = true;
        if let Some((x, start)) = new {
            if w.parts.iter().all(|part| part.0 == x) {
                // Only this stream's own bytes before: its core sees all of it.
                self.window = w;
                return [None, None];
            }
            let core = &self.cores[x];
            let from = (start - core.base()) as usize;
            let rest = &core.pending()[from..];
            let k = head_len(rest, want);
            at_end = k == rest.len();
            w.push(x, x, from, &rest[..k]);
        }
        let mut holds = [None, None];
        if !w.bytes.is_empty() {
            w.skips.build(&w.bytes, false);
            if new.is_some() {
                vm.find_all(&w.bytes, &w.skips, &mut w.found, &mut self.scratch);
                for &(a, b) in &w.found {
                    if !w.crosses(a, b) {
                        continue;
                    }
                    for (i, x, y) in w.overlaps(a, b) {
                        let (p, _, off, _, _) = w.parts[i];
                        let base = self.cores[p].base();
                        self.cores[p].force(base + (off + x) as u64, base + (off + y) as u64);
                    }
                }
            }
            if at_end {
                if let Some(r) = vm.in_progress(&w.bytes, &w.skips, &mut self.scratch) {
                    let n = w.bytes.len();
                    // Within one open stream's own last bytes, its core holds it already.
                    let own = w.overlaps(r, n).all(|(i, _, _)| self.open[w.parts[i].0]) && !w.crosses(r, n);
                    if !own {
                        for (i, x, _) in w.overlaps(r, n) {
                            let (p, _, off, _, _) = w.parts[i];
                            if holds[p].is_none() {
                                holds[p] = Some(self.cores[p].base() + (off + x) as u64);
                            }
                        }
                    }
                }
            }
        }
        self.window = w;
        holds
    }

    /// Passes released pieces through the joint: redacts values across the places where the
    /// output switches streams, and hands out everything but an end that could begin a value
    /// (while a stream is open).
    fn join(&mut self, released: Vec<(usize, Vec<u8>)>) -> Pieces {
        let open = self.open.iter().any(|o| *o);
        // The common case: one piece that its core ended where its stream's held bytes end, so
        // no value can begin in it and go on past it, whatever comes next.
        if self.joint.is_empty() && released.len() == 1 {
            let p = released[0].0;
            if self.open[p] && self.cores[p].pending().is_empty() {
                return released.into_iter().map(|(p, b)| (Pipe::from_index(p), b)).collect();
            }
        }
        // Pieces of one stream are not joined: that would copy each release once more.
        self.joint.extend(released.into_iter().filter(|(_, b)| !b.is_empty()));
        if self.joint.is_empty() {
            return Vec::new();
        }
        let sc = Arc::clone(&self.scrubber);
        let Some(vm) = sc.value_matcher() else {
            return self.joint.drain(..).map(|(p, b)| (Pipe::from_index(p), b)).collect();
        };
        let want = 2 * vm.max_len() + 16;
        let mut w = std::mem::take(&mut self.window);
        // Values across each switch of streams.
        let mut cuts: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.joint.len()];
        for j in 1..self.joint.len() {
            if self.joint[j].0 == self.joint[j - 1].0 {
                // Within one stream, its core has matched across the pieces.
                continue;
            }
            w.clear();
            let mut got = 0;
            let mut left = Vec::new();
            for i in (0..j).rev() {
                let seg = &self.joint[i].1;
                let k = tail_len(seg, want - got);
                got += seg[seg.len() - k..].iter().filter(|c| !is_skip(**c)).count();
                left.push((i, seg.len() - k));
                if got >= want {
                    break;
                }
            }
            for &(i, from) in left.iter().rev() {
                w.push(self.joint[i].0, i, from, &self.joint[i].1[from..]);
            }
            // The right side may span several pieces (a line break alone, then the rest).
            let mut got = 0;
            for i in j..self.joint.len() {
                let seg = &self.joint[i].1;
                let k = head_len(seg, want - got);
                got += seg[..k].iter().filter(|c| !is_skip(**c)).count();
                w.push(self.joint[i].0, i, 0, &seg[..k]);
                if got >= want {
                    break;
                }
            }
            w.skips.build(&w.bytes, false);
            vm.find_all(&w.bytes, &w.skips, &mut w.found, &mut self.scratch);
            for &(a, b) in &w.found {
                if w.crosses(a, b) {
                    // Counted at the first switch it crosses.
                    let left = self.joint[j - 1].0;
                    let first = w.overlaps(a, b).all(|(i, _, _)| w.parts[i].1 >= j || w.parts[i].0 == left);
                    self.counts.values += u64::from(first);
                    for (i, x, y) in w.overlaps(a, b) {
                        let (_, seg, off, _, _) = w.parts[i];
                        cuts[seg].push((off + x, off + y));
                    }
                }
            }
        }
        let mask = self.scrubber.masks();
        for (seg, mut c) in cuts.into_iter().enumerate() {
            if c.is_empty() {
                continue;
            }
            sort_merge(&mut c);
            let old = std::mem::take(&mut self.joint[seg].1);
            let mut out = Vec::with_capacity(old.len());
            let mut pos = 0;
            for (a, b) in c {
                out.extend_from_slice(&old[pos..a]);
                redact(&old[a..b], mask, &mut out);
                pos = b;
            }
            out.extend_from_slice(&old[pos..]);
            self.joint[seg].1 = out;
        }
        // The end that could begin a value stays.
        let mut keep = None;
        if open {
            w.clear();
            let mut got = 0;
            let mut tail = Vec::new();
            for i in (0..self.joint.len()).rev() {
                let seg = &self.joint[i].1;
                let k = tail_len(seg, want - got);
                got += seg[seg.len() - k..].iter().filter(|c| !is_skip(**c)).count();
                tail.push((i, seg.len() - k));
                if got >= want {
                    break;
                }
            }
            for &(i, from) in tail.iter().rev() {
                w.push(self.joint[i].0, i, from, &self.joint[i].1[from..]);
            }
            w.skips.build(&w.bytes, false);
            if let Some(r) = vm.in_progress(&w.bytes, &w.skips, &mut self.scratch) {
                if let Some((i, x, _)) = w.overlaps(r, r + 1).next() {
                    let (_, seg, off, _, _) = w.parts[i];
                    keep = Some((seg, off + x));
                }
            }
        }
        self.window = w;
        let mut out = Vec::new();
        let kept = match keep {
            None => Vec::new(),
            Some((seg, off)) => {
                let mut kept = self.joint.split_off(seg);
                let first = &mut kept[0];
                let rest = first.1.split_off(off);
                let head = std::mem::replace(&mut first.1, rest);
                if !head.is_empty() {
                    self.joint.push((first.0, head));
                }
                kept
            }
        };
        for (p, b) in std::mem::replace(&mut self.joint, kept) {
            out.push((Pipe::from_index(p), b));
        }
        out
    }
}

fn has_term(bytes: &[u8]) -> bool {
    memchr::memchr2(b'\n', b'\r', bytes).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PatternSet, Secret};
    use proptest::prelude::*;

    const VALUE: &str = "s3cr3t-V4lue/x+y";

    fn scrubber(values: &[&str], mask: bool) -> Arc<Scrubber> {
        let secrets: Vec<Secret> =
            values.iter().enumerate().map(|(i, v)| Secret::new(format!("S{i}"), v.as_bytes())).collect();
        let sc = Scrubber::new(&secrets, &PatternSet::builtin());
        Arc::new(if mask { sc.masking() } else { sc })
    }

    /// What a reader gets: each stream alone, and both in the order handed out.
    #[derive(Debug, Default)]
    struct Seen {
        out: [Vec<u8>; 2],
        merged: Vec<u8>,
        /// Per piece handed out: (pipe, length), in order.
        pieces: Vec<(usize, usize)>,
    }

    impl Seen {
        fn take(&mut self, pieces: Pieces) {
            for (p, b) in pieces {
                assert!(!b.is_empty());
                self.out[p.index()].extend_from_slice(&b);
                self.merged.extend_from_slice(&b);
                self.pieces.push((p.index(), b.len()));
            }
        }
    }

    enum Op {
        Push(Pipe, Vec<u8>),
        Finish(Pipe),
    }

    fn run(sc: &Arc<Scrubber>, ops: &[Op]) -> Seen {
        let mut st = sc.step();
        let mut seen = Seen::default();
        for op in ops {
            match op {
                Op::Push(p, b) => seen.take(st.push(*p, b)),
                Op::Finish(p) => seen.take(st.finish(*p)),
            }
        }
        seen.take(st.finish(Pipe::Stdout));
        seen.take(st.finish(Pipe::Stderr));
        assert_eq!(st.held(), 0);
        seen
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn secret_split_between_stdout_and_stderr_is_scrubbed() {
        let sc = scrubber(&[VALUE], false);
        let (o, e) = (Pipe::Stdout, Pipe::Stderr);
        for k in 1..VALUE.len() {
            let (a, b) = (VALUE.as_bytes()[..k].to_vec(), VALUE.as_bytes()[k..].to_vec());
            let cases: Vec<Vec<Op>> = vec![
                // printf %s "${S:0:k}"; printf %s "${S:k}" >&2 — the streams end in either order.
                vec![Op::Push(o, a.clone()), Op::Push(e, b.clone()), Op::Finish(o), Op::Finish(e)],
                vec![Op::Push(o, a.clone()), Op::Push(e, b.clone()), Op::Finish(e), Op::Finish(o)],
                // The second half ends its line; the first half's line ends later.
                vec![
                    Op::Push(o, a.clone()),
                    Op::Push(e, [&b[..], b"\n"].concat()),
                    Op::Push(o, b" x\n".to_vec()),
                ],
                // The first half ends a line; the second half comes without one, or with more.
                vec![Op::Push(o, [&a[..], b"\n"].concat()), Op::Push(e, b.clone())],
                vec![Op::Push(o, [&a[..], b"\n"].concat()), Op::Push(e, [&b[..], b" more\n"].concat())],
                // The first half ends a line with more of its stream held behind it.
                vec![
                    Op::Push(o, [b"zz ", &a[..], b"\nfoo"].concat()),
                    Op::Push(e, [&b[..], b"\n"].concat()),
                    Op::Push(o, b"\n".to_vec()),
                ],
                // Back and forth.
                vec![
                    Op::Push(e, b"warn: ".to_vec()),
                    Op::Push(o, a[..k / 2].to_vec()),
                    Op::Push(e, a[k / 2..].to_vec()),
                    Op::Push(o, b.clone()),
                    Op::Push(e, b"\n".to_vec()),
                ],
                // The first stream ends with the first half before the second half comes.
                vec![Op::Push(o, a.clone()), Op::Finish(o), Op::Push(e, b.clone())],
                vec![
                    Op::Push(e, b"x\n".to_vec()),
                    Op::Push(o, a.clone()),
                    Op::Finish(o),
                    Op::Push(e, b.clone()),
                ],
            ];
            for (c, ops) in cases.iter().enumerate() {
                let seen = run(&sc, ops);
                let merged = text(&seen.merged);
                let streams = [text(&seen.out[0]), text(&seen.out[1])];
                for view in [&merged, &streams[0], &streams[1]] {
                    assert_eq!(sc.contains_secret(view.as_bytes()), None, "k={k} case {c}: {view:?}");
                }
                assert!(merged.contains("***"), "k={k} case {c}: {merged:?}");
                // Neither half is left next to the other, in either order.
                let (a, b) = (&VALUE[..k], &VALUE[k..]);
                let joined: String = merged.chars().filter(|c| *c != '\n').collect();
                assert!(
                    !joined.contains(&format!("{a}{b}")) && !joined.contains(&format!("{b}{a}")),
                    "k={k} case {c}: {merged:?}"
                );
            }
        }
    }

    #[test]
    fn ordinary_interleaved_output_is_unchanged_and_prompt() {
        let sc = scrubber(&[VALUE], false);
        let mut st = sc.step();
        let (o, e) = (Pipe::Stdout, Pipe::Stderr);
        assert_eq!(st.push(o, b"building\n"), vec![(o, b"building\n".to_vec())]);
        assert_eq!(st.push(e, b"warning: unused\n"), vec![(e, b"warning: unused\n".to_vec())]);
        // A partial line of one stream does not hold the other's lines back.
        assert_eq!(st.push(o, b"progress: "), vec![]);
        assert_eq!(st.push(e, b"note: x\n"), vec![(e, b"note: x\n".to_vec())]);
        assert_eq!(st.push(o, b"done\n"), vec![(o, b"progress: done\n".to_vec())]);
        assert_eq!(st.finish(o), vec![]);
        assert_eq!(st.finish(e), vec![]);
        assert_eq!(st.counts().total(), 0);
    }

    fn piece() -> impl Strategy<Value = Vec<u8>> {
        const VALUES: [&str; 2] = [VALUE, "Tr0ub4dor&3-horse"];
        prop_oneof![
            4 => "[a-z0-9 .:=/-]{0,12}".prop_map(String::into_bytes),
            2 => Just(b"\n".to_vec()),
            1 => Just(b"\r\n".to_vec()),
            1 => Just(b"\x1b[1;31m".to_vec()),
            1 => Just(b"\x1b[0m".to_vec()),
            // Parts of the values, so that they are put together across pushes and streams.
            3 => (0usize..2, 0usize..20, 0usize..20).prop_map(|(i, a, b)| {
                let v = VALUES[i].as_bytes();
                let (a, b) = (a.min(v.len()), b.min(v.len()));
                v[a.min(b)..a.max(b)].to_vec()
            }),
            2 => (0usize..2).prop_map(|i| VALUES[i].as_bytes().to_vec()),
        ]
    }

    /// One push, or two: a value split between the streams (the first part possibly ending a
    /// line), pushed one after the other.
    fn op() -> impl Strategy<Value = Vec<(bool, Vec<u8>)>> {
        const VALUES: [&str; 2] = [VALUE, "Tr0ub4dor&3-horse"];
        prop_oneof![
            3 => (any::<bool>(), piece()).prop_map(|x| vec![x]),
            1 => (0usize..2, 1usize..17, any::<bool>(), 0usize..5).prop_map(|(i, cut, err, sep)| {
                let v = VALUES[i].as_bytes();
                let cut = cut.min(v.len() - 1);
                // The last: a line ends after the first part, and more of its stream follows.
                let sep: &[u8] = [&b""[..], b"\n", b"\r\n", b"\x1b[0m", b"\nfoo"][sep];
                vec![(err, [&v[..cut], sep].concat()), (!err, v[cut..].to_vec())]
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Pushes to both streams in any order and any pieces, streams ending at any point:
        /// against the full-view reference, no value is left in either stream, in the order the
        /// pieces are handed out, or in the order the bytes arrived; and nothing but values is
        /// redacted when the pushes all go to one stream.
        #[test]
        fn interleaved_streams_never_leak(
            ops in prop::collection::vec(op(), 1..30).prop_map(|v| v.concat()),
            end_out in any::<prop::sample::Index>(),
            end_err in any::<prop::sample::Index>(),
        ) {
            let sc = scrubber(&[VALUE, "Tr0ub4dor&3-horse"], true);
            let plain = scrubber(&[VALUE, "Tr0ub4dor&3-horse"], false);
            let n = ops.len();
            let (end_out, end_err) = (end_out.index(n + 1), end_err.index(n + 1));
            let mut st = sc.step();
            let mut seen = Seen::default();
            // The input in arrival order, and per stream.
            let mut arrival: Vec<(usize, u8)> = Vec::new();
            let mut input = [Vec::new(), Vec::new()];
            let mut open = [true, true];
            let mut pushed: Vec<(usize, &[u8])> = Vec::new();
            for (i, (err, bytes)) in ops.iter().enumerate() {
                for (p, end) in [(0, end_out), (1, end_err)] {
                    if i == end && open[p] {
                        open[p] = false;
                        seen.take(st.finish(Pipe::from_index(p)));
                    }
                }
                let p = usize::from(*err);
                if open[p] {
                    arrival.extend(bytes.iter().map(|b| (p, *b)));
                    input[p].extend_from_slice(bytes);
                    pushed.push((p, bytes));
                    seen.take(st.push(Pipe::from_index(p), bytes));
                }
            }
            seen.take(st.finish(Pipe::Stdout));
            seen.take(st.finish(Pipe::Stderr));
            prop_assert_eq!(st.held(), 0);
            // Masking keeps lengths: each stream's output lines up with its input, and differs
            // only where it is masked.
            for (p, (out, input)) in seen.out.iter().zip(&input).enumerate() {
                prop_assert_eq!(out.len(), input.len());
                for (o, i) in out.iter().zip(input) {
                    prop_assert!(o == i || (*o == b'*' && *i != b'\n'));
                }
                prop_assert_eq!(sc.contains_secret(out), None, "stream {}", p);
            }
            prop_assert_eq!(sc.contains_secret(&seen.merged), None, "handed-out order");
            // Arrival order, rebuilt from the outputs.
            let mut pos = [0usize, 0];
            let rebuilt: Vec<u8> = arrival
                .iter()
                .map(|&(p, _)| {
                    pos[p] += 1;
                    seen.out[p][pos[p] - 1]
                })
                .collect();
            prop_assert_eq!(sc.contains_secret(&rebuilt), None, "arrival order");
            // One stream only: the same as the full-view reference.
            if input[0].is_empty() || input[1].is_empty() {
                let p = usize::from(input[0].is_empty());
                let (want, _) = plain.scrub_bytes(&input[p]);
                let mut st = plain.step();
                let mut got = Vec::new();
                for &(q, bytes) in &pushed {
                    if q == p {
                        got.extend(st.push(Pipe::from_index(p), bytes).into_iter().flat_map(|x| x.1));
                    }
                }
                got.extend(st.finish(Pipe::Stdout).into_iter().flat_map(|x| x.1));
                got.extend(st.finish(Pipe::Stderr).into_iter().flat_map(|x| x.1));
                prop_assert_eq!(text(&got), text(&want.0));
            }
        }
    }
}
