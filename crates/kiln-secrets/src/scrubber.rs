//! The scrubber: secret values (and encodings) by Aho-Corasick over the shadow view, token
//! patterns per released line.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::encode;
use crate::patterns::{Compiled, LineState, PatternSet};
use crate::shadow::{is_skip, Shadow};
use crate::{Secret, MIN_SECRET_LEN};

/// Lines longer than this are released in pieces (each piece scrubbed).
pub const MAX_LINE: usize = 64 * 1024;

/// A tail that equals the first `HOLD_MIN` or more (shadow) bytes of a value pattern is held back.
const HOLD_MIN: usize = 4;

/// Bits in the 4-byte-prefix filter used by the hold-back check.
const BLOOM_BITS: u32 = 20;

/// Sampled q-gram prefilter for large value sets: every pattern is at least
/// `MIN_SECRET_LEN` (8) bytes long, so every occurrence contains a `GRAM`-byte gram that starts
/// at a multiple of `STRIDE` (8 - 6 + 1 = 3) in the text, at offset 0, 1 or 2 of the pattern.
const GRAM: usize = 6;
const STRIDE: usize = MIN_SECRET_LEN - GRAM + 1;
const GRAM_BITS: u32 = 22;
/// Use the sampled prefilter above this many patterns (measured: always better).
const SAMPLED_ABOVE: usize = 0;

#[inline(always)]
fn gram_at(b: &[u8], x: usize) -> u64 {
    let k = if x + 8 <= b.len() {
        u64::from_le_bytes(b[x..x + 8].try_into().expect("8 bytes"))
    } else {
        let mut a = [0u8; 8];
        a[..GRAM].copy_from_slice(&b[x..x + GRAM]);
        u64::from_le_bytes(a)
    };
    k & ((1u64 << (8 * GRAM)) - 1)
}

#[inline(always)]
fn gram_hashes(k: u64) -> (usize, usize) {
    (
        (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - GRAM_BITS)) as usize,
        (k.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> (64 - GRAM_BITS)) as usize,
    )
}

#[derive(Debug)]
struct GramFilter {
    bits: Vec<u64>,
}

impl GramFilter {
    fn new(pats: &[Vec<u8>]) -> GramFilter {
        let mut bits = vec![0u64; 1 << (GRAM_BITS - 6)];
        for p in pats {
            for j in 0..STRIDE {
                let (h1, h2) = gram_hashes(gram_at(p, j));
                bits[h1 >> 6] |= 1 << (h1 & 63);
                bits[h2 >> 6] |= 1 << (h2 & 63);
            }
        }
        GramFilter { bits }
    }

    #[inline(always)]
    fn test(&self, h: usize) -> bool {
        self.bits[h >> 6] & (1 << (h & 63)) != 0
    }

    /// Calls `f` with disjoint, ascending ranges of `hay` that contain every occurrence of
    /// every pattern (patterns are between 8 and `max_len` bytes long).
    fn candidates(&self, hay: &[u8], max_len: usize, mut f: impl FnMut(usize, usize)) {
        if hay.len() < MIN_SECRET_LEN {
            return;
        }
        let mut cur: Option<(usize, usize)> = None;
        let mut x = 0;
        let last = hay.len() - GRAM;
        while x <= last {
            let (h1, h2) = gram_hashes(gram_at(hay, x));
            if self.test(h1) && self.test(h2) {
                let s = x.saturating_sub(STRIDE - 1);
                let e = (s + max_len + STRIDE).min(hay.len());
                cur = match cur {
                    Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
                    Some((cs, ce)) => {
                        f(cs, ce);
                        Some((s, e))
                    }
                    None => Some((s, e)),
                };
            }
            x += STRIDE;
        }
        if let Some((cs, ce)) = cur {
            f(cs, ce);
        }
    }
}

/// Redactions so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Secret values (or encodings) replaced by `***`.
    pub values: u64,
    /// Pattern redactions, by pattern name.
    pub patterns: BTreeMap<String, u64>,
}

impl Counts {
    /// All redactions.
    pub fn total(&self) -> u64 {
        self.values + self.patterns.values().sum::<u64>()
    }
}

