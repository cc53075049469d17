//! The shadow view: the bytes of a buffer minus what the log sanitizer drops (CR, LF, other C0
//! controls except TAB, DEL, complete ESC sequences).
//!
//! The scrubber never builds the view: [`Skips`] records only the ESC sequences (the rare part;
//! every other skipped byte is recognised by its value alone), and the shadow bytes are read
//! in place where needed. [`Shadow`] (tests only) builds the full view, as the reference.

const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;
/// Longest CSI sequence that is skipped as a unit.
const MAX_CSI: usize = 64;
/// Longest OSC/DCS/APC/PM/SOS string that is skipped as a unit.
const MAX_STRING: usize = 4096;
/// OSC/DCS bodies at least this long are searched on their own.
const MIN_BODY: usize = 8;

/// Is `b` dropped from the shadow view (alone, or as the start of an ESC sequence)?
#[inline(always)]
pub(crate) fn is_skip(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// The offsets of the LF bytes of a buffer, in order: an inline word-at-a-time scan (LFs are
/// dense in logs, so a call per LF costs more than the scan).
#[cfg(test)]
struct LfIter<'a> {
    buf: &'a [u8],
    base: usize,
    mask: u64,
}

#[cfg(test)]
impl<'a> LfIter<'a> {
    fn new(buf: &'a [u8]) -> LfIter<'a> {
        let mut it = LfIter { buf, base: 0, mask: 0 };
        it.mask = it.word_mask();
        it
    }

    /// `0x80` in every byte of the word at `base` that is a LF (exact: no carries across bytes).
    #[inline(always)]
    fn word_mask(&self) -> u64 {
        const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        const HI: u64 = 0x8080_8080_8080_8080;
        let x = match self.buf.get(self.base..self.base + 8) {
            Some(w) => u64::from_le_bytes(w.try_into().expect("8 bytes")),
            None => {
                let mut a = [0u8; 8];
                let rest = &self.buf[self.base.min(self.buf.len())..];
                a[..rest.len()].copy_from_slice(rest);
                u64::from_le_bytes(a)
            }
        };
        let y = x ^ 0x0a0a_0a0a_0a0a_0a0a;
        !(((y & LO7) + LO7) | y) & HI
    }
}

#[cfg(test)]
impl Iterator for LfIter<'_> {
    type Item = usize;

    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.base += 8;
            if self.base >= self.buf.len() {
                return None;
            }
            self.mask = self.word_mask();
        }
        let j = self.base + (self.mask.trailing_zeros() / 8) as usize;
        self.mask &= self.mask - 1;
        Some(j)
    }
}

/// Skipped, but not a LF.
#[cfg(test)]
#[inline(always)]
fn is_other_skip(b: u8) -> bool {
    is_skip(b) && b != b'\n'
}

/// First index `>= from` whose byte is skipped and not a LF.
#[cfg(test)]
#[inline]
fn find_other(hay: &[u8], from: usize) -> Option<usize> {
    const BLOCK: usize = 64;
    let mut i = from;
    // Block-wise test that the compiler vectorises; then a scalar search inside the block.
    while let Some(block) = hay.get(i..i + BLOCK) {
        if block.iter().fold(false, |a, &b| a | is_other_skip(b)) {
            break;
        }
        i += BLOCK;
    }
    hay[i..].iter().position(|&b| is_other_skip(b)).map(|p| p + i)
}

