//! Hex dumps (`xxd`, `hexdump -C`, `od -tx1` with offsets) as two more views of the output.
//!
//! A dump prints a value over rows of (usually) 16 bytes, and between one row's hex and the
//! next's it puts the row's ASCII column, a line break and the next row's offset. The shadow
//! view drops the line break only, so a value longer than what is left of its first row never
//! shows up as one of its encodings there. The offsets are unknown in general (they depend on
//! where the value sits in the dumped stream), so no literal pattern spans two rows.
//!
//! Cutting each value's hex into row-sized chunks, one pattern per chunk and alignment, was
//! the other way. It was not taken: a value that straddles a row boundary near its middle
//! leaves two chunks shorter than [`crate::MIN_SECRET_LEN`], and a pattern made of a few bytes
//! of a value matches unrelated dumps (and its redaction marks would tell which bytes the value
//! starts or ends with). Anchoring such a chunk to its row position needs the row's offset,
//! which is only known when the dump starts with the value. Chunk patterns of eight or more
//! bytes would also lower the shortest pattern length, which sets the stride of the gram
//! filter, and so slow down every log for the rare dump.
//!
//! Instead, rows of a dump are recognised by their shape and read as two views, like the
//! shadow view: the *hex view* keeps only the hex digit groups, one space between groups (the
//! offsets, the extra space in the middle of a `hexdump -C` row, padding, ASCII columns and
//! line breaks are skipped), and the *text view* keeps only the ASCII columns. Every row
//! boundary then looks like any other group boundary, so the value's whole-value encodings
//! (`hex_separated` for `od` and `hexdump -C`, `hex_xxd` for `xxd`, the value itself for the
//! ASCII columns) match across any number of rows at any alignment, and nothing shorter than a
//! value's own patterns is ever matched. A match in a view is replaced from its first byte to
//! its last, so the rows in between (their offsets and ASCII columns) go with it. `od -An` and
//! `xxd -p` need no view: their rows are joined by a line break alone.
//!
//! Rows are found fast: a row's offset starts with zeros (below 16 MiB for `xxd` and
//! `hexdump -C`, below 32 KiB for `od`'s octal offsets), so only lines that start with `00` are
//! parsed, and those are found with one SIMD search for `\n00`, which costs little next to the
//! matching itself. Dumps of larger streams are only caught by their other encodings.

use aho_corasick::packed;

use crate::shadow::Skips;

/// What the lines of a dump start with: the leading zeros of their offsets.
const LINE_START: &[u8] = b"\n00";

/// Longest row read (bytes of data in it); `xxd -c` allows 256, but 64 covers common use.
const MAX_ROW_BYTES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// `00000010: 7333 6372 ...  s3cr...`
    Xxd,
    /// `00000010  73 33 63 72 ... 2d 56  34 6c ...  |s3cr...|`
    Hexdump,
    /// `0000020 73 33 63 72 ...` (no ASCII column)
    Od,
}

/// One row of a dump: real offsets in the buffer.
#[derive(Clone, Copy, Debug)]
struct Row {
    format: Format,
    /// Start and end of the line (without its terminator).
    start: usize,
    end: usize,
    /// First byte of the first hex group, and the end of the last one.
    hex: usize,
    hex_end: usize,
    /// The second of two spaces between groups (`hexdump -C`'s middle), skipped in the hex view.
    gap: Option<usize>,
    /// The ASCII column.
    text: Option<(usize, usize)>,
}

/// Consecutive rows of one format.
#[derive(Clone, Debug, Default)]
pub(crate) struct Region {
    rows: Vec<Row>,
}

impl Region {
    /// Real range of the region: from its first row's start to its last row's end.
    pub fn range(&self) -> (usize, usize) {
        (self.rows[0].start, self.rows[self.rows.len() - 1].end)
    }

    /// The skipped ranges of the hex view, relative to the region's start.
    pub fn hex_view(&self, buf: &[u8], sk: &mut Skips) {
        let base = self.rows[0].start;
        sk.seqs.clear();
        sk.bodies.clear();
        let mut push = |a: usize, b: usize| {
            if b > a {
                match sk.seqs.last_mut() {
                    Some(last) if last.1 == a - base => last.1 = b - base,
                    _ => sk.seqs.push((a - base, b - base)),
                }
            }
        };
        let last = self.rows.len() - 1;
        push(self.rows[0].start, self.rows[0].hex);
        for (i, r) in self.rows.iter().enumerate() {
            if let Some(g) = r.gap {
                push(g, g + 1);
            }
            if i == last {
                push(r.hex_end, r.end);
                break;
            }
            let next = self.rows[i + 1].hex;
            // One space stays between the last group of a row and the first of the next: the one
            // after the groups (`xxd`, `hexdump -C`) or the one after the next row's offset.
            if buf[r.hex_end] == b' ' {
                push(r.hex_end + 1, next);
            } else if buf[next - 1] == b' ' {
                push(r.hex_end, next - 1);
            } else {
                push(r.hex_end, next);
            }
        }
    }

