//! Table-driven tests of expressions and templates.

use serde_json::json;

use super::*;

const OK: StatusFns<'static> = StatusFns::new(true, false, false);
const FAILED: StatusFns<'static> = StatusFns::new(false, true, false);

fn loc() -> Location {
    Location { line: 3, column: 10 }
}

fn ctx() -> Contexts {
    Contexts {
        github: json!({"ref": "refs/heads/main", "event_name": "push",
            "event": {"labels": [{"name": "bug"}, {"name": "ci"}, {"other": 1}]}}),
        env: json!({"FOO": "bar", "N": "3"}),
        matrix: json!({"os": "linux", "node": 20, "exp": true}),
        needs: json!({"build": {"result": "success", "outputs": {"v": "1.2"}}}),
        steps: json!({"s1": {"outputs": {"x": "y"}, "outcome": "success"}}),
        job: json!({"status": "success"}),
        runner: json!({"os": "Linux"}),
        strategy: json!({"fail-fast": true}),
        secrets: json!({"TOKEN": "t"}),
        inputs: json!({"who": "world"}),
        jobs: json!({"build": {"result": "success", "outputs": {"v": "1.2"}}}),
    }
}

fn eval(src: &str) -> Value {
    Expr::parse(src, loc(), "f")
        .unwrap_or_else(|d| panic!("{src}: {d}"))
        .eval(&ctx(), OK)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
}

#[test]
fn operators_and_coercions() {
    let cases: &[(&str, Value)] = &[
        ("1 == 1", json!(true)),
        ("'abc' == 'ABC'", json!(true)),
        ("'1' == 1", json!(true)),
        ("true == 1", json!(true)),
        ("null == 0", json!(true)),
        ("'' == 0", json!(true)),
        ("'a' == 0", json!(false)),
        ("'a' != 0", json!(true)),
        ("0x10 == 16", json!(true)),
        ("1e2 == 100", json!(true)),
        ("-1.5 < 0", json!(true)),
        ("'b' > 'A'", json!(true)),
        ("'2' >= 2", json!(true)),
        ("'x' < 1", json!(false)),
        ("!0", json!(true)),
        ("!''", json!(true)),
        ("!'a'", json!(false)),
        ("!null", json!(true)),
        ("1 && 'x'", json!("x")),
        ("0 && 'x'", json!(0)),
        ("'' || 'fallback'", json!("fallback")),
        ("'a' || 'b'", json!("a")),
        ("null", json!(null)),
        ("'it''s'", json!("it's")),
        ("true || false && false", json!(true)),
        ("(true || false) && false", json!(false)),
        ("!true == false", json!(true)),
        ("1 < 2 == true", json!(true)),
        ("fromJSON('[1]') == fromJSON('[1]')", json!(true)),
        ("fromJSON('[]') == 0", json!(false)),
    ];
    for (src, want) in cases {
        assert_eq!(&eval(src), want, "{src}");
    }
}

#[test]
fn contexts_and_properties() {
    let cases: &[(&str, Value)] = &[
        ("matrix.os", json!("linux")),
        ("matrix.OS", json!("linux")),
        ("MATRIX.node", json!(20)),
        ("matrix['node']", json!(20)),
        ("matrix.missing", json!(null)),
        ("matrix.missing.deeper", json!(null)),
        ("needs.build.outputs.v", json!("1.2")),
        ("needs.build.result == 'success'", json!(true)),
        ("steps.s1.outputs.x", json!("y")),
        ("env.FOO", json!("bar")),
        ("secrets.TOKEN", json!("t")),
        ("strategy.fail-fast", json!(true)),
        ("inputs", json!({"who": "world"})),
        ("inputs.who", json!("world")),
        ("vars.x", json!(null)),
        ("github.event.labels.*.name", json!(["bug", "ci"])),
        ("github.event.labels[0].name", json!("bug")),
        ("contains(github.event.labels.*.name, 'CI')", json!(true)),
    ];
    for (src, want) in cases {
        assert_eq!(&eval(src), want, "{src}");
    }
}

#[test]
fn functions() {
    let cases: &[(&str, Value)] = &[
        ("contains('Hello world', 'WORLD')", json!(true)),
        ("contains('abc', 'd')", json!(false)),
        ("contains(fromJSON('[\"a\", 1]'), 'A')", json!(true)),
        ("contains(fromJSON('[\"a\", 1]'), '1')", json!(true)),
        ("startsWith(github.ref, 'REFS/heads')", json!(true)),
        ("endsWith(github.ref, '/MAIN')", json!(true)),
        ("endsWith(github.ref, 'x')", json!(false)),
        ("format('{0}-{1}', 'a', 2)", json!("a-2")),
        ("format('{{0}} {0}{{', 'x')", json!("{0} x{")),
        ("format('{1}{0}', true, null)", json!("true")),
        ("join(fromJSON('[1, \"b\", true]'))", json!("1,b,true")),
        ("join(fromJSON('[1, 2]'), ' + ')", json!("1 + 2")),
        ("join('abc', '-')", json!("abc")),
        ("toJSON(matrix)", json!("{\n  \"os\": \"linux\",\n  \"node\": 20,\n  \"exp\": true\n}")),
        ("toJSON('x')", json!("\"x\"")),
        ("fromJSON('{\"a\": {\"b\": 2}}').a.b", json!(2)),
        ("fromJSON(' 12 ')", json!(12)),
        ("FORMAT('{0}', 1.50)", json!("1.5")),
    ];
    for (src, want) in cases {
        assert_eq!(&eval(src), want, "{src}");
    }
}

