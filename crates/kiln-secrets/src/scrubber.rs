//! The scrubber: secret values (and encodings) by Aho-Corasick over the shadow view, token
//! patterns per released line.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::dump::{Dumps, Region};
use crate::encode;
use crate::patterns::{Compiled, LineState, PatternSet};
use crate::shadow::{gram_mask, gram_raw, is_skip, maybe_skip_bytes, skip_bytes, Skips};
use crate::step::StepScrubber;
use crate::{Secret, MIN_SECRET_LEN};

/// Lines longer than this are released in pieces (each piece scrubbed).
pub const MAX_LINE: usize = 64 * 1024;

/// Bits in the 4-byte-prefix filter used by the hold-back check.
const BLOOM_BITS: u32 = 20;

/// Words in the quick table: at least 32 KiB (100 secrets: a tenth of its bits set), and at
/// least 16 bits per gram up to 512 KiB (1000 secrets).
const QUICK_MIN_WORDS: usize = 1 << 12;
const QUICK_MAX_WORDS: usize = 1 << 16;

/// Word (the top bits of the product, `64 - shift` of them) and two bits of the quick table
/// for gram `k`.
#[inline(always)]
fn quick_slot(k: u64, shift: u32) -> (usize, u64) {
    // The high bits of the product depend on every bit of the key.
    let h = k.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let m = (1u64 << ((h >> 28) & 63)) | (1u64 << ((h >> 34) & 63));
    ((h >> shift) as usize, m)
}

/// A set of `g`-byte grams (as `u64`, first byte lowest): a quick table of two bits per gram
/// in one 64-bit word (32 KiB for up to a few hundred secrets, so that it mostly stays in L1;
/// the scan reads it itself, and nearly every probe ends there), then a blocked Bloom filter
/// (three bits in one 64-bit word per gram, so a probe is one memory access), then the exact
/// sorted list. Build logs repeat themselves, so a Bloom false positive on a common gram would
/// cost a verification on every line that carries it; the exact check keeps windows to true
/// gram hits.
#[derive(Debug)]
struct Bloom {
    quick: Vec<u64>,
    quick_shift: u32,
    words: Vec<u64>,
    shift: u32,
    exact: Vec<u64>,
}

impl Bloom {
    /// `grams` sorted and deduplicated.
    fn new(grams: Vec<u64>) -> Bloom {
        // One to two grams per word: a false positive rate below (6/64)^3 per probe, with tables
        // small enough to stay in L2 (100 secrets: 64 + 128 KiB).
        let words = (grams.len() / 2).next_power_of_two().clamp(1 << 10, 1 << 18);
        let quick = (grams.len() / 4).next_power_of_two().clamp(QUICK_MIN_WORDS, QUICK_MAX_WORDS);
        let mut bloom = Bloom {
            quick: vec![0u64; quick],
            quick_shift: 64 - quick.trailing_zeros(),
            words: vec![0u64; words],
            shift: 64 - words.trailing_zeros(),
            exact: Vec::new(),
        };
        for &k in &grams {
            let (q, m) = quick_slot(k, bloom.quick_shift);
            bloom.quick[q] |= m;
            let (i, m) = bloom.slot(k);
            bloom.words[i] |= m;
        }
        bloom.exact = grams;
        bloom
    }

    #[inline(always)]
    fn slot(&self, k: u64) -> (usize, u64) {
        let h1 = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let h2 = (k ^ (k >> 29)).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let m = (1u64 << (h2 >> 58)) | (1u64 << ((h2 >> 52) & 63)) | (1u64 << ((h2 >> 46) & 63));
        ((h1 >> self.shift) as usize, m)
    }

    /// Is `k` in the set? For keys that the quick table (read by the caller) lets through.
    #[inline(never)]
    fn test_slow(&self, k: u64) -> bool {
        let (i, m) = self.slot(k);
        self.words[i] & m == m && self.exact.binary_search(&k).is_ok()
    }
}

/// The candidate filter: a sampled q-gram filter over the shadow view, read in place. Every
/// value pattern is at least `min_len` (>= `MIN_SECRET_LEN`) shadow bytes long; grams are
/// `g = min(8, ceil(min_len / 2))` bytes and the stride is `s = min_len - g + 1`.
///
/// The grid is on *real* offsets: at every `x` that is a multiple of `s`, the key is the first
/// `g` shadow bytes at or after `x`. An occurrence whose first byte is at real offset `r`
/// spans at least `min_len >= s` real bytes, so some grid point `x` lies in `[r, r + s)`; the
/// shadow bytes at or after `x` are the occurrence's from pattern offset `o <= x - r < s` on,
/// and `o + g <= min_len`, so the key is the pattern's gram at an offset below `s`: all of
/// those are in the filter. That holds whatever lies inside the occurrence (line breaks,
/// escape sequences), and costs nothing per line: nearly every key is the 8 real bytes at `x`
/// (no skipped byte among its `g`), tested word-at-a-time; the rest are assembled.
///
/// A hit at `x` stands for occurrences that start in `(x - s, x]` and end within `max_len`
/// shadow bytes after `x`: that real window goes to the automaton (windows are merged).
#[derive(Debug)]
struct GramFilter {
    g: usize,
    stride: usize,
    sampled: Bloom,
}

