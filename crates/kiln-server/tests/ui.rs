//! The web UI without sandboxes: a server with no workers, driven
//! in-process through the router. Sign-in and its cookie, the CSRF check,
//! the security headers, tenant isolation and the operators' queue, each
//! on SQLite and on PostgreSQL. (The pages in a real browser, with builds
//! that run: `kiln`'s `tests/ui.rs`.)

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use kiln_server::db::{ControlDb, Principal};
use kiln_server::pgcluster::{test_database, TestDatabase};
use kiln_server::{Core, ServerConfig};
use tower::ServiceExt;

kiln_server::on_both_databases!(
    pages_need_a_token_and_carry_a_strict_csp,
    sign_in_sets_a_strict_http_only_cookie_only_from_this_origin,
    another_tenants_build_is_404_on_every_page,
    the_queue_is_for_operators,
);

struct Fixture {
    _dir: tempfile::TempDir,
    _cluster: Option<kiln_server::pgcluster::LocalCluster>,
    core: Arc<Core>,
    alpha: String,
    beta: String,
    operator: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("state"));
    cfg.workers = 0;
    let cluster = (test_database() == TestDatabase::Postgres).then(|| {
        let c = kiln_server::pgcluster::LocalCluster::start()
            .unwrap_or_else(|e| panic!("the PostgreSQL test cluster: {e}"));
        cfg.database = Some(c.database("kiln").unwrap());
        c
    });
    let token = |db: &ControlDb, tenant: Option<&str>, operator: bool| {
        Core::admin_token(db, &Principal { tenant: tenant.map(str::to_string), operator, worker: false })
            .unwrap()
    };
    let (alpha, beta, operator) = {
        let db = ControlDb::connect(cfg.database.as_deref(), &cfg.state_dir).unwrap();
        db.upsert_tenant("alpha", "team").unwrap();
        db.upsert_tenant("beta", "team").unwrap();
        (token(&db, Some("alpha"), false), token(&db, Some("beta"), false), token(&db, None, true))
    };
    let core = Core::start(cfg).unwrap();
    Fixture { _dir: dir, _cluster: cluster, core, alpha, beta, operator }
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

fn call(core: &Arc<Core>, req: Request<Body>) -> Resp {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // As on the server's runtime: a page that takes a database handle on
        // this (async) thread instead of the blocking pool panics.
        let _async_thread = kiln_server::blocking::marked();
        let resp = kiln_server::app(core.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap();
        Resp { status, headers, body: String::from_utf8_lossy(&body).to_string() }
    })
}

fn get(core: &Arc<Core>, path: &str, cookie: Option<&str>) -> Resp {
    let mut r = Request::builder().uri(path).header("host", "kiln.test");
    if let Some(c) = cookie {
        r = r.header("cookie", format!("kiln_token={c}"));
    }
    call(core, r.body(Body::empty()).unwrap())
}

fn login(core: &Arc<Core>, token: &str, origin: Option<&str>) -> Resp {
    let mut r = Request::builder()
        .method("POST")
        .uri("/ui/login")
        .header("host", "kiln.test")
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    call(core, r.body(Body::from(format!("token={token}"))).unwrap())
}

fn submit(core: &Arc<Core>, token: &str, workflow: &str) -> String {
    let body = serde_json::json!({ "workflow": workflow }).to_string();
    let req = Request::builder()
        .method("POST")
        .uri("/v1/builds")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let r = call(core, req);
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn pages_need_a_token_and_carry_a_strict_csp() {
    let f = fixture();
    let r = get(&f.core, "/ui/builds", None);
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/ui/login");
    let r = get(&f.core, "/ui/builds", Some("kiln_wrong"));
    assert_eq!(r.headers["location"], "/ui/login", "an unknown token is sent to sign in");
    let r = get(&f.core, "/ui/login", None);
    assert_eq!(r.status, StatusCode::OK);
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!r.body.contains("<script>") && !r.body.contains(" style="), "no inline script or style");
    let js = get(&f.core, "/ui/assets/ui.js", None);
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.headers["content-type"].to_str().unwrap().starts_with("text/javascript"));
    // The bearer header works as the cookie does.
    let r = call(
        &f.core,
        Request::builder()
            .uri("/ui/builds")
            .header("authorization", format!("Bearer {}", f.alpha))
            .body(Body::empty())
            .unwrap(),
    );
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