    /// The skipped ranges of the text view (the ASCII columns), relative to the region's start;
    /// false when no row has an ASCII column.
    pub fn text_view(&self, sk: &mut Skips) -> bool {
        let (base, end) = self.range();
        sk.seqs.clear();
        sk.bodies.clear();
        let mut from = base;
        for r in &self.rows {
            if let Some((a, b)) = r.text {
                if a > from {
                    sk.seqs.push((from - base, a - base));
                }
                from = b;
            }
        }
        if from == base {
            return false;
        }
        if end > from {
            sk.seqs.push((from - base, end - base));
        }
        true
    }
}

/// Finds the rows of hex dumps in a buffer.
pub(crate) struct Dumps {
    finder: Finder,
}

/// A search for a line start with `00`: SIMD (Teddy) where the CPU has it.
enum Finder {
    Packed(packed::Searcher),
    Memmem(memchr::memmem::Finder<'static>),
}

impl std::fmt::Debug for Dumps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dumps").finish_non_exhaustive()
    }
}

impl Dumps {
    pub fn new() -> Dumps {
        let finder = match packed::Config::new().builder().add(LINE_START).build() {
            Some(p) => Finder::Packed(p),
            None => Finder::Memmem(memchr::memmem::Finder::new(LINE_START)),
        };
        Dumps { finder }
    }

    /// The next line start at or after `pos` (and before `upto`) that begins with `00`.
    fn next_candidate(&self, buf: &[u8], pos: usize, upto: usize) -> Option<usize> {
        if pos >= upto {
            return None;
        }
        let hit = match &self.finder {
            Finder::Packed(p) => {
                p.find_in(buf, aho_corasick::Span { start: pos, end: upto }).map(|m| m.start())
            }
            Finder::Memmem(f) => f.find(&buf[pos..upto]).map(|p| pos + p),
        };
        hit.map(|h| h + 1)
    }