impl GramFilter {
    fn new(pats: &[Vec<u8>]) -> GramFilter {
        let min_len = pats.iter().map(Vec::len).min().unwrap_or(MIN_SECRET_LEN);
        debug_assert!(min_len >= MIN_SECRET_LEN);
        let g = min_len.div_ceil(2).min(8);
        let stride = min_len - g + 1;
        let mut sampled: Vec<u64> =
            pats.iter().flat_map(|p| (0..stride).map(move |o| gram_raw(p, o, g))).collect();
        sampled.sort_unstable();
        sampled.dedup();
        GramFilter { g, stride, sampled: Bloom::new(sampled) }
    }

    /// Pushes real windows of `buf` whose shadow views together contain every occurrence of
    /// every pattern (at most `max_len` bytes long) to `wins`, sorted and merged.
    fn windows(&self, buf: &[u8], sk: &Skips, max_len: usize, wins: &mut Vec<(usize, usize)>) {
        wins.clear();
        let mut cur = Cursor { x: 0, si: 0 };
        while let Some(key) = self.next_candidate(buf, sk, &mut cur) {
            let x = cur.x;
            if self.sampled.test_slow(key) {
                let w = (x.saturating_sub(self.stride - 1), sk.forward(buf, x, max_len));
                match wins.last_mut() {
                    Some(last) if w.0 <= last.1 => last.1 = last.1.max(w.1),
                    _ => wins.push(w),
                }
            }
            cur.x += self.stride;
        }
    }

    /// From grid point `cur.x` on, the first one whose key the quick table lets through, and
    /// that key; `None` at the end of `buf`.
    #[inline(always)]
    fn next_candidate(&self, buf: &[u8], sk: &Skips, cur: &mut Cursor) -> Option<u64> {
        // One loop per gram size, so that its masks are constants.
        match self.g {
            8 => self.scan::<8>(buf, sk, cur),
            7 => self.scan::<7>(buf, sk, cur),
            6 => self.scan::<6>(buf, sk, cur),
            5 => self.scan::<5>(buf, sk, cur),
            _ => self.scan::<4>(buf, sk, cur),
        }
    }

    #[inline(never)]
    fn scan<const G: usize>(&self, buf: &[u8], sk: &Skips, cur: &mut Cursor) -> Option<u64> {
        debug_assert_eq!(G, self.g);
        let mask = gram_mask(G);
        let high = mask & 0x8080_8080_8080_8080;
        let (n, stride, seqs) = (buf.len(), self.stride, &sk.seqs);
        let (quick, qshift) = (&self.sampled.quick[..], self.sampled.quick_shift);
        let Cursor { mut x, mut si } = *cur;
        let result = 'scan: loop {
            // `limit`: the start of the first sequence that ends after `x` (or of an earlier
            // one, until the general path below catches up).
            let limit = seqs.get(si).map_or(usize::MAX, |r| r.0);
            // The common case, in a tight loop: grid points whose 8 bytes are in `buf` and whose
            // first `G` end before `limit`.
            if let Some(end) = n.checked_sub(8).map(|e| e.min(limit.saturating_sub(G))) {
                while x <= end {
                    let w = u64::from_le_bytes(buf[x..x + 8].try_into().expect("8 bytes"));
                    // A cheap superset test of "holds a skipped byte" (exact in ASCII
                    // without TAB).
                    let flags = maybe_skip_bytes(w) & high;
                    let key = if flags == 0 {
                        Some(w & mask)
                    } else {
                        // Usually a single line break: drop it and shift the next byte in.
                        let first = flags & flags.wrapping_neg();
                        let p = (first.trailing_zeros() / 8) as usize;
                        match buf.get(x + 1..x + 9) {
                            Some(w1) if is_skip(buf[x + p]) && x + G < limit => {
                                let w1 = u64::from_le_bytes(w1.try_into().expect("8 bytes"));
                                let below = (first >> 7).wrapping_sub(1);
                                let k = (w & below) | (w1 & !below);
                                if maybe_skip_bytes(k) & high == 0 {
                                    Some(k & mask)
                                } else {
                                    plain_gram(buf, x, G, limit)
                                }
                            }
                            _ => plain_gram(buf, x, G, limit),
                        }
                    };
                    match key {
                        Some(key) => {
                            let (q, m) = quick_slot(key, qshift);
                            if quick[q] & m == m {
                                break 'scan Some(key);
                            }
                        }
                        // A sequence ahead among the bytes needed: the general path.
                        None => break,
                    }
                    x += stride;
                }
            }
            if x + G > n {
                break None;
            }
            // The general path: near a sequence or the end of `buf`.
            while seqs.get(si).is_some_and(|r| r.1 <= x) {
                si += 1;
            }
            let limit = seqs.get(si).map_or(usize::MAX, |r| r.0);
            let Some(key) = plain_gram(buf, x, G, limit).or_else(|| sk.gram_at(buf, x, G, si)) else {
                // Fewer than `G` shadow bytes left.
                break None;
            };
            let (q, m) = quick_slot(key, qshift);
            if quick[q] & m == m {
                break Some(key);
            }
            x += stride;
        };
        *cur = Cursor { x, si };
        result
    }
}

