//! Reusable workflows of the repository: `jobs.<id>.uses: ./.github/workflows/x.yml`.
//!
//! A job that calls a workflow becomes, in the plan, a node that runs no
//! steps, followed by the called workflow's jobs (ids `caller / callee`).
//! The node needs every called job and ends with their result and with the
//! outputs the called workflow declares (`on.workflow_call.outputs`). This
//! module reads the call (`uses`, `with`, `secrets`) and the called file's
//! `on.workflow_call`, and evaluates inputs and outputs; the plan lays the
//! jobs out.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::checks::{did_you_mean, is_env_name, is_identifier};
use crate::diagnostic::Location;
use crate::expr::{num_value, to_text, Contexts, StatusFns, Template};
use crate::model::{SecretBinding, Workflow};
use crate::yaml::{Node, NodeKind};

/// How deep workflows nest: the top-level workflow and three levels of
/// called workflows (GitHub's limit of four levels).
pub const MAX_CALL_DEPTH: usize = 4;

/// The `type` of an input of a called workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputType {
    String,
    Boolean,
    Number,
}

impl InputType {
    pub fn as_str(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Boolean => "boolean",
            InputType::Number => "number",
        }
    }

    fn parse(s: &str) -> Option<InputType> {
        match s {
            "string" => Some(InputType::String),
            "boolean" => Some(InputType::Boolean),
            "number" => Some(InputType::Number),
            _ => None,
        }
    }

    /// The value of an input nobody gave and that has no default.
    fn zero(self) -> Value {
        match self {
            InputType::String => Value::String(String::new()),
            InputType::Boolean => Value::Bool(false),
            InputType::Number => Value::from(0),
        }
    }

    /// Converts a value to this type as GitHub does, or says why not.
    pub fn convert(self, v: Value) -> Result<Value, String> {
        match (self, v) {
            (InputType::String, Value::String(s)) => Ok(Value::String(s)),
            (InputType::String, other) => Ok(Value::String(to_text(&other))),
            (InputType::Boolean, Value::Bool(b)) => Ok(Value::Bool(b)),
            (InputType::Boolean, Value::String(s)) if s.trim() == "true" => Ok(Value::Bool(true)),
            (InputType::Boolean, Value::String(s)) if s.trim() == "false" => Ok(Value::Bool(false)),
            (InputType::Number, Value::Number(n)) => Ok(Value::Number(n)),
            (InputType::Number, Value::String(s)) => match s.trim().parse::<f64>() {
                Ok(n) if n.is_finite() => Ok(num_value(n)),
                _ => Err(format!("expected a number, not `{s}`")),
            },
            (InputType::Boolean, other) => {
                Err(format!("expected a boolean (true or false), not `{}`", to_text(&other)))
            }
            (InputType::Number, other) => Err(format!("expected a number, not `{}`", to_text(&other))),
        }
    }
}

/// One input of `on.workflow_call.inputs`.
#[derive(Debug, Clone)]
pub struct CallInput {
    pub name: String,
    pub kind: InputType,
    pub required: bool,
    /// May be an expression over `github`.
    pub default: Option<Template>,
}

/// What a call passes of its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallSecrets {
    /// No `secrets:`: the called workflow sees no secret.
    None,
    /// `secrets: inherit`: the called jobs' steps may see what the caller's
    /// top-level `kiln.secrets` bindings allow.
    Inherit,
    /// `secrets: { NAME: ${{ secrets.NAME }} }`: those, under their own names.
    Named(Vec<String>),
}

/// A job's call of a reusable workflow of the repository, with what the
/// called file declares.
#[derive(Debug, Clone)]
pub struct WorkflowCall {
    /// `uses:` as written.
    pub uses: String,
    /// The called file, relative to the repository root.
    pub path: String,
    /// Where `uses:` is in the calling file.
    pub location: Location,
    /// The caller's `with:`, evaluated with the caller's contexts.
    pub with: Vec<(String, Template)>,
    /// `on.workflow_call.inputs` of the called file.
    pub inputs: Vec<CallInput>,
    /// `on.workflow_call.outputs`: name -> `value`, over the `jobs` context.
    pub outputs: Vec<(String, Template)>,
    pub secrets: CallSecrets,
    /// The called workflow (its `kiln.secrets` are the bindings the call passes).
    pub workflow: Arc<Workflow>,
}

