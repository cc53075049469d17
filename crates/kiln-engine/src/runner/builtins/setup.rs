//! The setup actions, built in: `actions/setup-node`, `actions/setup-python`,
//! `dtolnay/rust-toolchain` / `actions-rs/toolchain` and
//! `Swatinem/rust-cache`.
//!
//! Each reads the real action's inputs. The tool comes from the job's
//! machine (its image): a script run in the job's phase sandbox checks that
//! what is there is exactly what was asked for (or fails the step saying
//! what there is), then puts it on `PATH` through `$GITHUB_PATH` like any
//! step would; the machine persists, so later steps have it. A `cache:`
//! input (and `rust-cache`) goes through the dependency cache like
//! `actions/cache` does, with the key the real action would compute.

use kiln_workflow::{SetupTool, ShellSpec, StepAction, StepSpec, Template};
use serde_json::Value;

use crate::runner::job::{JobRun, StepError, StepResult};
use crate::runner::StepStatus;
use kiln_workflow::PlannedJob;

const LIB: &str = include_str!("setup/lib.sh");
const PYTHON: &str = include_str!("setup/python.sh");
const NODE: &str = include_str!("setup/node.sh");
const RUST: &str = include_str!("setup/rust.sh");
const UV: &str = include_str!("setup/uv.sh");

/// `rustup` over the image's toolchain, on every job's `PATH` (after the
/// user's own directories, so a real rustup a step installs wins).
pub(crate) const RUSTUP_SHIM: &str = include_str!("setup/rustup.sh");

/// The output a failing setup script leaves its one-line reason in.
const REASON_OUTPUT: &str = "kiln-reason";

/// `INPUT_NODE_VERSION` for `node-version`, as the runner names inputs.
fn input_env(name: &str) -> String {
    format!("INPUT_{}", name.to_ascii_uppercase().replace([' ', '-'], "_"))
}

/// What `cache:` (or rust-cache) stores: key, restore-key prefix, paths.
struct CachePlan {
    key: String,
    restore: Option<String>,
    paths: Vec<String>,
}

