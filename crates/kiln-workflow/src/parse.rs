//! YAML tree -> [`Workflow`], with GitHub's semantics and kiln's refusals.

use std::borrow::Cow;
use std::collections::HashSet;

use crate::diagnostic::{Diagnostic, Location};
use crate::expr::{Expr, Template};
use crate::model::*;
use crate::yaml::{Node, NodeKind};

pub(crate) use crate::checks::did_you_mean;
pub use crate::checks::{check_relative_path, parse_size};
use crate::checks::{is_env_name, is_identifier};

/// Side information the plan needs for its diagnostics.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobExtra {
    pub needs_locs: Vec<Location>,
    pub matrix_loc: Location,
}

#[derive(Debug)]
pub(crate) struct Parsed {
    pub workflow: Workflow,
    pub extras: Vec<JobExtra>,
    pub notices: Vec<Diagnostic>,
    pub errors: Vec<Diagnostic>,
}

#[derive(Clone, Copy)]
enum KeyKind {
    Known,
    /// GitHub's, accepted, no effect locally.
    Notice,
}

const TOP_KEYS: &[(&str, KeyKind)] = &[
    ("name", KeyKind::Known),
    ("on", KeyKind::Known),
    ("env", KeyKind::Known),
    ("defaults", KeyKind::Known),
    ("jobs", KeyKind::Known),
    ("run-name", KeyKind::Notice),
    ("permissions", KeyKind::Notice),
    ("concurrency", KeyKind::Notice),
    ("environment", KeyKind::Notice),
    ("kiln", KeyKind::Known),
];

const JOB_KEYS: &[(&str, KeyKind)] = &[
    ("name", KeyKind::Known),
    ("needs", KeyKind::Known),
    ("runs-on", KeyKind::Known),
    ("if", KeyKind::Known),
    ("env", KeyKind::Known),
    ("defaults", KeyKind::Known),
    ("timeout-minutes", KeyKind::Known),
    ("continue-on-error", KeyKind::Known),
    ("outputs", KeyKind::Known),
    ("strategy", KeyKind::Known),
    ("steps", KeyKind::Known),
    ("kiln", KeyKind::Known),
    ("permissions", KeyKind::Notice),
    ("concurrency", KeyKind::Notice),
    ("environment", KeyKind::Notice),
    ("container", KeyKind::Known),
    ("services", KeyKind::Known),
    ("uses", KeyKind::Known),
    ("with", KeyKind::Known),
    ("secrets", KeyKind::Known),
];

const STEP_KEYS: &[&str] = &[
    "id",
    "name",
    "run",
    "shell",
    "env",
    "working-directory",
    "if",
    "timeout-minutes",
    "continue-on-error",
    "uses",
    "with",
    "kiln",
];

const KILN_KEYS: &[&str] =
    &["isolation", "memory", "pids", "cpus", "disk", "tmp", "log", "phase", "network", "secrets"];
const KILN_WORKFLOW_KEYS: &[&str] = &["network", "secrets"];
const KILN_STEP_KEYS: &[&str] = &["phase", "network", "secrets"];
const SECRET_KEYS: &[&str] = &["phases", "as"];

/// Where a `kiln:` block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KilnLevel {
    Workflow,
    Job,
    Step,
}

pub(crate) struct Cx<'a> {
    file: &'a str,
    pub(crate) errors: Vec<Diagnostic>,
    notices: Vec<Diagnostic>,
}

impl<'a> Cx<'a> {
    pub(crate) fn new(file: &'a str) -> Cx<'a> {
        Cx { file, errors: Vec::new(), notices: Vec::new() }
    }
}

impl Cx<'_> {
    pub(crate) fn err(&mut self, location: Location, message: impl Into<String>) {
        self.errors.push(Diagnostic { file: self.file.to_string(), location, message: message.into() });
    }

    fn diag(&mut self, d: Diagnostic) {
        self.errors.push(d);
    }

    pub(crate) fn map<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [(Node, Node)]> {
        match &node.kind {
            NodeKind::Map(pairs) => Some(pairs),
            _ if node.is_null() => Some(&[]),
            _ => {
                self.err(node.loc, format!("{what} must be a mapping, not {}", node.kind_name()));
                None
            }
        }
    }