/// Where [`GramFilter::windows`] is: the grid point, and the first sequence that ends after it
/// (or an earlier one).
#[derive(Clone, Copy, Debug)]
struct Cursor {
    x: usize,
    si: usize,
}

/// The first `g` shadow bytes at or after `x`, read word-at-a-time, when no ESC sequence starts
/// before `limit` among the bytes read; `None` to take the general path ([`Skips::gram_at`]).
/// Each step takes the bytes up to the next skipped byte (a line break, usually none).
#[inline(always)]
fn plain_gram(buf: &[u8], x: usize, g: usize, limit: usize) -> Option<u64> {
    let mut key = 0u64;
    let mut got = 0;
    let mut i = x;
    loop {
        let need = g - got;
        if i + need > limit {
            return None;
        }
        let w = u64::from_le_bytes(buf.get(i..i + 8)?.try_into().expect("8 bytes"));
        let m = skip_bytes(w) & gram_mask(need);
        if m == 0 {
            return Some(key | (w & gram_mask(need)) << (8 * got));
        }
        let p = (m.trailing_zeros() / 8) as usize;
        key |= (w & gram_mask(p)) << (8 * got);
        got += p;
        i += p + 1;
    }
}

/// Reusable buffers for the value matcher.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    wins: Vec<(usize, usize)>,
    /// Shadow bytes of a window, and the real offset of each.
    bytes: Vec<u8>,
    map: Vec<usize>,
    /// Hex dump regions, the skips of one of their views, and the matches in it.
    regions: Vec<Region>,
    view: Skips,
    found: Vec<(usize, usize)>,
}

impl Scratch {
    /// Loads the shadow bytes of the real range `[a, b)`.
    fn load(&mut self, buf: &[u8], sk: &Skips, a: usize, b: usize) {
        self.bytes.clear();
        self.map.clear();
        sk.collect(buf, a, b, &mut self.bytes, &mut self.map);
    }

