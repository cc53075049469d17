//! A build's security view, from the audit log.

use super::*;

/// Every audit event of the caller's tenant about build `id`.
fn build_audit(core: &Core, tenant: &str, id: &str) -> UiResult<Vec<AuditRow>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let rows = core.read().audit_events(Some(tenant), after, 10_000)?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        let n = rows.len();
        out.extend(rows.into_iter().filter(|r| r.build.as_deref() == Some(id)));
        if n < 10_000 || out.len() > 100_000 {
            break;
        }
    }
    Ok(out)
}

/// Egress refusals and the secrets handed out (names only), from the audit.
pub(crate) async fn security(
    State(core): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
) -> UiResult<Html<String>> {
    core.blocking(move |core| {
        let b = tenant_build(core, &user.auth(), &id)?;
        let rows = build_audit(core, &b.tenant, &b.id)?;
        let egress: Vec<&AuditRow> = rows.iter().filter(|r| r.kind.starts_with("egress")).collect();
        let secrets: Vec<&AuditRow> = rows.iter().filter(|r| r.kind.starts_with("secret")).collect();
        let table = |rows: &[&AuditRow], caption: &str| {
            html! {
                @if rows.is_empty() { p class="empty" { "None." } } @else {
                    div class="scroll" { table class="audit" {
                        caption class="sr" { (caption) }
                        thead { tr { th scope="col" { "Time" } th scope="col" { "Kind" } th scope="col" { "By" } th scope="col" { "Detail" } } }
                        tbody { @for r in rows { tr { td { (r.ts) } td { (r.kind) } td { (r.actor) } td { (r.detail) } } } }
                    } }
                }
            }
        };
        let all: Vec<&AuditRow> = rows.iter().collect();
        let body = html! {
            h1 { "Security of build " code { (b.id) } }
            (build_nav(&b.id, "security"))
            section id="egress" aria-labelledby="egress-h" {
                h2 id="egress-h" { "Egress refused or capped (" (egress.len()) ")" }
                (table(&egress, "egress events"))
            }
            section id="secrets" aria-labelledby="secrets-h" {
                h2 id="secrets-h" { "Secrets handed out (" (secrets.len()) ")" }
                p class="hint" { "The variable or file each secret was handed to a step as; a secret's value is never stored in the audit log or shown." }
                (table(&secrets, "secrets handed out"))
            }
            h2 { "Every audit event of this build (" (all.len()) ")" }
            (table(&all, "audit events"))
        };
        Ok(page(&user, &format!("Security of {}", b.id), "builds", body))
    })
    .await
}