/// `buf[j]` is a skipped byte; returns the index after what is skipped with it (more than
/// `j + 1` only for an ESC sequence). With `eof == false`, an ESC sequence that is incomplete
/// at the end of `buf` is skipped whole (more bytes may complete it); with `eof == true` only
/// its ESC byte is skipped. Skipped OSC/DCS bodies worth searching on their own go to `bodies`.
/// A sequence never contains a LF or CR.
fn skip_at(buf: &[u8], j: usize, eof: bool, bodies: &mut Vec<(usize, usize)>) -> usize {
    let n = buf.len();
    if buf[j] != ESC {
        return j + 1;
    }
    let mut body = |from: usize, to: usize| {
        if to - from >= MIN_BODY {
            bodies.push((from, to));
        }
    };
    // Incomplete at the end of the buffer: all of it (pending) or just the ESC (eof).
    let incomplete = if eof { j + 1 } else { n };
    let Some(&next) = buf.get(j + 1) else {
        return incomplete;
    };
    match next {
        b'[' => {
            let mut k = j + 2;
            while k < n && k - j < MAX_CSI {
                match buf[k] {
                    0x40..=0x7e => return k + 1,
                    0x20..=0x3f => k += 1,
                    _ => return j + 1,
                }
            }
            if k >= n {
                incomplete
            } else {
                j + 1
            }
        }
        b']' | b'P' | b'X' | b'^' | b'_' => {
            let mut k = j + 2;
            while k < n && k - j < MAX_STRING {
                match buf[k] {
                    BEL => {
                        body(j + 2, k);
                        return k + 1;
                    }
                    ESC => {
                        return match buf.get(k + 1) {
                            Some(b'\\') => {
                                body(j + 2, k);
                                k + 2
                            }
                            None => incomplete,
                            Some(_) => j + 1,
                        };
                    }
                    b'\n' | b'\r' => return j + 1,
                    _ => k += 1,
                }
            }
            if k >= n {
                incomplete
            } else {
                j + 1
            }
        }
        0x20..=0x2f => {
            // ESC intermediates... final.
            let mut k = j + 1;
            while k < n && (0x20..=0x2f).contains(&buf[k]) && k - j < 8 {
                k += 1;
            }
            match buf.get(k) {
                Some(0x30..=0x7e) => k + 1,
                None => incomplete,
                Some(_) => j + 1,
            }
        }
        0x30..=0x7e => j + 2,
        _ => j + 1,
    }
}

/// `0x80` in every byte of `w` that is zero (exact: no carries across bytes).
#[inline(always)]
fn zero_bytes(w: u64) -> u64 {
    const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HI: u64 = 0x8080_8080_8080_8080;
    !(((w & LO7) + LO7) | w) & HI
}

/// `0x80` in every byte of `w` for which [`is_skip`] holds (exact).
#[inline(always)]
pub(crate) fn skip_bytes(w: u64) -> u64 {
    const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HI: u64 = 0x8080_8080_8080_8080;
    // Below 0x20: adding 0x60 to the low 7 bits leaves the high bit clear (no carry out).
    let control = !(((w & LO7) + 0x6060_6060_6060_6060) | w) & HI;
    let tab = zero_bytes(w ^ 0x0909_0909_0909_0909);
    let del = zero_bytes(w ^ LO7);
    (control & !tab) | del
}

/// `0x80` in every byte of `w` for which [`is_skip`] holds, and in some others: TAB, 0x80..=0x9f
/// and 0xff (whose low 7 bits plus one, modulo 0x80, are below 0x21). Cheaper than
/// [`skip_bytes`]; exact enough for ASCII text that has no TAB.
#[inline(always)]
pub(crate) fn maybe_skip_bytes(w: u64) -> u64 {
    const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let t = ((w & LO7) + 0x0101_0101_0101_0101) & LO7;
    !(t + 0x5f5f_5f5f_5f5f_5f5f) & 0x8080_8080_8080_8080
}

/// Which bytes of a buffer are skipped, without building the shadow view: a byte is skipped
/// when [`is_skip`] holds for it (that needs no context) or when it lies inside one of the ESC
/// sequences recorded here. ESC bytes are rare in logs and found with `memchr`, so building
/// this costs almost nothing; the shadow bytes are then read in place.
#[derive(Default, Debug)]
pub(crate) struct Skips {
    /// The ESC sequences longer than their ESC byte: sorted, disjoint real ranges (adjacent
    /// sequences are merged).
    pub seqs: Vec<(usize, usize)>,
    /// Real ranges of skipped OSC/DCS bodies worth searching on their own.
    pub bodies: Vec<(usize, usize)>,
}