/// The value matcher: every secret's value and encodings in one automaton.
pub(crate) struct ValueMatcher {
    ac: AhoCorasick,
    /// pattern id -> secret index
    owner: Vec<u32>,
    names: Vec<String>,
    /// The patterns, sorted, for "is this a prefix of some pattern".
    sorted: Vec<Vec<u8>>,
    /// Filter over the first 4 bytes of every pattern.
    bloom: Vec<u64>,
    max_len: usize,
    grams: Option<GramFilter>,
}

#[inline]
fn bloom_index(p: &[u8]) -> usize {
    let k = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
    (k.wrapping_mul(0x9E37_79B1) >> (32 - BLOOM_BITS)) as usize
}

impl ValueMatcher {
    fn new(secrets: &[Secret]) -> Option<ValueMatcher> {
        let mut seen: HashMap<Vec<u8>, ()> = HashMap::new();
        let mut pats: Vec<Vec<u8>> = Vec::new();
        let mut owner = Vec::new();
        for (si, s) in secrets.iter().enumerate() {
            let v = s.value.expose();
            let mut sources = vec![v];
            if v.contains(&b'\n') {
                for line in v.split(|b| *b == b'\n') {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if line.len() >= MIN_SECRET_LEN {
                        sources.push(line);
                    }
                }
            }
            for src in sources {
                for var in encode::variants(src) {
                    let norm: Vec<u8> = var.into_iter().filter(|b| !is_skip(*b)).collect();
                    if norm.len() < MIN_SECRET_LEN || seen.contains_key(&norm) {
                        continue;
                    }
                    seen.insert(norm.clone(), ());
                    pats.push(norm);
                    owner.push(si as u32);
                }
            }
        }
        if pats.is_empty() {
            return None;
        }
        // Longest first + leftmost-first == leftmost-longest, and lets small sets use the
        // SIMD prefilter.
        let mut order: Vec<usize> = (0..pats.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(pats[i].len()));
        let owner: Vec<u32> = order.iter().map(|&i| owner[i]).collect();
        let pats: Vec<Vec<u8>> = order.iter().map(|&i| std::mem::take(&mut pats[i])).collect();
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(&pats)
            .expect("value automaton builds");
        let mut bloom = vec![0u64; 1 << (BLOOM_BITS - 6)];
        for p in &pats {
            let i = bloom_index(p);
            bloom[i >> 6] |= 1 << (i & 63);
        }
        let max_len = pats.iter().map(Vec::len).max().unwrap_or(0);
        let grams = (pats.len() > SAMPLED_ABOVE).then(|| GramFilter::new(&pats));
        let mut sorted = pats;
        sorted.sort_unstable();
        Some(ValueMatcher {
            ac,
            owner,
            names: secrets.iter().map(|s| s.name.clone()).collect(),
            sorted,
            bloom,
            max_len,
            grams,
        })
    }

    fn name(&self, pid: usize) -> &str {
        &self.names[self.owner[pid] as usize]
    }

    /// Is `t` a *proper* prefix of some pattern?
    fn is_proper_prefix(&self, t: &[u8]) -> bool {
        let mut i = self.sorted.partition_point(|p| p.as_slice() < t);
        if i < self.sorted.len() && self.sorted[i] == t {
            i += 1;
        }
        i < self.sorted.len() && self.sorted[i].starts_with(t)
    }

    /// Earliest shadow offset `s` such that `shadow[s..]` (at least `HOLD_MIN` bytes) is a
    /// proper prefix of some pattern: a match that may still be in progress.
    fn in_progress(&self, shadow: &[u8]) -> Option<usize> {
        let n = shadow.len();
        if n < HOLD_MIN {
            return None;
        }
        let lo = n.saturating_sub(self.max_len - 1);
        (lo..=n - HOLD_MIN).find(|&s| {
            let i = bloom_index(&shadow[s..]);
            self.bloom[i >> 6] & (1 << (i & 63)) != 0 && self.is_proper_prefix(&shadow[s..])
        })
    }

