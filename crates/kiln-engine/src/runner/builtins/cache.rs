//! `actions/cache`: restore by key or restore-key prefix, save after a
//! successful job; paths in the workspace or the job's home.

use crate::event::Event;
use crate::log::Stream;
use crate::runner::env::*;
use crate::runner::job::*;
use crate::runner::StepStatus;
use kiln_workflow::{PlannedJob, StepSpec, Template};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// A cache path as the store keeps it: workspace-relative (`target`), or
/// `~/...` for the job's home (`~/.cache/pip`, `~/.cargo/registry`, also
/// written `$HOME/...` or `/home/runner/...`). `None` for a blank line.
pub(crate) fn cache_path_key(line: &str) -> Result<Option<String>, String> {
    let p = line.trim().trim_end_matches('/');
    if p.is_empty() {
        return Ok(None);
    }
    let home_rel = p
        .strip_prefix("~/")
        .or_else(|| p.strip_prefix("$HOME/"))
        .or_else(|| p.strip_prefix("${HOME}/"))
        .or_else(|| p.strip_prefix(HOME).and_then(|r| r.strip_prefix('/')));
    if let Some(rel) = home_rel {
        let rel = rel.trim_start_matches("./");
        kiln_workflow::check_relative_path(rel).map_err(|e| format!("`{p}`: {e}"))?;
        if rel.is_empty() {
            return Err(format!(
                "`{p}`: caching the whole home directory is not supported; name what is in it"
            ));
        }
        return Ok(Some(format!("~/{rel}")));
    }
    let rel = p.strip_prefix(WORKSPACE).map(|r| r.trim_start_matches('/')).unwrap_or(p);
    let rel = rel.trim_start_matches("./");
    kiln_workflow::check_relative_path(rel)?;
    Ok((!rel.is_empty()).then(|| rel.to_string()))
}

/// The directory a cache path key lives under and its path there.
pub(crate) fn cache_path_root<'a>(key: &'a str, ws: &'a Path, home: &'a Path) -> (&'a Path, &'a str) {
    match key.strip_prefix("~/") {
        Some(rel) => (home, rel),
        None => (ws, key),
    }
}

