//! The web UI of `kiln serve`, under `/ui/`: server-rendered HTML (maud,
//! checked at compile time and escaping every value), one stylesheet and
//! one small script embedded in the binary, no CDN.
//!
//! * Authentication is the API's: a tenant token, sent as the bearer
//!   header or kept in the `kiln_token` cookie (HttpOnly, SameSite=Strict,
//!   Path=/) that the login form sets. The token never travels in a URL.
//! * Isolation is the API's: every page looks builds and artifacts up
//!   within the caller's tenant ([`crate::api::tenant_build`]), so another
//!   tenant's ids are 404 here too.
//! * Every response carries a strict Content-Security-Policy (no inline
//!   script or style, nothing from another origin, no framing).
//! * The two POSTs (login, logout) need their `Origin` to be this server:
//!   with SameSite=Strict that is the whole CSRF defence.
//! * Live parts: the log is an SSE stream of lines rendered here (the
//!   script only inserts them), resumed by the browser's `Last-Event-ID`;
//!   pages with live state listen to [`live`] and re-fetch their live
//!   fragment when it says something changed.

mod pages;
pub mod render;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::api::Auth;
use crate::core::Core;
use crate::db::Principal;
use crate::error::ApiError;

type AppState = Arc<Core>;

/// The cookie that holds the tenant token.
pub const COOKIE: &str = "kiln_token";

/// Every UI response's Content-Security-Policy: only this origin's script
/// and stylesheet, no inline code (so a payload that slipped past escaping
/// still could not run), no plugins, no framing, forms only to here.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; \
                       object-src 'none'";

const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

/// The UI's router (merged beside the API's by [`crate::serve`]).
pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/builds") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/builds") }))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/ui.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/ui/assets/ui.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .route("/ui/live", get(live))
        .route("/ui/builds", get(pages::builds))
        .route("/ui/builds/{id}", get(pages::build))
        .route("/ui/builds/{id}/logs", get(pages::logs))
        .route("/ui/builds/{id}/logs.txt", get(pages::logs_text))
        .route("/ui/builds/{id}/logs/stream", get(pages::live_log))
        .route("/ui/builds/{id}/security", get(pages::security))
        .route("/ui/builds/{id}/artifacts", get(pages::artifacts))
        .route("/ui/artifacts/{artifact}", get(pages::artifact))
        .route("/ui/artifacts/{artifact}/download", get(pages::download))
        .route("/ui/usage", get(pages::usage))
        .route("/ui/queue", get(pages::queue))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(core)
}

/// CSP and friends on every UI response; pages are never cached (they
/// show one tenant's data).
async fn security_headers(req: Request, next: Next) -> Response {
    let is_asset = req.uri().path().starts_with("/ui/assets/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not `no-referrer`: under it browsers send `Origin: null` with a
    // form's POST, which the CSRF check must refuse.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !is_asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

// ---- errors ----

/// A page that could not be shown: its status and a message, as HTML (a
/// missing or wrong token: back to the login form).
#[derive(Debug)]
pub enum UiError {
    Login,
    Page(StatusCode, String),
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> UiError {
        UiError::Page(e.status, e.message)
    }
}

impl From<crate::error::ServerError> for UiError {
    fn from(e: crate::error::ServerError) -> UiError {
        ApiError::from(e).into()
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::Login => Redirect::to("/ui/login").into_response(),
            UiError::Page(status, message) => {
                let title = status.canonical_reason().unwrap_or("error");
                let body = html! {
                    h1 { (status.as_u16()) " " (title) }
                    p class="error" role="alert" { (message) }
                    p { a href="/ui/builds" { "Back to the builds" } }
                    // The error does not know who asked: both ways out.
                    form method="post" action="/ui/logout" class="inline" {
                        "Or " button type="submit" { "sign out" } " to use another token."
                    }
                };
                (status, Html(bare(title, body).into_string())).into_response()
            }
        }
    }
}

type UiResult<T> = Result<T, UiError>;

// ---- authentication ----

/// The caller of a UI page: the bearer header, else the cookie.
#[derive(Debug, Clone)]
pub struct UiUser(pub Principal, pub String);

impl UiUser {
    fn auth(&self) -> Auth {
        Auth(self.0.clone(), self.1.clone())
    }
    fn tenant(&self) -> UiResult<&str> {
        self.0.tenant.as_deref().ok_or_else(|| {
            UiError::Page(
                StatusCode::FORBIDDEN,
                "this token belongs to no tenant (an operator's: see the queue)".into(),
            )
        })
    }
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

fn principal(core: &Core, token: &str) -> Result<Option<Principal>, crate::error::ServerError> {
    core.read().principal(&crate::auth::hash_token(token))
}

impl FromRequestParts<AppState> for UiUser {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, core: &AppState) -> Result<Self, Self::Rejection> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::auth::bearer);
        let Some(token) = bearer.or_else(|| cookie(&parts.headers, COOKIE)) else {
            return Err(UiError::Login);
        };
        let token = token.to_string();
        let path: String = parts.uri.path().chars().take(200).collect();
        core.blocking(move |core| match principal(core, &token)? {
            Some(p) => Ok(UiUser(p, crate::api::token_id(&token))),
            None => {
                core.metrics.auth_failure();
                core.audit(None, None, "auth failure", "anonymous", &format!("unknown token: UI {path}"));
                Err(UiError::Login)
            }
        })
        .await
    }
}