impl Skips {
    /// Records the ESC sequences of `buf` (`eof`: as for [`skip_at`]).
    pub fn build(&mut self, buf: &[u8], eof: bool) {
        self.seqs.clear();
        self.bodies.clear();
        // `end`: where the search for the next ESC resumes (after the previous sequence, so an
        // OSC string's ST is not taken for a new sequence).
        let mut end = 0;
        while let Some(p) = memchr::memchr(ESC, &buf[end..]) {
            let mut j = end + p;
            // Sequences often come in runs (`ESC[1mESC[32m`): the next one is read without
            // searching.
            loop {
                end = skip_at(buf, j, eof, &mut self.bodies);
                if end > j + 1 {
                    match self.seqs.last_mut() {
                        Some(last) if last.1 == j => last.1 = end,
                        _ => self.seqs.push((j, end)),
                    }
                }
                if buf.get(end) != Some(&ESC) {
                    break;
                }
                j = end;
            }
        }
    }

    /// Index of the first sequence that ends after `x`.
    #[inline]
    pub fn seq_after(&self, x: usize) -> usize {
        self.seqs.partition_point(|r| r.1 <= x)
    }

    /// The first `g` (<= 8) shadow bytes at or after real offset `x`, first byte lowest, or
    /// `None` when fewer follow. `si`: [`Skips::seq_after`]`(x)` or any smaller index. Reads a
    /// word at a time: each step takes the bytes up to the next skipped one.
    pub fn gram_at(&self, buf: &[u8], x: usize, g: usize, mut si: usize) -> Option<u64> {
        let n = buf.len();
        let mut key = 0u64;
        let mut got = 0;
        let mut i = x;
        while got < g {
            // Jump over the sequences at or before `i`.
            while let Some(&(a, e)) = self.seqs.get(si) {
                if e <= i {
                    si += 1;
                } else if a <= i {
                    i = e;
                    si += 1;
                } else {
                    break;
                }
            }
            let limit = self.seqs.get(si).map_or(n, |r| r.0.min(n));
            // Bytes that may be taken in this step: before the next sequence, in the buffer.
            let take = (g - got).min(limit.checked_sub(i).filter(|&t| t > 0)?);
            let w = match buf.get(i..i + 8) {
                Some(w) => u64::from_le_bytes(w.try_into().expect("8 bytes")),
                None => {
                    let mut a = [0u8; 8];
                    a[..n - i].copy_from_slice(&buf[i..]);
                    u64::from_le_bytes(a)
                }
            };
            let m = skip_bytes(w) & gram_mask(take);
            let p = if m == 0 { take } else { (m.trailing_zeros() / 8) as usize };
            key |= (w & gram_mask(p)) << (8 * got);
            got += p;
            // Past the taken bytes and the skipped byte that stopped them, if any.
            i += if m == 0 { p } else { p + 1 };
        }
        Some(key)
    }

    /// The real offset just after the `k`-th shadow byte at or after real offset `x`, or
    /// `buf.len()` when fewer follow.
    pub fn forward(&self, buf: &[u8], x: usize, k: usize) -> usize {
        let n = buf.len();
        let mut si = self.seq_after(x);
        let mut got = 0;
        let mut i = x;
        while got < k && i < n {
            if let Some(&(a, e)) = self.seqs.get(si) {
                if a <= i {
                    i = e;
                    si += 1;
                    continue;
                }
            }
            if !is_skip(buf[i]) {
                got += 1;
            }
            i += 1;
        }
        i
    }

    /// The real offset of the first of the last `k` shadow bytes before real offset `end`
    /// (0 when there are at most `k`).
    pub fn backward(&self, buf: &[u8], end: usize, k: usize) -> usize {
        // `si`: the sequences that start before `i`.
        let mut si = self.seqs.partition_point(|r| r.0 < end);
        let mut got = 0;
        let mut i = end;
        while i > 0 {
            match self.seqs[..si].last() {
                // Byte `i - 1` lies inside the last of them: jump to its start.
                Some(&(a, e)) if e >= i => {
                    i = a;
                    si -= 1;
                }
                _ => {
                    i -= 1;
                    if !is_skip(buf[i]) {
                        got += 1;
                        if got == k {
                            return i;
                        }
                    }
                }
            }
        }
        0
    }

