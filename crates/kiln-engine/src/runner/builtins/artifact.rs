//! `actions/upload-artifact` and `actions/download-artifact`: trees of the
//! workspace into the content-addressed store, and back.

use crate::event::Event;
use crate::log::Stream;
use crate::runner::builtins::*;
use crate::runner::env::*;
use crate::runner::job::*;
use crate::runner::StepStatus;
use kiln_workflow::{PlannedJob, StepAction, Template};
use std::path::{Path, PathBuf};

/// A `kiln/package` step's inputs.
/// The inputs of one `actions/download-artifact` step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DownloadRequest<'a> {
    pub(crate) name: Option<&'a Template>,
    pub(crate) path: Option<&'a Template>,
    pub(crate) pattern: Option<&'a Template>,
    pub(crate) merge_multiple: bool,
}

/// How an artifact is kept: what the record says beyond its files.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactKeep {
    pub(crate) output_type: kiln_store::OutputType,
    pub(crate) retention_days: Option<u32>,
    /// The commands that made it, when the job's `run:` scripts are not
    /// them (the zero-config build's detected commands).
    pub(crate) commands: Option<Vec<String>>,
    /// The source commit, when known only after the fetch.
    pub(crate) commit: Option<String>,
}

/// `static`, `server`, ... (validated when the workflow was loaded).
pub(crate) fn output_type_of(s: &str) -> kiln_store::OutputType {
    match s {
        "server" => kiln_store::OutputType::Server,
        "function" => kiln_store::OutputType::Function,
        "container-image" => kiln_store::OutputType::ContainerImage,
        _ => kiln_store::OutputType::Static,
    }
}

pub(crate) fn output_type_name(t: kiln_store::OutputType) -> &'static str {
    match t {
        kiln_store::OutputType::Static => "static",
        kiln_store::OutputType::Server => "server",
        kiln_store::OutputType::Function => "function",
        kiln_store::OutputType::ContainerImage => "container-image",
    }
}

