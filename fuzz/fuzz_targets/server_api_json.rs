//! The JSON bodies of kiln-server's API, parsed as their handlers parse them
//! (`kiln_server::api::fuzzing::parse_body`, i.e. the API's `parse_json`):
//! `submit`, `secret`, and the worker API's `lease`, `events`, `artifact`
//! and `finish`; plus the lease reply a worker parses. For `submit`, the
//! `repository` goes on through `parse_source` and the generated pipeline.
//!
//! The first byte picks the body, the rest is the JSON.
//!
//! Invariants: never panics; a body is accepted exactly when it is a JSON
//! object that serde accepts; the worker API's types survive a
//! serialise/parse round trip; `parse_source` errors never show a URL's
//! password; a remote repository's generated pipeline is a workflow that
//! loads.
#![no_main]

use kiln_build::pipeline::{parse_source, redacted, workflow_text, PipelineOptions, Source};
use kiln_server::api::fuzzing::parse_body;
use kiln_server::remote::{ArtifactUpload, EventsRequest, FinishRequest, LeaseReply, LeaseRequest};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

const ENDPOINTS: &[&str] = &["submit", "secret", "lease", "events", "artifact", "finish", "lease-reply"];

fn is_object(body: &[u8]) -> bool {
    body.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) == Some(&b'{')
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

/// The serde side of `parse_json`; round trip for what it accepts.
fn typed<T: Serialize + DeserializeOwned>(body: &[u8]) -> bool {
    let Ok(x) = serde_json::from_slice::<T>(body) else {
        return false;
    };
    let v1 = serde_json::to_value(&x).expect("serialise");
    // Floats may move by an ulp through text (serde_json parses them best-effort).
    if !has_float(&v1) {
        let s = serde_json::to_string(&x).expect("serialise");
        let y: T = serde_json::from_str(&s).unwrap_or_else(|e| panic!("own output refused: {e}\n{s}"));
        assert_eq!(serde_json::to_value(&y).expect("serialise"), v1, "round trip changed the value");
    }
    true
}

fn repository(v: &Value) {
    let Some(repo) = v.get("repository").and_then(Value::as_str) else {
        return;
    };
    match parse_source(repo) {
        Err(e) => {
            if let Ok(u) = url::Url::parse(repo) {
                if let Some(pw) = u.password() {
                    if pw.len() >= 6 && !redacted(repo).contains(pw) {
                        assert!(!e.contains(pw), "parse_source's error shows the password: {e}");
                    }
                }
            }
        }
        Ok(source @ Source::Remote { .. }) => {
            let opts = PipelineOptions {
                name: repo.to_string(),
                git_ref: v.get("ref").and_then(Value::as_str).filter(|r| !r.is_empty()).map(str::to_string),
                depth: Some(1),
                ignore_scripts: v.get("ignore_scripts").and_then(Value::as_bool).unwrap_or(false),
                ..Default::default()
            };
            let wf = workflow_text(&opts, &source);
            if let Err(d) = kiln_workflow::load("workflow.yml", &wf) {
                panic!("the pipeline generated for {repo:?} does not load: {d}\n{wf}");
            }
        }
        Ok(Source::Local(_)) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let endpoint = ENDPOINTS[sel as usize % ENDPOINTS.len()];
    if endpoint == "lease-reply" {
        typed::<LeaseReply>(body);
        return;
    }
    let accepted = parse_body(endpoint, body).expect("a known endpoint").is_ok();
    let serde_ok = match endpoint {
        "lease" => typed::<LeaseRequest>(body),
        "events" => typed::<EventsRequest>(body),
        "artifact" => typed::<ArtifactUpload>(body),
        "finish" => typed::<FinishRequest>(body),
        _ => serde_json::from_slice::<Value>(body).is_ok(),
    };
    if endpoint != "submit" && endpoint != "secret" {
        assert_eq!(accepted, is_object(body) && serde_ok, "parse_json disagrees with serde");
    } else if accepted {
        assert!(is_object(body) && serde_ok);
    }
    if accepted && endpoint == "submit" {
        let v: Value = serde_json::from_slice(body).expect("accepted, so JSON");
        repository(&v);
    }
});