    /// Appends the shadow bytes of the real range `[a, b)` to `out` and their real offsets to
    /// `map`.
    pub fn collect(&self, buf: &[u8], a: usize, b: usize, out: &mut Vec<u8>, map: &mut Vec<usize>) {
        let mut si = self.seq_after(a);
        let mut i = a;
        while i < b {
            let stop = match self.seqs.get(si) {
                Some(&(s, e)) if s <= i => {
                    i = e;
                    si += 1;
                    continue;
                }
                Some(&(s, _)) => s.min(b),
                None => b,
            };
            for (k, &c) in buf[i..stop].iter().enumerate() {
                if !is_skip(c) {
                    out.push(c);
                    map.push(i + k);
                }
            }
            i = stop;
        }
    }
}

/// The full shadow view with its map back to real offsets: the reference the scrubber's
/// in-place reading is tested against.
#[cfg(test)]
#[derive(Default, Debug)]
pub(crate) struct Shadow {
    /// The shadow bytes.
    pub bytes: Vec<u8>,
    /// Runs: (shadow start, real start), sorted by both.
    runs: Vec<(usize, usize)>,
    /// Real ranges of skipped OSC/DCS bodies worth searching on their own.
    pub bodies: Vec<(usize, usize)>,
}

#[cfg(test)]
impl Shadow {
    /// Rebuilds the shadow of `buf`. With `eof == false`, an ESC sequence that is incomplete at
    /// the end of `buf` is skipped whole (more bytes may complete it); with `eof == true` only
    /// its ESC byte is skipped.
    pub fn build(&mut self, buf: &[u8], eof: bool) {
        self.bytes.clear();
        self.runs.clear();
        self.bodies.clear();
        let n = buf.len();
        // Skipped bytes are LFs (found word-at-a-time) and the rare others (found with a block
        // test); both streams are merged in order. `i`: start of the current run.
        let mut i = 0;
        let mut lfs = LfIter::new(buf);
        let mut lf = lfs.next();
        let mut other = find_other(buf, 0);
        loop {
            let j = match (lf, other) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if lf == Some(j) {
                // A LF is skipped alone (it is never inside a skipped sequence either: they
                // stop at line breaks).
                if j >= i {
                    self.push_run(buf, i, j);
                    i = j + 1;
                }
                lf = lfs.next();
            } else {
                if j >= i {
                    self.push_run(buf, i, j);
                    i = skip_at(buf, j, eof, &mut self.bodies);
                }
                other = find_other(buf, (j + 1).max(i));
            }
        }
        if i < n {
            self.push_run(buf, i, n);
        }
    }

    fn push_run(&mut self, buf: &[u8], from: usize, to: usize) {
        if to > from {
            self.runs.push((self.bytes.len(), from));
            self.bytes.extend_from_slice(&buf[from..to]);
        }
    }

    /// Real offset of shadow offset `s` (`s < bytes.len()`).
    pub fn to_real(&self, s: usize) -> usize {
        let idx = self.runs.partition_point(|r| r.0 <= s) - 1;
        let (ss, rs) = self.runs[idx];
        rs + (s - ss)
    }

    /// Real range of the shadow range `[a, b)` (`a < b`).
    pub fn range_to_real(&self, a: usize, b: usize) -> (usize, usize) {
        (self.to_real(a), self.to_real(b - 1) + 1)
    }
}

/// The `g` (<= 8) bytes at `b[x..]` (`x + g <= b.len()`), first byte lowest, upper bytes zero.
#[inline(always)]
pub(crate) fn gram_raw(b: &[u8], x: usize, g: usize) -> u64 {
    let k = if x + 8 <= b.len() {
        u64::from_le_bytes(b[x..x + 8].try_into().expect("8 bytes"))
    } else {
        let mut a = [0u8; 8];
        a[..g].copy_from_slice(&b[x..x + g]);
        u64::from_le_bytes(a)
    };
    k & gram_mask(g)
}

