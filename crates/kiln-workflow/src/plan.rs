//! From a parsed workflow to a validated, expanded job graph.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::call::{Errs, WorkflowCall, MAX_CALL_DEPTH};
use crate::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::model::{JobSpec, Refusal, SecretBinding, Workflow};
use crate::parse::{did_you_mean, JobExtra};
use crate::yaml::Node;

/// A validated workflow with its matrix legs expanded: what the engine runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The workflow's `name`, or the file name.
    pub name: String,
    pub workflow: Arc<Workflow>,
    /// All jobs (matrix legs are jobs), in a stable order (file order, legs in
    /// matrix order; the jobs of a called workflow right after the job that
    /// calls it).
    pub jobs: Vec<PlannedJob>,
    /// Matrix groups: the legs of one job key with a strategy.
    pub groups: Vec<MatrixGroup>,
    /// Non-fatal notices (keys accepted but not acted on locally).
    pub notices: Vec<Diagnostic>,
}

/// One node of the graph.
#[derive(Debug, Clone)]
pub struct PlannedJob {
    /// Stable, readable id: the job key, or for a matrix leg
    /// `key (axis: value, axis: value)`, e.g. `test (shard: 2)`; the jobs of
    /// a called workflow are `caller / callee` (`deploy (env: prod) / push`).
    pub id: String,
    /// The key under `jobs:` (of the file the job is in).
    pub key: String,
    pub spec: Arc<JobSpec>,
    /// This leg's matrix values (`Value::Object`), or `Value::Null`.
    pub matrix: serde_json::Value,
    /// Indices into [`Plan::jobs`] of every job (leg) this one needs. A job
    /// of a called workflow that needs none of its workflow's jobs needs
    /// what its calling job needs; a calling job needs every job it calls.
    pub needs: Vec<usize>,
    /// Index into [`Plan::groups`] when this job is a matrix leg.
    pub group: Option<usize>,
    /// For a job of a called workflow: the calling job (leg), by index.
    pub parent: Option<usize>,
    /// Set when this job calls a workflow of the repository: it runs no
    /// steps; it ends when the jobs it calls end, with their result and the
    /// outputs the called workflow declares.
    pub call: Option<Arc<WorkflowCall>>,
    /// The workflow the job is in: [`Plan::workflow`], or a called workflow
    /// (whose `kiln.secrets` are the bindings its call passes).
    pub workflow: Arc<Workflow>,
}

/// The legs of one matrix job.
#[derive(Debug, Clone)]
pub struct MatrixGroup {
    pub key: String,
    pub legs: Vec<usize>,
    pub fail_fast: bool,
    pub max_parallel: Option<u32>,
}

/// Parses, validates and expands a workflow file. `file` names it in errors.
/// A job that calls another workflow of the repository is refused (this
/// entry point reads no other file); see [`load_with`].
pub fn load(file: &str, source: &str) -> Result<Plan, Diagnostics> {
    load_with(file, source, &|path: &str| {
        Err(format!("reading `{path}`: this front end cannot read other files of the repository"))
    })
}