    /// [`Cx::map`], naming the place (`what`) only for an error.
    fn map_named<'n>(&mut self, node: &'n Node, what: impl FnOnce() -> String) -> Option<&'n [(Node, Node)]> {
        match &node.kind {
            NodeKind::Map(pairs) => Some(pairs),
            _ => self.map(node, &what()),
        }
    }

    /// The text of a key, borrowed from the tree where it can be.
    fn key<'n>(&mut self, key: &'n Node) -> Option<Cow<'n, str>> {
        match key.as_scalar() {
            Some(s) if !key.is_null() => Some(Cow::Borrowed(s)),
            _ => self.text(key, "a key").map(Cow::Owned),
        }
    }

    /// The text of a scalar (a plain null is empty).
    pub(crate) fn text(&mut self, node: &Node, what: &str) -> Option<String> {
        if node.is_null() {
            return Some(String::new());
        }
        match node.as_scalar() {
            Some(s) => Some(s.to_string()),
            None => {
                self.err(node.loc, format!("{what} must be a string, not {}", node.kind_name()));
                None
            }
        }
    }

    pub(crate) fn template(&mut self, node: &Node, what: &str) -> Option<Template> {
        let text = self.text(node, what)?;
        match Template::parse_mapped(&text, &|off| node.location_at(off), self.file) {
            Ok(t) => Some(t),
            Err(d) => {
                self.diag(d);
                None
            }
        }
    }

    fn condition(&mut self, node: &Node) -> Option<Expr> {
        let text = match node.as_bool() {
            Some(b) => b.to_string(),
            None => self.text(node, "`if`")?,
        };
        if text.trim().is_empty() {
            self.err(node.loc, "`if` is empty");
            return None;
        }
        match Expr::parse_condition_mapped(&text, &|off| node.location_at(off), self.file) {
            Ok(e) => Some(e),
            Err(d) => {
                self.diag(d);
                None
            }
        }
    }

    /// Checks a key against a table; returns the key (the table's) and its
    /// kind if usable.
    fn key_kind(
        &mut self,
        key: &Node,
        table: &[(&'static str, KeyKind)],
        place: &str,
    ) -> Option<(&'static str, KeyKind)> {
        let name = self.key(key)?;
        match table.iter().find(|(k, _)| *k == name) {
            Some((_, KeyKind::Notice)) => {
                self.notices.push(Diagnostic {
                    file: self.file.to_string(),
                    location: key.loc,
                    message: format!("`{name}` is accepted but has no effect in a local run"),
                });
                None
            }
            Some((k, kind)) => Some((*k, *kind)),
            None => {
                self.unknown_key(key.loc, &name, table.iter().map(|(k, _)| *k), place);
                None
            }
        }
    }

    /// [`Cx::unknown_key`] for a fixed list of known keys.
    pub(crate) fn unknown(&mut self, loc: Location, name: &str, known: &[&str], place: &str) {
        self.unknown_key(loc, name, known.iter().copied(), place);
    }

    pub(crate) fn unknown_key<'k>(
        &mut self,
        loc: Location,
        name: &str,
        known: impl Iterator<Item = &'k str> + Clone,
        place: &str,
    ) {
        if name == "<<" {
            self.err(
                loc,
                "YAML merge keys (`<<`) are not supported; repeat the keys, or use an alias as a whole value",
            );
            return;
        }
        let mut msg = format!("unknown key `{name}` {place}");
        match did_you_mean(name, known.clone()) {
            Some(s) => msg.push_str(&format!("; did you mean `{s}`?")),
            None => msg.push_str(&format!(" (expected one of: {})", known.collect::<Vec<_>>().join(", "))),
        }
        self.err(loc, msg);
    }

    pub(crate) fn env(&mut self, node: &Node, place: &str) -> Vec<(String, Template)> {
        let mut out = Vec::new();
        let Some(pairs) = self.map(node, &format!("`env` {place}")) else {
            return out;
        };
        for (k, v) in pairs {
            let Some(name) = self.text(k, "an env name") else {
                continue;
            };
            if !is_env_name(&name) {
                self.err(
                    k.loc,
                    format!("invalid environment variable name `{name}` (letters, digits and `_`; not starting with a digit)"),
                );
                continue;
            }
            if let Some(t) = self.template(v, &format!("env `{name}`")) {
                out.push((name, t));
            }
        }
        out
    }

    pub(crate) fn positive_number(&mut self, node: &Node, what: &str) -> Option<f64> {
        match node.as_number() {
            Some(n) if n > 0.0 => Some(n),
            _ => {
                self.err(
                    node.loc,
                    format!("{what} must be a positive number, not `{}`", node.as_scalar().unwrap_or("…")),
                );
                None
            }
        }
    }

    pub(crate) fn positive_int(&mut self, node: &Node, what: &str) -> Option<u64> {
        match node.as_number() {
            Some(n) if n >= 1.0 && n.fract() == 0.0 && n < 1e18 => Some(n as u64),
            _ => {
                self.err(
                    node.loc,
                    format!(
                        "{what} must be a positive whole number, not `{}`",
                        node.as_scalar().unwrap_or("…")
                    ),
                );
                None
            }
        }
    }

    fn bool_or_expr(&mut self, node: &Node, what: &str) -> BoolOrExpr {
        if let Some(b) = node.as_bool() {
            return BoolOrExpr::Literal(b);
        }
        if let Some(s) = node.as_scalar() {
            if s.contains("${{") {
                if let Some(t) = self.template(node, what) {
                    return BoolOrExpr::Expr(t);
                }
                return BoolOrExpr::Literal(false);
            }
        }
        self.err(node.loc, format!("{what} must be `true`, `false` or a `${{{{ }}}}` expression"));
        BoolOrExpr::Literal(false)
    }

    fn working_directory(&mut self, node: &Node, what: &str) -> Option<Template> {
        let t = self.template(node, what)?;
        if t.is_literal() {
            if let Err(e) = check_relative_path(t.source()) {
                self.err(node.loc, format!("{what}: {e}"));
                return None;
            }
        }
        Some(t)
    }

    fn shell(&mut self, node: &Node) -> Option<ShellSpec> {
        let s = self.text(node, "`shell`")?;
        if s.contains("${{") {
            return self.template(node, "`shell`").map(ShellSpec::Expr);
        }
        match Shell::parse(&s) {
            Ok(sh) => Some(ShellSpec::Fixed(sh)),
            Err(ShellError::Unavailable(reason)) => {
                Some(ShellSpec::Unavailable(Refusal { location: node.loc, reason }))
            }
            Err(ShellError::Invalid(msg)) => {
                self.err(node.loc, msg);
                None
            }
        }
    }

    fn defaults(&mut self, node: &Node, place: &str) -> RunDefaults {
        let mut out = RunDefaults::default();
        let Some(pairs) = self.map(node, &format!("`defaults` {place}")) else {
            return out;
        };
        for (k, v) in pairs {
            let Some(name) = self.text(k, "a key") else {
                continue;
            };
            if name != "run" {
                self.unknown_key(k.loc, &name, ["run"].into_iter(), "in `defaults`");
                continue;
            }
            let Some(run) = self.map(v, "`defaults.run`") else {
                continue;
            };
            for (k, v) in run {
                let Some(name) = self.text(k, "a key") else {
                    continue;
                };
                match name.as_str() {
                    "shell" => out.shell = self.shell(v),
                    "working-directory" => {
                        let Some(t) = self.working_directory(v, "`working-directory`") else {
                            continue;
                        };
                        out.working_directory = Some(t.source().to_string());
                    }
                    _ => self.unknown_key(
                        k.loc,
                        &name,
                        ["shell", "working-directory"].into_iter(),
                        "in `defaults.run`",
                    ),
                }
            }
        }
        out
    }
}

