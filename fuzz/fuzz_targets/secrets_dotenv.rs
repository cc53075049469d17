//! kiln-secrets' dotenv parser (`parse_dotenv`): `--secrets-file` files.
//!
//! Invariants: never panics; names are `^[A-Za-z_][A-Za-z0-9_]*$`; an error
//! is a `Dotenv` error on a line of the file; what it returns, written back
//! as double-quoted values, parses to the same names and values.
#![no_main]

use kiln_secrets::{parse_dotenv, SecretError};
use libfuzzer_sys::fuzz_target;

fn valid_name(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = match parse_dotenv(text) {
        Ok(p) => p,
        Err(SecretError::Dotenv { line, .. }) => {
            let lines = text.split('\n').count();
            assert!(line >= 1 && line <= lines, "error on line {line} of {lines}");
            return;
        }
        Err(e) => panic!("unexpected error kind: {e:?}"),
    };
    let mut out = String::new();
    for (k, v) in &parsed {
        assert!(valid_name(k), "invalid name accepted: {k:?}");
        let v = std::str::from_utf8(v.expose()).expect("a value is not UTF-8");
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                c => out.push(c),
            }
        }
        out.push_str("\"\n");
    }
    let again = parse_dotenv(&out).expect("written-back dotenv is refused");
    assert_eq!(again.len(), parsed.len());
    for ((k1, v1), (k2, v2)) in parsed.iter().zip(&again) {
        assert_eq!((k1, v1.expose()), (k2, v2.expose()), "round trip changed an entry");
    }
});