/// Whether a POST comes from a page of this server: its `Origin` names the
/// host the request was sent to. Browsers send `Origin` with every POST; a
/// request without one is refused.
fn same_origin(headers: &HeaderMap) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(o), Some(h)) => {
            let rest = o.strip_prefix("https://").or_else(|| o.strip_prefix("http://"));
            rest.is_some_and(|r| r.eq_ignore_ascii_case(h))
        }
        _ => false,
    }
}

async fn login_form() -> Html<String> {
    Html(login_page(None).into_string())
}

fn login_page(error: Option<&str>) -> Markup {
    bare(
        "Sign in",
        html! {
            h1 { "Sign in to kiln" }
            @if let Some(e) = error { p class="error" role="alert" { (e) } }
            form method="post" action="/ui/login" class="login" {
                label for="token" { "Token" }
                input id="token" name="token" type="password" autocomplete="current-password" required
                    autofocus spellcheck="false";
                button type="submit" { "Sign in" }
            }
            p class="hint" { "A tenant token from " code { "kiln admin token create --tenant NAME" }
                ". It is kept in an HttpOnly cookie for this site only." }
        },
    )
}

async fn login(State(core): State<AppState>, headers: HeaderMap, body: Bytes) -> UiResult<Response> {
    if !same_origin(&headers) {
        return Err(UiError::Page(
            StatusCode::FORBIDDEN,
            "a sign-in must come from this server's own page".into(),
        ));
    }
    let token = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    // A cookie value holds no `;`, `,`, space or quote: a token with one is
    // not a kiln token.
    let valid = !token.is_empty()
        && token.len() <= 200
        && token.bytes().all(|b| b.is_ascii_graphic() && !b";,\"\\".contains(&b));
    let p = if valid {
        let token = token.clone();
        core.blocking(move |core| principal(core, &token)).await?
    } else {
        None
    };
    let Some(p) = p else {
        core.metrics.auth_failure();
        core.blocking(|core| {
            core.audit(None, None, "auth failure", "anonymous", "unknown token: UI sign-in");
            Ok::<_, crate::error::ServerError>(())
        })
        .await?;
        return Ok((
            StatusCode::UNAUTHORIZED,
            Html(login_page(Some("That token is not valid.")).into_string()),
        )
            .into_response());
    };
    let secure =
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).is_some_and(|o| o.starts_with("https://"));
    let set = format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{}",
        if secure { "; Secure" } else { "" }
    );
    let to = if p.tenant.is_none() && p.operator { "/ui/queue" } else { "/ui/builds" };
    let mut resp = Redirect::to(to).into_response();
    if let Ok(v) = HeaderValue::from_str(&set) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