/// Parses the YAML tree of a workflow file.
pub(crate) fn workflow(file: &str, root: &Node) -> Parsed {
    let mut cx = Cx { file, errors: Vec::new(), notices: Vec::new() };
    let mut wf = Workflow {
        name: None,
        env: Vec::new(),
        defaults: RunDefaults::default(),
        jobs: Vec::new(),
        kiln: KilnStepSettings::default(),
    };
    let mut extras = Vec::new();
    let NodeKind::Map(pairs) = &root.kind else {
        cx.err(root.loc, format!("a workflow must be a mapping with `jobs`, not {}", root.kind_name()));
        return finish(cx, wf, extras);
    };
    let mut saw_jobs = false;
    for (k, v) in pairs {
        let Some((name, _)) = cx.key_kind(k, TOP_KEYS, "at the top level") else {
            continue;
        };
        match name {
            "name" => wf.name = cx.text(v, "`name`"),
            "env" => wf.env = cx.env(v, "at the top level"),
            "defaults" => wf.defaults = cx.defaults(v, "at the top level"),
            "kiln" => {
                if let Some(pairs) = cx.map(v, "`kiln`") {
                    for (k, v) in pairs {
                        if let Some(name) = cx.text(k, "a key") {
                            if !kiln_shared(&mut cx, k, v, &name, KilnLevel::Workflow, &mut wf.kiln) {
                                cx.unknown_key(
                                    k.loc,
                                    &name,
                                    KILN_WORKFLOW_KEYS.iter().copied(),
                                    "in top-level `kiln`",
                                );
                            }
                        }
                    }
                }
            }
            "jobs" => {
                saw_jobs = true;
                let Some(jobs) = cx.map(v, "`jobs`") else {
                    continue;
                };
                if jobs.is_empty() {
                    cx.err(v.loc, "`jobs` is empty: a workflow needs at least one job");
                }
                wf.jobs.reserve(jobs.len());
                extras.reserve(jobs.len());
                for (jk, jv) in jobs {
                    if let Some((job, extra)) = job(&mut cx, jk, jv) {
                        wf.jobs.push(std::sync::Arc::new(job));
                        extras.push(extra);
                    }
                }
            }
            _ => {}
        }
    }
    if !saw_jobs {
        cx.err(root.loc, "the workflow has no `jobs`");
    }
    for job in &mut wf.jobs {
        // Not shared yet: no copy is made.
        step_refusals(&wf.defaults, std::sync::Arc::make_mut(job));
    }
    finish(cx, wf, extras)
}

fn finish(cx: Cx<'_>, workflow: Workflow, extras: Vec<JobExtra>) -> Parsed {
    Parsed { workflow, extras, notices: cx.notices, errors: cx.errors }
}

