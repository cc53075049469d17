use std::sync::Arc;

use kiln_secrets::{PatternSet, Scrubber, Secret};
use proptest::prelude::*;

const VALUES: [&str; 3] = ["Tr0ub4dor&3-horse", "correct-battery-42", "zz9plural-zalpha"];

fn scrubber() -> Arc<Scrubber> {
    let secrets: Vec<Secret> =
        VALUES.iter().enumerate().map(|(i, v)| Secret::new(format!("S{i}"), v.as_bytes())).collect();
    Arc::new(Scrubber::new(&secrets, &PatternSet::builtin()))
}

fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-z0-9 .:=/-]{0,30}".prop_map(String::into_bytes),
        2 => Just(b"\n".to_vec()),
        1 => Just(b"\r\n".to_vec()),
        1 => Just(b"\x1b[1;31m".to_vec()),
        1 => Just(b"\x1b[0m".to_vec()),
        // Prefixes of the secrets (near misses) and fragments that look like them.
        1 => (0usize..3, 1usize..12).prop_map(|(i, n)| VALUES[i].as_bytes()[..n].to_vec()),
        3 => (0usize..3).prop_map(|i| VALUES[i].as_bytes().to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any split of any output containing secrets never releases a secret value.
    #[test]
    fn any_split_never_leaks(
        pieces in prop::collection::vec(piece(), 1..30),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let sc = scrubber();
        let text: Vec<u8> = pieces.concat();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(text.len() + 1)).collect();
        points.push(0);
        points.push(text.len());
        points.sort_unstable();
        let mut s = sc.stream();
        let mut out = Vec::new();
        for w in points.windows(2) {
            out.extend(s.push(&text[w[0]..w[1]]));
        }
        out.extend(s.finish());
        for v in VALUES {
            prop_assert!(
                !out.windows(v.len()).any(|w| w == v.as_bytes()),
                "leaked {v} in {:?}", String::from_utf8_lossy(&out)
            );
        }
        prop_assert_eq!(sc.contains_secret(&out), None);
        // Same result as one-shot scrubbing.
        let (whole, _) = sc.scrub_bytes(&text);
        prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&whole.0));
    }

    /// Without secrets, the output is the input.
    #[test]
    fn ordinary_text_unchanged(text in "[a-z0-9 .\n]{0,200}", cut in any::<prop::sample::Index>()) {
        let sc = scrubber();
        let b = text.as_bytes();
        let i = cut.index(b.len() + 1);
        let mut s = sc.stream();
        let mut out = s.push(&b[..i]);
        out.extend(s.push(&b[i..]));
        out.extend(s.finish());
        prop_assert_eq!(out, b.to_vec());
    }
}
