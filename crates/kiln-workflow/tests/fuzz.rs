//! `load` never panics, whatever it is given.

use proptest::prelude::*;

const FRAGMENTS: &[&str] = &[
    "on: push\n",
    "jobs:\n",
    "  a:\n",
    "  b:\n",
    "    needs: [a, b]\n",
    "    needs: c\n",
    "    steps:\n",
    "      - run: echo ${{ matrix.x }}\n",
    "      - uses: actions/checkout@v4\n",
    "    strategy:\n",
    "      matrix:\n",
    "        x: [1, 2]\n",
    "        include: [{x: 3}]\n",
    "        exclude: [{x: 1}]\n",
    "    if: ${{ ",
    "}}",
    "'",
    "\"",
    "&a ",
    "*a",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    "\t",
    "    kiln: {memory: 1Gi}\n",
    "      - id: x\n",
    "\n",
    "#",
    "    env: {A: ${{ fromJSON('x') }}}\n",
    "!!str ",
    "|\n",
    ">-\n",
    "é",
    "\u{0}",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text(s in "\\PC{0,200}") {
        let _ = kiln_workflow::load("f.yml", &s);
    }

    #[test]
    fn workflow_like_text(parts in proptest::collection::vec(0..FRAGMENTS.len(), 0..40)) {
        let s: String = parts.iter().map(|i| FRAGMENTS[*i]).collect();
        if let Err(d) = kiln_workflow::load("f.yml", &s) {
            prop_assert!(!d.0.is_empty());
            for diag in &d.0 {
                prop_assert!(diag.location.line >= 1 && diag.location.column >= 1, "{}", diag);
            }
        }
    }

    #[test]
    fn arbitrary_expressions(s in "[ -~]{0,60}") {
        let loc = kiln_workflow::Location { line: 1, column: 1 };
        if let Ok(e) = kiln_workflow::Expr::parse(&s, loc, "f") {
            let st = kiln_workflow::StatusFns::new(true, false, false);
            let _ = e.eval(&kiln_workflow::Contexts::default(), st);
        }
        let _ = kiln_workflow::Template::parse(&s, loc, "f");
    }
}