impl JobRun<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn upload_artifact(
        &mut self,
        job: &PlannedJob,
        k: usize,
        step_name: &str,
        name: &Template,
        path: &Template,
        if_no_files_found: &str,
        keep: ArtifactKeep,
        started_at: &str,
    ) -> Result<StepResult, StepError> {
        let ctx = self.contexts();
        let name = name.render(&ctx, self.status_fns()).map_err(|e| e.to_string())?;
        // The name is stored in the artifact's records: never a secret's value.
        if let Some(secret) = self.runner.cfg.scrubber.contains_secret(name.as_bytes()) {
            return Err(StepError::User(format!(
                "the artifact name would contain the value of secret `{secret}`; names are stored in clear"
            )));
        }
        let paths = path.render(&ctx, self.status_fns()).map_err(|e| e.to_string())?;
        let ws = self.workspace.as_ref().ok_or("no workspace")?.path().to_path_buf();
        let staging = self.dir.join(format!("upload-{k}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
        let mut found = 0u64;
        let patterns =
            crate::runner::globs::Patterns::parse(paths.lines()).map_err(|e| format!("path: {e}"))?;
        if patterns.has_globs {
            // As on GitHub: files are stored relative to the least common
            // ancestor of the patterns' literal directories.
            let roots: Vec<(String, PathBuf)> =
                patterns.roots.iter().map(|r| (r.clone(), ws.join(r))).collect();
            let base = crate::runner::artifacts::common_ancestor(&roots);
            let selected = patterns.select_for_upload(&ws).map_err(|e| format!("path {e}"))?;
            for (rel, src) in &selected {
                let stored = Path::new(rel).strip_prefix(&base).unwrap_or(Path::new(rel));
                found += crate::runner::workspace_copy::copy_path(src, &staging.join(stored))
                    .map_err(|e| e.to_string())?;
            }
        } else {
            let mut present = Vec::new();
            for rel in paths.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let rel = rel.trim_start_matches("./").trim_end_matches('/');
                match crate::runner::artifacts::resolve_beneath(&ws, rel) {
                    Ok(src) => present.push((rel.to_string(), src)),
                    Err(e) if e.ends_with("does not exist") => {}
                    Err(e) => return Err(format!("path {e}").into()),
                }
            }
            // As on GitHub: paths are stored relative to their least common
            // ancestor (a single directory uploads its contents).
            let base = crate::runner::artifacts::common_ancestor(&present);
            for (rel, src) in &present {
                let stored = Path::new(rel).strip_prefix(&base).unwrap_or(Path::new(rel));
                let dst = if stored.as_os_str().is_empty() { staging.clone() } else { staging.join(stored) };
                found += crate::runner::workspace_copy::copy_path(src, &dst).map_err(|e| e.to_string())?;
            }
        }
        let say =
            |s: &Self, m: String| s.req.emitter.log(&job.id, step_name, "artifact-upload", Stream::System, m);
        if found == 0 {
            let msg =
                format!("no files found for artifact `{name}` (path: {})", paths.trim().replace('\n', ", "));
            return match if_no_files_found {
                "error" => Err(msg.into()),
                "ignore" => Ok((StepStatus::Success, Some(0), None, 0.0, 0, None)),
                _ => {
                    say(self, format!("warning: {msg}"));
                    Ok((StepStatus::Success, Some(0), None, 0.0, 0, None))
                }
            };
        }
        let stored = self.store_staged(job, step_name, &name, &staging, keep, started_at).await;
        let _ = std::fs::remove_dir_all(&staging);
        stored
    }

    /// Stores a staged tree as artifact `name`: refused if it holds a
    /// secret value; scanned; signed; recorded with its verdict.
    pub(crate) async fn store_staged(
        &mut self,
        job: &PlannedJob,
        step_name: &str,
        name: &str,
        staging: &Path,
        keep: ArtifactKeep,
        started_at: &str,
    ) -> Result<StepResult, StepError> {
        let sink = self.runner.cfg.artifacts.clone().ok_or("this build has no artifact store")?;
        // A tree holding a secret value never reaches the store.
        if let Err(e) = kiln_secrets::check_tree(staging, &self.runner.cfg.scrubber) {
            return Err(format!("artifact `{name}` refused: {e}").into());
        }
        // Hermetic: no step of the build phase that ran had a network (the
        // install may fetch; the build itself works from what is there).
        let wf = &self.req.plan.workflow;
        let hermetic = !self.network_in_build;
        let meta = crate::runner::artifacts::UploadMeta {
            started_at: started_at.to_string(),
            hermetic,
            output_type: keep.output_type,
            commands: keep.commands.unwrap_or_else(|| {
                job.spec
                    .steps
                    .iter()
                    .filter_map(|s| match &s.action {
                        StepAction::Run { script, .. } => Some(script.source().to_string()),
                        _ => None,
                    })
                    .collect()
            }),
            environment_digest: environment_digest(wf, &job.spec),
            retention_days: keep.retention_days,
            commit: keep.commit,
            image: self.image.clone(),
            tools: self.tools.clone(),
        };
        let up = sink.upload(&self.req.build, name, staging, &meta).await?;
        let say =
            |s: &Self, m: String| s.req.emitter.log(&job.id, step_name, "artifact-upload", Stream::System, m);
        for f in &up.findings {
            say(self, format!("scan: {f}"));
        }
        say(
            self,
            format!(
                "artifact `{name}` stored: {} ({}, {} files, {}): {}",
                up.id,
                output_type_name(keep.output_type),
                up.files,
                crate::limits::human_bytes(up.bytes),
                up.status
            ),
        );
        if up.status == "quarantined" {
            self.req.emitter.emit(Event::Audit {
                kind: "artifact-quarantined".into(),
                job: job.id.clone(),
                step: step_name.to_string(),
                detail: format!("{name} {}: {}", up.id, up.findings.join("; ")),
            });
        }
        self.req.emitter.emit(Event::Artifact {
            job: job.id.clone(),
            name: name.to_string(),
            id: up.id.to_string(),
            files: up.files,
            bytes: up.bytes,
            provenance: up.provenance.map(|d| d.to_string()),
            output_type: output_type_name(keep.output_type).to_string(),
            status: up.status.clone(),
            scan: (!up.findings.is_empty()).then(|| up.findings.join("\n")),
        });
        if up.status == "quarantined" {
            // Kept in the store for inspection, never handed on.
            return Err(format!("artifact `{name}` quarantined by the scan").into());
        }
        Ok((StepStatus::Success, Some(0), None, 0.0, 0, None))
    }

    /// `actions/download-artifact`: one artifact by `name` into `path`, or
    /// every artifact of the build (those matching `pattern`) each into
    /// `path/NAME`, or all into `path` with `merge-multiple`. Into an
    /// existing directory the files merge, as on GitHub.
    pub(crate) async fn download_artifact(
        &mut self,
        job: &PlannedJob,
        k: usize,
        step_name: &str,
        request: DownloadRequest<'_>,
    ) -> Result<StepResult, StepError> {
        let sink = self.runner.cfg.artifacts.clone().ok_or("this build has no artifact store")?;
        let ctx = self.contexts();
        let render = |t: Option<&Template>| -> Result<Option<String>, String> {
            t.map(|t| t.render(&ctx, self.status_fns()).map_err(|e| e.to_string())).transpose()
        };
        let name = render(request.name)?.filter(|n| !n.trim().is_empty());
        let rel = render(request.path)?.unwrap_or_default();
        let pattern = render(request.pattern)?.filter(|p| !p.trim().is_empty());
        let ws = self.workspace.as_ref().ok_or("no workspace")?.path().to_path_buf();
        let rel = rel.trim().trim_start_matches("./").trim_end_matches('/');
        let base = if rel.is_empty() || rel == "." {
            PathBuf::new()
        } else {
            kiln_workflow::check_relative_path(rel).map_err(|e| format!("path: {e}"))?;
            PathBuf::from(rel)
        };
        let names: Vec<String> = match &name {
            Some(n) => vec![n.clone()],
            None => {
                let all = sink.names().await;
                match &pattern {
                    None => all,
                    Some(p) => {
                        let glob = globset::Glob::new(p)
                            .map_err(|e| format!("pattern `{p}`: {e}"))?
                            .compile_matcher();
                        all.into_iter().filter(|n| glob.is_match(n)).collect()
                    }
                }
            }
        };
        if names.is_empty() {
            self.req.emitter.log(
                &job.id,
                step_name,
                "build",
                Stream::System,
                "no artifacts to download (nothing matched)".into(),
            );
        }
        // One artifact by name, or merge-multiple: into `path` itself;
        // otherwise each into a directory named after it.
        let into_base = name.is_some() || request.merge_multiple;
        for (i, n) in names.iter().enumerate() {
            let staging = self.dir.join(format!("download-{k}-{i}"));
            let _ = std::fs::remove_dir_all(&staging);
            let got = sink.download(n, &staging, STEP_UID, STEP_GID).await?;
            if !into_base && (n.is_empty() || n == "." || n == ".." || n.contains(['/', '\\', '\0'])) {
                return Err(format!("artifact name `{n}` cannot be a directory name").into());
            }
            let target = if into_base { base.clone() } else { base.join(n) };
            let (from, ws) = (staging.clone(), ws.clone());
            // Into the workspace by descriptor, never through a link a step planted.
            let merged = tokio::task::spawn_blocking(move || {
                let dst = crate::runner::beneath::Beneath::open(&ws)?.dir(&target, (STEP_UID, STEP_GID))?;
                crate::runner::beneath::merge_into(&from, &dst, (STEP_UID, STEP_GID))
            })
            .await
            .map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir_all(&staging);
            merged.map_err(|e| format!("artifact `{n}`: {e}"))?;
            self.req.emitter.log(
                &job.id,
                step_name,
                "build",
                Stream::System,
                format!(
                    "artifact `{n}` restored: {} ({} files, {})",
                    got.id,
                    got.files,
                    crate::limits::human_bytes(got.bytes)
                ),
            );
        }
        Ok((StepStatus::Success, Some(0), None, 0.0, 0, None))
    }
}