impl WorkflowCall {
    /// The `inputs` context of the called jobs: `with:` evaluated with the
    /// caller's contexts, the defaults of the inputs not given, each value
    /// converted to its input's type.
    pub fn inputs(&self, caller: &Contexts, status: StatusFns) -> Result<Value, String> {
        let mut out = Map::new();
        for input in &self.inputs {
            let name = &input.name;
            let raw = match self.with.iter().find(|(k, _)| k == name) {
                Some((_, t)) => t.eval(caller, status).map_err(|e| format!("with.{name}: {e}"))?,
                None => match &input.default {
                    Some(t) => {
                        let ctx = Contexts { github: caller.github.clone(), ..Default::default() };
                        t.eval(&ctx, status).map_err(|e| format!("the default of input `{name}`: {e}"))?
                    }
                    None => input.kind.zero(),
                },
            };
            let v = input.kind.convert(raw).map_err(|e| {
                format!("input `{name}` of `{}` is a {}: {e}", self.path, input.kind.as_str())
            })?;
            out.insert(name.clone(), v);
        }
        Ok(Value::Object(out))
    }

    /// The call's outputs: `on.workflow_call.outputs.*.value` rendered with
    /// `ctx` (whose `jobs` holds the called jobs' results and outputs).
    pub fn outputs(&self, ctx: &Contexts) -> Result<Map<String, Value>, String> {
        let status = StatusFns::new(true, false, false);
        let mut out = Map::new();
        for (name, t) in &self.outputs {
            let v = t.render(ctx, status).map_err(|e| format!("output `{name}`: {e}"))?;
            out.insert(name.clone(), Value::String(v));
        }
        Ok(out)
    }
}

/// What a called file declares under `on.workflow_call`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trigger {
    pub inputs: Vec<CallInput>,
    /// Declared secrets and whether each is required.
    pub secrets: Vec<(String, bool)>,
    pub outputs: Vec<(String, Template)>,
}

/// One `with:` entry of a call.
#[derive(Debug, Clone)]
pub(crate) struct WithValue {
    pub name: String,
    pub template: Template,
    /// The YAML value, for checking literal values against the input's type.
    pub literal: Value,
    pub key_loc: Location,
    pub value_loc: Location,
}

/// A job of a file that calls a workflow of the repository.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    pub key: String,
    pub uses: String,
    /// `.github/workflows/x.yml`.
    pub path: String,
    pub uses_loc: Location,
    pub with_loc: Option<Location>,
    pub with: Vec<WithValue>,
    pub secrets: CallSecrets,
    pub secrets_loc: Option<Location>,
    /// Secrets passed under another name (or as a value that is not a
    /// secret): the call is refused with this reason.
    pub refused_secret: Option<String>,
}

/// Keys a job that calls a workflow may have (GitHub's list).
const CALLER_KEYS: &[&str] =
    &["name", "uses", "with", "secrets", "needs", "if", "permissions", "strategy", "concurrency"];

/// Keys of a job that runs steps, which a calling job cannot have.
const JOB_ONLY_KEYS: &[&str] = &[
    "runs-on",
    "env",
    "defaults",
    "timeout-minutes",
    "continue-on-error",
    "outputs",
    "steps",
    "kiln",
    "environment",
    "container",
    "services",
];

const INPUT_KEYS: &[&str] = &["description", "required", "type", "default"];

/// Diagnostics of one file are collected by the parser's own context.
pub(crate) use crate::parse::Cx as Errs;

fn get<'n>(pairs: &'n [(Node, Node)], key: &str) -> Option<&'n (Node, Node)> {
    pairs.iter().find(|(k, _)| k.as_scalar() == Some(key))
}