#[inline(always)]
pub(crate) fn gram_mask(g: usize) -> u64 {
    if g >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * g)) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shadow(s: &[u8], eof: bool) -> Vec<u8> {
        let mut sh = Shadow::default();
        sh.build(s, eof);
        sh.bytes
    }

    #[test]
    fn skips_controls_and_sequences() {
        assert_eq!(shadow(b"ab\ncd\r\n\tx\x7f\x00y", true), b"abcd\txy");
        assert_eq!(shadow(b"abc\x1b[31mdef\x1b[0m", true), b"abcdef");
        assert_eq!(shadow(b"a\x1b]0;title\x07b\x1b]8;;x\x1b\\c", true), b"abc");
        assert_eq!(shadow(b"a\x1b(Bb\x1b7c", true), b"abc");
        // Incomplete at the end: pending vs eof.
        assert_eq!(shadow(b"abc\x1b[3", false), b"abc");
        assert_eq!(shadow(b"abc\x1b[3", true), b"abc[3");
        // OSC aborted by a line break.
        assert_eq!(shadow(b"a\x1b]0;t\nb", true), b"a]0;tb");
    }

    #[test]
    fn maps_back() {
        let buf = b"ab\x1b[1mcd\nef";
        let mut sh = Shadow::default();
        sh.build(buf, true);
        assert_eq!(sh.bytes, b"abcdef");
        assert_eq!(sh.to_real(0), 0);
        assert_eq!(sh.to_real(2), 6);
        assert_eq!(sh.to_real(4), 9);
        assert_eq!(sh.range_to_real(1, 5), (1, 10));
    }

    #[test]
    fn lf_iter_finds_every_lf() {
        for len in 0..40 {
            for pat in [0b1u64, 0b1001, 0xffff_ffff, 0x8000_0001, 0x5555_5555] {
                let buf: Vec<u8> = (0..len)
                    .map(|i| if pat >> (i % 32) & 1 == 1 { b'\n' } else { b'\x0b' ^ (i as u8) })
                    .collect();
                let want: Vec<usize> = memchr::memchr_iter(b'\n', &buf).collect();
                assert_eq!(LfIter::new(&buf).collect::<Vec<_>>(), want, "{buf:?}");
            }
        }
    }

    #[test]
    fn every_control_byte_and_neighbours() {
        // Each byte value alone, at every offset of a buffer longer than a block.
        for b in 0..=255u8 {
            for pos in [0, 1, 7, 63, 64, 65, 130] {
                let mut buf = vec![b'a'; 140];
                buf[pos] = b;
                let want: Vec<u8> = buf.iter().copied().filter(|c| !is_skip(*c)).collect();
                if b == ESC {
                    continue;
                }
                assert_eq!(shadow(&buf, true), want, "byte {b:#x} at {pos}");
            }
        }
        let buf = b"a\nb\x01\n\x02c\td\x7fe\r\n\x1b[1mf\n".repeat(9);
        let want: Vec<u8> = b"abc\tdef".repeat(9);
        assert_eq!(shadow(&buf, true), want);
    }

    #[test]
    fn osc_bodies_recorded() {
        let mut sh = Shadow::default();
        sh.build(b"x\x1b]0;secretsecret\x07y", true);
        assert_eq!(sh.bytes, b"xy");
        assert_eq!(sh.bodies, vec![(3, 17)]);
    }

    /// The reference: the real offset of every shadow byte of `buf`.
    fn kept(buf: &[u8], eof: bool) -> (Shadow, Vec<usize>) {
        let mut sh = Shadow::default();
        sh.build(buf, eof);
        let kept = (0..sh.bytes.len()).map(|s| sh.to_real(s)).collect();
        (sh, kept)
    }

    fn piece() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            4 => "[a-z0-9 .:=/-]{0,12}".prop_map(String::into_bytes),
            2 => Just(b"\n".to_vec()),
            1 => Just(b"\r\n".to_vec()),
            1 => Just(b"\t".to_vec()),
            1 => Just("é€".as_bytes().to_vec()),
            1 => Just(b"\x80\x9f\xff".to_vec()),
            1 => Just(b"\x00\x01\x07\x7f".to_vec()),
            2 => Just(b"\x1b[1;31m".to_vec()),
            1 => Just(b"\x1b[0m\x1b[32m".to_vec()),
            1 => Just(b"\x1b]0;title-of-it\x07".to_vec()),
            1 => Just(b"\x1b]8;;http://x\x1b\\".to_vec()),
            1 => Just(b"\x1b(B".to_vec()),
            1 => Just(b"\x1b7".to_vec()),
            // Incomplete or broken sequences.
            1 => Just(b"\x1b[3".to_vec()),
            1 => Just(b"\x1b]0;t".to_vec()),
            1 => Just(b"\x1b".to_vec()),
            1 => Just(b"\x1b\x1b[".to_vec()),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// `Skips` reads exactly the reference shadow view: bytes, offsets, bodies, grams at
        /// every real offset, and the forward / backward walks.
        #[test]
        fn skips_agree_with_reference(
            pieces in proptest::collection::vec(piece(), 0..40),
            eof in proptest::prelude::any::<bool>(),
        ) {
            let buf = pieces.concat();
            let n = buf.len();
            let (sh, kept) = kept(&buf, eof);
            let mut sk = Skips::default();
            sk.build(&buf, eof);
            let (mut bytes, mut map) = (Vec::new(), Vec::new());
            sk.collect(&buf, 0, n, &mut bytes, &mut map);
            proptest::prop_assert_eq!(&bytes, &sh.bytes);
            proptest::prop_assert_eq!(&map, &kept);
            proptest::prop_assert_eq!(&sk.bodies, &sh.bodies);
            for x in 0..=n {
                // Shadow index of the first shadow byte at or after `x`.
                let s = kept.partition_point(|&r| r < x);
                for g in [4usize, 5, 8] {
                    let want = (s + g <= kept.len()).then(|| gram_raw(&sh.bytes, s, g));
                    proptest::prop_assert_eq!(sk.gram_at(&buf, x, g, sk.seq_after(x)), want, "x {} g {}", x, g);
                    proptest::prop_assert_eq!(sk.gram_at(&buf, x, g, 0), want, "x {} g {}", x, g);
                }
                for k in [1usize, 3, 9] {
                    let fwd = if s + k <= kept.len() { kept[s + k - 1] + 1 } else { n };
                    proptest::prop_assert_eq!(sk.forward(&buf, x, k), fwd, "forward x {} k {}", x, k);
                    let before = kept.partition_point(|&r| r < x);
                    let back = if before >= k { kept[before - k] } else { 0 };
                    if x == n {
                        proptest::prop_assert_eq!(sk.backward(&buf, x, k), back, "backward k {}", k);
                    }
                }
                // Partial ranges.
                let (mut b2, mut m2) = (Vec::new(), Vec::new());
                sk.collect(&buf, x, n, &mut b2, &mut m2);
                proptest::prop_assert_eq!(&m2[..], &kept[s..]);
            }
        }
    }

    #[test]
    fn skip_byte_tests() {
        for b in 0..=255u8 {
            let w = u64::from_le_bytes([b'a', b, b'a', b'a', b'a', b'a', b'a', b]);
            let exact = skip_bytes(w);
            assert_eq!(exact != 0, is_skip(b), "{b:#x}");
            if is_skip(b) {
                assert_eq!(exact, 0x8000_0000_0000_8000, "{b:#x}");
            }
            // The cheap test flags every skipped byte, and in ASCII only TAB besides.
            let cheap = maybe_skip_bytes(w);
            assert_eq!(cheap & exact, exact, "{b:#x}");
            if b < 0x80 {
                assert_eq!(cheap != 0, is_skip(b) || b == b'\t', "{b:#x}");
            }
        }
    }
}