    /// All matches in `buf` (whose shadow is `sh`) as sorted, disjoint real ranges.
    fn find_all(&self, buf: &[u8], sh: &Shadow, out: &mut Vec<(usize, usize)>) {
        out.clear();
        match &self.grams {
            None => {
                for m in self.ac.find_iter(&sh.bytes) {
                    out.push(sh.range_to_real(m.start(), m.end()));
                }
            }
            Some(g) => g.candidates(&sh.bytes, self.max_len, |s, e| {
                for m in self.ac.find_iter(&sh.bytes[s..e]) {
                    out.push(sh.range_to_real(s + m.start(), s + m.end()));
                }
            }),
        }
        if !sh.bodies.is_empty() {
            for &(s, e) in &sh.bodies {
                for m in self.ac.find_iter(&buf[s..e]) {
                    out.push((s + m.start(), s + m.end()));
                }
            }
            out.sort_unstable();
            let mut merged: Vec<(usize, usize)> = Vec::with_capacity(out.len());
            for &(a, b) in out.iter() {
                match merged.last_mut() {
                    Some(last) if a < last.1 => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            *out = merged;
        }
    }

    /// First secret (pattern id) in `buf`.
    fn first(&self, buf: &[u8], sh: &Shadow) -> Option<usize> {
        match &self.grams {
            None => {
                if let Some(m) = self.ac.find(&sh.bytes) {
                    return Some(m.pattern().as_usize());
                }
            }
            Some(g) => {
                let mut found = None;
                g.candidates(&sh.bytes, self.max_len, |s, e| {
                    if found.is_none() {
                        found = self.ac.find(&sh.bytes[s..e]).map(|m| m.pattern().as_usize());
                    }
                });
                if found.is_some() {
                    return found;
                }
            }
        }
        sh.bodies.iter().find_map(|&(s, e)| self.ac.find(&buf[s..e])).map(|m| m.pattern().as_usize())
    }

    /// Streams `r` through the matcher; returns the name of the first secret found.
    pub(crate) fn find_in_reader(&self, r: &mut dyn Read) -> io::Result<Option<&str>> {
        const CHUNK: usize = 256 * 1024;
        const MAX_CARRY: usize = 1 << 20;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK * 2);
        let mut chunk = vec![0u8; CHUNK];
        let mut sh = Shadow::default();
        loop {
            let n = match r.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let eof = n == 0;
            buf.extend_from_slice(&chunk[..n]);
            sh.build(&buf, eof);
            if let Some(pid) = self.first(&buf, &sh) {
                return Ok(Some(self.name(pid)));
            }
            if eof {
                return Ok(None);
            }
            // Keep what a match in progress could still need: the last max_len - 1 shadow
            // bytes (and what lies between them), bounded.
            let keep = self.max_len - 1;
            let mut cut = if sh.bytes.len() > keep { sh.to_real(sh.bytes.len() - keep) } else { 0 };
            cut = cut.max(buf.len().saturating_sub(MAX_CARRY));
            buf.drain(..cut);
        }
    }
}

/// The scrubber for one build: immutable and `Send + Sync`; share it with `Arc`.
pub struct Scrubber {
    values: Option<ValueMatcher>,
    patterns: Compiled,
    secret_count: usize,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrubber")
            .field("secrets", &self.secret_count)
            .field("value_patterns", &self.value_pattern_count())
            .finish_non_exhaustive()
    }
}

impl Scrubber {
    /// Builds the scrubber. Value patterns (the value, its encodings, the lines of a
    /// multi-line value) shorter than [`MIN_SECRET_LEN`] bytes after dropping control bytes are
    /// skipped, so call [`crate::validate`] on every secret first.
    pub fn new(secrets: &[Secret], patterns: &PatternSet) -> Scrubber {
        Scrubber {
            values: ValueMatcher::new(secrets),
            patterns: Compiled::new(patterns),
            secret_count: secrets.len(),
        }
    }