/// [`load`], with `loader` reading the workflows that jobs call
/// (`uses: ./.github/workflows/x.yml`): it takes the path relative to the
/// repository root (`.github/workflows/x.yml`) and returns the file's text.
/// A called file that cannot be read, parsed or called refuses its calling
/// job (the rest of the file runs); a call that does not match what the
/// called file declares (inputs, secrets) is an error of this file.
pub fn load_with(
    file: &str,
    source: &str,
    loader: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Plan, Diagnostics> {
    let root = crate::yaml::parse(file, source).map_err(Diagnostics)?;
    let mut stack = vec![repository_path(file)];
    let mut notices = Vec::new();
    let top = prepare(file, &root, 1, &mut stack, None, loader, &mut notices).map_err(Diagnostics)?;
    let name = top.workflow.name.clone().unwrap_or_else(|| file.to_string());
    let mut layout = Layout::default();
    layout.add(&top, "", None);
    let Layout { mut jobs, groups, mut local_needs, called } = layout;
    // Needs: a job's own (within its workflow); a job of a called
    // workflow that needs none of its workflow's jobs needs what its
    // caller needs; a caller needs every job it calls. Callers come before
    // the jobs they call, so one pass in order sees each caller first.
    let mut outer: Vec<Vec<usize>> = Vec::with_capacity(jobs.len());
    for j in 0..jobs.len() {
        let own = match jobs[j].parent {
            Some(p) if jobs[j].spec.needs.is_empty() => outer[p].clone(),
            _ => std::mem::take(&mut local_needs[j]),
        };
        let mut needs = own.clone();
        if let Some(range) = &called[j] {
            needs.extend(range.clone());
        }
        needs.sort_unstable();
        needs.dedup();
        jobs[j].needs = needs;
        outer.push(own);
    }
    Ok(Plan { name, workflow: top.workflow.clone(), jobs, groups, notices })
}

/// `…/.github/workflows/x.yml` -> `.github/workflows/x.yml` (how calls name
/// files), else the name itself.
fn repository_path(file: &str) -> String {
    match file.rfind(".github/workflows/") {
        Some(i) => file[i..].to_string(),
        None => file.trim_start_matches("./").to_string(),
    }
}

/// A workflow file checked, its matrices expanded and its calls resolved.
struct Prepared {
    workflow: Arc<Workflow>,
    /// Per job of `workflow.jobs`: its matrix legs, if it has a strategy.
    legs: Vec<Option<Vec<Map<String, Value>>>>,
    /// Per job: the workflow it calls, when the call can run.
    calls: Vec<Option<(Arc<WorkflowCall>, Prepared)>>,
    /// `on.workflow_call` of a called file.
    trigger: Option<crate::call::Trigger>,
}

/// Checks one file and, recursively, the files it calls. `inherited` is
/// `None` for the top-level file, or the secret bindings a call passes.
fn prepare(
    file: &str,
    root: &Node,
    level: usize,
    stack: &mut Vec<String>,
    inherited: Option<Vec<SecretBinding>>,
    loader: &dyn Fn(&str) -> Result<String, String>,
    notices: &mut Vec<Diagnostic>,
) -> Result<Prepared, Vec<Diagnostic>> {
    let parsed = crate::parse::workflow(file, root);
    let mut errors = parsed.errors;
    let mut workflow = parsed.workflow;
    let mut errs = Errs::new(file);
    let mut trigger = None;
    if let Some(bindings) = inherited {
        trigger = crate::call::trigger(&mut errs, root);
        if trigger.is_none() && errs.errors.is_empty() {
            errs.err(root.loc, "this workflow cannot be called: its `on:` has no `workflow_call`");
        }
        crate::call::own_bindings(&mut errs, &workflow);
        workflow.kiln.secrets = bindings;
    }
    let sites = crate::call::sites(&mut errs, root);
    errors.append(&mut errs.errors);
    check_needs(file, &workflow, &parsed.extras, &mut errors);
    crate::secrets_check::check(file, &workflow, &mut errors);
    if errors.is_empty() {
        check_cycles(file, &workflow, &mut errors);
    }
    let mut legs = Vec::new();
    for (spec, extra) in workflow.jobs.iter().zip(&parsed.extras) {
        legs.push(match &spec.strategy {
            None => None,
            Some(strategy) => match crate::matrix::expand(strategy) {
                Ok(l) => Some(l),
                Err(e) => {
                    errors.push(diag(file, extra.matrix_loc, e));
                    None
                }
            },
        });
    }
    if !errors.is_empty() {
        errors.sort_by_key(|d| (d.location.line, d.location.column));
        return Err(errors);
    }
    for n in parsed.notices {
        if !notices.contains(&n) {
            notices.push(n);
        }
    }
    let mut calls: Vec<Option<(Arc<WorkflowCall>, Prepared)>> = workflow.jobs.iter().map(|_| None).collect();
    let mut refusals: Vec<(usize, Refusal)> = Vec::new();
    let mut errs = Errs::new(file);
    for site in &sites {
        let Some(i) = workflow.jobs.iter().position(|j| j.key == site.key) else { continue };
        match call(site, level, stack, &workflow.kiln.secrets, loader, notices, &mut errs) {
            Ok((callee, trigger)) => {
                let call = WorkflowCall {
                    uses: site.uses.clone(),
                    path: site.path.clone(),
                    location: site.uses_loc,
                    with: site.with.iter().map(|w| (w.name.clone(), w.template.clone())).collect(),
                    inputs: trigger.inputs,
                    outputs: trigger.outputs,
                    secrets: site.secrets.clone(),
                    workflow: callee.workflow.clone(),
                };
                calls[i] = Some((Arc::new(call), callee));
            }
            Err(reason) => refusals.push((i, Refusal { location: site.uses_loc, reason })),
        }
    }
    if !errs.errors.is_empty() {
        errs.errors.sort_by_key(|d| (d.location.line, d.location.column));
        return Err(errs.errors);
    }
    for (i, r) in refusals {
        // Not shared yet: no copy is made.
        let refusals = &mut Arc::make_mut(&mut workflow.jobs[i]).refusals;
        refusals.push(r);
        refusals.sort_by_key(|r| (r.location.line, r.location.column));
    }
    Ok(Prepared { workflow: Arc::new(workflow), legs, calls, trigger })
}

/// Reads, checks and prepares the file a job calls; `Err` is the reason
/// the calling job is refused.
fn call(
    site: &crate::call::Site,
    level: usize,
    stack: &mut Vec<String>,
    caller_bindings: &[SecretBinding],
    loader: &dyn Fn(&str) -> Result<String, String>,
    notices: &mut Vec<Diagnostic>,
    errs: &mut Errs<'_>,
) -> Result<(Prepared, crate::call::Trigger), String> {
    let uses = &site.uses;
    if let Some(reason) = &site.refused_secret {
        return Err(format!("`uses: {uses}`: {reason}"));
    }
    if level >= MAX_CALL_DEPTH {
        return Err(format!(
            "`uses: {uses}`: workflows nest at most {MAX_CALL_DEPTH} levels deep (the top-level workflow and {} levels of called workflows, GitHub's limit)",
            MAX_CALL_DEPTH - 1
        ));
    }
    if stack.contains(&site.path) {
        return Err(format!(
            "`uses: {uses}`: workflows call each other in a cycle ({} -> {})",
            stack.join(" -> "),
            site.path
        ));
    }
    let text = loader(&site.path).map_err(|e| format!("`uses: {uses}`: {e}"))?;
    let first = |ds: Vec<Diagnostic>| {
        let more = match ds.len() {
            0 | 1 => String::new(),
            2 => " (and 1 more problem)".to_string(),
            n => format!(" (and {} more problems)", n - 1),
        };
        let d = ds.into_iter().next().map(|d| d.to_string()).unwrap_or_default();
        format!("`uses: {uses}`: {d}{more}")
    };
    let root = crate::yaml::parse(&site.path, &text).map_err(first)?;
    // The call against what the file declares: errors of the calling
    // file, whatever else is wrong in the called one.
    if let Some(trigger) = crate::call::trigger(&mut Errs::new(&site.path), &root) {
        crate::call::check_call(errs, site, &trigger);
    }
    let passed = crate::call::passed_bindings(&site.secrets, caller_bindings);
    stack.push(site.path.clone());
    let prepared = prepare(&site.path, &root, level + 1, stack, Some(passed), loader, notices);
    stack.pop();
    let mut prepared = prepared.map_err(first)?;
    let trigger = prepared.trigger.take().unwrap_or_default();
    Ok((prepared, trigger))
}

/// The plan's jobs, laid out file by file.
#[derive(Default)]
struct Layout {
    jobs: Vec<PlannedJob>,
    groups: Vec<MatrixGroup>,
    /// Per job: what it needs among its own workflow's jobs.
    local_needs: Vec<Vec<usize>>,
    /// Per calling job: the jobs it calls (all of them, nested ones too).
    called: Vec<Option<Range<usize>>>,
}

impl Layout {
    /// Adds the jobs of `prep`, their ids after `prefix`, called by `parent`.
    fn add(&mut self, prep: &Prepared, prefix: &str, parent: Option<usize>) {
        let mut legs_of: HashMap<&str, Vec<usize>> = HashMap::with_capacity(prep.workflow.jobs.len());
        let mut nodes = Vec::with_capacity(prep.workflow.jobs.len());
        self.jobs.reserve(prep.workflow.jobs.len());
        self.local_needs.reserve(prep.workflow.jobs.len());
        self.called.reserve(prep.workflow.jobs.len());
        for (i, spec) in prep.workflow.jobs.iter().enumerate() {
            let spec_arc = spec.clone();
            let call = prep.calls[i].as_ref();
            let (ids, group): (Vec<(String, Value)>, Option<usize>) = match &prep.legs[i] {
                None => (vec![(spec.key.clone(), Value::Null)], None),
                Some(legs) => {
                    let mut seen = HashMap::new();
                    let ids = legs
                        .iter()
                        .map(|leg| {
                            let mut id = leg_id(&spec.key, leg);
                            let n = seen.entry(id.clone()).or_insert(0usize);
                            *n += 1;
                            if *n > 1 {
                                id = format!("{id} #{n}");
                            }
                            (id, Value::Object(leg.clone()))
                        })
                        .collect();
                    let strategy = spec.strategy.as_ref();
                    self.groups.push(MatrixGroup {
                        key: spec.key.clone(),
                        legs: Vec::new(),
                        fail_fast: strategy.map(|s| s.fail_fast).unwrap_or(true),
                        max_parallel: strategy.and_then(|s| s.max_parallel),
                    });
                    (ids, Some(self.groups.len() - 1))
                }
            };
            for (id, matrix) in ids {
                let j = self.jobs.len();
                self.jobs.push(PlannedJob {
                    id: format!("{prefix}{id}"),
                    key: spec.key.clone(),
                    spec: spec_arc.clone(),
                    matrix,
                    needs: Vec::new(),
                    group,
                    parent,
                    call: call.map(|(c, _)| c.clone()),
                    workflow: prep.workflow.clone(),
                });
                self.local_needs.push(Vec::new());
                self.called.push(None);
                if let Some(g) = group {
                    self.groups[g].legs.push(j);
                }
                legs_of.entry(spec.key.as_str()).or_default().push(j);
                nodes.push(j);
                if let Some((_, callee)) = call {
                    self.add(callee, &format!("{prefix}{id} / "), Some(j));
                    self.called[j] = Some(j + 1..self.jobs.len());
                }
            }
        }
        for j in nodes {
            let mut needs = Vec::new();
            for need in &self.jobs[j].spec.needs {
                if let Some(legs) = legs_of.get(need.as_str()) {
                    needs.extend(legs.iter().copied());
                }
            }
            needs.sort_unstable();
            needs.dedup();
            self.local_needs[j] = needs;
        }
    }
}

impl Plan {
    /// What job `j` needs among the jobs of its own workflow (for a job of
    /// a called workflow, not what its caller needs; for a caller, not the
    /// jobs it calls): what its `needs` context and `success()` are about.
    pub fn own_needs(&self, j: usize) -> impl Iterator<Item = usize> + Clone + '_ {
        let parent = self.jobs[j].parent;
        self.jobs[j].needs.iter().copied().filter(move |&d| self.jobs[d].parent == parent)
    }

    /// The jobs a calling job calls directly.
    pub fn called_jobs(&self, c: usize) -> impl Iterator<Item = usize> + Clone + '_ {
        self.jobs[c].needs.iter().copied().filter(move |&d| self.jobs[d].parent == Some(c))
    }

    /// The plan cut down to the jobs with these keys and every job they
    /// need, directly or not (`kiln run --job`). Unknown keys are an error
    /// that lists the jobs there are.
    pub fn select(&self, keys: &[String]) -> Result<Plan, String> {
        let top = |j: &PlannedJob| j.parent.is_none();
        for k in keys {
            if !self.jobs.iter().any(|j| top(j) && &j.key == k) {
                let known: Vec<&str> = self.workflow.jobs.iter().map(|j| j.key.as_str()).collect();
                let mut msg = format!("--job {k}: no such job");
                match did_you_mean(k, known.iter().copied()) {
                    Some(s) => msg.push_str(&format!("; did you mean `{s}`?")),
                    None => msg.push_str(&format!(" (jobs: {})", known.join(", "))),
                }
                return Err(msg);
            }
        }
        let mut keep = vec![false; self.jobs.len()];
        let mut stack: Vec<usize> = (0..self.jobs.len())
            .filter(|&j| top(&self.jobs[j]) && keys.contains(&self.jobs[j].key))
            .collect();
        while let Some(j) = stack.pop() {
            if !std::mem::replace(&mut keep[j], true) {
                stack.extend(self.jobs[j].needs.iter().copied().filter(|&d| !keep[d]));
            }
        }
        let mut new_index = vec![usize::MAX; self.jobs.len()];
        let mut jobs = Vec::new();
        for (j, job) in self.jobs.iter().enumerate().filter(|(j, _)| keep[*j]) {
            new_index[j] = jobs.len();
            jobs.push(job.clone());
        }
        let mut groups = Vec::new();
        let mut new_group = vec![None; self.groups.len()];
        for (g, group) in self.groups.iter().enumerate() {
            let legs: Vec<usize> = group.legs.iter().filter(|&&l| keep[l]).map(|&l| new_index[l]).collect();
            if !legs.is_empty() {
                new_group[g] = Some(groups.len());
                groups.push(MatrixGroup { legs, ..group.clone() });
            }
        }
        for job in &mut jobs {
            job.needs = job.needs.iter().map(|&d| new_index[d]).collect();
            job.group = job.group.and_then(|g| new_group[g]);
            job.parent = job.parent.map(|p| new_index[p]).filter(|&p| p != usize::MAX);
        }
        Ok(Plan { jobs, groups, ..self.clone() })
    }
}