fn job(cx: &mut Cx<'_>, key_node: &Node, node: &Node) -> Option<(JobSpec, JobExtra)> {
    let key = cx.text(key_node, "a job key")?;
    if !is_identifier(&key) {
        cx.err(
            key_node.loc,
            format!(
                "invalid job key `{key}`: use letters, digits, `-` and `_`, starting with a letter or `_`"
            ),
        );
    }
    let place = format!("in job `{key}`");
    let pairs = cx.map_named(node, || format!("job `{key}`"))?;
    let mut spec = JobSpec {
        key: key.clone(),
        location: key_node.loc,
        name: None,
        needs: Vec::new(),
        runs_on: Vec::new(),
        container: None,
        services: Vec::new(),
        refusals: Vec::new(),
        condition: None,
        env: Vec::new(),
        defaults: RunDefaults::default(),
        timeout_minutes: None,
        continue_on_error: BoolOrExpr::Literal(false),
        outputs: Vec::new(),
        strategy: None,
        steps: Vec::new(),
        kiln: KilnJobSettings::default(),
    };
    let mut extra = JobExtra { matrix_loc: key_node.loc, ..JobExtra::default() };
    let mut steps_node = None;
    let mut reusable = false;
    for (k, v) in pairs {
        let Some((name, _)) = cx.key_kind(k, JOB_KEYS, &place) else {
            continue;
        };
        match name {
            "name" => spec.name = cx.template(v, "`name`"),
            "needs" => {
                let items = match &v.kind {
                    NodeKind::Seq(items) => items.as_slice(),
                    _ => std::slice::from_ref(v),
                };
                spec.needs.reserve(items.len());
                extra.needs_locs.reserve(items.len());
                for item in items {
                    if let Some(n) = cx.text(item, "`needs`") {
                        spec.needs.push(n);
                        extra.needs_locs.push(item.loc);
                    }
                }
            }
            "runs-on" => spec.runs_on = runs_on(cx, v),
            "container" => {
                // `container: IMAGE` or `container: {image: ...}`; an
                // expression that renders empty means no container.
                let image = match &v.kind {
                    NodeKind::Map(pairs) => {
                        for (ck, cv) in pairs {
                            match ck.as_scalar() {
                                // Docker flags and host volumes have no
                                // meaning in kiln's sandbox: refused by name.
                                Some(what @ ("options" | "volumes")) if !cv.is_null() => {
                                    spec.refusals.push(Refusal {
                                        location: ck.loc,
                                        reason: format!(
                                            "`container.{what}` is not supported: the job runs in kiln's sandbox, not with docker's flags or host volumes"
                                        ),
                                    })
                                }
                                Some("env") => {
                                    let env = cx.env(cv, "in `container.env`");
                                    spec.env.extend(env);
                                }
                                _ => {}
                            }
                        }
                        pairs
                            .iter()
                            .find(|(k, _)| k.as_scalar() == Some("image"))
                            .and_then(|(_, iv)| cx.template(iv, "`container.image`"))
                    }
                    _ => cx.template(v, "`container`"),
                };
                if let Some(t) = image {
                    if !(t.is_literal() && t.source().trim().is_empty()) {
                        spec.container = Some(t);
                    }
                }
            }
            "services" => spec.services = crate::service::parse_services(cx, v, &mut spec.refusals),
            "uses" => {
                let Some(u) = cx.text(v, "`uses`") else { continue };
                reusable = true;
                // A workflow of this repository is read and expanded by
                // the plan (crate::call); one of another repository is not.
                if !u.starts_with("./") {
                    let reason = format!("`uses: {u}`: a reusable workflow in another repository is not supported; kiln runs only workflows of the repository it builds");
                    spec.refusals.push(Refusal { location: v.loc, reason });
                }
            }
            "with" | "secrets" => {}
            "if" => spec.condition = cx.condition(v),
            "env" => spec.env = cx.env(v, &place),
            "defaults" => spec.defaults = cx.defaults(v, &place),
            "timeout-minutes" => spec.timeout_minutes = cx.positive_number(v, "`timeout-minutes`"),
            "continue-on-error" => spec.continue_on_error = cx.bool_or_expr(v, "`continue-on-error`"),
            "outputs" => {
                if let Some(outs) = cx.map(v, "`outputs`") {
                    for (ok, ov) in outs {
                        let Some(oname) = cx.text(ok, "an output name") else {
                            continue;
                        };
                        if !is_identifier(&oname) {
                            cx.err(ok.loc, format!("invalid output name `{oname}`"));
                            continue;
                        }
                        if let Some(t) = cx.template(ov, &format!("output `{oname}`")) {
                            spec.outputs.push((oname, t));
                        }
                    }
                }
            }
            "strategy" => {
                if let Some((s, loc)) = crate::matrix::parse_strategy(cx, v) {
                    spec.strategy = Some(s);
                    extra.matrix_loc = loc;
                }
            }
            "steps" => steps_node = Some(v),
            "kiln" => spec.kiln = kiln(cx, v),
            _ => {}
        }
    }
    match steps_node {
        None if reusable => {}
        None => cx.err(key_node.loc, format!("job `{key}` has no `steps`")),
        Some(v) => match &v.kind {
            NodeKind::Seq(items) if !items.is_empty() => {
                // Steps are large: sized once rather than grown.
                spec.steps.reserve_exact(items.len());
                let mut ids = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    if let Some(step) = step(cx, &key, i + 1, item, &mut ids) {
                        spec.steps.push(step);
                    }
                }
            }
            _ => cx.err(v.loc, format!("`steps` of job `{key}` must be a non-empty list of steps")),
        },
    }
    Some((spec, extra))
}

/// `runs-on`: a label, a list of labels, or `{group, labels}`.
fn runs_on(cx: &mut Cx<'_>, v: &Node) -> Vec<Template> {
    let items: Vec<&Node> = match &v.kind {
        NodeKind::Scalar { .. } => vec![v],
        NodeKind::Seq(items) => items.iter().collect(),
        NodeKind::Map(pairs) => {
            match pairs.iter().find(|(k, _)| k.as_scalar() == Some("labels")).map(|(_, l)| l) {
                Some(Node { kind: NodeKind::Seq(items), .. }) => items.iter().collect(),
                Some(l) => vec![l],
                // A runner group alone names no machine kind kiln could match.
                None => return vec![Template::literal("group")],
            }
        }
    };
    items.into_iter().filter_map(|i| cx.template(i, "`runs-on`")).collect()
}