    /// A scrubber for one output stream. Takes `&Arc<Self>` so the stream scrubber is
    /// `'static` and can move into a task or thread: `Arc::new(Scrubber::new(..)).stream()`.
    pub fn stream(self: &Arc<Self>) -> StreamScrubber {
        StreamScrubber { scrubber: Arc::clone(self), core: Core::default() }
    }

    /// The name of the first secret whose value or an encoding of it occurs in `bytes`
    /// (matching on the shadow view, like the stream scrubber).
    pub fn contains_secret(&self, bytes: &[u8]) -> Option<&str> {
        let vm = self.values.as_ref()?;
        let mut sh = Shadow::default();
        sh.build(bytes, true);
        vm.first(bytes, &sh).map(|pid| vm.name(pid))
    }

    /// Scrubs a complete string (error messages, summaries, step outputs): values and
    /// patterns. Invalid UTF-8 produced by cutting inside a character is replaced by U+FFFD.
    pub fn scrub_str(&self, s: &str) -> String {
        self.scrub_bytes(s.as_bytes()).0.into_owned_string()
    }

    /// Scrubs complete bytes; returns the output and the counts.
    pub fn scrub_bytes(&self, bytes: &[u8]) -> (ScrubbedBytes, Counts) {
        let mut core = Core::default();
        let (out, _) = core.process(self, bytes, true);
        (ScrubbedBytes(out), core.counts)
    }

    /// Number of byte strings in the value automaton (values, encodings, lines).
    pub fn value_pattern_count(&self) -> usize {
        self.values.as_ref().map_or(0, |v| v.sorted.len())
    }

    pub(crate) fn value_matcher(&self) -> Option<&ValueMatcher> {
        self.values.as_ref()
    }
}

/// Scrubbed output of [`Scrubber::scrub_bytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrubbedBytes(pub Vec<u8>);

