//! The API without sandboxes: a server with no workers, driven in-process
//! through the router. Routes against the OpenAPI document, and arbitrary
//! requests against every handler (only 2xx and 4xx may come back).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use kiln_server::db::{ControlDb, Principal};
use kiln_server::pgcluster::{test_database, TestDatabase, TEST_DATABASE};
use kiln_server::{Core, ServerConfig};
use proptest::prelude::*;
use tower::ServiceExt;

kiln_server::on_both_databases!(
    every_route_is_documented_and_every_documented_route_is_served,
    unauthenticated_requests_are_refused_and_audited,
    invalid_workflows_are_422_with_line_numbers_and_large_bodies_413,
    the_shared_cache_answers_only_the_lease_holder_and_refuses_bad_archives,
);

struct Fixture {
    _dir: tempfile::TempDir,
    _cluster: Option<kiln_server::pgcluster::LocalCluster>,
    core: Arc<Core>,
    tenant: String,
    worker: String,
    operator: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("state"));
    cfg.workers = 0;
    cfg.max_body_bytes = 256 << 10;
    let cluster = (test_database() == TestDatabase::Postgres).then(|| {
        let c = kiln_server::pgcluster::LocalCluster::start()
            .unwrap_or_else(|e| panic!("the PostgreSQL test cluster: {e}"));
        cfg.database = Some(c.database("kiln").unwrap());
        c
    });
    let (tenant, worker, operator) = {
        let db = ControlDb::connect(cfg.database.as_deref(), &cfg.state_dir).unwrap();
        db.upsert_tenant("acme", "free").unwrap();
        let t = Core::admin_token(
            &db,
            &Principal { tenant: Some("acme".into()), operator: false, worker: false },
        );
        let w = Core::admin_token(&db, &Principal { tenant: None, operator: false, worker: true });
        let o = Core::admin_token(&db, &Principal { tenant: None, operator: true, worker: false });
        (t.unwrap(), w.unwrap(), o.unwrap())
    };
    let core = Core::start(cfg).unwrap();
    Fixture { _dir: dir, _cluster: cluster, core, tenant, worker, operator }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn call(core: &Arc<Core>, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    // As on the server's runtime: a handler that takes a database handle on
    // this (async) thread instead of the blocking pool panics.
    let _async_thread = kiln_server::blocking::marked();
    let resp = kiln_server::api::router(core.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let is_stream = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    let body = if is_stream {
        Vec::new()
    } else {
        axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap().to_vec()
    };
    (status, body)
}

fn fill(path: &str, id: &str) -> String {
    path.replace("{id}", id).replace("{artifact}", id).replace("{name}", id)
}

fn every_route_is_documented_and_every_documented_route_is_served() {
    let f = fixture();
    let doc = kiln_server::openapi::document();
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in paths {
        for (method, _) in ops.as_object().unwrap() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> =
        kiln_server::api::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served, "the OpenAPI document and the router disagree");
    // And each one really is routed (the fallback says "no such route").
    rt().block_on(async {
        for (method, path) in &served {
            let req = Request::builder()
                .method(method.as_str())
                .uri(fill(path, "nope"))
                .header("authorization", format!("Bearer {}", f.tenant))
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let (status, body) = call(&f.core, req).await;
            let text = String::from_utf8_lossy(&body);
            assert!(!text.contains("no such route"), "{method} {path}: {status} {text}");
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    });
}

fn unauthenticated_requests_are_refused_and_audited() {
    let f = fixture();
    rt().block_on(async {
        for auth in [None, Some("Bearer kiln_not-a-token"), Some("Basic abc")] {
            let mut req = Request::builder().uri("/v1/builds");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let (status, body) = call(&f.core, req.body(Body::empty()).unwrap()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&body));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(v["error"].as_str().unwrap().contains("authentication required"));
        }
        let req = Request::builder()
            .uri("/v1/audit")
            .header("authorization", format!("Bearer {}", f.operator))
            .body(Body::empty())
            .unwrap();
        let (_, body) = call(&f.core, req).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let failures = v["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "auth failure").count();
        assert_eq!(failures, 3, "{v}");
        // The worker API refuses tenant tokens, and tenant routes refuse worker tokens.
        let req = Request::builder()
            .method("POST")
            .uri("/v1/worker/lease")
            .header("authorization", format!("Bearer {}", f.tenant))
            .body(Body::from(r#"{"worker":"w"}"#))
            .unwrap();
        assert_eq!(call(&f.core, req).await.0, StatusCode::FORBIDDEN);
        let req = Request::builder()
            .uri("/v1/builds")
            .header("authorization", format!("Bearer {}", f.worker))
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(&f.core, req).await.0, StatusCode::FORBIDDEN);
    });
}

fn invalid_workflows_are_422_with_line_numbers_and_large_bodies_413() {
    let f = fixture();
    rt().block_on(async {
        let body =
            serde_json::json!({"workflow": "jobs:\n  a:\n    steps:\n      - run: echo\n        bogus: 1\n"});
        let req = Request::builder()
            .method("POST")
            .uri("/v1/builds")
            .header("authorization", format!("Bearer {}", f.tenant))
            .body(Body::from(body.to_string()))
            .unwrap();
        let (status, body) = call(&f.core, req).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["diagnostics"][0]["line"], 5, "{v}");
        let big = format!("{{\"workflow\": \"{}\"}}", "x".repeat(300 << 10));
        let req = Request::builder()
            .method("POST")
            .uri("/v1/builds")
            .header("authorization", format!("Bearer {}", f.tenant))
            .body(Body::from(big))
            .unwrap();
        let (status, body) = call(&f.core, req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("a 413 is JSON too");
        assert_eq!(v["error"], "request body too large", "{v}");
        // A query string that does not parse, a method a route lacks: JSON.
        for (method, uri, want) in [
            ("GET", "/v1/builds?limit=many", StatusCode::BAD_REQUEST),
            ("DELETE", "/v1/builds", StatusCode::METHOD_NOT_ALLOWED),
        ] {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {}", f.tenant))
                .body(Body::empty())
                .unwrap();
            let (status, body) = call(&f.core, req).await;
            assert_eq!(status, want, "{method} {uri}: {}", String::from_utf8_lossy(&body));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!("{method} {uri}: not JSON ({e}): {}", String::from_utf8_lossy(&body))
            });
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        }
        // A hostile archive is refused, not extracted.
        let tar = kiln_store::tar::RawTarBuilder::new().file("../escape", 0o644, b"x").finish();
        use base64::Engine as _;
        let body = serde_json::json!({
            "workflow": "jobs:\n  a:\n    steps:\n      - run: echo\n",
            "source_tar_base64": base64::engine::general_purpose::STANDARD.encode(tar),
        });
        let req = Request::builder()
            .method("POST")
            .uri("/v1/builds")
            .header("authorization", format!("Bearer {}", f.tenant))
            .body(Body::from(body.to_string()))
            .unwrap();
        let (status, body) = call(&f.core, req).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{}", String::from_utf8_lossy(&body));
    });
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("jobs:\n  a:\n    steps:\n      - run: echo hi\n"),
            Just("urgent"),
            Just("normal"),
            Just("build"),
            Just("aGVsbG8="),
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("workflow".to_string()),
                        Just("priority".to_string()),
                        Just("source_tar_base64".to_string()),
                        Just("timeout_seconds".to_string()),
                        Just("ref".to_string()),
                        Just("value".to_string()),
                        Just("phases".to_string()),
                        Just("worker".to_string()),
                        Just("attempt".to_string()),
                        Just("events".to_string()),
                        Just("status".to_string()),
                        "[a-z_]{1,8}",
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..200),
        Just(Vec::new()),
    ]
}