fn diag(file: &str, location: Location, message: impl Into<String>) -> Diagnostic {
    Diagnostic { file: file.to_string(), location, message: message.into() }
}

/// `key (axis: value, ...)`: strings bare, other values as JSON.
fn leg_id(key: &str, leg: &serde_json::Map<String, serde_json::Value>) -> String {
    let parts: Vec<String> = leg
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}: {s}"),
            other => format!("{k}: {other}"),
        })
        .collect();
    format!("{key} ({})", parts.join(", "))
}

fn check_needs(file: &str, wf: &Workflow, extras: &[JobExtra], errors: &mut Vec<Diagnostic>) {
    let keys: std::collections::HashSet<&str> = wf.jobs.iter().map(|j| j.key.as_str()).collect();
    for (job, extra) in wf.jobs.iter().zip(extras) {
        for (i, need) in job.needs.iter().enumerate() {
            let loc = extra.needs_locs.get(i).copied().unwrap_or(job.location);
            if *need == job.key {
                errors.push(diag(file, loc, format!("job `{}` needs itself", job.key)));
            } else if !keys.contains(need.as_str()) {
                let mut msg =
                    format!("job `{}` needs `{need}`, which is not a job of this workflow", job.key);
                if let Some(s) = did_you_mean(need, wf.jobs.iter().map(|j| j.key.as_str())) {
                    msg.push_str(&format!("; did you mean `{s}`?"));
                }
                errors.push(diag(file, loc, msg));
            }
        }
    }
}