/// The repository path of a local `uses:` (`./.github/workflows/x.yml` ->
/// `.github/workflows/x.yml`), or why it is not one GitHub accepts.
fn workflow_path(uses: &str) -> Result<String, String> {
    let bad = || {
        format!("`uses: {uses}`: a workflow of this repository is called as `./.github/workflows/<file>.yml`")
    };
    if uses.contains('@') {
        return Err(format!("`uses: {uses}`: a workflow of this repository is called without `@ref`"));
    }
    let path = uses.strip_prefix("./").ok_or_else(bad)?;
    let file = path.strip_prefix(".github/workflows/").ok_or_else(bad)?;
    let ok_name = !file.is_empty()
        && !file.contains(['/', '\\', '\0'])
        && file != ".."
        && (file.ends_with(".yml") || file.ends_with(".yaml"));
    if !ok_name {
        return Err(bad());
    }
    Ok(path.to_string())
}

/// The jobs of `root` that call a workflow of the repository (`uses: ./…`).
pub(crate) fn sites(errs: &mut Errs<'_>, root: &Node) -> Vec<Site> {
    let mut out = Vec::new();
    let NodeKind::Map(top) = &root.kind else { return out };
    let Some((_, jobs)) = get(top, "jobs") else { return out };
    let NodeKind::Map(jobs) = &jobs.kind else { return out };
    for (jk, jv) in jobs {
        let (Some(key), NodeKind::Map(pairs)) = (jk.as_scalar(), &jv.kind) else { continue };
        let Some((_, uses_node)) = get(pairs, "uses") else { continue };
        let Some(uses) = uses_node.as_scalar() else { continue };
        if !uses.starts_with("./") {
            continue;
        }
        let path = match workflow_path(uses) {
            Ok(p) => p,
            Err(e) => {
                errs.err(uses_node.loc, e);
                continue;
            }
        };
        let mut site = Site {
            key: key.to_string(),
            uses: uses.to_string(),
            path,
            uses_loc: uses_node.loc,
            with_loc: None,
            with: Vec::new(),
            secrets: CallSecrets::None,
            secrets_loc: None,
            refused_secret: None,
        };
        for (k, v) in pairs {
            let Some(name) = k.as_scalar() else { continue };
            match name {
                "with" => {
                    site.with_loc = Some(k.loc);
                    with_values(errs, key, v, &mut site.with);
                }
                "secrets" => {
                    site.secrets_loc = Some(k.loc);
                    call_secrets(errs, key, v, &mut site);
                }
                // Unknown keys are reported by the job parser.
                _ if !JOB_ONLY_KEYS.contains(&name) => {}
                _ => errs.err(
                    k.loc,
                    format!(
                        "job `{key}` calls a workflow (`uses`), so it cannot have `{name}`: that goes in the called workflow's jobs (a calling job takes {})",
                        CALLER_KEYS.join(", ")
                    ),
                ),
            }
        }
        out.push(site);
    }
    out
}

fn with_values(errs: &mut Errs<'_>, job: &str, node: &Node, out: &mut Vec<WithValue>) {
    let Some(pairs) = errs.map(node, &format!("`with` of job `{job}`")) else { return };
    for (k, v) in pairs {
        let Some(name) = errs.text(k, "an input name") else { continue };
        if matches!(v.kind, NodeKind::Map(_) | NodeKind::Seq(_)) {
            errs.err(v.loc, format!("`with.{name}` of job `{job}` must be a string, a number or a boolean"));
            continue;
        }
        let Some(template) = errs.template(v, &format!("`with.{name}`")) else { continue };
        if !template.secret_refs().is_empty() {
            errs.err(
                v.loc,
                format!("`with.{name}` of job `{job}` uses a secret: pass secrets to a called workflow with `secrets:`"),
            );
            continue;
        }
        if out.iter().any(|w| w.name == name) {
            errs.err(k.loc, format!("duplicate input `{name}` in the `with` of job `{job}`"));
            continue;
        }
        out.push(WithValue { name, template, literal: v.to_json(), key_loc: k.loc, value_loc: v.loc });
    }
}