/// `actions/upload-artifact`: files of the workspace into the store.
pub(super) struct Upload<'a> {
    pub(super) name: &'a Template,
    pub(super) path: &'a Template,
    pub(super) if_no_files_found: &'a str,
    pub(super) retention_days: Option<u32>,
    pub(super) output_type: Option<&'a str>,
}

impl Builtin for Upload<'_> {
    fn title(&self) -> String {
        format!("Upload artifact {}", self.name.source())
    }

    fn on_host(&self) -> bool {
        true
    }

    fn run<'s>(&'s self, run: &'s mut JobRun<'_>, at: StepAt<'s>) -> StepFut<'s> {
        let keep = ArtifactKeep {
            output_type: self.output_type.map(output_type_of).unwrap_or(kiln_store::OutputType::Static),
            retention_days: self.retention_days,
            commands: None,
            commit: None,
        };
        Box::pin(run.upload_artifact(
            at.job,
            at.k,
            at.name,
            self.name,
            self.path,
            self.if_no_files_found,
            keep,
            at.started_at,
        ))
    }
}

/// `actions/download-artifact`: this build's artifacts into the workspace.
pub(super) struct Download<'a>(pub(super) DownloadRequest<'a>);

impl Builtin for Download<'_> {
    fn title(&self) -> String {
        match self.0.name {
            Some(name) => format!("Download artifact {}", name.source()),
            None => "Download artifacts".into(),
        }
    }

    fn on_host(&self) -> bool {
        true
    }

    fn run<'s>(&'s self, run: &'s mut JobRun<'_>, at: StepAt<'s>) -> StepFut<'s> {
        Box::pin(run.download_artifact(at.job, at.k, at.name, self.0))
    }
}
