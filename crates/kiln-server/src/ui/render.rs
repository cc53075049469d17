//! Pure rendering helpers of the web UI, no I/O: ANSI colours to classed
//! spans, the DAG laid out by levels of `needs`, and the small formatters
//! every page uses. Every string that reaches HTML here is escaped (step
//! names, job ids and log lines are attacker-controlled).

use std::fmt::Write as _;

use maud::{html, Markup, PreEscaped};

/// Escapes text for an HTML text node or a quoted attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What a scrubbed secret is replaced with in logs (`kiln-secrets`).
pub const REDACTION: &str = "***";

/// The SGR attributes in force at a point of a line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sgr {
    fg: Option<u8>,
    bg: Option<u8>,
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
}

impl Sgr {
    fn classes(&self) -> String {
        let mut c = Vec::new();
        if let Some(n) = self.fg {
            c.push(format!("fg{n}"));
        }
        if let Some(n) = self.bg {
            c.push(format!("bg{n}"));
        }
        for (on, name) in [(self.bold, "b"), (self.dim, "dim"), (self.italic, "i"), (self.underline, "u")] {
            if on {
                c.push(name.to_string());
            }
        }
        c.join(" ")
    }

    /// Applies one SGR parameter list (`1;31`, `38;5;208`, `0`).
    fn apply(&mut self, params: &str) {
        let nums: Vec<u16> = params
            .split([';', ':'])
            .map(|p| if p.is_empty() { 0 } else { p.parse().unwrap_or(u16::MAX) })
            .collect();
        let mut i = 0;
        while i < nums.len() {
            match nums[i] {
                0 => *self = Sgr::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => (self.bold, self.dim) = (false, false),
                23 => self.italic = false,
                24 => self.underline = false,
                n @ 30..=37 => self.fg = Some((n - 30) as u8),
                n @ 90..=97 => self.fg = Some((n - 90 + 8) as u8),
                39 => self.fg = None,
                n @ 40..=47 => self.bg = Some((n - 40) as u8),
                n @ 100..=107 => self.bg = Some((n - 100 + 8) as u8),
                49 => self.bg = None,
                // 256-colour and true-colour: the 16 basic colours map to
                // classes, the rest are dropped (the text stays).
                n @ (38 | 48) => {
                    let colour = match nums.get(i + 1) {
                        Some(5) => {
                            let c = nums.get(i + 2).copied();
                            i += 2;
                            c.filter(|c| *c < 16).map(|c| c as u8)
                        }
                        Some(2) => {
                            i += 4;
                            None
                        }
                        _ => None,
                    };
                    if n == 38 {
                        self.fg = colour;
                    } else {
                        self.bg = colour;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// One log line as HTML: escaped text, SGR colours as `<span class>`,
/// other escape sequences and control characters dropped, and every
/// redaction marker shown as a `<mark class="redacted">`.
pub fn ansi_to_html(line: &str) -> String {
    let mut out = String::new();
    let mut sgr = Sgr::default();
    let mut text = String::new();
    let flush = |text: &mut String, sgr: &Sgr, out: &mut String| {
        if text.is_empty() {
            return;
        }
        let body = redactions(text);
        let classes = sgr.classes();
        if classes.is_empty() {
            out.push_str(&body);
        } else {
            let _ = write!(out, "<span class=\"{classes}\">{body}</span>");
        }
        text.clear();
    };
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            match chars.peek() {
                Some('[') => {
                    chars.next();
                    let mut params = String::new();
                    let mut fin = None;
                    for d in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&d) {
                            fin = Some(d);
                            break;
                        }
                        params.push(d);
                    }
                    if fin == Some('m') {
                        flush(&mut text, &sgr, &mut out);
                        sgr.apply(&params);
                    }
                }
                Some(']') => {
                    // OSC (titles, hyperlinks): up to BEL or ESC \.
                    chars.next();
                    while let Some(d) = chars.next() {
                        if d == '\u{7}' || (d == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {
                    chars.next();
                }
            }
        } else if c == '\t' || !c.is_control() {
            text.push(c);
        }
    }
    flush(&mut text, &sgr, &mut out);
    out
}

fn redactions(text: &str) -> String {
    let mut out = String::new();
    let mut parts = text.split(REDACTION);
    if let Some(first) = parts.next() {
        out.push_str(&escape(first));
    }
    for p in parts {
        out.push_str("<mark class=\"redacted\" title=\"a secret, scrubbed\">***</mark>");
        out.push_str(&escape(p));
    }
    out
}

/// A state word, the symbol beside it and the CSS class of its colour:
/// the colour is never the only signal.
pub fn state_badge(state: &str) -> Markup {
    let (icon, class) = state_look(state);
    html! { span class={ "state " (class) } { span aria-hidden="true" { (icon) } " " (state) } }
}

/// `(symbol, css class)` of a build, job or step state.
pub fn state_look(state: &str) -> (&'static str, &'static str) {
    match state {
        "succeeded" | "success" | "ready" => ("✓", "ok"),
        "failed" | "failure" | "error" | "interrupted" | "timed_out" | "quarantined" => ("✗", "bad"),
        "running" | "provisioning" | "extracting" | "leased" | "started" => ("▶", "run"),
        "queued" | "pending" | "waiting" | "retrying" => ("…", "wait"),
        "cancelled" | "skipped" => ("⊘", "off"),
        _ => ("•", "off"),
    }
}

/// A byte count in binary units.
pub fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{} B", n as i64)
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Seconds, readable (`0.4 s`, `2 min 5 s`, `1 h 3 min`).
pub fn seconds(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "—".into();
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let t = s.round() as i64;
    if t < 3600 {
        format!("{} min {} s", t / 60, t % 60)
    } else {
        format!("{} h {} min", t / 3600, (t % 3600) / 60)
    }
}

// ---- the DAG ----

/// A node to lay out: its id, state and the indices of the nodes it needs.
#[derive(Debug, Clone)]
pub struct DagNode {
    pub id: String,
    pub state: String,
    pub needs: Vec<usize>,
    /// The matrix group (job key) of a leg, to draw legs together.
    pub group: Option<String>,
}

/// Where each node goes: `(level, row)` where a node's level is one more
/// than the highest level of what it needs (roots at 0).
pub fn layout(nodes: &[DagNode]) -> Vec<(usize, usize)> {
    let n = nodes.len();
    let mut level: Vec<Option<usize>> = vec![None; n];
    // Iterative longest-path levels; a cycle or a bad index (never from a
    // valid plan) is cut, not looped on.
    fn depth(i: usize, nodes: &[DagNode], level: &mut [Option<usize>], seen: &mut Vec<bool>) -> usize {
        if let Some(l) = level[i] {
            return l;
        }
        if seen[i] {
            return 0;
        }
        seen[i] = true;
        let l = nodes[i]
            .needs
            .iter()
            .filter(|&&j| j < nodes.len() && j != i)
            .map(|&j| depth(j, nodes, level, seen) + 1)
            .max()
            .unwrap_or(0);
        level[i] = Some(l);
        l
    }
    let mut seen = vec![false; n];
    for i in 0..n {
        depth(i, nodes, &mut level, &mut seen);
    }
    let mut rows = vec![0usize; n];
    let mut out = Vec::with_capacity(n);
    for l in level {
        let l = l.unwrap_or(0);
        if rows.len() <= l {
            rows.resize(l + 1, 0);
        }
        out.push((l, rows[l]));
        rows[l] += 1;
    }
    out
}

const NODE_W: usize = 200;
const NODE_H: usize = 46;
const GAP_X: usize = 60;
const GAP_Y: usize = 18;

/// The matrix groups to draw as boxes: `(key, column, first row, last
/// row)` for each group whose legs all sit in one column (legs of one job
/// need the same jobs, so they do).
pub fn groups(nodes: &[DagNode], pos: &[(usize, usize)]) -> Vec<(String, usize, usize, usize)> {
    let mut out: Vec<(String, usize, usize, usize)> = Vec::new();
    let mut mixed: Vec<String> = Vec::new();
    for (n, &(col, row)) in nodes.iter().zip(pos) {
        let Some(g) = &n.group else { continue };
        match out.iter_mut().find(|(k, ..)| k == g) {
            Some((_, c, lo, hi)) if *c == col => {
                *lo = (*lo).min(row);
                *hi = (*hi).max(row);
            }
            Some(_) => mixed.push(g.clone()),
            None => out.push((g.clone(), col, row, row)),
        }
    }
    out.retain(|(k, ..)| !mixed.contains(k));
    out
}

/// The DAG as inline SVG: one link per job (to its steps on the page),
/// edges from `needs`, each node's state as a class and as a word, and
/// the legs of a matrix inside one dashed box.
pub fn dag_svg(nodes: &[DagNode]) -> Markup {
    let pos = layout(nodes);
    let boxes = groups(nodes, &pos);
    let cols = pos.iter().map(|p| p.0 + 1).max().unwrap_or(1);
    let rows = pos.iter().map(|p| p.1 + 1).max().unwrap_or(1);
    let w = cols * (NODE_W + GAP_X) - GAP_X + 8;
    let h = rows * (NODE_H + GAP_Y) - GAP_Y + 8;
    let xy = |i: usize| (4 + pos[i].0 * (NODE_W + GAP_X), 4 + pos[i].1 * (NODE_H + GAP_Y));
    let short = |s: &str, max: usize| -> String {
        if s.chars().count() <= max {
            s.to_string()
        } else {
            format!("{}…", s.chars().take(max - 1).collect::<String>())
        }
    };
    html! {
        svg class="dag" role="group" aria-label="job graph" viewBox={ "0 0 " (w) " " (h) }
            width=(w) height=(h) xmlns="http://www.w3.org/2000/svg" {
            @for (key, col, lo, hi) in &boxes {
                @let (x, y) = (4 + col * (NODE_W + GAP_X), 4 + lo * (NODE_H + GAP_Y));
                rect class="group" x=(x - 3) y=(y - 3) width=(NODE_W + 6) height=((hi - lo) * (NODE_H + GAP_Y) + NODE_H + 6) rx="8" {
                    title { "matrix " (key) }
                }
            }
            @for (i, node) in nodes.iter().enumerate() {
                @for &j in node.needs.iter().filter(|&&j| j < nodes.len() && j != i) {
                    @let (x1, y1) = xy(j);
                    @let (x2, y2) = xy(i);
                    path class="edge" d={ "M" (x1 + NODE_W) " " (y1 + NODE_H / 2) " C" (x1 + NODE_W + GAP_X / 2) " "
                        (y1 + NODE_H / 2) " " (x2 - GAP_X / 2) " " (y2 + NODE_H / 2) " " (x2) " " (y2 + NODE_H / 2) } {}
                }
            }
            @for (i, node) in nodes.iter().enumerate() {
                @let (x, y) = xy(i);
                @let (icon, class) = state_look(&node.state);
                a href={ "#job-" (i) } class={ "node " (class) } data-job=(node.id) data-state=(node.state) {
                    title { (node.id) ": " (node.state) }
                    rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="6" {}
                    text x=(x + 10) y=(y + 19) class="name" { (short(&node.id, 24)) }
                    text x=(x + 10) y=(y + 37) class="st" { (icon) " " (node.state)
                        @if let Some(g) = &node.group { " · " (short(g, 12)) } }
                }
            }
        }
    }
}

/// A horizontal bar chart as SVG: one bar per `(label, value)`, the value
/// printed beside it (so the chart reads without the bars too).
pub fn bar_chart(title: &str, rows: &[(String, f64, String)]) -> Markup {
    let max = rows.iter().map(|r| r.1).fold(0.0_f64, f64::max);
    let bar_h = 22;
    let label_w = 220;
    let bar_w = 360.0;
    let h = rows.len() * (bar_h + 6) + 8;
    html! {
        svg class="chart" role="img" aria-label=(title) viewBox={ "0 0 " (label_w + 360 + 140) " " (h) }
            width=(label_w + 360 + 140) height=(h) xmlns="http://www.w3.org/2000/svg" {
            title { (title) }
            @for (i, (label, v, shown)) in rows.iter().enumerate() {
                @let y = 4 + i * (bar_h + 6);
                @let len = if max > 0.0 { (v / max * bar_w).max(1.0) } else { 1.0 };
                text x="0" y=(y + 16) class="label" { (label) }
                rect class="bar" x=(label_w) y=(y) width=(format!("{len:.1}")) height=(bar_h) {}
                text x=(format!("{:.1}", label_w as f64 + len + 6.0)) y=(y + 16) class="value" { (shown) }
            }
        }
    }
}

/// Raw HTML produced by [`ansi_to_html`] (already escaped).
pub fn trusted(html: String) -> PreEscaped<String> {
    PreEscaped(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_every_html_metacharacter() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn a_script_tag_in_a_log_line_is_text() {
        let h = ansi_to_html("\u{1b}[31m<script>document.title='pwned'</script>\u{1b}[0m");
        assert_eq!(
            h,
            "<span class=\"fg1\">&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;</span>"
        );
    }

    #[test]
    fn sgr_colours_become_classes_and_reset() {
        assert_eq!(ansi_to_html("a\u{1b}[1;32mok\u{1b}[0m b"), "a<span class=\"fg2 b\">ok</span> b");
        assert_eq!(ansi_to_html("\u{1b}[92mx\u{1b}[39my"), "<span class=\"fg10\">x</span>y");
        assert_eq!(ansi_to_html("\u{1b}[38;5;208mx"), "x", "a 256-colour beyond 16 is dropped");
        assert_eq!(ansi_to_html("\u{1b}[38;2;1;2;3;1mx"), "<span class=\"b\">x</span>");
        assert_eq!(ansi_to_html("\u{1b}[mx"), "x");
    }

    #[test]
    fn other_escapes_and_controls_are_dropped() {
        assert_eq!(ansi_to_html("a\u{1b}[2Kb\u{1b}]0;title\u{7}c\rd\u{0}e"), "abcde");
        assert_eq!(ansi_to_html("x\u{1b}"), "x");
        assert_eq!(ansi_to_html("\u{1b}[31"), "", "an unterminated sequence eats the rest");
    }

    #[test]
    fn redactions_are_marked() {
        assert_eq!(
            ansi_to_html("token is *** <b>"),
            "token is <mark class=\"redacted\" title=\"a secret, scrubbed\">***</mark> &lt;b&gt;"
        );
    }

    fn node(id: &str, needs: &[usize]) -> DagNode {
        DagNode { id: id.into(), state: "queued".into(), needs: needs.to_vec(), group: None }
    }

    #[test]
    fn layout_puts_each_job_one_level_after_what_it_needs() {
        // a -> b, a -> c, (b, c) -> d, e alone
        let nodes = [node("a", &[]), node("b", &[0]), node("c", &[0]), node("d", &[1, 2]), node("e", &[])];
        assert_eq!(layout(&nodes), vec![(0, 0), (1, 0), (1, 1), (2, 0), (0, 1)]);
        // The longest path decides: x needs a root and a level-2 job.
        let nodes = [node("a", &[]), node("b", &[0]), node("c", &[1]), node("x", &[0, 2])];
        assert_eq!(layout(&nodes)[3], (3, 0));
    }

    #[test]
    fn layout_survives_cycles_and_bad_indices() {
        let nodes = [node("a", &[1]), node("b", &[0]), node("c", &[9, 2])];
        let l = layout(&nodes);
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn the_dag_escapes_job_ids_and_shows_states_as_words() {
        let mut n = node("<script>x</script>", &[]);
        n.state = "failed".into();
        let svg = dag_svg(&[n, node("b", &[0])]).into_string();
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        assert!(svg.contains("✗ failed") && svg.contains("… queued"), "{svg}");
        assert!(svg.contains("class=\"edge\""), "{svg}");
    }

    #[test]
    fn matrix_legs_in_one_column_are_boxed_together() {
        let mut nodes = vec![node("build", &[])];
        for leg in ["test (shard: 1)", "test (shard: 2)", "test (shard: 3)"] {
            let mut n = node(leg, &[0]);
            n.group = Some("test".into());
            nodes.push(n);
        }
        nodes.push(node("deploy", &[1, 2, 3]));
        let pos = layout(&nodes);
        assert_eq!(groups(&nodes, &pos), vec![("test".to_string(), 1, 0, 2)]);
        let svg = dag_svg(&nodes).into_string();
        assert_eq!(svg.matches("class=\"group\"").count(), 1, "{svg}");
        assert!(svg.contains("· test"), "each leg names its group: {svg}");
    }

    proptest::proptest! {
        /// Whatever a step prints, the only markup in its line is the
        /// renderer's own spans and marks.
        #[test]
        fn any_line_renders_to_text_and_our_own_tags_only(s in r#"(\PC|[<>&"'\x1b\[;0-9m*\x07\]])*"#) {
            let out = ansi_to_html(&s);
            let allowed = ["<span class=\"", "</span>", "<mark class=\"redacted\"", "</mark>"];
            let mut text = String::new();
            let mut rest = out.as_str();
            while let Some(i) = rest.find('<') {
                text.push_str(&rest[..i]);
                proptest::prop_assert!(allowed.iter().any(|a| rest[i..].starts_with(a)), "{}", out);
                let close = rest[i..].find('>').map(|j| i + j + 1).unwrap_or(rest.len());
                rest = &rest[close..];
            }
            text.push_str(rest);
            proptest::prop_assert!(!text.contains(['"', '>', '\'']), "{}", out);
        }
    }

    #[test]
    fn units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(seconds(2.25), "2.2 s");
        assert_eq!(seconds(125.0), "2 min 5 s");
        assert_eq!(seconds(3720.0), "1 h 2 min");
    }
}
