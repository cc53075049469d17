//! The web UI's log-line renderer (`kiln_server::ui::render::ansi_to_html`):
//! every line a step prints, ANSI escapes and all.
//!
//! Invariants: never panics; the only markup in its output is the
//! renderer's own `<span class>` and `<mark class="redacted">`; outside
//! them no `<`, `>`, `"` or `'` is left raw and every `&` starts one of
//! the entities the renderer writes.
#![no_main]

use kiln_server::ui::render::ansi_to_html;
use libfuzzer_sys::fuzz_target;

const TAGS: [&str; 4] = ["<span class=\"", "</span>", "<mark class=\"redacted\"", "</mark>"];
const ENTITIES: [&str; 5] = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"];

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let out = ansi_to_html(line);
    let mut text = String::new();
    let mut rest = out.as_str();
    while let Some(i) = rest.find('<') {
        text.push_str(&rest[..i]);
        assert!(TAGS.iter().any(|t| rest[i..].starts_with(t)), "foreign markup in {out:?}");
        let close = rest[i..].find('>').map(|j| i + j + 1).expect("an unclosed tag");
        rest = &rest[close..];
    }
    text.push_str(rest);
    assert!(!text.contains(['<', '>', '"', '\'']), "a raw metacharacter in {out:?}");
    for (i, _) in text.match_indices('&') {
        assert!(ENTITIES.iter().any(|e| text[i..].starts_with(e)), "a bare & in {out:?}");
    }
});
