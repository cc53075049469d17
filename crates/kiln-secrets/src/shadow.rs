//! The shadow view: the bytes of a buffer minus what the log sanitizer drops (CR, LF, other C0
//! controls except TAB, DEL, complete ESC sequences), with a map back to real offsets.

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
struct LfIter<'a> {
    buf: &'a [u8],
    base: usize,
    mask: u64,
}

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
#[inline(always)]
fn is_other_skip(b: u8) -> bool {
    is_skip(b) && b != b'\n'
}

/// First index `>= from` whose byte is skipped and not a LF.
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

#[derive(Default, Debug)]
pub(crate) struct Shadow {
    /// The shadow bytes (only filled by [`Shadow::build`]; [`Shadow::build_map`] leaves it
    /// empty and only records the runs).
    pub bytes: Vec<u8>,
    /// Length of the shadow view.
    len: usize,
    /// Runs: (shadow start, real start), sorted by both.
    runs: Vec<(usize, usize)>,
    /// Real ranges of skipped OSC/DCS bodies worth searching on their own.
    pub bodies: Vec<(usize, usize)>,
}

impl Shadow {
    /// Rebuilds the shadow of `buf`. With `eof == false`, an ESC sequence that is incomplete at
    /// the end of `buf` is skipped whole (more bytes may complete it); with `eof == true` only
    /// its ESC byte is skipped.
    #[cfg(test)]
    pub fn build(&mut self, buf: &[u8], eof: bool) {
        self.bytes.clear();
        self.bytes.reserve(buf.len());
        self.build_inner(buf, eof, true);
    }

    /// Like [`Shadow::build`], but only records the runs (and bodies): the shadow bytes are
    /// not copied. Use [`Shadow::copy_range`] / [`Shadow::gram`] to read them.
    pub fn build_map(&mut self, buf: &[u8], eof: bool) {
        self.bytes.clear();
        self.build_inner(buf, eof, false);
    }

    fn build_inner(&mut self, buf: &[u8], eof: bool, copy: bool) {
        self.runs.clear();
        self.bodies.clear();
        self.len = 0;
        let n = buf.len();
        // Skipped bytes are LFs (found with memchr) and the rare others (found with a block
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
                    self.push_run(buf, i, j, copy);
                    i = j + 1;
                }
                lf = lfs.next();
            } else {
                if j >= i {
                    self.push_run(buf, i, j, copy);
                    i = self.skip_at(buf, j, eof);
                }
                other = find_other(buf, (j + 1).max(i));
            }
        }
        if i < n {
            self.push_run(buf, i, n, copy);
        }
    }

    #[inline]
    fn push_run(&mut self, buf: &[u8], from: usize, to: usize, copy: bool) {
        if to > from {
            self.runs.push((self.len, from));
            self.len += to - from;
            if copy {
                self.bytes.extend_from_slice(&buf[from..to]);
            }
        }
    }

    /// Length of the shadow view.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Runs: (shadow start, real start), sorted by both.
    #[inline]
    pub fn runs(&self) -> &[(usize, usize)] {
        &self.runs
    }

    /// Shadow end of run `k`.
    #[inline]
    pub fn run_end(&self, k: usize) -> usize {
        self.runs.get(k + 1).map_or(self.len, |r| r.0)
    }

    /// Index of the run that contains shadow offset `s` (`s < len`).
    #[inline]
    fn run_of(&self, s: usize) -> usize {
        self.runs.partition_point(|r| r.0 <= s) - 1
    }

    /// Appends the shadow bytes `[a, b)` of `buf` to `out`.
    pub fn copy_range(&self, buf: &[u8], a: usize, b: usize, out: &mut Vec<u8>) {
        if a >= b {
            return;
        }
        let mut k = self.run_of(a);
        let mut s = a;
        while s < b {
            let (ss, rs) = self.runs[k];
            let e = self.run_end(k).min(b);
            out.extend_from_slice(&buf[rs + (s - ss)..rs + (e - ss)]);
            s = e;
            k += 1;
        }
    }

    /// The `g` (<= 8) shadow bytes starting at shadow offset `s` (`s + g <= len`), little
    /// endian (first byte lowest), as [`gram_raw`] reads contiguous bytes.
    pub fn gram(&self, buf: &[u8], s: usize, g: usize) -> u64 {
        let mut a = [0u8; 8];
        let mut k = self.run_of(s);
        let mut i = 0;
        let mut p = s;
        while i < g {
            let (ss, rs) = self.runs[k];
            let e = self.run_end(k).min(s + g);
            let n = e - p;
            a[i..i + n].copy_from_slice(&buf[rs + (p - ss)..rs + (e - ss)]);
            i += n;
            p = e;
            k += 1;
        }
        u64::from_le_bytes(a)
    }

    /// `buf[j]` is a skipped byte; returns the index after what is skipped.
    fn skip_at(&mut self, buf: &[u8], j: usize, eof: bool) -> usize {
        let n = buf.len();
        if buf[j] != ESC {
            return j + 1;
        }
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
                            self.body(j + 2, k);
                            return k + 1;
                        }
                        ESC => {
                            return match buf.get(k + 1) {
                                Some(b'\\') => {
                                    self.body(j + 2, k);
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

    fn body(&mut self, from: usize, to: usize) {
        if to - from >= MIN_BODY {
            self.bodies.push((from, to));
        }
    }

    /// Real offset of shadow offset `s` (`s < bytes.len()`).
    #[inline]
    pub fn to_real(&self, s: usize) -> usize {
        let idx = self.runs.partition_point(|r| r.0 <= s) - 1;
        let (ss, rs) = self.runs[idx];
        rs + (s - ss)
    }

    /// Real range of the shadow range `[a, b)` (`a < b`).
    #[inline]
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
}
