//! The `${{ }}` expression language: `Expr::parse`, `Expr::parse_condition`,
//! `Template::parse`, and evaluation of what parses.
//!
//! Invariants: never panics (parsing or evaluating, against contexts full
//! of values); a parsed expression's `source()` parses again and evaluates
//! to the same value; a template with no `${{` is a literal that renders to
//! itself.
#![no_main]

use std::sync::OnceLock;

use kiln_workflow::{Contexts, Expr, Location, StatusFns, Template};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fn contexts() -> &'static Contexts {
    static C: OnceLock<Contexts> = OnceLock::new();
    C.get_or_init(|| Contexts {
        github: json!({"event_name": "push", "ref": "refs/heads/main", "sha": "0123abcd",
                       "event": {"commits": [{"message": "x"}, {"message": "y"}], "number": 7}}),
        env: json!({"CI": "true", "EMPTY": "", "N": "3"}),
        matrix: json!({"os": "ubuntu-latest", "node": [18, 20], "x": null, "f": 1.5}),
        needs: json!({"build": {"result": "success", "outputs": {"v": "1.2.3", "json": "{\"a\":[1,2]}"}}}),
        steps: json!({"s": {"outputs": {"o": "out"}, "outcome": "failure", "conclusion": "success"}}),
        job: json!({"status": "success"}),
        runner: json!({"os": "Linux", "temp": "/tmp"}),
        strategy: json!({"fail-fast": true, "job-index": 0}),
        secrets: json!({"TOKEN": "s3cr3t-value"}),
        inputs: json!({"flag": true, "n": 2, "s": "str"}),
        jobs: json!({"a": {"result": "success", "outputs": {}}}),
    })
}

const LOC: Location = Location { line: 1, column: 1 };

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let ctx = contexts();
    for status in [StatusFns::new(true, false, false), StatusFns::new(false, true, true)] {
        if let Ok(e) = Expr::parse(src, LOC, "f.yml") {
            let v = e.eval(ctx, status);
            let _ = e.eval_condition(ctx, status);
            let _ = e.secret_refs();
            let again = Expr::parse(e.source(), LOC, "f.yml").expect("an expression's source does not parse");
            assert_eq!(again.eval(ctx, status), v, "source() evaluates differently");
            assert_eq!(again.uses_status(), e.uses_status());
        }
        if let Ok(e) = Expr::parse_condition(src, LOC, "f.yml") {
            let _ = e.eval_condition(ctx, status);
        }
        match Template::parse(src, LOC, "f.yml") {
            Ok(t) => {
                let _ = t.secret_refs();
                let _ = t.eval(ctx, status);
                let r = t.render(ctx, status);
                if t.is_literal() {
                    assert_eq!(r.as_deref(), Ok(src), "a literal renders differently");
                }
            }
            Err(d) => assert!(d.location.line >= 1 && d.location.column >= 1),
        }
    }
    if !src.contains("${{") {
        let t = Template::parse(src, LOC, "f.yml").expect("text without ${{ is refused");
        assert!(t.is_literal());
    }
});