fn sign_in_sets_a_strict_http_only_cookie_only_from_this_origin() {
    let f = fixture();
    assert_eq!(login(&f.core, &f.alpha, None).status, StatusCode::FORBIDDEN, "no Origin");
    assert_eq!(login(&f.core, &f.alpha, Some("http://evil.test")).status, StatusCode::FORBIDDEN);
    let bad = login(&f.core, "kiln_nope", Some("http://kiln.test"));
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.headers.get("set-cookie").is_none());
    let ok = login(&f.core, &f.alpha, Some("http://kiln.test"));
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    let cookie = ok.headers["set-cookie"].to_str().unwrap();
    for part in ["kiln_token=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!ok.headers["location"].to_str().unwrap().contains("kiln_"), "never the token in a URL");
    assert_eq!(get(&f.core, "/ui/builds", Some(&f.alpha)).status, StatusCode::OK);
    // The API takes the bearer header only: with a cookie, each of its
    // POSTs would be a cross-site request forgery target.
    assert_eq!(get(&f.core, "/v1/builds", Some(&f.alpha)).status, StatusCode::UNAUTHORIZED);
    // Sign-out clears it, and also needs this origin.
    let out = |origin: &str| {
        call(
            &f.core,
            Request::builder()
                .method("POST")
                .uri("/ui/logout")
                .header("host", "kiln.test")
                .header("origin", origin)
                .body(Body::empty())
                .unwrap(),
        )
    };
    assert_eq!(out("http://evil.test").status, StatusCode::FORBIDDEN);
    let r = out("http://kiln.test");
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
}

fn another_tenants_build_is_404_on_every_page() {
    let f = fixture();
    let wf = "jobs:\n  build:\n    steps:\n      - run: echo hi\n  test:\n    needs: build\n    steps:\n      - run: echo t\n";
    let id = submit(&f.core, &f.alpha, wf);
    let page = get(&f.core, &format!("/ui/builds/{id}"), Some(&f.alpha));
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("class=\"dag\"") && page.body.contains("class=\"edge\""), "{}", page.body);
    assert!(page.body.contains("queued"), "the state in words: {}", page.body);
    let list = get(&f.core, "/ui/builds", Some(&f.alpha));
    assert!(list.body.contains(&id));
    let list = get(&f.core, "/ui/builds", Some(&f.beta));
    assert!(!list.body.contains(&id), "beta's list has none of alpha's builds");
    for path in [
        format!("/ui/builds/{id}"),
        format!("/ui/builds/{id}/logs"),
        format!("/ui/builds/{id}/logs.txt"),
        format!("/ui/builds/{id}/logs/stream"),
        format!("/ui/builds/{id}/artifacts"),
        format!("/ui/builds/{id}/security"),
        format!("/ui/live?build={id}"),
    ] {
        let r = get(&f.core, &path, Some(&f.beta));
        assert_eq!(r.status, StatusCode::NOT_FOUND, "beta GET {path}: {}", r.body);
        assert!(!r.body.contains("echo hi"), "{path}");
    }
    let art = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(get(&f.core, &format!("/ui/artifacts/{art}"), Some(&f.beta)).status, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&f.core, &format!("/ui/artifacts/{art}/download"), Some(&f.beta)).status,
        StatusCode::NOT_FOUND
    );
}

fn the_queue_is_for_operators() {
    let f = fixture();
    submit(&f.core, &f.alpha, "jobs:\n  a:\n    steps:\n      - run: echo a\n");
    assert_eq!(get(&f.core, "/ui/queue", Some(&f.alpha)).status, StatusCode::FORBIDDEN);
    let q = get(&f.core, "/ui/queue", Some(&f.operator));
    assert_eq!(q.status, StatusCode::OK, "{}", q.body);
    assert!(q.body.contains("alpha") && q.body.contains("normal"), "{}", q.body);
    // An operator without a tenant has no builds page.
    assert_eq!(get(&f.core, "/ui/builds", Some(&f.operator)).status, StatusCode::FORBIDDEN);
    assert_eq!(get(&f.core, "/ui/usage", Some(&f.alpha)).status, StatusCode::OK);
}