async fn logout(headers: HeaderMap) -> UiResult<Response> {
    if !same_origin(&headers) {
        return Err(UiError::Page(
            StatusCode::FORBIDDEN,
            "a sign-out must come from this server's own page".into(),
        ));
    }
    let mut resp = Redirect::to("/ui/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("kiln_token=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    Ok(resp)
}

// ---- layout ----

/// Every page's `<head>`: the embedded stylesheet and script only.
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · kiln" }
            link rel="stylesheet" href="/ui/assets/ui.css";
            script src="/ui/assets/ui.js" defer {}
        }
    }
}

/// A page without navigation (sign-in, errors).
fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main id="main" class="narrow" { (body) } }
        }
    }
}

/// A page of a signed-in user: navigation, then `body`.
fn page(user: &UiUser, title: &str, active: &str, body: Markup) -> Html<String> {
    let p = &user.0;
    let who = match (&p.tenant, p.operator) {
        (Some(t), true) => format!("{t} (operator)"),
        (Some(t), false) => t.clone(),
        (None, true) => "operator".into(),
        (None, false) => "worker".into(),
    };
    let nav = |href: &str, label: &str, key: &str| {
        html! {
            li { a href=(href) aria-current=[(active == key).then_some("page")] { (label) } }
        }
    };
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    a class="skip" href="#main" { "Skip to content" }
                    header class="top" {
                        nav aria-label="main" {
                            ul {
                                li class="brand" { "kiln" }
                                @if p.tenant.is_some() {
                                    (nav("/ui/builds", "Builds", "builds"))
                                    (nav("/ui/usage", "Usage", "usage"))
                                }
                                @if p.operator { (nav("/ui/queue", "Queue", "queue")) }
                            }
                        }
                        div class="who" {
                            span { "Signed in as " strong { (who) } }
                            form method="post" action="/ui/logout" { button type="submit" { "Sign out" } }
                        }
                    }
                    main id="main" tabindex="-1" { (body) }
                }
            }
        }
        .into_string(),
    )
}

// ---- live updates ----

#[derive(Debug, Deserialize)]
struct LiveQuery {
    build: Option<String>,
    state: Option<String>,
}

/// `event: changed` whenever what a page shows may have changed: the
/// caller's builds (list) or one build's state, jobs and steps. Only a
/// change of what this caller may see is sent (a digest of it is compared),
/// so another tenant's activity is not observable here.
async fn live(State(core): State<AppState>, user: UiUser, Query(q): Query<LiveQuery>) -> UiResult<Response> {
    let tenant = user.tenant()?.to_string();
    if let Some(id) = q.build.clone() {
        let auth = user.auth();
        core.blocking(move |core| crate::api::tenant_build(core, &auth, &id)).await?;
    }
    struct Live {
        core: AppState,
        tenant: String,
        q: LiveQuery,
        last: Option<String>,
        changes: tokio::sync::watch::Receiver<u64>,
        first: bool,
    }
    let mut changes = core.watch_changes();
    changes.borrow_and_update();
    let st = Live { core: core.clone(), tenant, q, last: None, changes, first: true };
    let events = futures::stream::unfold(st, |mut s| async move {
        loop {
            if !s.first {
                // Job and step changes are written by the engine without a
                // signal here: look at least every second.
                tokio::select! {
                    _ = s.changes.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            s.first = false;
            let (tenant, build, state) = (s.tenant.clone(), s.q.build.clone(), s.q.state.clone());
            let fp = s
                .core
                .blocking(move |core| pages::fingerprint(core, &tenant, build.as_deref(), state.as_deref()))
                .await;
            let Ok(fp) = fp else { return None };
            let changed = s.last.as_ref().is_some_and(|l| *l != fp);
            let first = s.last.is_none();
            s.last = Some(fp);
            if changed || first {
                let ev = SseEvent::default().event(if first { "hello" } else { "changed" }).data("1");
                return Some((Ok::<_, std::convert::Infallible>(ev), s));
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

#[cfg(test)]
mod tests;