#[test]
fn evaluation_errors() {
    let cases = [
        ("fromJSON('{nope')", "fromJSON"),
        ("hashFiles('**/Cargo.lock')", "only available in a step"),
        ("format('{1}', 'a')", "missing argument"),
        ("format('{x}', 'a')", "invalid format string"),
    ];
    for (src, want) in cases {
        let e = Expr::parse(src, loc(), "f").unwrap().eval(&ctx(), OK).unwrap_err();
        assert!(e.message.contains(want), "{src}: {e}");
        assert_eq!(e.expression, src);
    }
}

#[test]
fn status_functions_and_conditions() {
    let c = ctx();
    let cond =
        |src: &str, st: StatusFns| Expr::parse(src, loc(), "f").unwrap().eval_condition(&c, st).unwrap();
    assert!(cond("success()", OK));
    assert!(!cond("success()", FAILED));
    assert!(cond("failure()", FAILED));
    assert!(cond("always()", FAILED));
    assert!(!cond("cancelled()", FAILED));
    assert!(cond("matrix.exp", OK));
    // implicit success() && (...)
    assert!(!cond("matrix.exp", FAILED));
    assert!(!cond("true", FAILED));
    assert!(cond("failure() && matrix.os == 'linux'", FAILED));
    assert!(cond("!cancelled()", FAILED));
    assert!(!cond("matrix.missing", OK));
    assert!(!cond("''", OK));
    // evaluation is skipped when the implicit success() is false
    assert!(!cond("fromJSON('{')", FAILED));
}

#[test]
fn parse_errors_have_locations() {
    let cases = [
        ("matirx.os", 10, "unknown context `matirx`; did you mean `matrix`?"),
        ("matrix.os == \"x\"", 23, "strings use single quotes"),
        ("1 ==", 14, "expected a value"),
        ("(1", 12, "expected `)`"),
        ("'abc", 10, "unterminated string"),
        ("frobnicate(1)", 10, "unknown function `frobnicate`"),
        ("contains('a')", 10, "`contains` takes 2 argument(s), got 1"),
        ("success(1)", 10, "takes 0"),
        ("a b", 10, "unknown context `a`"),
        ("1 2", 12, "unexpected number 2"),
        ("", 10, "empty expression"),
        ("matrix.", 17, "expected a property name"),
    ];
    for (src, col, want) in cases {
        let d = Expr::parse(src, loc(), "f").unwrap_err();
        assert!(d.message.contains(want), "{src}: {}", d.message);
        assert_eq!(d.location, Location { line: 3, column: col }, "{src}");
        assert_eq!(d.file, "f");
    }
    assert!(Expr::parse(&"(".repeat(500), loc(), "f").is_err());
    assert!(Expr::parse(&"!".repeat(500), loc(), "f").is_err());
}

#[test]
fn templates() {
    let c = ctx();
    let r = |src: &str| Template::parse(src, loc(), "f").unwrap().render(&c, OK).unwrap();
    assert_eq!(r("plain text"), "plain text");
    assert_eq!(r("os=${{ matrix.os }} node=${{matrix.node}}"), "os=linux node=20");
    assert_eq!(r("${{ 1.0 }} ${{ true }} [${{ null }}]"), "1 true []");
    assert_eq!(r("${{ format('}}{0}', 'x') }}!"), "}x!");
    assert_eq!(r("${{ fromJSON('[1]') }}"), "[\n  1\n]");
    assert_eq!(r("a ${{ 'b' }} c ${{ 'd' }}"), "a b c d");
    let t = Template::parse("${{ matrix.node }}", loc(), "f").unwrap();
    assert_eq!(t.eval(&c, OK).unwrap(), json!(20));
    assert!(!t.is_literal());
    let t = Template::parse("v${{ matrix.node }}", loc(), "f").unwrap();
    assert_eq!(t.eval(&c, OK).unwrap(), json!("v20"));
    assert!(Template::literal("${{ x }}").is_literal());
    assert_eq!(Template::literal("${{ x }}").render(&c, OK).unwrap(), "${{ x }}");
}

#[test]
fn template_errors() {
    let d = Template::parse("echo ${{ matrix.os", loc(), "f").unwrap_err();
    assert!(d.message.contains("unterminated `${{`"), "{}", d.message);
    assert_eq!(d.location, Location { line: 3, column: 15 });
    let d = Template::parse("a\nb ${{ matirx.os }}", loc(), "f").unwrap_err();
    assert_eq!(d.location, Location { line: 4, column: 7 });
    assert!(d.message.contains("did you mean `matrix`"));
}

#[test]
fn conditions_strip_outer_braces() {
    let e = Expr::parse_condition("${{ matrix.os == 'linux' }}", loc(), "f").unwrap();
    assert_eq!(e.source(), "matrix.os == 'linux'");
    assert!(e.eval_condition(&ctx(), OK).unwrap());
    assert!(Expr::parse_condition("${{ true }} && ${{ false }}", loc(), "f").is_err());
    let d = Expr::parse_condition("  ${{ matirx.os }}", loc(), "f").unwrap_err();
    assert_eq!(d.location, Location { line: 3, column: 16 });
}

#[test]
fn hash_files_gets_every_pattern() {
    struct Echo;
    impl crate::FileHasher for Echo {
        fn hash_files(&self, patterns: &[String]) -> Result<String, String> {
            Ok(patterns.join("|"))
        }
    }
    let st = StatusFns { files: Some(&Echo), ..OK };
    let v = Expr::parse("hashFiles('**/package-lock.json', format('{0}.txt', 'x'))", loc(), "f")
        .unwrap()
        .eval(&ctx(), st)
        .unwrap();
    assert_eq!(v, json!("**/package-lock.json|x.txt"));
}
