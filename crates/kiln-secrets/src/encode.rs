//! The encodings of a secret value that the scrubber matches.

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 without padding (the last character may carry zero filler bits).
pub(crate) fn b64(data: &[u8], alpha: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        let chars = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for ch in chars.iter().take(c.len() + 1) {
            out.push(alpha[*ch as usize]);
        }
    }
    out
}

fn b64_padded(data: &[u8], alpha: &[u8; 64]) -> Vec<u8> {
    let mut v = b64(data, alpha);
    while v.len() & 3 != 0 {
        v.push(b'=');
    }
    v
}

fn hex(data: &[u8], upper: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
    let mut out = Vec::with_capacity(data.len() * 2);
    for b in data {
        out.push(digits[(b >> 4) as usize]);
        out.push(digits[(b & 15) as usize]);
    }
    out
}

fn url(data: &[u8], upper: bool, plus: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
    let mut out = Vec::with_capacity(data.len() * 3);
    for &b in data {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else if plus && b == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[b'%', digits[(b >> 4) as usize], digits[(b & 15) as usize]]);
        }
    }
    out
}

fn json(data: &[u8], escape_slash: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    for &b in data {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'/' if escape_slash => out.extend_from_slice(b"\\/"),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\u{:04x}", b).as_bytes()),
            _ => out.push(b),
        }
    }
    out
}

fn shell_single(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    for &b in data {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out
}

/// URL-encoding that leaves `/` as it is (Python's `urllib.parse.quote`
/// default, many path builders).
fn url_keep_slash(data: &[u8], upper: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
    let mut out = Vec::with_capacity(data.len() * 3);
    for &b in data {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', digits[(b >> 4) as usize], digits[(b & 15) as usize]]);
        }
    }
    out
}

/// Hex digits of each byte joined by `sep` (`od -An -tx1`: ` `; key
/// fingerprints: `:`).
fn hex_separated(data: &[u8], upper: bool, sep: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 3);
    for (i, chunk) in hex(data, upper).chunks(2).enumerate() {
        if i > 0 {
            out.push(sep);
        }
        out.extend_from_slice(chunk);
    }
    out
}

/// `xxd`'s groups of two bytes: a space before every byte at an even
/// position of the line; `odd` when the value starts at an odd one.
fn hex_xxd(data: &[u8], odd: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 3);
    for (i, chunk) in hex(data, false).chunks(2).enumerate() {
        if i > 0 && (i + odd as usize).is_multiple_of(2) {
            out.push(b' ');
        }
        out.extend_from_slice(chunk);
    }
    out
}

/// bash's `printf %q`: a backslash before each character that would be
/// special in a word (`,` too: brace expansion), others as they are.
fn shell_printf_q(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    for &b in data {
        if b" \t!\"$&'()*,;<>?[\\]^`{|}".contains(&b) {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

fn shell_backslash(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    for &b in data {
        if !(b.is_ascii_alphanumeric() || b >= 0x80 || b",._+:@%/-=".contains(&b)) {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

fn shell_double(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    for &b in data {
        if matches!(b, b'"' | b'\\' | b'$' | b'`') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// All byte strings that reveal `value`: the value itself and its encodings (possibly with
/// duplicates; the caller normalises and deduplicates).
pub(crate) fn variants(value: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![value.to_vec()];
    for alpha in [STD, URL] {
        out.push(b64_padded(value, alpha));
        out.push(b64(value, alpha));
        // The value at byte offset k of a longer stream: encode k filler bytes + value and keep
        // the characters whose 6 bits all come from the value.
        for k in 0..3usize {
            let mut v = vec![0u8; k];
            v.extend_from_slice(value);
            let enc = b64(&v, alpha);
            let start = (8 * k).div_ceil(6);
            let end = (8 * (k + value.len())) / 6;
            if end > start {
                out.push(enc[start..end].to_vec());
            }
        }
    }
    out.push(hex(value, false));
    out.push(hex(value, true));
    for upper in [false, true] {
        for sep in [b' ', b':'] {
            out.push(hex_separated(value, upper, sep));
        }
    }
    out.push(hex_xxd(value, false));
    out.push(hex_xxd(value, true));
    for upper in [false, true] {
        for plus in [false, true] {
            out.push(url(value, upper, plus));
        }
        out.push(url_keep_slash(value, upper));
    }
    out.push(json(value, false));
    out.push(json(value, true));
    out.push(shell_single(value));
    out.push(shell_backslash(value));
    out.push(shell_double(value));
    out.push(shell_printf_q(value));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn b64_std(d: &[u8]) -> String {
        String::from_utf8(b64_padded(d, STD)).unwrap()
    }
    pub(crate) fn b64_url_nopad(d: &[u8]) -> String {
        String::from_utf8(b64(d, URL)).unwrap()
    }
    /// `xxd`'s hex groups of `d`, dumped from its first byte.
    pub(crate) fn xxd(d: &[u8]) -> Vec<u8> {
        hex_xxd(d, false)
    }
    /// `od -tx1`'s (and `hexdump -C`'s) hex bytes of `d`.
    pub(crate) fn od(d: &[u8]) -> Vec<u8> {
        hex_separated(d, false, b' ')
    }

    #[test]
    fn base64_known_answers() {
        assert_eq!(b64_std(b""), "");
        assert_eq!(b64_std(b"f"), "Zg==");
        assert_eq!(b64_std(b"fo"), "Zm8=");
        assert_eq!(b64_std(b"foo"), "Zm9v");
        assert_eq!(b64_std(b"foob"), "Zm9vYg==");
        assert_eq!(b64_std(&[0xfb, 0xff]), "+/8=");
        assert_eq!(b64_url_nopad(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn other_encodings() {
        assert_eq!(hex(b"\x01\xab", false), b"01ab");
        assert_eq!(hex(b"\x01\xab", true), b"01AB");
        assert_eq!(url(b"a b/c", true, false), b"a%20b%2Fc");
        assert_eq!(url(b"a b/c", false, true), b"a+b%2fc");
        assert_eq!(json(b"a\"b\\c\n/\x1b", true), b"a\\\"b\\\\c\\n\\/\\u001b");
        assert_eq!(shell_single(b"it's"), b"it'\\''s");
        assert_eq!(shell_backslash(b"a b$c"), b"a\\ b\\$c");
        assert_eq!(shell_double(b"a\"$b"), b"a\\\"\\$b");
    }
}