/// The refusals a job's steps add (unsupported actions, unavailable
/// shells), after every step is parsed.
fn step_refusals(wf_defaults: &RunDefaults, spec: &mut JobSpec) {
    let mut found = Vec::new();
    for step in &spec.steps {
        match &step.action {
            StepAction::Unsupported { uses } => found.push(Refusal {
                location: step.location,
                reason: format!("`uses: {uses}` is not an action kiln has"),
            }),
            StepAction::Run { shell, .. } => {
                let shell = shell.as_ref().or(spec.defaults.shell.as_ref()).or(wf_defaults.shell.as_ref());
                if let Some(ShellSpec::Unavailable(r)) = shell {
                    found.push(Refusal { location: step.location, reason: r.reason.clone() });
                }
            }
            _ => {}
        }
    }
    spec.refusals.extend(found);
    spec.refusals.sort_by_key(|r| (r.location.line, r.location.column));
}

fn kiln(cx: &mut Cx<'_>, node: &Node) -> KilnJobSettings {
    let mut out = KilnJobSettings::default();
    let Some(pairs) = cx.map(node, "`kiln`") else {
        return out;
    };
    for (k, v) in pairs {
        let Some(name) = cx.text(k, "a key") else {
            continue;
        };
        let size = |cx: &mut Cx<'_>| -> Option<u64> {
            let text = cx.text(v, &format!("`kiln.{name}`"))?;
            match parse_size(&text) {
                Ok(n) => Some(n),
                Err(e) => {
                    cx.err(v.loc, format!("`kiln.{name}`: {e}"));
                    None
                }
            }
        };
        match name.as_str() {
            "isolation" => {
                out.isolation = match cx.text(v, "`kiln.isolation`").as_deref() {
                    Some("gvisor") => Some(IsolationTier::Gvisor),
                    Some("container") => Some(IsolationTier::Container),
                    Some(other) => {
                        cx.err(
                            v.loc,
                            format!("unknown isolation `{other}`; expected `gvisor` or `container`"),
                        );
                        None
                    }
                    None => None,
                }
            }
            "memory" => out.memory_bytes = size(cx),
            "disk" => out.disk_bytes = size(cx),
            "tmp" => out.tmp_bytes = size(cx),
            "log" => out.log_bytes = size(cx),
            "pids" => out.pids = cx.positive_int(v, "`kiln.pids`"),
            "cpus" => out.cpus = cx.positive_number(v, "`kiln.cpus`"),
            _ => {
                let mut shared = KilnStepSettings {
                    phase: out.phase,
                    network: out.network.take(),
                    secrets: std::mem::take(&mut out.secrets),
                };
                let known = kiln_shared(cx, k, v, &name, KilnLevel::Job, &mut shared);
                out.phase = shared.phase;
                out.network = shared.network;
                out.secrets = shared.secrets;
                if !known {
                    cx.unknown_key(k.loc, &name, KILN_KEYS.iter().copied(), "in `kiln`");
                }
            }
        }
    }
    out
}

/// `phase`, `network` and `secrets`, which several levels share. Returns
/// false for a key it does not know.
fn kiln_shared(
    cx: &mut Cx<'_>,
    k: &Node,
    v: &Node,
    name: &str,
    level: KilnLevel,
    out: &mut KilnStepSettings,
) -> bool {
    match name {
        "phase" if level != KilnLevel::Workflow => {
            out.phase = match cx.text(v, "`kiln.phase`") {
                Some(p) => match Phase::parse(&p) {
                    Some(p) => Some(p),
                    None => {
                        let all: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
                        cx.err(v.loc, format!("unknown phase `{p}`; expected one of {}", all.join(", ")));
                        None
                    }
                },
                None => None,
            }
        }
        "network" => out.network = network(cx, v),
        "secrets" => out.secrets = secret_bindings(cx, v, level),
        _ => {
            let _ = k;
            return false;
        }
    }
    true
}

/// `network: none` or `network: { allow: [host, "*.host:443"] }`.
fn network(cx: &mut Cx<'_>, v: &Node) -> Option<NetworkSpec> {
    if let Some(text) = v.as_scalar() {
        match text {
            "none" => return Some(NetworkSpec::None),
            "registries" => return Some(NetworkSpec::Registries(Vec::new())),
            _ => {}
        }
        cx.err(
            v.loc,
            format!("`kiln.network` must be `none`, `registries` or `{{ allow: [hosts] }}`, not `{text}`"),
        );
        return None;
    }
    let pairs = cx.map(v, "`kiln.network`")?;
    let mut allow = Vec::new();
    for (k, val) in pairs {
        match k.as_scalar() {
            Some("allow") => {
                let NodeKind::Seq(items) = &val.kind else {
                    cx.err(val.loc, "`kiln.network.allow` must be a list of host names");
                    continue;
                };
                for item in items {
                    let Some(host) = cx.text(item, "a host") else { continue };
                    if let Err(e) = check_host_rule(&host) {
                        cx.err(item.loc, format!("`kiln.network.allow`: `{host}`: {e}"));
                    } else {
                        allow.push(host);
                    }
                }
            }
            Some(other) => cx.unknown_key(k.loc, other, ["allow"].into_iter(), "in `kiln.network`"),
            None => cx.err(k.loc, "expected a key"),
        }
    }
    Some(NetworkSpec::Allow(allow))
}

/// A host rule's syntax: `name`, `*.name`, optionally `:port`.
fn check_host_rule(rule: &str) -> Result<(), String> {
    if rule.contains("://") || rule.contains('/') || rule.contains('@') {
        return Err("a host name (optionally `*.` and `:port`), not a URL".into());
    }
    let (host, port) = match rule.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rule, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
            return Err(format!("bad port `{p}`"));
        }
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = !name.is_empty()
        && name.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if ok {
        Ok(())
    } else {
        Err("not a host name".into())
    }
}