/// Reports each dependency cycle as `a -> b -> c -> a` (`a` needs `b`...).
fn check_cycles(file: &str, wf: &Workflow, errors: &mut Vec<Diagnostic>) {
    let index: HashMap<&str, usize> = wf.jobs.iter().enumerate().map(|(i, j)| (j.key.as_str(), i)).collect();
    let edges: Vec<Vec<usize>> = wf
        .jobs
        .iter()
        .map(|j| j.needs.iter().filter_map(|n| index.get(n.as_str()).copied()).collect())
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state = vec![0u8; wf.jobs.len()];
    for root in 0..wf.jobs.len() {
        if state[root] != 0 {
            continue;
        }
        // Iterative DFS: (node, next edge to look at).
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        state[root] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&to) = edges[node].get(*next) {
                *next += 1;
                match state[to] {
                    0 => {
                        state[to] = 1;
                        stack.push((to, 0));
                    }
                    1 => {
                        let start = stack.iter().position(|(n, _)| *n == to).unwrap_or(0);
                        let mut path: Vec<&str> =
                            stack[start..].iter().map(|(n, _)| wf.jobs[*n].key.as_str()).collect();
                        path.push(wf.jobs[to].key.as_str());
                        errors.push(diag(
                            file,
                            wf.jobs[to].location,
                            format!("dependency cycle: {}", path.join(" -> ")),
                        ));
                    }
                    _ => {}
                }
            } else {
                state[node] = 2;
                stack.pop();
            }
        }
    }
}
