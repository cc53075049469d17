//! The `$GITHUB_OUTPUT` / `$GITHUB_ENV` parser
//! (`kiln_engine::runner::fuzzing::parse_assignments`): written by the step,
//! read by kiln after it.
//!
//! Invariants: never panics; every name it returns is a valid name; a
//! syntax error names a line of the file; what it returns, written back
//! (`NAME=value`, or a heredoc for multi-line values), parses to the same.
#![no_main]

use kiln_engine::runner::fuzzing::{parse_assignments, StepFileError};
use libfuzzer_sys::fuzz_target;

fn valid_name(k: &str) -> bool {
    !k.is_empty() && k.len() <= 256 && k.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

fuzz_target!(|data: &[u8]| {
    // kiln reads step files with `from_utf8_lossy`.
    let text = String::from_utf8_lossy(data);
    let parsed = match parse_assignments(&text, "GITHUB_OUTPUT") {
        Ok(p) => p,
        Err(StepFileError::Syntax { line, name, .. }) => {
            assert_eq!(name, "GITHUB_OUTPUT");
            assert!(
                line >= 1 && line <= text.lines().count(),
                "error on line {line} of {}",
                text.lines().count()
            );
            return;
        }
        Err(e) => panic!("unexpected error kind: {e:?}"),
    };
    for (k, _) in &parsed {
        assert!(valid_name(k), "invalid name accepted: {k:?}");
    }
    // Values whose lines end in `\r` cannot be written back (`lines()` drops
    // a `\r` before each `\n`); everything else round-trips.
    if parsed.iter().any(|(_, v)| v.split('\n').any(|l| l.ends_with('\r'))) {
        return;
    }
    let mut out = String::new();
    for (i, (k, v)) in parsed.iter().enumerate() {
        if v.contains('\n') {
            let mut delim = format!("EOF_{i}");
            while v.split('\n').any(|l| l == delim) {
                delim.push('_');
            }
            out.push_str(&format!("{k}<<{delim}\n{v}\n{delim}\n"));
        } else {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    let again = parse_assignments(&out, "GITHUB_OUTPUT").expect("written-back assignments are refused");
    assert_eq!(again, parsed, "round trip changed the assignments");
});
