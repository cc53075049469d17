//! Artifacts: a build's list, one artifact with its provenance, the download.

use super::*;
use crate::statedb::AttemptRecords as _;

pub(crate) async fn artifacts(
    State(core): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
) -> UiResult<Html<String>> {
    core.blocking(move |core| {
        let b = tenant_build(core, &user.auth(), &id)?;
        let attempts = core.read().attempts(&b.id)?;
        let mut list = Vec::new();
        for a in &attempts {
            list.extend(core.with_state(|s| s.artifacts_json(&a.engine_id))?);
        }
        let body = html! {
            h1 { "Artifacts of build " code { (b.id) } }
            (build_nav(&b.id, "artifacts"))
            @if list.is_empty() { p class="empty" { "No artifacts." } } @else {
                div class="scroll" { table class="artifacts" {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Job" } th scope="col" { "Output type" }
                        th scope="col" { "Files" } th scope="col" { "Size" } th scope="col" { "Scan verdict" }
                        th scope="col" { "Digest" } th scope="col" { "Actions" }
                    } }
                    tbody { @for a in &list {
                        @let aid = a["id"].as_str().unwrap_or("");
                        @let status = a["status"].as_str().unwrap_or("");
                        tr data-artifact=(a["name"].as_str().unwrap_or("")) data-status=(status) {
                            th scope="row" { (a["name"].as_str().unwrap_or("")) }
                            td { (a["job"].as_str().unwrap_or("")) }
                            td { (a["output_type"].as_str().unwrap_or("")) }
                            td { (num(&a["files"])) }
                            td { (bytes(a["bytes"].as_i64().unwrap_or(0))) }
                            td { (state_badge(status))
                                @if let Some(s) = a["scan"].as_str().filter(|s| !s.is_empty()) {
                                    div class="scan" { (s.lines().next().unwrap_or("")) } } }
                            td { code class="digest" { (aid) } }
                            td class="actions" {
                                a href={ "/ui/artifacts/" (aid) } { "Files and provenance" span class="sr" { " of " (a["name"].as_str().unwrap_or("")) } }
                                " "
                                @if status == "quarantined" {
                                    span class="refused" { "✗ quarantined: not downloadable" }
                                } @else {
                                    a class="download" href={ "/ui/artifacts/" (aid) "/download" } download { "Download (.tar)" }
                                }
                            }
                        }
                    } }
                } }
            }
        };
        Ok(page(&user, &format!("Artifacts of {}", b.id), "builds", body))
    })
    .await
}

/// The scan verdict of an artifact as the engine recorded it.
async fn scan_of(core: &Arc<Core>, id: &str) -> UiResult<Option<(String, Option<String>)>> {
    let id = id.to_string();
    Ok(core.blocking(move |core| core.with_state(|s| Ok(s.scan_of(&id)?))).await?)
}

fn copyable(id: &str, text: &str) -> Markup {
    html! {
        div class="copy" {
            pre { code id=(id) { (text) } }
            button type="button" class="copy-btn" data-copy=(id) { "Copy" span class="sr" { " command" } }
        }
    }
}