fn call_secrets(errs: &mut Errs<'_>, job: &str, node: &Node, site: &mut Site) {
    if let Some(s) = node.as_scalar() {
        if s == "inherit" {
            site.secrets = CallSecrets::Inherit;
        } else if !node.is_null() {
            errs.err(node.loc, format!("`secrets` of job `{job}` must be `inherit` or a mapping of secrets"));
        }
        return;
    }
    let Some(pairs) = errs.map(node, &format!("`secrets` of job `{job}`")) else { return };
    let mut names = Vec::new();
    for (k, v) in pairs {
        let Some(name) = errs.text(k, "a secret name") else { continue };
        if !is_env_name(&name) {
            errs.err(k.loc, format!("`{name}` is not a valid secret name"));
            continue;
        }
        let Some(t) = errs.template(v, &format!("secret `{name}`")) else { continue };
        let same = t
            .single_expr()
            .map(|e| e.source().eq_ignore_ascii_case(&format!("secrets.{name}")))
            .unwrap_or(false);
        if !same && site.refused_secret.is_none() {
            site.refused_secret = Some(format!(
                "`secrets.{name}: {}` (line {}:{}): kiln passes a secret to a called workflow only under its own name (`{name}: ${{{{ secrets.{name} }}}}`) or with `secrets: inherit`",
                t.source(),
                v.loc.line,
                v.loc.column
            ));
        }
        names.push(name);
    }
    site.secrets = CallSecrets::Named(names);
}

/// `on.workflow_call` of a file: `None` when the file cannot be called.
pub(crate) fn trigger(errs: &mut Errs<'_>, root: &Node) -> Option<Trigger> {
    let NodeKind::Map(top) = &root.kind else { return None };
    let (_, on) = get(top, "on")?;
    match &on.kind {
        NodeKind::Scalar { value, .. } => (value == "workflow_call").then(Trigger::default),
        NodeKind::Seq(items) => {
            items.iter().any(|i| i.as_scalar() == Some("workflow_call")).then(Trigger::default)
        }
        NodeKind::Map(events) => {
            let (_, v) = get(events, "workflow_call")?;
            let mut t = Trigger::default();
            let Some(pairs) = errs.map(v, "`on.workflow_call`") else { return Some(t) };
            for (k, v) in pairs {
                match k.as_scalar() {
                    Some("inputs") => t.inputs = trigger_inputs(errs, v),
                    Some("secrets") => t.secrets = trigger_secrets(errs, v),
                    Some("outputs") => t.outputs = trigger_outputs(errs, v),
                    Some(other) => {
                        errs.unknown(k.loc, other, &["inputs", "secrets", "outputs"], "in `on.workflow_call`")
                    }
                    None => errs.err(k.loc, "expected a key"),
                }
            }
            Some(t)
        }
    }
}

fn trigger_inputs(errs: &mut Errs<'_>, node: &Node) -> Vec<CallInput> {
    let mut out = Vec::new();
    let Some(pairs) = errs.map(node, "`on.workflow_call.inputs`") else { return out };
    for (k, v) in pairs {
        let Some(name) = errs.text(k, "an input name") else { continue };
        if !is_identifier(&name) {
            errs.err(k.loc, format!("invalid input name `{name}`"));
            continue;
        }
        let Some(fields) = errs.map(v, &format!("input `{name}`")) else { continue };
        let mut kind = None;
        let mut required = false;
        let mut default: Option<(Template, Value, Location)> = None;
        for (fk, fv) in fields {
            match fk.as_scalar() {
                Some("description") => {}
                Some("required") => match fv.as_bool() {
                    Some(b) => required = b,
                    None => errs.err(fv.loc, format!("`required` of input `{name}` must be true or false")),
                },
                Some("type") => match fv.as_scalar().and_then(InputType::parse) {
                    Some(t) => kind = Some(t),
                    None => errs.err(
                        fv.loc,
                        format!(
                            "input `{name}`: `type` must be string, boolean or number, not `{}`",
                            fv.as_scalar().unwrap_or("…")
                        ),
                    ),
                },
                Some("default") => {
                    if matches!(fv.kind, NodeKind::Map(_) | NodeKind::Seq(_)) {
                        errs.err(
                            fv.loc,
                            format!("the default of input `{name}` must be a string, a number or a boolean"),
                        );
                    } else if let Some(t) = errs.template(fv, &format!("the default of input `{name}`")) {
                        default = Some((t, fv.to_json(), fv.loc));
                    }
                }
                Some(other) => errs.unknown(fk.loc, other, INPUT_KEYS, &format!("in input `{name}`")),
                None => errs.err(fk.loc, "expected a key"),
            }
        }
        let Some(kind) = kind else {
            if !fields.iter().any(|(fk, _)| fk.as_scalar() == Some("type")) {
                errs.err(k.loc, format!("input `{name}` needs a `type` (string, boolean or number)"));
            }
            continue;
        };
        if let Some((t, literal, loc)) = &default {
            if t.is_literal() {
                if let Err(e) = kind.convert(literal.clone()) {
                    errs.err(*loc, format!("the default of input `{name}` ({}): {e}", kind.as_str()));
                }
            }
        }
        out.push(CallInput { name, kind, required, default: default.map(|(t, _, _)| t) });
    }
    out
}

