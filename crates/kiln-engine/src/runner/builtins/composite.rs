//! `uses: ./path`: composite actions of the repository.

use crate::runner::env::*;
use crate::runner::job::*;
use crate::runner::StepStatus;
use kiln_workflow::{PlannedJob, StepSpec, Template};
use serde_json::{json, Map, Value};

impl JobRun<'_> {
    /// `uses: ./path`: a composite action of the repository. Its steps run
    /// one after another as parts of this step (their lines carry this
    /// step's name), with the action's `inputs` and a `steps` context of
    /// their own; the first failing one fails this step; the action's
    /// outputs become this step's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn composite(
        &mut self,
        job: &PlannedJob,
        k: usize,
        step: &StepSpec,
        name: &str,
        started_at: &str,
        path: &str,
        with: &[(String, Template)],
    ) -> Result<StepResult, StepError> {
        const MAX_DEPTH: usize = 9;
        const MAX_FILE: u64 = 1 << 20;
        if self.composite_depth >= MAX_DEPTH {
            return Err(format!("`./{path}`: composite actions nest deeper than {MAX_DEPTH} levels").into());
        }
        let ws = self.workspace.as_ref().ok_or("no workspace")?.path();
        let file = ["action.yml", "action.yaml"].iter().find_map(|f| {
            crate::runner::artifacts::resolve_beneath(&ws, &format!("{path}/{f}")).ok().map(|p| (f, p))
        });
        let Some((file_name, file)) = file else {
            return Err(format!(
                "`uses: ./{path}`: no action.yml or action.yaml there in the workspace (did a checkout step run first?)"
            ).into());
        };
        let meta = std::fs::symlink_metadata(&file).map_err(|e| e.to_string())?;
        if !meta.is_file() || meta.len() > MAX_FILE {
            return Err(format!("`./{path}/{file_name}` is not a regular file of at most 1 MiB").into());
        }
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("reading `./{path}/{file_name}`: {e}"))?;
        let action = kiln_workflow::parse_action(&format!("./{path}/{file_name}"), &text)
            .map_err(|d| d.to_string())?;
        // Inputs: given, else the default (both evaluated here, with the
        // caller's contexts), else empty; a required one must be given.
        let ctx = self.contexts();
        let status = self.status_fns();
        let mut inputs = Map::new();
        for input in &action.inputs {
            let given = with.iter().find(|(k, _)| k.eq_ignore_ascii_case(&input.name)).map(|(_, t)| t);
            let value = match (given, &input.default) {
                (Some(t), _) | (None, Some(t)) => {
                    t.render(&ctx, status).map_err(|e| format!("input `{}`: {e}", input.name))?
                }
                (None, None) if input.required => {
                    return Err(
                        format!("`./{path}`: input `{}` is required and was not given", input.name).into()
                    )
                }
                (None, None) => String::new(),
            };
            inputs.insert(input.name.clone(), Value::String(value));
        }
        let unexpected: Vec<&str> = with
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !action.inputs.iter().any(|i| i.name.eq_ignore_ascii_case(k)))
            .collect();
        if !unexpected.is_empty() {
            self.sys(name, format!("`./{path}` has no input(s) {}: ignored", unexpected.join(", ")));
        }
        let saved_steps = std::mem::take(&mut self.steps_ctx);
        let saved_inputs = self.inputs.replace(Value::Object(inputs));
        let saved_path = self.action_path.replace(format!("{WORKSPACE}/{path}"));
        let saved_failed = std::mem::replace(&mut self.failed, false);
        self.composite_depth += 1;
        let mut result: StepResult = (StepStatus::Success, Some(0), None, 0.0, 0, None);
        for nested in &action.steps {
            let status = self.status_fns();
            let ctx = self.contexts();
            let nested_name = format!("{name} › {}", Self::step_name(job, nested, &ctx, status));
            let run = match &nested.condition {
                None => status.success && !status.cancelled,
                Some(c) => c.eval_condition(&ctx, status).unwrap_or_else(|e| {
                    self.sys(&nested_name, format!("if: {e}"));
                    false
                }),
            };
            let outcome = if !run {
                StepStatus::Skipped
            } else {
                self.sys(name, format!("▶ {nested_name}"));
                let r = self.execute(job, k, nested, &nested_name, started_at).await;
                let (outcome, exit, reason, cpu, mem, _) =
                    r.unwrap_or_else(|e| (StepStatus::Failure, None, Some(e.to_string()), 0.0, 0, None));
                result.3 += cpu;
                result.4 = result.4.max(mem);
                if outcome == StepStatus::Failure && !self.step_continue_on_error(nested) {
                    self.failed = true;
                    if result.0 == StepStatus::Success {
                        let why = reason.clone().unwrap_or_else(|| {
                            format!("exit code {}", exit.map(|c| c.to_string()).unwrap_or_else(|| "?".into()))
                        });
                        result = (
                            StepStatus::Failure,
                            exit,
                            Some(format!("{nested_name}: {why}")),
                            result.3,
                            result.4,
                            None,
                        );
                    }
                } else if outcome == StepStatus::Cancelled {
                    result.0 = StepStatus::Cancelled;
                }
                outcome
            };
            if let Some(id) = &nested.id {
                let outputs =
                    self.steps_ctx.get(id).and_then(|s| s.get("outputs")).cloned().unwrap_or(json!({}));
                self.steps_ctx
                    .insert(id.clone(), json!({ "outputs": outputs, "outcome": outcome.as_str(), "conclusion": outcome.as_str() }));
            }
        }
        // The action's outputs, over its own steps.
        let ctx = self.contexts();
        let mut outputs = Map::new();
        for (out, t) in &action.outputs {
            match t.render(&ctx, self.status_fns()) {
                Ok(v) => {
                    outputs.insert(out.clone(), Value::String(v));
                }
                Err(e) => self.sys(name, format!("output `{out}`: {e}")),
            }
        }
        self.composite_depth -= 1;
        self.steps_ctx = saved_steps;
        self.inputs = saved_inputs;
        self.action_path = saved_path;
        self.failed = saved_failed;
        if let Some(id) = &step.id {
            self.steps_ctx.insert(id.clone(), json!({ "outputs": outputs }));
        }
        Ok(result)
    }
}

/// A composite action in the repository (`uses: ./path`).
pub(super) struct Local<'a> {
    pub(super) path: &'a str,
    pub(super) with: &'a [(String, Template)],
}

impl super::Builtin for Local<'_> {
    fn title(&self) -> String {
        format!("Run ./{}", self.path)
    }

    fn run<'s>(&'s self, run: &'s mut JobRun<'_>, at: super::StepAt<'s>) -> super::StepFut<'s> {
        Box::pin(run.composite(at.job, at.k, at.step, at.name, at.started_at, self.path, self.with))
    }
}
