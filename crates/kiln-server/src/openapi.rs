//! The OpenAPI 3.1 document served at `/openapi.json`. Written by hand
//! (no schema generator dependency); a test checks that it lists exactly
//! the routes the router serves.

use serde_json::{json, Value};

fn op(summary: &str, responses: &[(&str, &str)]) -> Value {
    let mut r = serde_json::Map::new();
    for (code, what) in responses {
        r.insert((*code).to_string(), json!({"description": what}));
    }
    r.insert("401".into(), json!({"description": "no or unknown bearer token"}));
    json!({"summary": summary, "responses": r})
}

/// The document.
pub fn document() -> Value {
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let artifact = json!([{"name": "artifact", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}}]);
    let name = json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let with = |mut v: Value, params: &Value| {
        v["parameters"] = params.clone();
        v
    };
    json!({
        "openapi": "3.1.0",
        "info": {"title": "kiln", "version": env!("CARGO_PKG_VERSION"),
                 "description": "The kiln control plane. Every request needs `Authorization: Bearer <token>`. Errors are `{\"error\": \"...\"}`. Another tenant's ids answer 404."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Submit": {"type": "object", "additionalProperties": false,
                    "description": "exactly one of `workflow` (with an optional source archive) and `repository` (the zero-config build)",
                    "properties": {
                    "workflow": {"type": "string", "description": "the workflow YAML text"},
                    "repository": {"type": "string", "description": "an https git URL: kiln builds it with no configuration (fetch, install, build, package)"},
                    "ignore_scripts": {"type": "boolean", "description": "with `repository`: install without lifecycle scripts"},
                    "depth": {"type": "integer", "minimum": 0, "description": "with `repository`: commits of history to fetch (default 1, 0: all)"},
                    "notify": {"type": "string", "description": "a deployment webhook URL, posted (HMAC-signed, retried) when the build succeeds with a deployable artifact"},
                    "source_tar_base64": {"type": "string", "description": "a tar of the source directory, base64"},
                    "priority": {"enum": ["urgent", "normal"]},
                    "ref": {"type": "string"},
                    "timeout_seconds": {"type": "integer", "minimum": 1, "description": "at most the plan's limit"},
                    "file": {"type": "string", "description": "the workflow's name in diagnostics"}}},
                "Build": {"type": "object", "properties": {
                    "id": {"type": "string"}, "tenant": {"type": "string"}, "priority": {"type": "string"},
                    "state": {"enum": ["queued", "provisioning", "running", "extracting", "succeeded", "failed", "cancelled"]},
                    "failure": {"enum": ["user", "infrastructure", null]}, "reason": {"type": ["string", "null"]},
                    "retries": {"type": "integer"}, "attempt": {"type": "integer"}, "timings": {"type": "object"},
                    "submitted_by": {"type": ["string", "null"], "description": "the submitting token's id and what it spoke for"},
                    "jobs": {"type": "array"}, "transitions": {"type": "array"}, "attempts": {"type": "array"}, "usage": {"type": ["object", "null"]}}},
                "Secret": {"type": "object", "required": ["value", "phases"], "additionalProperties": false, "properties": {
                    "value": {"type": "string", "minLength": 8},
                    "phases": {"type": "array", "items": {"enum": ["source-fetch", "dependency-install", "build", "artifact-upload", "deploy"]}}}},
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/openapi.json": {"get": op("this document", &[("200", "the OpenAPI document")])},
            "/metrics": {"get": op("Prometheus metrics (operator tokens)", &[("200", "text exposition format"), ("403", "not an operator")])},
            "/v1/builds": {
                "post": {
                    "summary": "submit a build",
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 200}}],
                    "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Submit"}}}},
                    "responses": {"201": {"description": "queued"}, "200": {"description": "the build an earlier request with the same Idempotency-Key made"},
                                  "400": {"description": "malformed request"}, "401": {"description": "no or unknown token"},
                                  "409": {"description": "Idempotency-Key reused with a different request"}, "413": {"description": "body too large"},
                                  "422": {"description": "invalid workflow (with `diagnostics`: line, column, message), refused archive, plan limit"}}
                },
                "get": with(op("the tenant's builds, newest first", &[("200", "`{builds: [Build]}`")]),
                    &json!([{"name": "limit", "in": "query", "schema": {"type": "integer"}}, {"name": "state", "in": "query", "schema": {"type": "string"}}]))
            },
            "/v1/builds/{id}": {"get": with(op("a build with jobs, steps, timings, transitions, attempts, usage", &[("200", "Build"), ("404", "no such build of this tenant")]), &id)},
            "/v1/builds/{id}/cancel": {"post": with(op("cancel a build (queued: at once; running: when its worker stops it)", &[("202", "Build"), ("404", "no such build")]), &id)},
            "/v1/builds/{id}/logs": {"get": with(op("the build's log: Server-Sent Events (`log` events with `id` = log position, then one `end` event), resumable with `Last-Event-ID` or `?after=`; `?format=text` for a plain download", &[("200", "text/event-stream or text/plain"), ("404", "no such build")]), &json!([
                {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "format", "in": "query", "schema": {"enum": ["sse", "text"]}},
                {"name": "after", "in": "query", "schema": {"type": "integer"}},
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer"}}]))},
            "/v1/builds/{id}/artifacts": {"get": with(op("artifacts the build stored", &[("200", "`{artifacts: [...]}`"), ("404", "no such build")]), &id)},
            "/v1/artifacts/{artifact}": {"get": with(op("an artifact's files as a tar (each file verified against its digest)", &[("200", "application/x-tar"), ("404", "no such artifact of this tenant")]), &artifact)},
            "/v1/artifacts/{artifact}/provenance": {"get": with(op("the artifact's signed provenance (DSSE envelope)", &[("200", "application/json"), ("404", "none")]), &artifact)},
            "/v1/usage": {"get": with(op("usage records of the tenant's finished builds; CSV with `Accept: text/csv` or `?format=csv`", &[("200", "JSON `{usage: [...]}` or CSV")]), &json!([{"name": "format", "in": "query", "schema": {"enum": ["json", "csv"]}}]))},
            "/v1/key": {"get": op("the public key (hex) and key id that sign every artifact's provenance in this deployment", &[("200", "`{public_key, keyid}`")])},
            "/v1/audit": {"get": with(op("audit events (the tenant's; every tenant's for operators), append-only", &[("200", "`{events: [...]}`")]), &json!([{"name": "after", "in": "query", "schema": {"type": "integer"}}, {"name": "limit", "in": "query", "schema": {"type": "integer"}}]))},
            "/v1/secrets": {"get": op("the tenant's secrets: names and phases, never values", &[("200", "`{secrets: [{name, phases, updated_at}]}`")])},
            "/v1/secrets/{name}": {
                "put": {"summary": "set a secret (encrypted at rest, bound to phases; values under 8 bytes refused)", "parameters": name,
                        "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Secret"}}}},
                        "responses": {"200": {"description": "stored"}, "400": {"description": "malformed"}, "401": {"description": "no or unknown token"}, "422": {"description": "bad name, short value, unknown phase"}}},
                "delete": with(op("delete a secret", &[("204", "deleted"), ("404", "no such secret")]), &name)
            },
            "/v1/worker/lease": {"post": op("(worker tokens) wait up to `wait_seconds` for a build: `{worker, wait_seconds}`", &[("200", "the build, its source and secrets"), ("204", "nothing to do"), ("403", "not a worker token")])},
            "/v1/worker/builds/{id}/events": {"post": with(op("(worker tokens) engine events of an attempt, in order; also the heartbeat: `{worker, attempt, events}`", &[("200", "`{stop}`: stop the build"), ("409", "the lease was taken back: abandon the build")]), &id)},
            "/v1/worker/builds/{id}/artifacts": {"post": with(op("(worker tokens) an artifact the attempt stored: `{worker, attempt, record, tree_tar_base64, provenance_base64}`; the tree must hash to the artifact id", &[("200", "stored in the tenant's namespace"), ("409", "the lease was taken back"), ("422", "the archive or record was refused")]), &id)},
            "/v1/worker/builds/{id}/cache/restore": {"post": with(op("(worker tokens) look a cache entry up in the scope of the leased build: `{worker, attempt, key, restore_keys, lookup_only}`", &[("200", "`{hit}`: null, or `{key, tree, files, bytes, tree_tar_base64}`"), ("400", "a key is empty, too long or there are too many"), ("409", "the lease was taken back")]), &id)},
            "/v1/worker/builds/{id}/cache/save": {"post": with(op("(worker tokens) save a cache entry into the leased build's own scope: `{worker, attempt, key, tree, tree_tar_base64}`; the archive must hash to `tree`", &[("200", "`{tree}`: saved"), ("409", "the lease was taken back"), ("422", "the archive was refused")]), &id)},
            "/v1/worker/builds/{id}/finish": {"post": with(op("(worker tokens) the end of an attempt: `{worker, attempt, status | infra, egress_bytes}`", &[("200", "recorded"), ("409", "the lease was taken back")]), &id)}
        }
    })
}