fn trigger_secrets(errs: &mut Errs<'_>, node: &Node) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let Some(pairs) = errs.map(node, "`on.workflow_call.secrets`") else { return out };
    for (k, v) in pairs {
        let Some(name) = errs.text(k, "a secret name") else { continue };
        let mut required = false;
        if let Some(fields) = errs.map(v, &format!("secret `{name}`")) {
            for (fk, fv) in fields {
                match fk.as_scalar() {
                    Some("description") => {}
                    Some("required") => match fv.as_bool() {
                        Some(b) => required = b,
                        None => {
                            errs.err(fv.loc, format!("`required` of secret `{name}` must be true or false"))
                        }
                    },
                    Some(other) => errs.unknown(
                        fk.loc,
                        other,
                        &["description", "required"],
                        &format!("in secret `{name}`"),
                    ),
                    None => errs.err(fk.loc, "expected a key"),
                }
            }
        }
        out.push((name, required));
    }
    out
}

fn trigger_outputs(errs: &mut Errs<'_>, node: &Node) -> Vec<(String, Template)> {
    let mut out = Vec::new();
    let Some(pairs) = errs.map(node, "`on.workflow_call.outputs`") else { return out };
    for (k, v) in pairs {
        let Some(name) = errs.text(k, "an output name") else { continue };
        if !is_identifier(&name) {
            errs.err(k.loc, format!("invalid output name `{name}`"));
            continue;
        }
        let Some(fields) = errs.map(v, &format!("output `{name}`")) else { continue };
        let mut value = None;
        for (fk, fv) in fields {
            match fk.as_scalar() {
                Some("description") => {}
                Some("value") => value = errs.template(fv, &format!("output `{name}`")),
                Some(other) => {
                    errs.unknown(fk.loc, other, &["description", "value"], &format!("in output `{name}`"))
                }
                None => errs.err(fk.loc, "expected a key"),
            }
        }
        match value {
            Some(t) if !t.secret_refs().is_empty() => errs.err(
                v.loc,
                format!("output `{name}` uses a secret: secrets may only be used in a step's `env:` values"),
            ),
            Some(t) => out.push((name, t)),
            None if fields.iter().any(|(fk, _)| fk.as_scalar() == Some("value")) => {}
            None => errs.err(k.loc, format!("output `{name}` needs a `value`")),
        }
    }
    out
}

