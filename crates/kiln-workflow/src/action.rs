//! Composite actions of the repository (`uses: ./path/to/action`): their
//! `action.yml`, parsed with the same step rules as a workflow's steps.

use std::collections::HashSet;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::expr::Template;
use crate::model::{StepAction, StepSpec};
use crate::parse::Cx;
use crate::yaml::{Node, NodeKind};

/// One input of a composite action.
#[derive(Debug, Clone)]
pub struct ActionInput {
    pub name: String,
    pub required: bool,
    /// May be an expression (`${{ github.token }}`), evaluated with the
    /// caller's contexts.
    pub default: Option<Template>,
}

/// A composite action: inputs, outputs and the steps it runs.
#[derive(Debug, Clone)]
pub struct CompositeAction {
    pub name: Option<String>,
    pub inputs: Vec<ActionInput>,
    /// Output name -> `value:` template over the action's own steps.
    pub outputs: Vec<(String, Template)>,
    pub steps: Vec<StepSpec>,
}

const ACTION_KEYS: &[&str] = &["name", "author", "description", "inputs", "outputs", "runs", "branding"];

/// Parses `action.yml`. JavaScript and Docker actions are refused with what
/// they are: kiln runs composite actions only.
pub fn parse_action(file: &str, source: &str) -> Result<CompositeAction, Diagnostics> {
    let root = crate::yaml::parse(file, source).map_err(Diagnostics)?;
    let mut cx = Cx::new(file);
    let mut action =
        CompositeAction { name: None, inputs: Vec::new(), outputs: Vec::new(), steps: Vec::new() };
    let Some(pairs) = cx.map(&root, "an action file") else {
        return Err(Diagnostics(cx.errors));
    };
    let mut runs = None;
    for (k, v) in pairs {
        let Some(key) = cx.text(k, "a key") else { continue };
        match key.as_str() {
            "name" => action.name = cx.text(v, "`name`"),
            "author" | "description" | "branding" => {}
            "inputs" => action.inputs = inputs(&mut cx, v),
            "outputs" => {
                let Some(outs) = cx.map(v, "`outputs`") else { continue };
                for (ok, ov) in outs {
                    let Some(name) = cx.text(ok, "an output name") else { continue };
                    let value = match &ov.kind {
                        NodeKind::Map(p) => {
                            p.iter().find(|(k, _)| k.as_scalar() == Some("value")).map(|(_, v)| v)
                        }
                        _ => None,
                    };
                    match value {
                        Some(v) => {
                            if let Some(t) = cx.template(v, &format!("output `{name}`")) {
                                action.outputs.push((name, t));
                            }
                        }
                        None => {
                            cx.err(ov.loc, format!("output `{name}` of a composite action needs `value`"))
                        }
                    }
                }
            }
            "runs" => runs = Some(v),
            _ => cx.unknown_key(k.loc, &key, ACTION_KEYS.iter().copied(), "in an action file"),
        }
    }
    match runs {
        None => cx.err(root.loc, "the action has no `runs`"),
        Some(v) => runs_block(&mut cx, v, &mut action),
    }
    if cx.errors.is_empty() {
        Ok(action)
    } else {
        cx.errors.sort_by_key(|d: &Diagnostic| (d.location.line, d.location.column));
        Err(Diagnostics(cx.errors))
    }
}

fn inputs(cx: &mut Cx<'_>, v: &Node) -> Vec<ActionInput> {
    let mut out = Vec::new();
    let Some(pairs) = cx.map(v, "`inputs`") else { return out };
    for (k, v) in pairs {
        let Some(name) = cx.text(k, "an input name") else { continue };
        let mut input = ActionInput { name, required: false, default: None };
        if let NodeKind::Map(fields) = &v.kind {
            for (fk, fv) in fields {
                match fk.as_scalar() {
                    Some("required") => input.required = fv.as_bool().unwrap_or(false),
                    Some("default") => input.default = cx.template(fv, "`default`"),
                    _ => {}
                }
            }
        }
        out.push(input);
    }
    out
}

fn runs_block(cx: &mut Cx<'_>, v: &Node, action: &mut CompositeAction) {
    let Some(pairs) = cx.map(v, "`runs`") else { return };
    let using = pairs.iter().find(|(k, _)| k.as_scalar() == Some("using")).map(|(_, v)| v);
    let using_text = using.and_then(|u| u.as_scalar()).unwrap_or("").to_string();
    if using_text != "composite" {
        let what = match using_text.as_str() {
            u if u.starts_with("node") => format!("a JavaScript action (`using: {u}`)"),
            "docker" => "a Docker action".to_string(),
            "" => "an action without `runs.using`".to_string(),
            u => format!("a `using: {u}` action"),
        };
        cx.err(using.map(|u| u.loc).unwrap_or(v.loc), format!("{what}: kiln runs composite actions only"));
        return;
    }
    let Some((_, steps)) = pairs.iter().find(|(k, _)| k.as_scalar() == Some("steps")) else {
        cx.err(v.loc, "a composite action needs `runs.steps`");
        return;
    };
    let NodeKind::Seq(items) = &steps.kind else {
        cx.err(steps.loc, "`runs.steps` must be a list of steps");
        return;
    };
    let mut ids = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(step) = crate::parse::step(cx, "(composite action)", i + 1, item, &mut ids) {
            if let StepAction::Unsupported { uses } = &step.action {
                cx.err(step.location, format!("step {}: `uses: {uses}` is not an action kiln has", i + 1));
                continue;
            }
            action.steps.push(step);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_action_with_inputs_outputs_and_steps() {
        let src = "name: greet\ninputs:\n  who:\n    required: true\n  greeting:\n    default: hello\noutputs:\n  said:\n    value: ${{ steps.say.outputs.text }}\nruns:\n  using: composite\n  steps:\n    - id: say\n      shell: bash\n      run: echo \"text=${{ inputs.greeting }} ${{ inputs.who }}\" >> \"$GITHUB_OUTPUT\"\n    - uses: ./other\n";
        let a = parse_action("action.yml", src).unwrap();
        assert_eq!(a.inputs.len(), 2);
        assert!(a.inputs[0].required && a.inputs[1].default.as_ref().unwrap().source() == "hello");
        assert_eq!(a.outputs[0].0, "said");
        assert_eq!(a.steps.len(), 2);
        assert!(matches!(&a.steps[1].action, StepAction::LocalAction { path, .. } if path == "other"));
    }

    #[test]
    fn javascript_and_docker_actions_are_named() {
        let e = parse_action("a.yml", "runs:\n  using: node20\n  main: index.js\n").unwrap_err();
        assert_eq!(
            e.0[0].to_string(),
            "a.yml:2:10: a JavaScript action (`using: node20`): kiln runs composite actions only"
        );
        let e = parse_action("a.yml", "runs:\n  using: docker\n  image: Dockerfile\n").unwrap_err();
        assert!(e.0[0].message.contains("a Docker action"));
        let e =
            parse_action("a.yml", "runs:\n  using: composite\n  steps:\n    - uses: actions/setup-go@v5\n")
                .unwrap_err();
        assert!(e.0[0].message.contains("`uses: actions/setup-go@v5` is not an action kiln has"), "{e}");
    }
}