/// One arbitrary request to one route, as one of the tokens (or none).
#[allow(clippy::too_many_arguments)]
fn arbitrary_request(
    f: &Shared,
    route: usize,
    id: String,
    who: usize,
    body: Vec<u8>,
    key: Option<String>,
    last_id: Option<String>,
    query: Option<String>,
) -> Result<(), TestCaseError> {
    let (method, path) = kiln_server::api::ROUTES[route];
    let id: String = id.chars().filter(|c| !matches!(c, '/' | '?' | '#' | '%' | ' ')).collect();
    let mut uri = fill(path, if id.is_empty() { "x" } else { &id });
    if let Some(q) = &query {
        let q: String = q.chars().filter(|c| !c.is_whitespace()).collect();
        uri = format!("{uri}?{q}");
    }
    let mut req = Request::builder().method(method).uri(uri);
    let token = match who {
        0 => Some(f.1.clone()),
        1 => Some(f.2.clone()),
        2 => Some(f.3.clone()),
        _ => None,
    };
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(k) = &key {
        req = req.header("idempotency-key", k.as_str());
    }
    if let Some(l) = &last_id {
        req = req.header("last-event-id", l.as_str());
    }
    let Ok(req) = req.body(Body::from(body)) else { return Ok(()) };
    // A worker's long poll waits for work; this server has none to give.
    let (status, text) = rt().block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(60), call(&f.0, req)).await.unwrap()
    });
    prop_assert!(
        status.is_success() || status.is_client_error(),
        "{method} {path}: {status} {}",
        String::from_utf8_lossy(&text)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_requests_get_only_2xx_or_4xx(
        route in 0..kiln_server::api::ROUTES.len(),
        id in prop_oneof![Just("nope".to_string()), "[ -~]{0,30}", Just("sha256:".to_string() + &"a".repeat(64))],
        who in 0..4usize,
        body in body(),
        key in prop::option::of("[ -~]{0,40}"),
        last_id in prop::option::of("[ -~]{0,12}"),
        query in prop::option::of("[a-z]{1,8}=[ -~&&[^#%]]{0,12}"),
    ) {
        let f = FIXTURE.with(|f| f.clone());
        arbitrary_request(&f, route, id, who, body, key, last_id, query)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// The same on PostgreSQL (fewer cases: each is a round trip more).
    #[test]
    fn arbitrary_requests_get_only_2xx_or_4xx_on_postgres(
        route in 0..kiln_server::api::ROUTES.len(),
        id in prop_oneof![Just("nope".to_string()), "[ -~]{0,30}", Just("sha256:".to_string() + &"a".repeat(64))],
        who in 0..4usize,
        body in body(),
        key in prop::option::of("[ -~]{0,40}"),
        last_id in prop::option::of("[ -~]{0,12}"),
        query in prop::option::of("[a-z]{1,8}=[ -~&&[^#%]]{0,12}"),
    ) {
        let f = PG_FIXTURE.with(|f| f.clone());
        arbitrary_request(&f, route, id, who, body, key, last_id, query)?;
    }
}

type Shared = (
    Arc<Core>,
    String,
    String,
    String,
    Arc<(tempfile::TempDir, Option<kiln_server::pgcluster::LocalCluster>)>,
);

fn shared(f: Fixture) -> Shared {
    (f.core, f.tenant, f.worker, f.operator, Arc::new((f._dir, f._cluster)))
}

thread_local! {
    static FIXTURE: Shared = shared(fixture());
    static PG_FIXTURE: Shared = {
        TEST_DATABASE.with(|d| d.set(TestDatabase::Postgres));
        shared(fixture())
    };
}

/// The worker routes of the deployment's cache: only the worker holding a
/// build's lease reads or writes its cache, keys are bounded, and an
/// archive that does not hash to the tree it names, or that climbs out of
/// its root, is refused.
fn the_shared_cache_answers_only_the_lease_holder_and_refuses_bad_archives() {
    use base64::Engine as _;
    let f = fixture();
    rt().block_on(async {
        let post = |token: &str, uri: String, body: serde_json::Value| {
            Request::builder()
                .method("POST")
                .uri(uri)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        let submit = serde_json::json!({"workflow": "jobs:\n  a:\n    steps:\n      - run: echo\n"});
        let (status, body) = call(&f.core, post(&f.tenant, "/v1/builds".into(), submit)).await;
        assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
        let id = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"].as_str().unwrap().to_string();
        let restore = format!("/v1/worker/builds/{id}/cache/restore");
        let save = format!("/v1/worker/builds/{id}/cache/save");
        let ask = |worker: &str, attempt: i64| serde_json::json!({"worker": worker, "attempt": attempt, "key": "k"});
        // Nobody holds the lease yet.
        let (status, _) = call(&f.core, post(&f.worker, restore.clone(), ask("w1", 1))).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (status, body) = call(
            &f.core,
            post(&f.worker, "/v1/worker/lease".into(), serde_json::json!({"worker": "w1", "wait_seconds": 5})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let attempt = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["attempt"].as_i64().unwrap();
        // A tenant's token, another worker, another attempt: refused.
        let (status, _) = call(&f.core, post(&f.tenant, restore.clone(), ask("w1", attempt))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = call(&f.core, post(&f.worker, restore.clone(), ask("w2", attempt))).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (status, _) = call(&f.core, post(&f.worker, restore.clone(), ask("w1", attempt + 1))).await;
        assert_eq!(status, StatusCode::CONFLICT);
        // The holder: nothing cached yet.
        let (status, body) = call(&f.core, post(&f.worker, restore.clone(), ask("w1", attempt))).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["hit"], serde_json::Value::Null);
        // Keys are bounded as GitHub bounds them.
        for bad in [
            serde_json::json!({"worker": "w1", "attempt": attempt, "key": "k".repeat(513)}),
            serde_json::json!({"worker": "w1", "attempt": attempt, "key": " "}),
            serde_json::json!({"worker": "w1", "attempt": attempt, "key": "k", "restore_keys": vec!["r"; 11]}),
        ] {
            let (status, body) = call(&f.core, post(&f.worker, restore.clone(), bad.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {}", String::from_utf8_lossy(&body));
        }
        // Archives: one that climbs out, one that is not the tree it names.
        let b64 = |t: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(t);
        let climbing = kiln_store::tar::RawTarBuilder::new().file("../escape", 0o644, b"x").finish();
        let honest = kiln_store::tar::RawTarBuilder::new().file("deps/a", 0o644, b"x").finish();
        let other_tree = kiln_store::Digest::of(b"not this tree").to_string();
        for (tar, tree) in [(climbing, other_tree.clone()), (honest, other_tree)] {
            let body = serde_json::json!({
                "worker": "w1", "attempt": attempt, "key": "k", "tree": tree, "tree_tar_base64": b64(tar),
            });
            let (status, body) = call(&f.core, post(&f.worker, save.clone(), body)).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{}", String::from_utf8_lossy(&body));
        }
        // Nothing was saved by either.
        let (_, body) = call(&f.core, post(&f.worker, restore.clone(), ask("w1", attempt))).await;
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["hit"], serde_json::Value::Null);
    });
}

/// Every database call of a request used to run on the async thread that
/// served it: a call that waits (on a lock, a disk, PostgreSQL restarting)
/// stalled every task of that thread. Now the wait happens on the blocking
/// pool: with the control database's handle held here, the request is
/// still pending after a poll, and it finishes once the handle is let go.
/// (Were the handler to take the handle on this thread, the poll would
/// never come back; in debug builds it panics first.)
#[test]
// The handle is held across the poll on purpose: it is the wait.
#[allow(clippy::await_holding_lock)]
fn bug_a_waiting_database_call_held_the_async_thread() {
    let f = fixture();
    rt().block_on(async {
        for path in ["/v1/builds", "/v1/usage", "/v1/secrets", "/v1/builds/nope/logs?format=text"] {
            let held = f.core.read();
            let req = Request::builder()
                .uri(path)
                .header("authorization", format!("Bearer {}", f.tenant))
                .body(Body::empty())
                .unwrap();
            let mut pending = Box::pin(call(&f.core, req));
            assert!(futures::poll!(&mut pending).is_pending(), "{path} answered while its database was held");
            drop(held);
            let (status, body) = pending.await;
            assert!(
                status == StatusCode::OK || status == StatusCode::NOT_FOUND,
                "{path}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
    });
}