    /// The dump regions among the lines of `buf[..upto]`: complete lines (ended by LF) and, when
    /// `upto == buf.len()` and `last_line`, the unterminated last one.
    pub fn regions(&self, buf: &[u8], upto: usize, last_line: bool, out: &mut Vec<Region>) {
        out.clear();
        // The first line has no LF before it: always a candidate.
        let mut candidate = Some(0);
        let mut pos = 0;
        while let Some(start) = candidate.take().or_else(|| self.next_candidate(buf, pos, upto)) {
            let mut region = Region::default();
            let mut ls = start;
            while ls < upto {
                let le = match memchr::memchr(b'\n', &buf[ls..upto]) {
                    Some(p) => ls + p,
                    None if last_line && upto == buf.len() => upto,
                    // An unterminated line may still grow: it is not read yet.
                    None => break,
                };
                let content_end = if le > ls && buf[le - 1] == b'\r' { le - 1 } else { le };
                match parse_row(buf, ls, content_end) {
                    Some(row) if region.rows.first().is_none_or(|f| f.format == row.format) => {
                        region.rows.push(row);
                        ls = le + 1;
                    }
                    _ => break,
                }
            }
            // Search on from the LF before the first line that is not in the region, so that a
            // row of another format right after it is found.
            pos = if region.rows.is_empty() { start } else { ls - 1 };
            if !region.rows.is_empty() {
                out.push(region);
            }
        }
    }
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

/// Parses `buf[start..end]` (one line without its terminator) as a row of a dump.
fn parse_row(buf: &[u8], start: usize, end: usize) -> Option<Row> {
    let line = &buf[start..end];
    let digits = line.iter().take_while(|b| is_hex(**b)).count();
    if !(6..=16).contains(&digits) {
        return None;
    }
    let rest = &line[digits..];
    let (format, sep) = if rest.starts_with(b": ") {
        (Format::Xxd, 2)
    } else if rest.starts_with(b"  ") {
        (Format::Hexdump, 2)
    } else if rest.starts_with(b" ") {
        (Format::Od, 1)
    } else {
        return None;
    };
    let hex = digits + sep;
    let mut i = hex;
    let mut bytes = 0;
    let mut gap = None;
    let hex_end = loop {
        let t = line[i..].iter().take_while(|b| is_hex(**b)).count();
        let ok = match format {
            Format::Xxd => t > 0 && t % 2 == 0 && t <= 16,
            Format::Hexdump | Format::Od => t == 2,
        };
        if !ok {
            return None;
        }
        bytes += t / 2;
        i += t;
        if bytes > MAX_ROW_BYTES {
            return None;
        }
        let at = |k: usize| line.get(k).copied();
        if at(i) == Some(b' ') && at(i + 1).is_some_and(is_hex) {
            i += 1;
        } else if format == Format::Hexdump
            && gap.is_none()
            && bytes == 8
            && line[i..].starts_with(b"  ")
            && at(i + 2).is_some_and(is_hex)
        {
            gap = Some(start + i + 1);
            i += 2;
        } else {
            break i;
        }
    };
    let tail = &line[hex_end..];
    let spaces = |s: &[u8]| s.iter().all(|b| *b == b' ');
    let text = match format {
        // The ASCII column is the last `bytes` characters, after two or more spaces.
        Format::Xxd => {
            let len = line.len();
            if len >= hex_end + 2 + bytes && spaces(&line[hex_end..len - bytes]) {
                Some((start + len - bytes, start + len))
            } else {
                return None;
            }
        }
        // `  |` + the column + `|`, the hex part padded with spaces.
        Format::Hexdump => {
            let len = line.len();
            if tail.len() >= bytes + 3
                && line[len - 1] == b'|'
                && line[len - 2 - bytes] == b'|'
                && spaces(&line[hex_end..len - 2 - bytes])
            {
                Some((start + len - 1 - bytes, start + len - 1))
            } else {
                return None;
            }
        }
        Format::Od => {
            if !spaces(tail) {
                return None;
            }
            None
        }
    };
    Some(Row { format, start, end, hex: start + hex, hex_end: start + hex_end, gap, text })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(buf: &[u8], sk: &Skips, r: &Region) -> Vec<u8> {
        let (a, b) = r.range();
        let (mut out, mut map) = (Vec::new(), Vec::new());
        sk.collect(&buf[a..b], 0, b - a, &mut out, &mut map);
        out
    }

    fn views(text: &str) -> Vec<(String, String)> {
        let d = Dumps::new();
        let mut regions = Vec::new();
        d.regions(text.as_bytes(), text.len(), true, &mut regions);
        let mut sk = Skips::default();
        regions
            .iter()
            .map(|r| {
                r.hex_view(text.as_bytes(), &mut sk);
                let hex = String::from_utf8(view(text.as_bytes(), &sk, r)).unwrap();
                let t = if r.text_view(&mut sk) {
                    String::from_utf8(view(text.as_bytes(), &sk, r)).unwrap()
                } else {
                    String::new()
                };
                (hex, t)
            })
            .collect()
    }

    #[test]
    fn reads_xxd_hexdump_od_rows() {
        let xxd = "00000000: 7873 3363 7233 742d 5634 6c75 652f 782b  xs3cr3t-V4lue/x+\n\
                   00000010: 792d 616e 642d 6d6f 7265 2d62 7974 6573  y-and-more-bytes\n\
                   00000020: 210a                                     !.\n";
        assert_eq!(
            views(xxd),
            vec![(
                "7873 3363 7233 742d 5634 6c75 652f 782b 792d 616e 642d 6d6f 7265 2d62 7974 6573 210a"
                    .to_string(),
                "xs3cr3t-V4lue/x+y-and-more-bytes!.".to_string()
            )]
        );
        let hd = "00000000  73 33 63 72 33 74 2d 56  34 6c 75 65 2f 78 2b 79  |s3cr3t-V4lue/x+y|\n\
                  00000010  2d 61 6e                                          |-an|\n\
                  00000013\n";
        assert_eq!(
            views(hd),
            vec![(
                "73 33 63 72 33 74 2d 56 34 6c 75 65 2f 78 2b 79 2d 61 6e".to_string(),
                "s3cr3t-V4lue/x+y-an".to_string()
            )]
        );
        let od = "0000000 73 33 63 72 33 74 2d 56 34 6c 75 65 2f 78 2b 79\n0000020 2d 61 6e\n0000023\n";
        assert_eq!(
            views(od),
            vec![("73 33 63 72 33 74 2d 56 34 6c 75 65 2f 78 2b 79 2d 61 6e".to_string(), String::new())]
        );
    }

    #[test]
    fn ordinary_lines_are_not_rows() {
        for text in [
            "2024-05-01T12:00:00.000Z  INFO x\n",
            "Step 10: done\n",
            "deadbeef: not hex here\n",
            "1000  2000  3000\n",
            "abcdef0: 12 34 zz\n",
            "00000010: 7333 6372  but the column is too short\n",
        ] {
            assert_eq!(views(text), vec![], "{text:?}");
        }
    }

    #[test]
    fn regions_end_at_other_lines_and_unterminated_rows_wait() {
        let text = "x\n0000000 61 62\n0000002 63\nnot a row\n0000000 64 65\n0000002 66";
        let d = Dumps::new();
        let mut regions = Vec::new();
        d.regions(text.as_bytes(), text.len(), false, &mut regions);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].rows.len(), 2);
        assert_eq!(regions[1].rows.len(), 1);
        d.regions(text.as_bytes(), text.len(), true, &mut regions);
        assert_eq!(regions[1].rows.len(), 2);
    }
}
