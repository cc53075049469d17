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

/// First index `>= from` whose byte is skipped.
#[inline]
fn find_skip(hay: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    // Block-wise test that the compiler vectorises; then a scalar search inside the block.
    while i + 32 <= hay.len() {
        let mut any = false;
        for &b in &hay[i..i + 32] {
            any |= is_skip(b);
        }
        if any {
            break;
        }
        i += 32;
    }
    hay[i..].iter().position(|&b| is_skip(b)).map(|p| p + i)
}

#[derive(Default, Debug)]
pub(crate) struct Shadow {
    /// The shadow bytes.
    pub bytes: Vec<u8>,
    /// Runs: (shadow start, real start), sorted by both.
    runs: Vec<(usize, usize)>,
    /// Real ranges of skipped OSC/DCS bodies worth searching on their own.
    pub bodies: Vec<(usize, usize)>,
}

impl Shadow {
    /// Rebuilds the shadow of `buf`. With `eof == false`, an ESC sequence that is incomplete at
    /// the end of `buf` is skipped whole (more bytes may complete it); with `eof == true` only
    /// its ESC byte is skipped.
    pub fn build(&mut self, buf: &[u8], eof: bool) {
        self.bytes.clear();
        self.runs.clear();
        self.bodies.clear();
        self.bytes.reserve(buf.len());
        let mut i = 0;
        while i < buf.len() {
            match find_skip(buf, i) {
                None => {
                    self.push_run(buf, i, buf.len());
                    break;
                }
                Some(j) => {
                    self.push_run(buf, i, j);
                    i = self.skip_at(buf, j, eof);
                }
            }
        }
    }

    #[inline]
    fn push_run(&mut self, buf: &[u8], from: usize, to: usize) {
        if to > from {
            self.runs.push((self.bytes.len(), from));
            self.bytes.extend_from_slice(&buf[from..to]);
        }
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
    fn osc_bodies_recorded() {
        let mut sh = Shadow::default();
        sh.build(b"x\x1b]0;secretsecret\x07y", true);
        assert_eq!(sh.bytes, b"xy");
        assert_eq!(sh.bodies, vec![(3, 17)]);
    }
}