/// `secrets: { NAME: { phases: [deploy], as: env|file } }`; a step-level
/// binding names no phases (`NAME: {}` or `NAME: { as: file }`).
fn secret_bindings(cx: &mut Cx<'_>, v: &Node, level: KilnLevel) -> Vec<SecretBinding> {
    let mut out = Vec::new();
    let Some(pairs) = cx.map(v, "`kiln.secrets`") else { return out };
    for (k, val) in pairs {
        let Some(name) = cx.text(k, "a secret name") else { continue };
        if !is_env_name(&name) {
            cx.err(k.loc, format!("`{name}` is not a valid secret name"));
            continue;
        }
        let mut b = SecretBinding {
            name: name.clone(),
            phases: Vec::new(),
            delivery: SecretAs::Env,
            location: k.loc,
        };
        if !val.is_null() {
            let Some(fields) = cx.map(val, &format!("secret `{name}`")) else { continue };
            for (fk, fv) in fields {
                match fk.as_scalar() {
                    Some("phases") if level == KilnLevel::Step => {
                        cx.err(fk.loc, format!("secret `{name}`: a step-level binding takes no `phases` (it binds this step)"));
                    }
                    Some("phases") => {
                        let items: Vec<&Node> = match &fv.kind {
                            NodeKind::Seq(items) => items.iter().collect(),
                            _ => vec![fv],
                        };
                        for item in items {
                            let Some(p) = cx.text(item, "a phase") else { continue };
                            match Phase::parse(&p) {
                                Some(p) => b.phases.push(p),
                                None => cx.err(item.loc, format!("secret `{name}`: unknown phase `{p}`")),
                            }
                        }
                    }
                    Some("as") => match cx.text(fv, "`as`").as_deref() {
                        Some("env") => b.delivery = SecretAs::Env,
                        Some("file") => b.delivery = SecretAs::File,
                        Some(other) => cx.err(
                            fv.loc,
                            format!("secret `{name}`: `as` must be `env` or `file`, not `{other}`"),
                        ),
                        None => {}
                    },
                    Some(other) => cx.unknown_key(
                        fk.loc,
                        other,
                        SECRET_KEYS.iter().copied(),
                        &format!("in secret `{name}`"),
                    ),
                    None => cx.err(fk.loc, "expected a key"),
                }
            }
        }
        if level != KilnLevel::Step && b.phases.is_empty() {
            cx.err(
                k.loc,
                format!(
                    "secret `{name}` is bound to no phase: add `phases: [deploy]` (or bind it on a step)"
                ),
            );
        }
        out.push(b);
    }
    out
}