impl JobRun<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn cache_step(
        &mut self,
        job: &PlannedJob,
        k: usize,
        step: &StepSpec,
        step_name: &str,
        key: &Template,
        path: &Template,
        restore_keys: Option<&Template>,
        lookup_only: bool,
        fail_on_miss: bool,
    ) -> Result<StepResult, StepError> {
        use crate::runner::artifacts::CacheResult;
        let sink = self.runner.cfg.artifacts.clone().ok_or("this build has no cache store")?;
        let ctx = self.contexts();
        let status = self.status_fns();
        let key = key.render(&ctx, status).map_err(|e| e.to_string())?.trim().to_string();
        if key.is_empty() {
            return Err("actions/cache: the key is empty".into());
        }
        // The key is stored in the cache's records: never a secret's value.
        if let Some(secret) = self.runner.cfg.scrubber.contains_secret(key.as_bytes()) {
            return Err(StepError::User(format!(
                "actions/cache: the key would contain the value of secret `{secret}`; keys are stored in clear"
            )));
        }
        let mut paths: Vec<String> = Vec::new();
        for line in path.render(&ctx, status).map_err(|e| e.to_string())?.lines() {
            if let Some(p) = cache_path_key(line).map_err(|e| format!("path: {e}"))? {
                paths.push(p);
            }
        }
        let rks: Vec<String> = match restore_keys {
            Some(t) => t
                .render(&ctx, status)
                .map_err(|e| e.to_string())?
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
            None => Vec::new(),
        };
        let disk = self.workspace.as_ref().ok_or("no workspace")?;
        let (ws, home) = (disk.path(), disk.home());
        // Staged on the job's disk, out of every sandbox's reach, so what is
        // restored moves into place by a rename instead of a second copy.
        let staging = disk.scratch(&format!("cache-{k}")).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&staging);
        let t0 = Instant::now();
        let found = sink.cache_restore(&key, &rks, &staging, lookup_only).await?;
        let say = |s: &Self, m: String| s.req.emitter.log(&job.id, step_name, "build", Stream::System, m);
        let ms = t0.elapsed().as_millis();
        let mut exact = false;
        if let CacheResult::Hit { files, bytes } | CacheResult::Partial { files, bytes, .. } = &found {
            if !lookup_only {
                self.req.emitter.emit(Event::Cache {
                    job: job.id.clone(),
                    key: key.clone(),
                    write: false,
                    files: *files,
                    bytes: *bytes,
                });
            }
        }
        match &found {
            CacheResult::Hit { files, bytes } => {
                exact = true;
                say(
                    self,
                    format!(
                        "cache hit: {key} ({files} files, {}, {ms} ms)",
                        crate::limits::human_bytes(*bytes)
                    ),
                );
            }
            CacheResult::Partial { key: got, files, bytes } => say(
                self,
                format!(
                    "cache restored from restore-key: {got} ({files} files, {}, {ms} ms)",
                    crate::limits::human_bytes(*bytes)
                ),
            ),
            CacheResult::Miss => say(self, format!("cache miss: {key}")),
            CacheResult::Tampered(what) => {
                say(
                    self,
                    format!("cache miss: {key} (an entry failed verification and was not restored: {what})"),
                );
                self.req.emitter.emit(Event::Audit {
                    kind: "cache-quarantined".into(),
                    job: job.id.clone(),
                    step: step_name.to_string(),
                    detail: what.clone(),
                });
            }
        }
        if !lookup_only && matches!(found, CacheResult::Hit { .. } | CacheResult::Partial { .. }) {
            // Into the workspace (or the job's home): each cached path not
            // already there.
            for p in &paths {
                let from = staging.join(p);
                if std::fs::symlink_metadata(&from).is_err() {
                    continue;
                }
                let (root, rel) = cache_path_root(p, &ws, &home);
                let rel = Path::new(rel);
                let (parent, name) = match (rel.parent(), rel.file_name()) {
                    (Some(parent), Some(name)) => (parent, name),
                    _ => return Err(format!("cache path `{p}` names no file").into()),
                };
                // By descriptor beneath the workspace (or home): a link a
                // step planted anywhere on the way is an error, never followed.
                let dir = crate::runner::beneath::Beneath::open(root)
                    .and_then(|b| b.dir(parent, (STEP_UID, STEP_GID)))
                    .map_err(|e| format!("restoring `{p}`: {e}"))?;
                if crate::runner::beneath::exists_at(&dir, name).map_err(|e| e.to_string())? {
                    say(self, format!("cache: `{p}` already exists; kept as is"));
                    continue;
                }
                crate::runner::beneath::move_new(&from, &dir, name, (STEP_UID, STEP_GID))
                    .map_err(|e| format!("restoring `{p}`: {e}"))?;
            }
        }
        let _ = std::fs::remove_dir_all(&staging);
        if !exact && !lookup_only {
            self.cache_saves.push((key.clone(), paths.clone()));
        }
        if let Some(id) = &step.id {
            // Added to what the step already set (a setup action's outputs).
            let entry = self.steps_ctx.entry(id.clone()).or_insert_with(|| json!({ "outputs": {} }));
            if let Some(outputs) = entry.get_mut("outputs").and_then(|o| o.as_object_mut()) {
                outputs.insert("cache-hit".into(), json!(if exact { "true" } else { "false" }));
            } else {
                *entry = json!({ "outputs": { "cache-hit": if exact { "true" } else { "false" } } });
            }
        }
        if fail_on_miss && matches!(found, CacheResult::Miss | CacheResult::Tampered(_)) {
            return Err(format!("cache miss for `{key}` and fail-on-cache-miss is set").into());
        }
        Ok((StepStatus::Success, Some(0), None, 0.0, 0, None))
    }

    /// After a successful job: saves each cache that missed (from the build
    /// that produced the files, into its own scope only).
    pub(crate) async fn save_caches(&mut self, job: &PlannedJob) {
        let Some(sink) = self.runner.cfg.artifacts.clone() else { return };
        let Some((ws, home)) = self.workspace.as_ref().map(|w| (w.path(), w.home())) else { return };
        for (i, (key, paths)) in std::mem::take(&mut self.cache_saves).into_iter().enumerate() {
            let staging = self.dir.join(format!("cache-save-{i}"));
            let _ = std::fs::remove_dir_all(&staging);
            let _ = std::fs::create_dir_all(&staging);
            let mut found = 0;
            let mut refused = None;
            for p in &paths {
                let (root, rel) = cache_path_root(p, &ws, &home);
                match crate::runner::artifacts::resolve_beneath(root, rel) {
                    Ok(src) => match crate::runner::workspace_copy::copy_path(&src, &staging.join(p)) {
                        Ok(n) => found += n,
                        Err(e) => refused = Some(e.to_string()),
                    },
                    Err(e) if e.ends_with("does not exist") => {}
                    Err(e) => refused = Some(format!("path {e}")),
                }
            }
            let msg = if let Some(r) = refused {
                format!("cache not saved: {key}: {r}")
            } else if found == 0 {
                format!("cache not saved: {key}: no files at {}", paths.join(", "))
            } else if let Err(e) = kiln_secrets::check_tree(&staging, &self.runner.cfg.scrubber) {
                format!("cache not saved: {key}: {e}")
            } else {
                match sink.cache_save(&key, &staging).await {
                    Ok(up) => {
                        self.req.emitter.emit(Event::Cache {
                            job: job.id.clone(),
                            key: key.clone(),
                            write: true,
                            files: up.files,
                            bytes: up.bytes,
                        });
                        format!(
                            "cache saved: {key} ({} files, {})",
                            up.files,
                            crate::limits::human_bytes(up.bytes)
                        )
                    }
                    Err(e) => format!("cache not saved: {key}: {e}"),
                }
            };
            let _ = std::fs::remove_dir_all(&staging);
            self.req.emitter.log(&job.id, "Post cache", "build", Stream::System, msg);
        }
    }
}

