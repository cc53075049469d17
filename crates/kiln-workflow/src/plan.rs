//! From a parsed workflow to a validated, expanded job graph.

use std::collections::HashMap;
use std::sync::Arc;

use crate::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::model::{JobSpec, Workflow};
use crate::parse::{did_you_mean, JobExtra};

/// A validated workflow with its matrix legs expanded: what the engine runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The workflow's `name`, or the file name.
    pub name: String,
    pub workflow: Arc<Workflow>,
    /// All jobs (matrix legs are jobs), in a stable order (file order, legs in
    /// matrix order).
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
    /// `key (axis: value, axis: value)`, e.g. `test (shard: 2)`.
    pub id: String,
    /// The key under `jobs:`.
    pub key: String,
    pub spec: Arc<JobSpec>,
    /// This leg's matrix values (`Value::Object`), or `Value::Null`.
    pub matrix: serde_json::Value,
    /// Indices into [`Plan::jobs`] of every job (leg) this one needs.
    pub needs: Vec<usize>,
    /// Index into [`Plan::groups`] when this job is a matrix leg.
    pub group: Option<usize>,
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
pub fn load(file: &str, source: &str) -> Result<Plan, Diagnostics> {
    let root = crate::yaml::parse(file, source).map_err(Diagnostics)?;
    let parsed = crate::parse::workflow(file, &root);
    let mut errors = parsed.errors;
    let workflow = parsed.workflow;
    check_needs(file, &workflow, &parsed.extras, &mut errors);
    crate::secrets_check::check(file, &workflow, &mut errors);
    if errors.is_empty() {
        check_cycles(file, &workflow, &mut errors);
    }
    if !errors.is_empty() {
        errors.sort_by_key(|d| (d.location.line, d.location.column));
        return Err(Diagnostics(errors));
    }
    let name = workflow.name.clone().unwrap_or_else(|| file.to_string());
    let workflow = Arc::new(workflow);
    let mut jobs: Vec<PlannedJob> = Vec::new();
    let mut groups = Vec::new();
    let mut legs_of: HashMap<&str, Vec<usize>> = HashMap::new();
    for (spec, extra) in workflow.jobs.iter().zip(&parsed.extras) {
        let spec_arc = Arc::new(spec.clone());
        let mut indices = Vec::new();
        match &spec.strategy {
            None => {
                indices.push(jobs.len());
                jobs.push(PlannedJob {
                    id: spec.key.clone(),
                    key: spec.key.clone(),
                    spec: spec_arc,
                    matrix: serde_json::Value::Null,
                    needs: Vec::new(),
                    group: None,
                });
            }
            Some(strategy) => {
                let legs = match crate::matrix::expand(strategy) {
                    Ok(legs) => legs,
                    Err(e) => {
                        errors.push(diag(file, extra.matrix_loc, e));
                        continue;
                    }
                };
                let group = groups.len();
                let mut seen = HashMap::new();
                for leg in legs {
                    let mut id = leg_id(&spec.key, &leg);
                    let n = seen.entry(id.clone()).or_insert(0usize);
                    *n += 1;
                    if *n > 1 {
                        id = format!("{id} #{n}");
                    }
                    indices.push(jobs.len());
                    jobs.push(PlannedJob {
                        id,
                        key: spec.key.clone(),
                        spec: spec_arc.clone(),
                        matrix: serde_json::Value::Object(leg),
                        needs: Vec::new(),
                        group: Some(group),
                    });
                }
                groups.push(MatrixGroup {
                    key: spec.key.clone(),
                    legs: indices.clone(),
                    fail_fast: strategy.fail_fast,
                    max_parallel: strategy.max_parallel,
                });
            }
        }
        legs_of.insert(spec.key.as_str(), indices);
    }
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    for job in &mut jobs {
        let mut needs = Vec::new();
        for need in &job.spec.needs {
            if let Some(legs) = legs_of.get(need.as_str()) {
                needs.extend(legs.iter().copied());
            }
        }
        needs.sort_unstable();
        needs.dedup();
        job.needs = needs;
    }
    Ok(Plan { name, workflow: workflow.clone(), jobs, groups, notices: parsed.notices })
}

impl Plan {
    /// The plan cut down to the jobs with these keys and every job they
    /// need, directly or not (`kiln run --job`). Unknown keys are an error
    /// that lists the jobs there are.
    pub fn select(&self, keys: &[String]) -> Result<Plan, String> {
        for k in keys {
            if !self.jobs.iter().any(|j| &j.key == k) {
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
        let mut stack: Vec<usize> =
            (0..self.jobs.len()).filter(|&j| keys.contains(&self.jobs[j].key)).collect();
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