/// The checks of a call against what the called file declares: unknown and
/// missing inputs, literal values of the wrong type, secrets. Errors are the
/// calling file's.
pub(crate) fn check_call(errs: &mut Errs<'_>, site: &Site, trigger: &Trigger) {
    let declared: Vec<&str> = trigger.inputs.iter().map(|i| i.name.as_str()).collect();
    for w in &site.with {
        let Some(input) = trigger.inputs.iter().find(|i| i.name == w.name) else {
            let mut msg = format!("job `{}`: input `{}` is not defined in `{}`", site.key, w.name, site.path);
            match did_you_mean(&w.name, declared.iter().copied()) {
                Some(s) => msg.push_str(&format!("; did you mean `{s}`?")),
                None if declared.is_empty() => msg.push_str(" (it declares no inputs)"),
                None => msg.push_str(&format!(" (inputs: {})", declared.join(", "))),
            }
            errs.err(w.key_loc, msg);
            continue;
        };
        if w.template.is_literal() {
            if let Err(e) = input.kind.convert(w.literal.clone()) {
                errs.err(
                    w.value_loc,
                    format!("job `{}`: input `{}` is a {}: {e}", site.key, w.name, input.kind.as_str()),
                );
            }
        }
    }
    for input in &trigger.inputs {
        if input.required && input.default.is_none() && !site.with.iter().any(|w| w.name == input.name) {
            errs.err(
                site.with_loc.unwrap_or(site.uses_loc),
                format!(
                    "job `{}`: input `{}` is required by `{}` and `with:` does not give it",
                    site.key, input.name, site.path
                ),
            );
        }
    }
    let loc = site.secrets_loc.unwrap_or(site.uses_loc);
    match &site.secrets {
        CallSecrets::Inherit => {}
        CallSecrets::None | CallSecrets::Named(_) => {
            let passed: &[String] = match &site.secrets {
                CallSecrets::Named(n) => n,
                _ => &[],
            };
            for (name, required) in &trigger.secrets {
                if *required && !passed.contains(name) {
                    errs.err(
                        loc,
                        format!(
                            "job `{}`: secret `{name}` is required by `{}`: pass it with `secrets:` (or `secrets: inherit`)",
                            site.key, site.path
                        ),
                    );
                }
            }
            for name in passed {
                if !trigger.secrets.iter().any(|(n, _)| n == name) {
                    errs.err(
                        loc,
                        format!("job `{}`: secret `{name}` is not defined in `{}`", site.key, site.path),
                    );
                }
            }
        }
    }
}

/// The bindings a call passes: all of the caller's (`inherit`), those
/// named, or none.
pub(crate) fn passed_bindings(secrets: &CallSecrets, caller: &[SecretBinding]) -> Vec<SecretBinding> {
    match secrets {
        CallSecrets::None => Vec::new(),
        CallSecrets::Inherit => caller.to_vec(),
        CallSecrets::Named(names) => caller.iter().filter(|b| names.contains(&b.name)).cloned().collect(),
    }
}

/// Where a called file binds secrets itself: a called workflow sees only
/// the secrets its caller passes, bound by the caller's bindings.
pub(crate) fn own_bindings(errs: &mut Errs<'_>, wf: &Workflow) {
    let mut found: Vec<&SecretBinding> = wf.kiln.secrets.iter().collect();
    for job in &wf.jobs {
        found.extend(&job.kiln.secrets);
        for step in &job.steps {
            found.extend(&step.kiln.secrets);
        }
    }
    for b in found {
        errs.err(
            b.location,
            format!(
                "a called workflow cannot bind secret `{}` itself: its caller passes secrets (`secrets: inherit`) and binds them in its top-level `kiln.secrets`",
                b.name
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_follow_the_input_type() {
        use serde_json::json;
        assert_eq!(InputType::Boolean.convert(json!("true")), Ok(json!(true)));
        assert_eq!(InputType::Boolean.convert(json!(false)), Ok(json!(false)));
        assert!(InputType::Boolean.convert(json!("yes")).is_err());
        assert_eq!(InputType::Number.convert(json!("3")), Ok(json!(3)));
        assert_eq!(InputType::Number.convert(json!(2.5)), Ok(json!(2.5)));
        assert!(InputType::Number.convert(json!("x")).is_err());
        assert_eq!(InputType::String.convert(json!(3)), Ok(json!("3")));
        assert_eq!(InputType::String.convert(json!(true)), Ok(json!("true")));
    }

    #[test]
    fn only_workflow_files_of_the_repository_are_called() {
        assert_eq!(workflow_path("./.github/workflows/b.yml").as_deref(), Ok(".github/workflows/b.yml"));
        assert!(workflow_path("./.github/workflows/b.yml@main").is_err());
        assert!(workflow_path("./ci/b.yml").is_err());
        assert!(workflow_path("./.github/workflows/../x.yml").is_err());
        assert!(workflow_path("./.github/workflows/sub/b.yml").is_err());
        assert!(workflow_path("./.github/workflows/b.json").is_err());
    }
}