/// One artifact: its files with sizes and digests, the scan's verdict,
/// its provenance and whether the signature checks out, and the commands
/// that verify or reproduce it.
pub(crate) async fn artifact(
    State(core): State<AppState>,
    user: UiUser,
    Path(artifact): Path<String>,
) -> UiResult<Html<String>> {
    let (store, digest) = tenant_artifact(&core, &user.auth(), &artifact).await?;
    let id = digest.to_string();
    let manifest = store
        .get_manifest(&digest)
        .await
        .map_err(|_| UiError::Page(StatusCode::NOT_FOUND, "no such artifact".into()))?;
    let scan = scan_of(&core, &id).await?;
    let envelope = crate::api::provenance_bytes(&core, &store, &digest).await?;
    let (statement, verdict) = match envelope {
        None => (None, Err("no provenance recorded".to_string())),
        Some(bytes) => match serde_json::from_slice::<kiln_store::Envelope>(&bytes) {
            Err(e) => (None, Err(format!("the provenance is not a DSSE envelope: {e}"))),
            Ok(env) => match kiln_store::verify(&env, &core.keys.public_key(), &store, &digest).await {
                Ok(st) => (Some(st), Ok(())),
                Err(e) => {
                    use base64::Engine as _;
                    let st = base64::engine::general_purpose::STANDARD
                        .decode(&env.payload)
                        .ok()
                        .and_then(|p| serde_json::from_slice::<kiln_store::Statement>(&p).ok());
                    (st, Err(e.to_string()))
                }
            },
        },
    };
    let quarantined = scan.as_ref().is_some_and(|(s, _)| s == "quarantined");
    let engine_build = statement.as_ref().map(|s| s.predicate.run_details.metadata.invocation_id.clone());
    let body = html! {
        h1 { "Artifact" }
        p { code class="digest" { (id) } }
        h2 { "Scan verdict" }
        @match &scan {
            Some((status, findings)) => {
                p { (state_badge(status)) }
                @if let Some(f) = findings.as_deref().filter(|f| !f.is_empty()) { pre class="findings" { (f) } }
            }
            None => p { "No scan verdict recorded." }
        }
        p {
            @if quarantined {
                span class="refused" { "✗ Quarantined: the page does not offer it for download." }
            } @else {
                a class="download" href={ "/ui/artifacts/" (id) "/download" } download { "Download (.tar)" }
            }
        }
        h2 { "Provenance" }
        @match &verdict {
            Ok(()) => p class="verdict ok" { span aria-hidden="true" { "✓ " } "Signature valid (key " code { (core.keys.keyid()) } "); the subject and every file's digest match." }
            Err(e) => p class="verdict bad" role="alert" { span aria-hidden="true" { "✗ " } "Not verified: " (e) }
        }
        @if let Some(st) = &statement {
            dl class="summary" {
                div { dt { "Builder" } dd { (st.predicate.run_details.builder.id) } }
                div { dt { "Build" } dd { code { (st.predicate.run_details.metadata.invocation_id) } } }
                div { dt { "Started" } dd { (st.predicate.run_details.metadata.started_on) } }
                div { dt { "Finished" } dd { (st.predicate.run_details.metadata.finished_on) } }
                div { dt { "Hermetic" } dd { (if st.predicate.hermetic { "yes" } else { "no" }) } }
                div { dt { "Source" } dd { (st.predicate.build_definition.external_parameters.source.repository) " "
                    code { (st.predicate.build_definition.external_parameters.source.commit) } } }
            }
            h3 { "Materials (image, tools, source)" }
            @if st.predicate.build_definition.resolved_dependencies.is_empty() { p class="empty" { "None recorded (the host's /usr)." } }
            ul class="materials" { @for d in &st.predicate.build_definition.resolved_dependencies {
                li { (d.name.as_deref().unwrap_or("")) " " @if let Some(u) = &d.uri { code { (u) } } " " code class="digest" { "sha256:" (d.digest.sha256) } }
            } }
        }
        h2 { "Check it yourself" }
        p { "With " code { "KILN_SERVER" } " and " code { "KILN_TOKEN" } " set, fetch it:" }
        (copyable("cmd-get", &format!("kiln artifact get {id} --out ./artifact")))
        p { "On the server's host (its state directory), verify its signature, digests and scan verdict, and see how to rebuild it:" }
        (copyable("cmd-verify", &format!("kiln verify {id} --key {}", core.keys.public_key_hex())))
        @if let Some(e) = &engine_build { (copyable("cmd-reproduce", &format!("kiln reproduce {e}"))) }
        h2 { "Files (" (manifest.entries.len()) ")" }
        div class="scroll" { table class="files" {
            thead { tr { th scope="col" { "Path" } th scope="col" { "Size" } th scope="col" { "Digest" } } }
            tbody { @for e in &manifest.entries {
                @match e {
                    kiln_store::tree::Entry::File { path, size, digest, .. } => tr { td { (path) } td { (bytes(*size as i64)) } td { code class="digest" { (digest.to_string()) } } },
                    other => tr { td { (other.path()) } td { "—" } td { "—" } },
                }
            } }
        } }
    };
    Ok(page(&user, "Artifact", "builds", body))
}

/// The artifact as a tar, unless the scan quarantined it.
pub(crate) async fn download(
    State(core): State<AppState>,
    user: UiUser,
    Path(artifact): Path<String>,
) -> UiResult<Response> {
    let (store, digest) = tenant_artifact(&core, &user.auth(), &artifact).await?;
    if let Some((status, scan)) = scan_of(&core, &digest.to_string()).await? {
        if status == "quarantined" {
            return Err(UiError::Page(
                StatusCode::FORBIDDEN,
                format!(
                    "{digest} is quarantined by the artifact scan ({}): it is not offered for download",
                    scan.unwrap_or_default().lines().next().unwrap_or("no findings recorded")
                ),
            ));
        }
    }
    let manifest = store
        .get_manifest(&digest)
        .await
        .map_err(|_| UiError::Page(StatusCode::NOT_FOUND, "no such artifact".into()))?;
    let tar = crate::tarout::tree_tar(&store, &manifest).await?;
    let disposition = format!("attachment; filename=\"{}.tar\"", digest.hex());
    let mut resp = ([(header::CONTENT_TYPE, "application/x-tar")], tar).into_response();
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
