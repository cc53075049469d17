//! Rules about what a tenant's build may use, checked before it runs.

use kiln_workflow::{Phase, Plan};

/// The phases in which `plan` hands secret `name` to a step that the
/// secret's allowed `phases` do not include. A secret set through the API
/// is bound to phases just like `kiln run --secret` values are bound by
/// the workflow: here both must agree, so a workflow cannot widen where a
/// tenant's secret goes.
pub fn secret_phase_violations(plan: &Plan, name: &str, phases: &[String]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    // Each job with the workflow it is in (a called workflow's bindings are
    // those its call passes); matrix legs share their spec.
    for planned in &plan.jobs {
        let (job, wf) = (&*planned.spec, &*planned.workflow);
        for step in &job.steps {
            let phase = step.phase(job);
            let bound = step.allowed_secrets(job, wf).iter().any(|b| b.name == name);
            if bound && !phases.iter().any(|p| p == phase.as_str()) && !out.contains(&phase.as_str()) {
                out.push(phase.as_str());
            }
        }
    }
    out
}

/// Checks a list of phase names.
pub fn parse_phases(phases: &[String]) -> Result<Vec<String>, String> {
    if phases.is_empty() {
        return Err("a secret needs at least one phase".into());
    }
    let mut out = Vec::new();
    for p in phases {
        if Phase::parse(p).is_none() {
            let all: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
            return Err(format!("unknown phase `{p}` (phases: {})", all.join(", ")));
        }
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_used_outside_its_phases_is_reported() {
        let wf = "kiln:\n  secrets:\n    TOKEN: { phases: [build] }\njobs:\n  b:\n    steps:\n      - run: echo hi\n        env:\n          T: ${{ secrets.TOKEN }}\n";
        let plan = kiln_workflow::load("ci.yml", wf).expect("valid");
        assert!(secret_phase_violations(&plan, "TOKEN", &["build".into()]).is_empty());
        assert_eq!(secret_phase_violations(&plan, "TOKEN", &["deploy".into()]), vec!["build"]);
        assert!(secret_phase_violations(&plan, "OTHER", &["deploy".into()]).is_empty());
        assert!(parse_phases(&["nope".into()]).is_err());
        assert!(parse_phases(&[]).is_err());
    }
}