pub(crate) fn step(
    cx: &mut Cx<'_>,
    job: &str,
    index: usize,
    node: &Node,
    ids: &mut HashSet<String>,
) -> Option<StepSpec> {
    let pairs = cx.map_named(node, || format!("step {index} of job `{job}`"))?;
    let get = |key: &str| pairs.iter().find(|(k, _)| k.as_scalar() == Some(key));
    let name = get("name").and_then(|(_, v)| cx.template(v, "`name`"));
    let label = match &name {
        Some(n) => format!("step {index} (`{}`) of job `{job}`", n.source()),
        None => format!("step {index} of job `{job}`"),
    };
    let mut spec = StepSpec {
        location: node.loc,
        id: None,
        name,
        action: StepAction::Checkout,
        env: Vec::new(),
        working_directory: None,
        condition: None,
        timeout_minutes: None,
        continue_on_error: BoolOrExpr::Literal(false),
        kiln: KilnStepSettings::default(),
    };
    let mut run = None;
    let mut uses = None;
    let mut shell = None;
    let mut shell_loc = None;
    let mut with_loc = None;
    let mut with_node: Option<&Node> = None;
    let errors_before = cx.errors.len();
    for (k, v) in pairs {
        let Some(key) = cx.key(k) else {
            continue;
        };
        match &*key {
            "name" => {}
            "id" => {
                let Some(id) = cx.text(v, "`id`") else {
                    continue;
                };
                if !is_identifier(&id) {
                    cx.err(
                        v.loc,
                        format!("{label}: invalid step id `{id}`: use letters, digits, `-` and `_`, starting with a letter or `_`"),
                    );
                } else if !ids.insert(id.to_lowercase()) {
                    cx.err(v.loc, format!("{label}: duplicate step id `{id}` in job `{job}`"));
                } else {
                    spec.id = Some(id);
                }
            }
            "run" => run = cx.template(v, "`run`").map(|t| (t, v.loc)),
            "uses" => uses = cx.text(v, "`uses`").map(|u| (u, v.loc)),
            "shell" => {
                shell = cx.shell(v);
                shell_loc = Some(k.loc);
            }
            "with" => {
                with_loc = Some(k.loc);
                with_node = Some(v);
            }
            "env" => spec.env = cx.env(v, &format!("in {label}")),
            "working-directory" => spec.working_directory = cx.working_directory(v, "`working-directory`"),
            "if" => spec.condition = cx.condition(v),
            "timeout-minutes" => spec.timeout_minutes = cx.positive_number(v, "`timeout-minutes`"),
            "continue-on-error" => spec.continue_on_error = cx.bool_or_expr(v, "`continue-on-error`"),
            "kiln" => {
                if let Some(kp) = cx.map(v, "`kiln`") {
                    for (kk, kv) in kp {
                        if let Some(n) = cx.text(kk, "a key") {
                            if !kiln_shared(cx, kk, kv, &n, KilnLevel::Step, &mut spec.kiln) {
                                cx.unknown_key(
                                    kk.loc,
                                    &n,
                                    KILN_STEP_KEYS.iter().copied(),
                                    "in a step's `kiln`",
                                );
                            }
                        }
                    }
                }
            }
            _ => cx.unknown_key(k.loc, &key, STEP_KEYS.iter().copied(), &format!("in {label}")),
        }
    }
    match (run, uses) {
        (Some((script, _)), None) => {
            if let Some(loc) = with_loc {
                cx.err(loc, format!("{label}: `with` only applies to `uses` steps"));
            }
            spec.action = StepAction::Run { script, shell };
        }
        (None, Some((u, loc))) => {
            if let Some(loc) = shell_loc {
                cx.err(loc, format!("{label}: `shell` only applies to `run` steps"));
            }
            let action =
                u.split_once('@').filter(|(_, r)| !r.is_empty()).map(|(a, _)| a.to_ascii_lowercase());
            let mut with = builtin_with(cx, with_node, &label);
            match action.as_deref() {
                Some("actions/checkout") => spec.action = StepAction::Checkout,
                Some("actions/upload-artifact") => {
                    check_inputs(cx, &with, &label, UPLOAD_INPUTS, loc);
                    let name =
                        with.remove("name").map(|(t, _)| t).unwrap_or_else(|| Template::literal("artifact"));
                    let Some((path, _)) = with.remove("path") else {
                        cx.err(loc, format!("{label}: actions/upload-artifact needs `with.path`"));
                        return None;
                    };
                    let if_no_files_found = match with.remove("if-no-files-found") {
                        Some((t, l)) => match t.source() {
                            v @ ("warn" | "error" | "ignore") => v.to_string(),
                            other => {
                                cx.err(l, format!("{label}: `if-no-files-found` must be warn, error or ignore, not `{other}`"));
                                "warn".into()
                            }
                        },
                        None => "warn".into(),
                    };
                    let retention_days =
                        with.remove("retention-days").and_then(|(t, l)| match t.source().parse() {
                            Ok(n) => Some(n),
                            Err(_) => {
                                cx.err(l, format!("{label}: `retention-days` must be a whole number"));
                                None
                            }
                        });
                    let output_type = with.remove("output-type").map(|(t, l)| {
                        let v = t.source().to_string();
                        if !OUTPUT_TYPES.contains(&v.as_str()) {
                            cx.err(
                                l,
                                format!(
                                    "{label}: `output-type` must be one of {}, not `{v}`",
                                    OUTPUT_TYPES.join(", ")
                                ),
                            );
                        }
                        v
                    });
                    spec.action = StepAction::UploadArtifact {
                        name,
                        path,
                        if_no_files_found,
                        retention_days,
                        output_type,
                    };
                }
                Some("actions/download-artifact") => {
                    check_inputs(cx, &with, &label, DOWNLOAD_INPUTS, loc);
                    let merge_multiple =
                        bool_input(cx, with.remove("merge-multiple"), &label, "merge-multiple");
                    spec.action = StepAction::DownloadArtifact {
                        name: with.remove("name").map(|(t, _)| t),
                        path: with.remove("path").map(|(t, _)| t),
                        pattern: with.remove("pattern").map(|(t, _)| t),
                        merge_multiple,
                    };
                }
                Some("actions/cache") => {
                    check_inputs(cx, &with, &label, CACHE_INPUTS, loc);
                    let (Some((key, _)), Some((path, _))) = (with.remove("key"), with.remove("path")) else {
                        cx.err(loc, format!("{label}: actions/cache needs `with.key` and `with.path`"));
                        return None;
                    };
                    let lookup_only = bool_input(cx, with.remove("lookup-only"), &label, "lookup-only");
                    let fail_on_miss =
                        bool_input(cx, with.remove("fail-on-cache-miss"), &label, "fail-on-cache-miss");
                    spec.action = StepAction::Cache {
                        key,
                        path,
                        restore_keys: with.remove("restore-keys").map(|(t, _)| t),
                        lookup_only,
                        fail_on_miss,
                    };
                }
                Some("kiln/detect") => {
                    check_inputs(cx, &with, &label, &["ignore-scripts"], loc);
                    let ignore_scripts =
                        bool_input(cx, with.remove("ignore-scripts"), &label, "ignore-scripts");
                    spec.action = StepAction::Detect { ignore_scripts };
                }
                Some("kiln/package") => {
                    check_inputs(
                        cx,
                        &with,
                        &label,
                        &["name", "path", "output-type", "retention-days", "commit"],
                        loc,
                    );
                    let name =
                        with.remove("name").map(|(t, _)| t).unwrap_or_else(|| Template::literal("output"));
                    let retention_days =
                        with.remove("retention-days").and_then(|(t, l)| match t.source().parse() {
                            Ok(n) => Some(n),
                            Err(_) => {
                                cx.err(l, format!("{label}: `retention-days` must be a whole number"));
                                None
                            }
                        });
                    spec.action = StepAction::Package {
                        name,
                        path: with.remove("path").map(|(t, _)| t),
                        output_type: with.remove("output-type").map(|(t, _)| t),
                        retention_days,
                        commit: with.remove("commit").map(|(t, _)| t),
                    };
                }
                Some(a) if SetupTool::of(a).is_some() => {
                    let (tool, inputs) = SetupTool::of(a).expect("checked");
                    check_inputs(cx, &with, &label, inputs, loc);
                    spec.action = StepAction::Setup {
                        tool,
                        uses: u.clone(),
                        with: with.into_iter().map(|(k, (t, _))| (k, t)).collect(),
                    };
                }
                Some(a) if UPLOADERS.iter().any(|p| a.starts_with(p)) => {
                    spec.action = StepAction::Uploader { uses: u.clone() };
                }
                _ if action.is_none() && !(u.starts_with("./") || u.starts_with("docker://")) => {
                    cx.err(loc, format!("{label}: `uses: {u}` needs a version after `@` (e.g. `{u}@v4`)"))
                }
                _ if u.starts_with("./") => {
                    let path = u.trim_start_matches("./").trim_end_matches('/').to_string();
                    match check_relative_path(&path) {
                        Ok(()) => {
                            spec.action = StepAction::LocalAction {
                                path,
                                with: with.into_iter().map(|(k, (t, _))| (k, t)).collect(),
                            }
                        }
                        Err(e) => cx.err(loc, format!("{label}: `uses: {u}`: {e}")),
                    }
                }
                _ => spec.action = StepAction::Unsupported { uses: u.clone() },
            }
        }
        (Some(_), Some((_, loc))) => {
            cx.err(loc, format!("{label}: a step has either `run` or `uses`, not both"))
        }
        (None, None) => {
            if cx.errors.len() == errors_before {
                cx.err(node.loc, format!("{label}: a step needs `run` or `uses`"));
            }
        }
    }
    (cx.errors.len() == errors_before).then_some(spec)
}