fn lines(v: Option<&String>, default: &str) -> Vec<String> {
    let text = v.map(String::as_str).filter(|s| !s.trim().is_empty()).unwrap_or(default);
    text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

/// `hashFiles('a', 'b')` over the given patterns.
fn hash_files(patterns: &[String]) -> String {
    let quoted: Vec<String> = patterns.iter().map(|p| format!("'{}'", p.replace('\'', "''"))).collect();
    format!("${{{{ hashFiles({}) }}}}", quoted.join(", "))
}

/// The dependency cache a setup step's inputs ask for, as the real action
/// lays it out.
fn cache_plan(
    tool: SetupTool,
    inputs: &std::collections::BTreeMap<String, String>,
) -> Result<Option<CachePlan>, String> {
    let get = |k: &str| inputs.get(k).filter(|v| !v.trim().is_empty());
    match tool {
        SetupTool::Node | SetupTool::Python => {
            let Some(manager) = get("cache").map(|s| s.trim().to_ascii_lowercase()) else { return Ok(None) };
            let (paths, lock): (&[&str], &str) = match (tool, manager.as_str()) {
                (SetupTool::Node, "npm") => (&["~/.npm"], "**/package-lock.json\n**/npm-shrinkwrap.json"),
                (SetupTool::Node, "yarn") => (&["~/.cache/yarn", "~/.yarn/berry/cache"], "**/yarn.lock"),
                (SetupTool::Node, "pnpm") => {
                    (&["~/.local/share/pnpm/store", "~/.pnpm-store"], "**/pnpm-lock.yaml")
                }
                (SetupTool::Python, "pip") => (&["~/.cache/pip"], "**/requirements*.txt\n**/pyproject.toml"),
                (SetupTool::Python, "pipenv") => {
                    (&["~/.cache/pipenv", "~/.local/share/virtualenvs"], "**/Pipfile.lock")
                }
                (SetupTool::Python, "poetry") => (&["~/.cache/pypoetry"], "**/poetry.lock"),
                (_, other) => {
                    return Err(format!("cache `{other}` is not a package manager this action caches"))
                }
            };
            let deps = lines(get("cache-dependency-path"), lock);
            let tool_name = if tool == SetupTool::Node { "node" } else { "python" };
            let prefix = format!("setup-{tool_name}-${{{{ runner.os }}}}-{manager}-");
            Ok(Some(CachePlan {
                key: format!("{prefix}{}", hash_files(&deps)),
                restore: None,
                paths: paths.iter().map(|s| s.to_string()).collect(),
            }))
        }
        SetupTool::RustCache => {
            let prefix = get("prefix-key").cloned().unwrap_or_else(|| "v0-rust".into());
            let shared = get("shared-key").cloned().unwrap_or_default();
            let extra = get("key").cloned().unwrap_or_default();
            let base = format!("{prefix}-{shared}-{extra}-${{{{ runner.os }}}}-");
            let mut paths: Vec<String> =
                ["~/.cargo/registry/index", "~/.cargo/registry/cache", "~/.cargo/git/db"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            let mut manifests = Vec::new();
            // `workspaces`: `dir -> target` per line (default `. -> target`).
            for w in lines(get("workspaces"), ". -> target") {
                let (dir, target) = match w.split_once("->") {
                    Some((d, t)) => (d.trim().to_string(), t.trim().to_string()),
                    None => (w.clone(), "target".to_string()),
                };
                let dir = dir.trim_end_matches('/');
                let prefix = if dir.is_empty() || dir == "." { String::new() } else { format!("{dir}/") };
                if get("cache-targets").map(|v| v.trim()) != Some("false") {
                    paths.push(format!("{prefix}{target}"));
                }
                manifests.push(format!("{prefix}**/Cargo.lock"));
                manifests.push(format!("{prefix}**/Cargo.toml"));
            }
            paths.extend(lines(get("cache-directories"), ""));
            Ok(Some(CachePlan {
                key: format!("{base}{}", hash_files(&manifests)),
                restore: Some(base),
                paths,
            }))
        }
        SetupTool::Uv => {
            if get("enable-cache").map(|v| v.trim()) != Some("true") {
                return Ok(None);
            }
            let deps = lines(get("cache-dependency-glob"), "**/uv.lock\n**/requirements*.txt");
            let suffix = get("cache-suffix").map(|s| format!("-{}", s.trim())).unwrap_or_default();
            let path = get("cache-local-path").cloned().unwrap_or_else(|| "~/.cache/uv".into());
            Ok(Some(CachePlan {
                key: format!("setup-uv-1-${{{{ runner.os }}}}-{}{suffix}", hash_files(&deps)),
                restore: None,
                paths: vec![path],
            }))
        }
        SetupTool::Rust => Ok(None),
    }
}

impl JobRun<'_> {
    /// A toolchain a setup action found in the job's image (`rustc@1.85.1`)
    /// goes into the provenance of the job's artifacts, named by the image
    /// it came from; on the host's `/usr` there is no digest to name.
    fn record_image_tool(&mut self, tool: &str) {
        let Some(image) = self.image.clone() else { return };
        let Some(digest) = image.rsplit_once('@').and_then(|(_, d)| d.parse::<kiln_store::Digest>().ok())
        else {
            return;
        };
        if tool.is_empty() || tool.len() > 100 || !tool.chars().all(|c| c.is_ascii_graphic()) {
            return;
        }
        if self.tools.iter().any(|t| t.name == tool) {
            return;
        }
        self.tools.push(kiln_store::ToolInfo {
            name: tool.to_string(),
            uri: format!("kiln-image:{image}#{tool}"),
            digest,
        });
    }

    /// Runs a setup action's checks in the job's sandbox, on its image.
    /// Inputs reach the script as the runner passes them (`INPUT_*`), never
    /// spliced into its text. Returns the result (with the script's
    /// one-line reason when it failed) and the outputs it set.
    #[allow(clippy::too_many_arguments)]
    async fn setup_script(
        &mut self,
        job: &PlannedJob,
        k: usize,
        step: &StepSpec,
        name: &str,
        uses: &str,
        inputs: &std::collections::BTreeMap<String, String>,
        script: &str,
        extra: &[(String, String)],
    ) -> Result<(StepResult, serde_json::Map<String, Value>), StepError> {
        let mut spec = step.clone();
        let id = step.id.clone().unwrap_or_else(|| format!("__kiln_setup_{k}"));
        spec.id = Some(id.clone());
        for (k, v) in inputs {
            spec.env.push((input_env(k), Template::literal(v)));
        }
        let git_ref = uses.rsplit_once('@').map(|(_, r)| r).unwrap_or("");
        spec.env.push(("KILN_ACTION_REF".into(), Template::literal(git_ref)));
        for (k, v) in extra {
            spec.env.push((k.clone(), Template::literal(v)));
        }
        let text = format!("{LIB}\n{script}");
        let shell = ShellSpec::Fixed(kiln_workflow::Shell::Bash);
        spec.action = StepAction::Run { script: Template::literal(&text), shell: Some(shell.clone()) };
        let mut result =
            self.run_script(job, k, &spec, name, &Template::literal(&text), Some(&shell)).await?;
        // kiln's own outputs (the reason, a download request) are not the
        // user's.
        let mut mine = serde_json::Map::new();
        if let Some(o) =
            self.steps_ctx.get_mut(&id).and_then(|s| s.get_mut("outputs")).and_then(Value::as_object_mut)
        {
            for key in [REASON_OUTPUT, "kiln-download", "kiln-tool"] {
                if let Some(v) = o.remove(key) {
                    mine.insert(key.to_string(), v);
                }
            }
        }
        if step.id.is_none() {
            self.steps_ctx.remove(&id);
        }
        if result.0 != StepStatus::Success {
            if let Some(r) = mine.get(REASON_OUTPUT).and_then(Value::as_str) {
                result.2 = Some(r.to_string());
            }
        }
        let outputs =
            mine.into_iter().filter_map(|(k, v)| v.as_str().map(|s| (k, Value::String(s.into())))).collect();
        Ok((result, outputs))
    }

    /// uv `want` from PyPI: its host directory and where the job's
    /// sandboxes see it.
    async fn fetch_uv(
        &mut self,
        job: &PlannedJob,
        name: &str,
        want: &str,
    ) -> Result<(std::path::PathBuf, String), StepError> {
        use super::uv_dist;
        let shown = if want.trim().is_empty() { "latest" } else { want.trim() };
        let (store, dir) = self.runner.cfg.tools.clone().ok_or("this build keeps no tools")?;
        let scratch = self.dir.join("uv-fetch");
        std::fs::create_dir_all(&scratch).map_err(|e| StepError::Infrastructure(e.to_string()))?;
        let wheels = uv_dist::list(&scratch).await.map_err(|e| format!("uv {shown}: {e}"))?;
        let wheel = uv_dist::choose(&wheels, want)
            .map_err(|e| format!("uv version {e}"))?
            .cloned()
            .ok_or_else(|| format!("uv version {shown}: no release on PyPI matches"))?;
        let (path, downloaded, digest) =
            uv_dist::provide(&store, &wheel, &dir, &scratch).await.map_err(StepError::User)?;
        self.tools.push(kiln_store::ToolInfo {
            name: format!("uv@{}", wheel.version),
            uri: format!("pkg:pypi/uv@{}", wheel.version),
            digest,
        });
        let _ = std::fs::remove_dir_all(&scratch);
        let how = if downloaded { "downloaded from PyPI, SHA-256 checked" } else { "from the tool cache" };
        self.req.emitter.log(
            &job.id,
            name,
            "build",
            crate::log::Stream::System,
            format!("uv {shown}: {} ({how})", wheel.filename),
        );
        Ok((path, format!("/kiln/tools/uv-{}", wheel.version)))
    }

    /// The registry's Node.js build for `want`: its host directory and
    /// where the job's sandboxes see it.
    async fn fetch_node(
        &mut self,
        job: &PlannedJob,
        name: &str,
        want: &Value,
    ) -> Result<(std::path::PathBuf, String), StepError> {
        use super::node_dist;
        let want = want.as_str().unwrap_or("*").to_string();
        let (store, dir) = self.runner.cfg.tools.clone().ok_or("this build keeps no tools")?;
        let scratch = self.dir.join("node-fetch");
        std::fs::create_dir_all(&scratch).map_err(|e| StepError::Infrastructure(e.to_string()))?;
        let doc = node_dist::packument(&scratch).await.map_err(|e| format!("node-version {want}: {e}"))?;
        let release = doc
            .choose(&want, time::OffsetDateTime::now_utc())
            .map_err(|e| format!("node-version {e}"))?
            .cloned()
            .ok_or_else(|| format!("node-version {want}: no Node.js release on the npm registry matches"))?;
        let version = release.version.to_string();
        let (path, downloaded, digest) =
            node_dist::provide(&store, &release, &dir, &scratch).await.map_err(StepError::User)?;
        self.tools.push(kiln_store::ToolInfo {
            name: format!("{}@{version}", node_dist::PACKAGE),
            uri: format!("pkg:npm/{}@{version}", node_dist::PACKAGE),
            digest,
        });
        let _ = std::fs::remove_dir_all(&scratch);
        let how = if downloaded {
            "downloaded from the npm registry, integrity checked"
        } else {
            "from the tool cache"
        };
        self.req.emitter.log(
            &job.id,
            name,
            "build",
            crate::log::Stream::System,
            format!("node-version {want}: {}@{version} ({how})", node_dist::PACKAGE),
        );
        Ok((path, format!("/kiln/tools/{}-{version}", node_dist::PACKAGE)))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn setup_step(
        &mut self,
        job: &PlannedJob,
        k: usize,
        step: &StepSpec,
        name: &str,
        tool: SetupTool,
        uses: &str,
        with: &[(String, Template)],
    ) -> Result<StepResult, StepError> {
        let status = self.status_fns();
        let ctx = self.contexts();
        let mut inputs = std::collections::BTreeMap::new();
        for (k, t) in with {
            if k == "token" {
                continue; // never rendered: nothing here downloads with it
            }
            let v = t.render(&ctx, status).map_err(|e| format!("`with.{k}`: {e}"))?;
            inputs.insert(k.clone(), v);
        }
        drop(ctx);
        let cache = cache_plan(tool, &inputs).map_err(|e| format!("{uses}: {e}"))?;
        let mut result: StepResult = (StepStatus::Success, Some(0), None, 0.0, 0, None);
        let script = match tool {
            SetupTool::Node => Some(NODE),
            SetupTool::Python => Some(PYTHON),
            SetupTool::Rust => Some(RUST),
            SetupTool::Uv => Some(UV),
            SetupTool::RustCache => None,
        };
        if let Some(script) = script {
            let mut extra: Vec<(String, String)> = Vec::new();
            if tool == SetupTool::Node && self.runner.cfg.tools.is_some() {
                extra.push(("KILN_NODE_DOWNLOAD".into(), "1".into()));
            }
            if tool == SetupTool::Uv {
                // uv is never in an image: PyPI's wheel, first.
                let want = inputs.get("version").cloned().unwrap_or_default();
                let (dir, dest) = self.fetch_uv(job, name, &want).await?;
                self.tool_binds.push(kiln_sandbox::Bind {
                    source: dir,
                    destination: dest.clone(),
                    writable: false,
                });
                self.close_phase(job, name, "a fetched tool is mounted in the next sandbox").await;
                extra.push(("KILN_UV_DIR".into(), dest));
            }
            let (r, outputs) = self.setup_script(job, k, step, name, uses, &inputs, script, &extra).await?;
            result = r;
            if result.0 != StepStatus::Success {
                return Ok(result);
            }
            if let Some(tool) = outputs.get("kiln-tool").and_then(Value::as_str) {
                self.record_image_tool(tool);
            }
            if let Some(want) = outputs.get("kiln-download") {
                // The image does not have it: the registry's build, then
                // the same checks again against it.
                let (dir, dest) = self.fetch_node(job, name, want).await?;
                self.tool_binds.push(kiln_sandbox::Bind {
                    source: dir,
                    destination: dest.clone(),
                    writable: false,
                });
                self.close_phase(job, name, "a fetched tool is mounted in the next sandbox").await;
                extra = vec![
                    ("KILN_NODE_DIR".into(), dest),
                    ("KILN_NODE_PACKAGE".into(), super::node_dist::PACKAGE.into()),
                ];
                let (r, _) = self.setup_script(job, k, step, name, uses, &inputs, script, &extra).await?;
                result = r;
                if result.0 != StepStatus::Success {
                    return Ok(result);
                }
            }
        }
        if let Some(plan) = cache {
            // The cache works on the job's files from the host: the
            // phase's processes end first.
            self.close_phase(job, name, "a dependency cache is restored from the host").await;
            let loc = step.location;
            let tpl = |s: &str| {
                Template::parse(s, loc, "(built-in setup action)")
                    .map_err(|d| StepError::Infrastructure(d.to_string()))
            };
            let key = tpl(&plan.key)?;
            let path = Template::literal(&plan.paths.join("\n"));
            let restore = plan.restore.as_deref().map(tpl).transpose()?;
            // The cache adds `cache-hit` to the setup's outputs, as the real
            // actions do.
            let cached =
                self.cache_step(job, k, step, name, &key, &path, restore.as_ref(), false, false).await?;
            if cached.0 != StepStatus::Success {
                return Ok(cached);
            }
            result.3 += cached.3;
        }
        Ok(result)
    }
}

/// A setup action (`actions/setup-node`, `dtolnay/rust-toolchain`, ...).
pub(super) struct Setup<'a> {
    pub(super) tool: SetupTool,
    pub(super) uses: &'a str,
    pub(super) with: &'a [(String, Template)],
}

impl super::Builtin for Setup<'_> {
    fn title(&self) -> String {
        self.tool.title().to_string()
    }

    /// A dependency cache is restored to the job's disk from the host.
    fn on_host(&self) -> bool {
        self.tool == SetupTool::RustCache
    }

    fn run<'s>(&'s self, run: &'s mut JobRun<'_>, at: super::StepAt<'s>) -> super::StepFut<'s> {
        Box::pin(run.setup_step(at.job, at.k, at.step, at.name, self.tool, self.uses, self.with))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn cache_keys_follow_the_real_actions() {
        let p = cache_plan(SetupTool::Python, &inputs(&[("cache", "pip")])).unwrap().unwrap();
        assert_eq!(p.paths, ["~/.cache/pip"]);
        assert!(
            p.key.starts_with("setup-python-${{ runner.os }}-pip-${{ hashFiles('**/requirements*.txt'"),
            "{}",
            p.key
        );
        let p = cache_plan(
            SetupTool::Node,
            &inputs(&[("cache", "npm"), ("cache-dependency-path", "web/package-lock.json")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.paths, ["~/.npm"]);
        assert!(p.key.ends_with("hashFiles('web/package-lock.json') }}"), "{}", p.key);
        assert!(cache_plan(SetupTool::Node, &inputs(&[("cache", "bun")])).is_err());
        assert!(cache_plan(SetupTool::Node, &inputs(&[])).unwrap().is_none());
        let p = cache_plan(SetupTool::RustCache, &inputs(&[("workspaces", "crates/a -> target\n.")]))
            .unwrap()
            .unwrap();
        assert!(p.paths.contains(&"crates/a/target".to_string()) && p.paths.contains(&"target".to_string()));
        assert!(p.paths.contains(&"~/.cargo/registry/cache".to_string()));
        assert!(p.restore.as_deref().is_some_and(|r| p.key.starts_with(r)));
        let p = cache_plan(SetupTool::RustCache, &inputs(&[("cache-targets", "false")])).unwrap().unwrap();
        assert!(!p.paths.iter().any(|x| x.ends_with("target")));
        // Quotes in a path cannot break out of the expression.
        let p = cache_plan(SetupTool::Python, &inputs(&[("cache", "pip"), ("cache-dependency-path", "a'b")]))
            .unwrap()
            .unwrap();
        assert!(p.key.contains("'a''b'"), "{}", p.key);
    }

    #[test]
    fn inputs_are_named_as_the_runner_names_them() {
        assert_eq!(input_env("node-version"), "INPUT_NODE_VERSION");
        assert_eq!(input_env("python-version-file"), "INPUT_PYTHON_VERSION_FILE");
    }
}