/// `actions/cache`: restore now, save when the job succeeds.
pub(super) struct Cache<'a> {
    pub(super) key: &'a Template,
    pub(super) path: &'a Template,
    pub(super) restore_keys: Option<&'a Template>,
    pub(super) lookup_only: bool,
    pub(super) fail_on_miss: bool,
}

impl super::Builtin for Cache<'_> {
    fn title(&self) -> String {
        format!("Cache {}", self.key.source())
    }

    fn on_host(&self) -> bool {
        true
    }

    fn run<'s>(&'s self, run: &'s mut JobRun<'_>, at: super::StepAt<'s>) -> super::StepFut<'s> {
        Box::pin(run.cache_step(
            at.job,
            at.k,
            at.step,
            at.name,
            self.key,
            self.path,
            self.restore_keys,
            self.lookup_only,
            self.fail_on_miss,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_paths_name_the_workspace_or_the_home() {
        assert_eq!(cache_path_key("~/.cache/pip").unwrap().as_deref(), Some("~/.cache/pip"));
        assert_eq!(cache_path_key("$HOME/.npm/").unwrap().as_deref(), Some("~/.npm"));
        assert_eq!(
            cache_path_key("/home/runner/.cargo/registry").unwrap().as_deref(),
            Some("~/.cargo/registry")
        );
        assert_eq!(cache_path_key("./node_modules").unwrap().as_deref(), Some("node_modules"));
        assert_eq!(cache_path_key("/workspace/target").unwrap().as_deref(), Some("target"));
        assert_eq!(cache_path_key("  ").unwrap(), None);
        for bad in ["~/../../etc", "/etc/passwd", "../x", "~/", "/home/runnerx/a", "~root/x"] {
            assert!(cache_path_key(bad).is_err(), "{bad}");
        }
        let (ws, home) = (Path::new("/w"), Path::new("/h"));
        assert_eq!(cache_path_root("~/.npm", ws, home), (home, ".npm"));
        assert_eq!(cache_path_root("target", ws, home), (ws, "target"));
    }
}