/// What an artifact is, for the deployment system that picks it up.
pub const OUTPUT_TYPES: &[&str] = &["static", "server", "function", "container-image"];

const UPLOAD_INPUTS: &[&str] = &[
    "output-type",
    "name",
    "path",
    "if-no-files-found",
    "retention-days",
    "compression-level",
    "overwrite",
    "include-hidden-files",
];
const DOWNLOAD_INPUTS: &[&str] =
    &["name", "path", "pattern", "merge-multiple", "github-token", "repository", "run-id"];

/// Coverage and report uploaders: they send results to a third party's host
/// with its token, which a sandboxed build has neither of.
const UPLOADERS: &[&str] = &[
    "codecov/codecov-action",
    "coverallsapp/github-action",
    "codacy/codacy-coverage-reporter-action",
    "paambaati/codeclimate-action",
    "qltysh/qlty-action",
    "sonarsource/sonarcloud-github-action",
    "sonarsource/sonarqube-scan-action",
];
const CACHE_INPUTS: &[&str] = &[
    "key",
    "path",
    "restore-keys",
    "lookup-only",
    "fail-on-cache-miss",
    "enableCrossOsArchive",
    "upload-chunk-size",
];

/// A built-in's `true`/`false` input (absent: false); anything else is an
/// error naming the input.
fn bool_input(cx: &mut Cx<'_>, v: Option<(Template, Location)>, label: &str, what: &str) -> bool {
    match v {
        None => false,
        Some((t, l)) => match t.source() {
            "true" => true,
            "false" => false,
            other => {
                cx.err(l, format!("{label}: `{what}` must be true or false, not `{other}`"));
                false
            }
        },
    }
}

/// A built-in action's `with:` inputs as templates, by name.
pub(crate) fn builtin_with(
    cx: &mut Cx<'_>,
    node: Option<&Node>,
    label: &str,
) -> std::collections::BTreeMap<String, (Template, Location)> {
    let mut out = std::collections::BTreeMap::new();
    let Some(node) = node else { return out };
    let Some(pairs) = cx.map(node, &format!("`with` of {label}")) else { return out };
    for (k, v) in pairs {
        let Some(key) = cx.text(k, "an input name") else { continue };
        if let Some(t) = cx.template(v, &format!("`with.{key}`")) {
            out.insert(key, (t, k.loc));
        }
    }
    out
}

/// Refuses inputs an action does not have (accepted-but-ignored ones are
/// listed too).
fn check_inputs(
    cx: &mut Cx<'_>,
    with: &std::collections::BTreeMap<String, (Template, Location)>,
    label: &str,
    known: &[&str],
    _loc: Location,
) {
    for (k, (_, l)) in with {
        if !known.contains(&k.as_str()) {
            cx.unknown_key(*l, k, known.iter().copied(), &format!("in the `with` of {label}"));
        }
    }
}

/// Converts a matrix value; refuses expressions (dynamic matrices).
pub(crate) fn matrix_value(cx: &mut Cx<'_>, node: &Node) -> Option<serde_json::Value> {
    if let Some(loc) = find_expression(node) {
        cx.err(
            loc,
            "dynamic matrices are not supported: matrix values must be written in the file, not computed with `${{ }}`",
        );
        return None;
    }
    Some(node.to_json())
}

fn find_expression(node: &Node) -> Option<Location> {
    match &node.kind {
        NodeKind::Scalar { value, .. } => value.contains("${{").then_some(node.loc),
        NodeKind::Seq(items) => items.iter().find_map(find_expression),
        NodeKind::Map(pairs) => {
            pairs.iter().find_map(|(k, v)| find_expression(k).or_else(|| find_expression(v)))
        }
    }
}