    /// Real range of the loaded shadow range `[a, b)` (`a < b`).
    fn real(&self, a: usize, b: usize) -> (usize, usize) {
        (self.map[a], self.map[b - 1] + 1)
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
    grams: GramFilter,
    dumps: Dumps,
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
        let grams = GramFilter::new(&pats);
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
            dumps: Dumps::new(),
        })
    }

    /// Length of the longest pattern, in shadow bytes.
    pub(crate) fn max_len(&self) -> usize {
        self.max_len
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

    /// Real offset of the earliest shadow byte `s` such that the shadow from `s` to the end is
    /// a proper prefix of some pattern: a match that may still be in progress. Any length
    /// counts, down to a single byte: a value's first byte at the end of a line, with the rest
    /// on the next, is that value printed with a line break in it.
    pub(crate) fn in_progress(&self, buf: &[u8], sk: &Skips, scratch: &mut Scratch) -> Option<usize> {
        let lo = sk.backward(buf, buf.len(), self.max_len - 1);
        scratch.load(buf, sk, lo, buf.len());
        let tail = &scratch.bytes;
        let n = tail.len();
        // Suffixes of four bytes or more: the 4-byte prefix filter first; then the last three.
        (0..n.saturating_sub(3))
            .find(|&s| {
                let i = bloom_index(&tail[s..]);
                self.bloom[i >> 6] & (1 << (i & 63)) != 0 && self.is_proper_prefix(&tail[s..])
            })
            .or_else(|| (n.saturating_sub(3)..n).find(|&s| self.is_proper_prefix(&tail[s..])))
            .map(|s| scratch.map[s])
    }

    /// Matches in the hex and text views of the hex dumps among the lines of `buf[..upto]`
    /// (see [`crate::dump`]), appended to `out` as real ranges (unsorted). With `open`, also
    /// the real offset where a match may be in progress at the end of a dump that reaches
    /// `upto` (more rows may follow).
    fn dump_matches(
        &self,
        buf: &[u8],
        upto: usize,
        open: bool,
        out: &mut Vec<(usize, usize)>,
        scratch: &mut Scratch,
    ) -> Option<usize> {
        let mut regions = std::mem::take(&mut scratch.regions);
        let mut view = std::mem::take(&mut scratch.view);
        let mut found = std::mem::take(&mut scratch.found);
        self.dumps.regions(buf, upto, !open, &mut regions);
        let mut held = None;
        for r in &regions {
            let (a, b) = r.range();
            let region = &buf[a..b];
            // The dump may go on when only a line terminator follows it.
            let at_end = open && buf[b..upto].iter().all(|c| matches!(c, b'\n' | b'\r'));
            for text in [false, true] {
                if text {
                    if !r.text_view(&mut view) {
                        continue;
                    }
                } else {
                    r.hex_view(buf, &mut view);
                }
                self.find_all(region, &view, &mut found, scratch);
                out.extend(found.iter().map(|&(x, y)| (a + x, a + y)));
                if at_end {
                    if let Some(x) = self.in_progress(region, &view, scratch) {
                        held = Some(held.map_or(a + x, |h: usize| h.min(a + x)));
                    }
                }
            }
        }
        scratch.regions = regions;
        scratch.view = view;
        scratch.found = found;
        held
    }

    /// First secret (pattern id) in the hex dumps of `buf`.
    fn first_in_dumps(&self, buf: &[u8], scratch: &mut Scratch) -> Option<usize> {
        let mut regions = std::mem::take(&mut scratch.regions);
        let mut view = std::mem::take(&mut scratch.view);
        self.dumps.regions(buf, buf.len(), true, &mut regions);
        let mut hit = None;
        'regions: for r in &regions {
            let (a, b) = r.range();
            for text in [false, true] {
                if text {
                    if !r.text_view(&mut view) {
                        continue;
                    }
                } else {
                    r.hex_view(buf, &mut view);
                }
                hit = self.first(&buf[a..b], &view, scratch);
                if hit.is_some() {
                    break 'regions;
                }
            }
        }
        scratch.regions = regions;
        scratch.view = view;
        hit
    }

    /// All matches in `buf` (whose skipped sequences are `sk`) as sorted, disjoint real ranges.
    pub(crate) fn find_all(
        &self,
        buf: &[u8],
        sk: &Skips,
        out: &mut Vec<(usize, usize)>,
        scratch: &mut Scratch,
    ) {
        out.clear();
        self.grams.windows(buf, sk, self.max_len, &mut scratch.wins);
        for k in 0..scratch.wins.len() {
            let (a, b) = scratch.wins[k];
            scratch.load(buf, sk, a, b);
            for m in self.ac.find_iter(&scratch.bytes) {
                out.push(scratch.real(m.start(), m.end()));
            }
        }
        if !sk.bodies.is_empty() {
            for &(s, e) in &sk.bodies {
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
    fn first(&self, buf: &[u8], sk: &Skips, scratch: &mut Scratch) -> Option<usize> {
        self.grams.windows(buf, sk, self.max_len, &mut scratch.wins);
        for k in 0..scratch.wins.len() {
            let (a, b) = scratch.wins[k];
            scratch.load(buf, sk, a, b);
            if let Some(m) = self.ac.find(&scratch.bytes) {
                return Some(m.pattern().as_usize());
            }
        }
        sk.bodies.iter().find_map(|&(s, e)| self.ac.find(&buf[s..e])).map(|m| m.pattern().as_usize())
    }

    /// Streams `r` through the matcher; returns the name of the first secret found.
    pub(crate) fn find_in_reader(&self, r: &mut dyn Read) -> io::Result<Option<&str>> {
        const CHUNK: usize = 256 * 1024;
        const MAX_CARRY: usize = 1 << 20;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK * 2);
        let mut chunk = vec![0u8; CHUNK];
        let mut sk = Skips::default();
        let mut scratch = Scratch::default();
        loop {
            let n = match r.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let eof = n == 0;
            buf.extend_from_slice(&chunk[..n]);
            sk.build(&buf, eof);
            let found =
                self.first(&buf, &sk, &mut scratch).or_else(|| self.first_in_dumps(&buf, &mut scratch));
            if let Some(pid) = found {
                return Ok(Some(self.name(pid)));
            }
            if eof {
                return Ok(None);
            }
            // Keep what a match in progress could still need: the last max_len - 1 shadow
            // bytes (and what lies between them), and for a hex dump, whose views spread a
            // pattern over a few times as many real bytes, whole lines covering six times
            // max_len; bounded.
            let mut cut = sk.backward(&buf, buf.len(), self.max_len - 1);
            let dump_from = buf.len().saturating_sub(6 * self.max_len);
            cut = cut.min(memchr::memrchr(b'\n', &buf[..dump_from]).map_or(0, |p| p + 1));
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
    /// Tests only: redact byte for byte (see [`redact`]).
    mask: bool,
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
            mask: false,
        }
    }

    /// The same scrubber, redacting every byte of a match with `*` (LFs kept) instead of
    /// `***`, so that outputs line up with inputs.
    #[cfg(test)]
    pub(crate) fn masking(mut self) -> Scrubber {
        self.mask = true;
        self
    }

    /// A scrubber for both output streams of one step: what a reader can put together from
    /// the two (in the order they arrived, or in the order they are handed out) is scrubbed
    /// as well. See [`StepScrubber`].
    pub fn step(self: &Arc<Self>) -> StepScrubber {
        StepScrubber::new(Arc::clone(self))
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
        let mut sk = Skips::default();
        sk.build(bytes, true);
        let mut scratch = Scratch::default();
        vm.first(bytes, &sk, &mut scratch)
            .or_else(|| vm.first_in_dumps(bytes, &mut scratch))
            .map(|pid| vm.name(pid))
    }

    /// Scrubs a complete string (error messages, summaries, step outputs): values and
    /// patterns. Invalid UTF-8 produced by cutting inside a character is replaced by U+FFFD.
    pub fn scrub_str(&self, s: &str) -> String {
        self.scrub_bytes(s.as_bytes()).0.into_owned_string()
    }

    /// Scrubs complete bytes; returns the output and the counts.
    pub fn scrub_bytes(&self, bytes: &[u8]) -> (ScrubbedBytes, Counts) {
        let mut core = Core::default();
        let (out, l) = core.process(self, bytes, true, None);
        (ScrubbedBytes(out.into_vec(&bytes[..l])), core.counts)
    }

    /// Number of byte strings in the value automaton (values, encodings, lines).
    pub fn value_pattern_count(&self) -> usize {
        self.values.as_ref().map_or(0, |v| v.sorted.len())
    }

    pub(crate) fn value_matcher(&self) -> Option<&ValueMatcher> {
        self.values.as_ref()
    }

    pub(crate) fn masks(&self) -> bool {
        self.mask
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

/// The scrubbing state of one output stream.
#[derive(Default)]
pub(crate) struct Core {
    /// Bytes received but not released.
    buf: Vec<u8>,
    /// Stream offset of `buf[0]` (bytes released so far).
    base: u64,
    skips: Skips,
    scratch: Scratch,
    matches: Vec<(usize, usize)>,
    line: LineState,
    pub(crate) counts: Counts,
    /// Stream ranges that a view across streams found a value in, redacted when released.
    forced: Vec<(u64, u64)>,
}

impl Core {
    /// Stream offset of the next byte to arrive.
    pub(crate) fn end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Stream offset of the first byte not released.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// Bytes received but not released.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Adds `bytes` without releasing anything.
    pub(crate) fn append(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Redacts the stream range `[a, b)` when it is released (it must not be yet).
    pub(crate) fn force(&mut self, a: u64, b: u64) {
        debug_assert!(a >= self.base && b <= self.end() && a < b);
        self.forced.push((a, b));
    }

    /// Adds `bytes` and releases what may be released.
    fn push(&mut self, sc: &Scrubber, bytes: &[u8]) -> Vec<u8> {
        let has_term = memchr::memchr2(b'\n', b'\r', bytes).is_some();
        if self.buf.is_empty() {
            if !has_term && bytes.len() < MAX_LINE {
                self.buf.extend_from_slice(bytes);
                return Vec::new();
            }
            let (out, l) = self.process(sc, bytes, false, None);
            self.buf.extend_from_slice(&bytes[l..]);
            self.base += l as u64;
            return out.into_vec(&bytes[..l]);
        }
        self.buf.extend_from_slice(bytes);
        if !has_term && self.buf.len() < MAX_LINE {
            return Vec::new();
        }
        self.release(sc, false, None)
    }

    /// Releases what may be released of the bytes held (at end of stream: all of them up to
    /// `limit`).
    pub(crate) fn release(&mut self, sc: &Scrubber, eof: bool, limit: Option<u64>) -> Vec<u8> {
        let limit = self.rel(limit);
        let mut data = std::mem::take(&mut self.buf);
        let (out, l) = self.process(sc, &data, eof, limit);
        self.base += l as u64;
        if eof && l == data.len() {
            self.line = None;
        }
        match out {
            // The released bytes are the buffer's own: hand the buffer out instead of copying
            // them, and keep only the (short) held tail, unless that tail is the larger part.
            Released::Unchanged if l > 0 && l >= data.len() - l => {
                let mut tail = Vec::with_capacity(data.capacity());
                tail.extend_from_slice(&data[l..]);
                data.truncate(l);
                self.buf = tail;
                data
            }
            out => {
                let out = out.into_vec(&data[..l]);
                data.drain(..l);
                self.buf = data;
                out
            }
        }
    }

    fn finish(&mut self, sc: &Scrubber) -> Vec<u8> {
        self.release(sc, true, None)
    }

    /// `limit` as an offset into the buffer.
    fn rel(&self, limit: Option<u64>) -> Option<usize> {
        limit.map(|h| h.saturating_sub(self.base).min(usize::MAX as u64) as usize)
    }

    /// Scrubs and releases a prefix of `data` (which starts at stream offset `self.base`);
    /// returns the output and the prefix length. Nothing at or after `limit` is released.
    fn process(&mut self, sc: &Scrubber, data: &[u8], eof: bool, limit: Option<usize>) -> (Released, usize) {
        let n = data.len();
        if n == 0 {
            return (Released::Unchanged, 0);
        }
        let vm = sc.values.as_ref();
        // Complete lines end at the last LF or CR.
        let full = if eof { n } else { memchr::memrchr2(b'\n', b'\r', data).map_or(0, |p| p + 1) };
        let mut dump_open = None;
        if let Some(vm) = vm {
            self.skips.build(data, eof);
            vm.find_all(data, &self.skips, &mut self.matches, &mut self.scratch);
            let before = self.matches.len();
            dump_open = vm.dump_matches(data, full, !eof, &mut self.matches, &mut self.scratch);
            if self.matches.len() > before {
                sort_merge(&mut self.matches);
            }
        } else {
            self.matches.clear();
        }
        if !self.forced.is_empty() {
            let base = self.base;
            self.forced.retain(|&(_, b)| b > base);
            for &(a, b) in &self.forced {
                let (a, b) = (a.saturating_sub(base) as usize, ((b - base) as usize).min(n));
                if a < b {
                    self.matches.push((a, b));
                }
            }
            sort_merge(&mut self.matches);
        }
        // Where to cut when `x` must be held: the start of x's line (lines stay whole for the
        // patterns), or x itself in the unterminated tail / in an over-long line.
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
        let mut l = n;
        if !eof {
            l = full;
            if n - full >= MAX_LINE {
                // Over-long line: release it in pieces, preferably at a blank.
                l = n;
                let from = full.max(n.saturating_sub(4096));
                if let Some(p) = memchr::memrchr2(b' ', b'\t', &data[from..]) {
                    l = from + p + 1;
                }
            }
            // A match that may be in progress: from its first byte on, nothing is released, in
            // the shadow view or in a hex dump's views.
            if let Some(vm) = vm {
                let r = vm.in_progress(data, &self.skips, &mut self.scratch);
                if let Some(r) = r.into_iter().chain(dump_open).min() {
                    if r < l {
                        l = cut(r);
                    }
                }
            }
        }
        if let Some(h) = limit {
            if h < l {
                l = cut(h);
            }
        }
        if l < n {
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
        }
        if l == 0 {
            return (Released::Unchanged, 0);
        }
        // Values.
        let scrubbed = match self.matches.first() {
            Some(&(_, b)) if b <= l => Some(self.replace_values(&data[..l], sc.mask)),
            _ => None,
        };
        // Patterns.
        let text = scrubbed.as_deref().unwrap_or(&data[..l]);
        let patterned = if sc.patterns.is_empty() {
            None
        } else {
            sc.patterns.apply(text, &mut self.line, &mut self.counts)
        };
        match patterned.or(scrubbed) {
            Some(out) => (Released::Scrubbed(out), l),
            None => (Released::Unchanged, l),
        }
    }

    /// `data` with the value matches that end inside it replaced (and counted).
    fn replace_values(&mut self, data: &[u8], mask: bool) -> Vec<u8> {
        let l = data.len();
        let mut out = Vec::with_capacity(l + 64);
        let mut pos = 0;
        for &(a, b) in &self.matches {
            if b > l {
                break;
            }
            out.extend_from_slice(&data[pos..a]);
            redact(&data[a..b], mask, &mut out);
            pos = b;
            self.counts.values += 1;
        }
        out.extend_from_slice(&data[pos..l]);
        out
    }
}

/// Appends the redaction of `hidden` to `out`: `***`, with the LFs of `hidden` kept (the line
/// structure stays). With `mask` (tests), every other byte becomes `*`, so that the output
/// lines up with the input byte for byte.
pub(crate) fn redact(hidden: &[u8], mask: bool, out: &mut Vec<u8>) {
    if mask {
        out.extend(hidden.iter().map(|&c| if c == b'\n' { c } else { b'*' }));
        return;
    }
    out.extend_from_slice(b"***");
    let mut k = 0;
    while let Some(p) = memchr::memchr(b'\n', &hidden[k..]) {
        out.push(b'\n');
        k += p + 1;
        if k < hidden.len() {
            out.extend_from_slice(b"***");
        }
    }
}

/// Sorts ranges and merges the overlapping ones (ranges that only touch stay apart: two
/// values printed back to back are two redactions).
pub(crate) fn sort_merge(v: &mut Vec<(usize, usize)>) {
    v.sort_unstable();
    let mut w = 0;
    for i in 0..v.len() {
        if w > 0 && v[i].0 < v[w - 1].1 {
            v[w - 1].1 = v[w - 1].1.max(v[i].1);
        } else {
            v[w] = v[i];
            w += 1;
        }
    }
    v.truncate(w);
}

/// What [`Core::process`] releases: its input's prefix as it is, or scrubbed bytes.
enum Released {
    Unchanged,
    Scrubbed(Vec<u8>),
}

impl Released {
    /// The output, given the released prefix.
    fn into_vec(self, prefix: &[u8]) -> Vec<u8> {
        match self {
            Released::Unchanged => prefix.to_vec(),
            Released::Scrubbed(out) => out,
        }
    }
}

/// Scrubs one output stream of one step, alone. A step's stdout and stderr go through a
/// [`StepScrubber`] instead, which holds each of them back as this does and also scrubs what
/// the two make together.
///
/// # What is held back
///
/// [`push`](Self::push) releases, scrubbed, every byte up to the last line terminator (LF or
/// CR) it has seen, except:
///
/// * the unterminated tail (the partial last line) is held until its terminator arrives, the
///   tail reaches [`MAX_LINE`] bytes (then it is released in pieces, cut after the last blank
///   in its final 4 KiB when there is one), or [`finish`](Self::finish);
/// * a *match in progress*: if the shadow view (the bytes minus CR, LF, other C0 controls, DEL
///   and ESC sequences) ends in the first `k >= 1` bytes of some value pattern (a value or one
///   of its encodings) that is longer than `k`, the line where those bytes start and everything
///   after it are held (from the first of them, in the unterminated tail or an over-long line),
///   until more output shows whether the value follows, or until [`finish`](Self::finish).
///   This holds for a single byte too, and whatever the timing of the pushes: the first bytes
///   of a value at the end of a line, with the rest printed later on the next, are never
///   released before the rest is seen. The cost is that a complete line whose last bytes could
///   begin a value waits for the next push (or the end of the stream); the lines before it are
///   released at once;
/// * the same for the rows of a hex dump (`xxd`, `hexdump -C`, `od -tx1`): when a dump's hex
///   or ASCII columns, read across rows, end in the beginning of a value pattern, the row
///   where it starts and the rest are held;
/// * a match that starts before the release point and ends after it moves the release point
///   back to the start of the match's line.
///
/// So a secret split across pushes at any point, by line breaks, escape sequences or the rows
/// of a hex dump, is caught. Patterns are applied per released line, with the private-key
/// block state carried across pushes.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::Shadow;
    use proptest::prelude::*;

    /// The reference: the automaton over the whole shadow view (plus bodies), as the scrubber
    /// did before the windowed filter.
    fn reference(vm: &ValueMatcher, buf: &[u8], eof: bool) -> Vec<(usize, usize)> {
        let mut sh = Shadow::default();
        sh.build(buf, eof);
        let mut out: Vec<(usize, usize)> =
            vm.ac.find_iter(&sh.bytes).map(|m| sh.range_to_real(m.start(), m.end())).collect();
        for &(s, e) in &sh.bodies {
            out.extend(vm.ac.find_iter(&buf[s..e]).map(|m| (s + m.start(), s + m.end())));
        }
        out.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for (a, b) in out {
            match merged.last_mut() {
                Some(last) if a < last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }

    fn windowed(vm: &ValueMatcher, buf: &[u8], eof: bool) -> Vec<(usize, usize)> {
        let mut sk = Skips::default();
        sk.build(buf, eof);
        let mut out = Vec::new();
        vm.find_all(buf, &sk, &mut out, &mut Scratch::default());
        out
    }

    const VALUES: [&str; 4] = ["abcdefgh", "Tr0ub4dor&3-horse-battery", "p@ss w0rd/\"q'\\x", "zz9\tplüral"];

    fn piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => "[a-z0-9 .:=/-]{0,20}".prop_map(String::into_bytes),
            2 => Just(b"\n".to_vec()),
            1 => Just(b"\r\n".to_vec()),
            1 => Just(b"\x1b[1;31m".to_vec()),
            1 => Just(b"\x1b]0;".to_vec()),
            1 => Just(b"\x07".to_vec()),
            1 => Just(b"\x00\x7f\t".to_vec()),
            // Bytes that the cheap word test flags without being skipped.
            1 => Just(b"\t".to_vec()),
            1 => Just("é€".as_bytes().to_vec()),
            1 => Just(b"\x80\x9f\xff".to_vec()),
            // Secrets, their prefixes and suffixes, and their encodings.
            3 => (0usize..4, 0usize..40, 0usize..40).prop_map(|(i, a, b)| {
                let v = VALUES[i].as_bytes();
                let (a, b) = (a.min(v.len()), b.min(v.len()));
                v[a.min(b)..a.max(b)].to_vec()
            }),
            // A secret split by a line break or an escape sequence.
            3 => (0usize..4, 0usize..40, 0usize..4).prop_map(|(i, cut, sep)| {
                let v = VALUES[i].as_bytes();
                let cut = cut.min(v.len());
                let sep: &[u8] = [&b"\n"[..], b"\r\n", b"\x1b[0m", b"\n\x1b[1m"][sep];
                [&v[..cut], sep, &v[cut..]].concat()
            }),
            3 => (0usize..4, 0usize..20).prop_map(|(i, k)| {
                let vars = encode::variants(VALUES[i].as_bytes());
                vars[k % vars.len()].clone()
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The windowed matcher finds exactly what the automaton over the full shadow finds.
        #[test]
        fn windowed_equals_full_shadow(
            pieces in prop::collection::vec(piece(), 1..40),
            eof in any::<bool>(),
            set in 1usize..16,
        ) {
            let secrets: Vec<Secret> = VALUES
                .iter()
                .enumerate()
                .filter(|(i, _)| set & (1 << i) != 0)
                .map(|(i, v)| Secret::new(format!("S{i}"), v.as_bytes()))
                .collect();
            let vm = ValueMatcher::new(&secrets).expect("patterns");
            let buf = pieces.concat();
            prop_assert_eq!(windowed(&vm, &buf, eof), reference(&vm, &buf, eof));
        }
    }

    #[test]
    fn gram_sizes_follow_the_shortest_pattern() {
        let vm = ValueMatcher::new(&[Secret::new("A", "abcdefgh")]).expect("patterns");
        assert_eq!((vm.grams.g, vm.grams.stride), (4, 5));
        let vm = ValueMatcher::new(&[Secret::new("A", "abcdefghijklmnopqrstuvwx")]).expect("patterns");
        assert_eq!((vm.grams.g, vm.grams.stride), (8, 17));
        // Split by line breaks and escapes at every point, in long text.
        let v = "abcdefghijklmnopqrstuvwx";
        for cut in 1..v.len() {
            for sep in ["\n", "\r\n", "\x1b[0m", "\n\x1b[1m\x1b[32m", "\x01"] {
                let text =
                    format!("{}{}{}{}{} tail\n", "x".repeat(100), &v[..cut], sep, &v[cut..], "y".repeat(3));
                assert_eq!(
                    windowed(&vm, text.as_bytes(), true),
                    reference(&vm, text.as_bytes(), true),
                    "{text:?}"
                );
                assert_eq!(windowed(&vm, text.as_bytes(), true).len(), 1, "{text:?}");
            }
        }
    }

    /// Dumps `data` as `xxd`, `hexdump -C` or `od -tx1` print it (16 bytes a row).
    fn dump_text(data: &[u8], format: usize) -> String {
        let ascii = |c: &u8| if (0x20..0x7f).contains(c) { *c as char } else { '.' };
        let mut out = String::new();
        for (r, row) in data.chunks(16).enumerate() {
            let o = r * 16;
            match format {
                0 => {
                    let groups: Vec<String> =
                        row.chunks(2).map(|g| g.iter().map(|b| format!("{b:02x}")).collect()).collect();
                    let hex = groups.join(" ");
                    let text: String = row.iter().map(ascii).collect();
                    out.push_str(&format!("{o:08x}: {hex:<39}  {text}\n"));
                }
                1 => {
                    let mut hex = String::new();
                    for i in 0..16 {
                        match row.get(i) {
                            Some(b) => hex.push_str(&format!("{b:02x} ")),
                            None => hex.push_str("   "),
                        }
                        if i == 7 {
                            hex.push(' ');
                        }
                    }
                    let text: String = row.iter().map(ascii).collect();
                    out.push_str(&format!("{o:08x}  {hex} |{text}|\n"));
                }
                _ => {
                    let hex: String = row.iter().map(|b| format!(" {b:02x}")).collect();
                    out.push_str(&format!("{o:07o}{hex}\n"));
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The hex and text views of a dump, read in place, find exactly what the automaton
        /// finds in the views built as strings (the hex of the whole dumped data, its ASCII).
        #[test]
        fn dump_views_equal_the_dumped_data(
            pieces in prop::collection::vec(piece(), 1..30),
            format in 0usize..3,
            around in "[a-z ]{0,10}",
        ) {
            let secrets: Vec<Secret> =
                VALUES.iter().enumerate().map(|(i, v)| Secret::new(format!("S{i}"), v.as_bytes())).collect();
            let vm = ValueMatcher::new(&secrets).expect("patterns");
            let data = pieces.concat();
            let text = format!("{around}\n{}{around}\n", dump_text(&data, format));
            let buf = text.as_bytes();
            let hex_ref = if format == 0 { encode::tests::xxd(&data) } else { encode::tests::od(&data) };
            let text_ref: Vec<u8> = data.iter().map(|c| if (0x20..0x7f).contains(c) { *c } else { b'.' }).collect();
            let mut regions = Vec::new();
            vm.dumps.regions(buf, buf.len(), true, &mut regions);
            prop_assert_eq!(regions.len(), usize::from(!data.is_empty()));
            let mut scratch = Scratch::default();
            let mut sk = Skips::default();
            for r in &regions {
                let (a, b) = r.range();
                let region = &buf[a..b];
                for (view, want) in [(false, &hex_ref), (true, &text_ref)] {
                    if view {
                        if !r.text_view(&mut sk) {
                            continue;
                        }
                    } else {
                        r.hex_view(buf, &mut sk);
                    }
                    let (mut shadow, mut map) = (Vec::new(), Vec::new());
                    sk.collect(region, 0, region.len(), &mut shadow, &mut map);
                    prop_assert_eq!(&shadow, want);
                    let mut found = Vec::new();
                    vm.find_all(region, &sk, &mut found, &mut scratch);
                    let got: Vec<Vec<u8>> = found
                        .iter()
                        .map(|&(x, y)| {
                            let (mut v, mut m) = (Vec::new(), Vec::new());
                            sk.collect(region, x, y, &mut v, &mut m);
                            v
                        })
                        .collect();
                    let reference: Vec<Vec<u8>> =
                        vm.ac.find_iter(want.as_slice()).map(|m| want[m.start()..m.end()].to_vec()).collect();
                    prop_assert_eq!(got, reference);
                }
            }
        }
    }
}
