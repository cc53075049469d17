//! `kiln.toml` (`kiln_build::KilnToml::parse`): the repository's own
//! settings for the zero-config build.
//!
//! Invariants: never panics; errors carry a 1-based line and column; what it
//! accepts, serialised back to TOML, parses to the same settings.
#![no_main]

use kiln_build::{BuildError, KilnToml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let k = match KilnToml::parse(text) {
        Ok(k) => k,
        Err(BuildError::Invalid { line, column, .. }) => {
            assert!(line >= 1 && column >= 1);
            return;
        }
        Err(BuildError::Parse { .. }) => return,
        Err(e) => panic!("unexpected error kind: {e:?}"),
    };
    // Through a table: plain keys first, then `[env]`.
    let table = toml::Table::try_from(&k).expect("settings do not serialise");
    let written = toml::to_string(&table).expect("settings do not serialise");
    let again = KilnToml::parse(&written)
        .unwrap_or_else(|e| panic!("written-back kiln.toml is refused: {e}\n{written}\nfrom {k:?}"));
    assert_eq!(again, k, "round trip changed the settings\n{written}");
});