impl ScrubbedBytes {
    fn into_owned_string(self) -> String {
        match String::from_utf8(self.0) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

#[derive(Default)]
struct Core {
    /// Bytes received but not released.
    buf: Vec<u8>,
    shadow: Shadow,
    matches: Vec<(usize, usize)>,
    line: LineState,
    counts: Counts,
}

impl Core {
    fn push(&mut self, sc: &Scrubber, bytes: &[u8]) -> Vec<u8> {
        let has_term = memchr::memchr2(b'\n', b'\r', bytes).is_some();
        if self.buf.is_empty() {
            if !has_term && bytes.len() < MAX_LINE {
                self.buf.extend_from_slice(bytes);
                return Vec::new();
            }
            let (out, l) = self.process(sc, bytes, false);
            self.buf.extend_from_slice(&bytes[l..]);
            return out;
        }
        self.buf.extend_from_slice(bytes);
        if !has_term && self.buf.len() < MAX_LINE {
            return Vec::new();
        }
        let data = std::mem::take(&mut self.buf);
        let (out, l) = self.process(sc, &data, false);
        self.buf = data;
        self.buf.drain(..l);
        out
    }

    fn finish(&mut self, sc: &Scrubber) -> Vec<u8> {
        let data = std::mem::take(&mut self.buf);
        let (out, _) = self.process(sc, &data, true);
        self.line = None;
        out
    }

    /// Scrubs and releases a prefix of `data`; returns the output and the prefix length.
    fn process(&mut self, sc: &Scrubber, data: &[u8], eof: bool) -> (Vec<u8>, usize) {
        let n = data.len();
        if n == 0 {
            return (Vec::new(), 0);
        }
        let vm = sc.values.as_ref();
        if let Some(vm) = vm {
            self.shadow.build(data, eof);
            vm.find_all(data, &self.shadow, &mut self.matches);
        } else {
            self.matches.clear();
        }
        let mut l = n;
        if !eof {
            // Complete lines end at the last LF or CR.
            let full = memchr::memrchr2(b'\n', b'\r', data).map_or(0, |p| p + 1);
            l = full;
            if n - full >= MAX_LINE {
                // Over-long line: release it in pieces, preferably at a blank.
                l = n;
                let from = full.max(n.saturating_sub(4096));
                if let Some(p) = memchr::memrchr2(b' ', b'\t', &data[from..]) {
                    l = from + p + 1;
                }
            }
            // Where to cut when `x` must be held: the start of x's line (lines stay whole for
            // the patterns), or x itself in the unterminated tail / in an over-long line.
            let cut = |x: usize| -> usize {
                if x >= full {
                    return x;
                }
                let ls = memchr::memrchr2(b'\n', b'\r', &data[..x]).map_or(0, |p| p + 1);
                if x - ls > MAX_LINE {
                    x
                } else {
                    ls
                }
            };
            if let Some(vm) = vm {
                if let Some(s) = vm.in_progress(&self.shadow.bytes) {
                    let r = self.shadow.to_real(s);
                    if r < l {
                        l = cut(r);
                    }
                }
            }
            // No released match may straddle the release point.
            loop {
                let mut changed = false;
                for &(a, b) in &self.matches {
                    if a < l && b > l {
                        l = cut(a);
                        changed = true;
                    }
                }
                if !changed {
                    break;
                }
            }
            if l == 0 {
                return (Vec::new(), 0);
            }
        }
        // Values.
        let mut out = Vec::with_capacity(l + 64);
        let mut pos = 0;
        for &(a, b) in &self.matches {
            if b > l {
                break;
            }
            out.extend_from_slice(&data[pos..a]);
            out.extend_from_slice(b"***");
            // Keep the line structure: LFs inside the match stay.
            let mut k = a;
            while let Some(p) = memchr::memchr(b'\n', &data[k..b]) {
                out.push(b'\n');
                k += p + 1;
                if k < b {
                    out.extend_from_slice(b"***");
                }
            }
            pos = b;
            self.counts.values += 1;
        }
        out.extend_from_slice(&data[pos..l]);
        // Patterns.
        if !sc.patterns.is_empty() {
            if let Some(p) = sc.patterns.apply(&out, &mut self.line, &mut self.counts) {
                out = p;
            }
        }
        (out, l)
    }
}

/// Scrubs one output stream (stdout or stderr) of one step.
///
/// # What is held back
///
/// [`push`](Self::push) releases, scrubbed, every byte up to the last line terminator (LF or
/// CR) it has seen, except:
///
/// * the unterminated tail (the partial last line) is held until its terminator arrives, the
///   tail reaches [`MAX_LINE`] bytes (then it is released in pieces, cut after the last blank
///   in its final 4 KiB when there is one), or [`finish`](Self::finish);
/// * a *match in progress*: if the last `k >= 4` bytes of the shadow view (the bytes minus
///   CR, LF, other C0 controls, DEL and ESC sequences) equal the first `k` bytes of some value
///   pattern (a value or one of its encodings) that is longer than `k`, the line where that
///   prefix starts and everything after it are held. Suffixes of 1 to 3 bytes are not held:
///   with many secrets nearly every line would end in one, and ordinary lines must come out on
///   the push that completes them;
/// * a match that starts before the release point and ends after it moves the release point
///   back to the start of the match's line.
///
/// So a secret split across pushes at any point is caught, unless the split is a line break
/// (or other skipped byte) after at most 3 of its bytes *and* the pushes are separated so that
/// the first part's line completes on its own push. Patterns are applied per released line,
/// with the private-key block state carried across pushes.
pub struct StreamScrubber {
    scrubber: Arc<Scrubber>,
    core: Core,
}

impl fmt::Debug for StreamScrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamScrubber")
            .field("held_bytes", &self.core.buf.len())
            .field("counts", &self.core.counts)
            .finish_non_exhaustive()
    }
}

impl StreamScrubber {
    /// Feeds raw bytes from the pipe; returns the bytes that are safe to release now.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.core.push(&self.scrubber, bytes)
    }

    /// End of stream: releases the rest, scrubbed. The scrubber can be reused afterwards.
    pub fn finish(&mut self) -> Vec<u8> {
        self.core.finish(&self.scrubber)
    }

    /// Redactions so far.
    pub fn counts(&self) -> &Counts {
        &self.core.counts
    }

    /// Number of bytes currently held back.
    pub fn held(&self) -> usize {
        self.core.buf.len()
    }
}
