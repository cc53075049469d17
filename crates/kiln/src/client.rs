//! API clients: `kiln submit`, `status`, `cancel`, and `logs` / `artifact
//! get` when `KILN_SERVER` is set. Configured by `KILN_SERVER` (the
//! server's URL), `KILN_TOKEN` (a tenant token) and, for an https server
//! whose certificate Mozilla's roots do not vouch for, `KILN_CA` (PEM: the
//! only certificate trusted).
//!
//! Exit status: 0 done (or the build succeeded), 1 the build failed,
//! 2 the server refused the request (4xx), 3 the server could not be reached
//! or failed (5xx), 130 the build was cancelled.

use crate::exit::Exit;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use base64::Engine as _;
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PriorityArg {
    Urgent,
    Normal,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The workflow file (or --repository for a zero-config build).
    #[arg(required_unless_present = "repository")]
    pub workflow: Option<PathBuf>,
    /// An https git URL the server builds with no configuration (fetch,
    /// install, build, package), instead of a workflow.
    #[arg(long, conflicts_with_all = ["workflow", "source"])]
    pub repository: Option<String>,
    /// With --repository: the whole history instead of the last commit.
    #[arg(long, requires = "repository")]
    pub full: bool,
    /// A directory sent along as the build's source (`actions/checkout`).
    #[arg(long)]
    pub source: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "normal")]
    pub priority: PriorityArg,
    /// Follow the log until the build ends; exit with its status.
    #[arg(long)]
    pub wait: bool,
    /// Submitting again with the same key returns the same build.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Seconds the build may run (at most the plan's limit).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// The git ref the source is (`refs/heads/main`).
    #[arg(long = "ref")]
    pub git_ref: Option<String>,
    /// Print the build as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The build id.
    pub build: String,
    #[arg(long)]
    pub json: bool,
}

/// Whether `KILN_SERVER` points the CLI at a server.
pub fn server_configured() -> bool {
    std::env::var("KILN_SERVER").is_ok_and(|s| !s.is_empty())
}

struct Client {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

/// An API failure: the exit status it means and its message.
struct Failure(Exit, String);

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure(Exit::Infra, format!("{e:#}"))
    }
}

fn finish(r: Result<Exit, Failure>) -> Exit {
    match r {
        Ok(c) => c,
        Err(Failure(code, msg)) => {
            eprintln!("error: {msg}");
            code
        }
    }
}

impl Client {
    fn from_env() -> Result<Client, Failure> {
        let base = std::env::var("KILN_SERVER")
            .map_err(|_| Failure(Exit::Invalid, "KILN_SERVER is not set".into()))?;
        let token = std::env::var("KILN_TOKEN")
            .map_err(|_| Failure(Exit::Invalid, "KILN_TOKEN is not set".into()))?;
        let ca = std::env::var_os("KILN_CA").filter(|c| !c.is_empty()).map(PathBuf::from);
        let tls =
            kiln_server::tls::client_tls(ca.as_deref()).map_err(|e| Failure(Exit::Invalid, e.to_string()))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .tls_config(tls)
            .build()
            .into();
        Ok(Client {
            agent,
            base: base.trim_end_matches('/').to_string(),
            auth: format!("Bearer {}", token.trim()),
        })
    }

    fn check(
        &self,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> Result<ureq::http::Response<ureq::Body>, Failure> {
        let status = resp.status().as_u16();
        if status < 400 {
            return Ok(resp);
        }
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                let mut m = v["error"].as_str()?.to_string();
                for d in v["diagnostics"].as_array().into_iter().flatten() {
                    m.push_str(&format!(
                        "\n  line {}:{}: {}",
                        d["line"],
                        d["column"],
                        d["message"].as_str().unwrap_or("")
                    ));
                }
                Some(m)
            })
            .unwrap_or(text);
        let code = if status < 500 { Exit::Invalid } else { Exit::Infra };
        Err(Failure(code, format!("server: {status}: {msg}")))
    }

    fn get(&self, path: &str) -> Result<ureq::http::Response<ureq::Body>, Failure> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .agent
            .get(&url)
            .header("Authorization", &self.auth)
            .call()
            .map_err(|e| anyhow!("GET {url}: {e}"))?;
        self.check(resp)
    }

    fn get_json(&self, path: &str) -> Result<Value, Failure> {
        let mut resp = self.get(path)?;
        Ok(resp.body_mut().read_json::<Value>().map_err(|e| anyhow!("{path}: {e}"))?)
    }

    fn post_json(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Result<(u16, Value), Failure> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.post(&url).header("Authorization", &self.auth);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send_json(body).map_err(|e| anyhow!("POST {url}: {e}"))?;
        let mut resp = self.check(resp)?;
        let status = resp.status().as_u16();
        let v = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_json::<Value>()
            .map_err(|e| anyhow!("{path}: {e}"))?;
        Ok((status, v))
    }
}

/// The exit status a final build state means.
fn state_code(state: &str) -> Exit {
    match state {
        "succeeded" => Exit::Ok,
        "cancelled" => Exit::Cancelled,
        _ => Exit::Failed,
    }
}

/// A source directory as a tar (through the content store's tree walk:
/// the same rules for modes, symlinks and special files as artifacts).
fn source_tar(dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let scratch = tempfile_dir()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(async {
        let store = kiln_store::Store::open_local(&scratch).map_err(|e| anyhow!("{e}"))?;
        let tree = store.put_tree(dir).await.map_err(|e| anyhow!("reading {}: {e}", dir.display()))?;
        let manifest = store.get_manifest(&tree).await.map_err(|e| anyhow!("{e}"))?;
        kiln_server::tarout::tree_tar(&store, &manifest).await.map_err(|e| anyhow!("{e}"))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("kiln-client-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub fn submit(args: SubmitArgs) -> Exit {
    finish((|| {
        let client = Client::from_env()?;
        let priority = match args.priority {
            PriorityArg::Urgent => "urgent",
            PriorityArg::Normal => "normal",
        };
        let mut body = match (&args.workflow, &args.repository) {
            (_, Some(repo)) => {
                json!({ "repository": repo, "priority": priority, "depth": if args.full { 0 } else { 1 } })
            }
            (Some(wf), None) => {
                let workflow = std::fs::read_to_string(wf)
                    .map_err(|e| Failure(Exit::Invalid, format!("cannot read {}: {e}", wf.display())))?;
                json!({
                    "workflow": workflow,
                    "file": wf.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "workflow.yml".into()),
                    "priority": priority,
                })
            }
            (None, None) => return Err(Failure(Exit::Invalid, "a workflow file or --repository".into())),
        };
        if let Some(dir) = &args.source {
            let tar = source_tar(dir)?;
            body["source_tar_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(tar));
        }
        if let Some(t) = args.timeout {
            body["timeout_seconds"] = json!(t);
        }
        if let Some(r) = &args.git_ref {
            body["ref"] = json!(r);
        }
        let headers: Vec<(&str, &str)> =
            args.idempotency_key.as_deref().map(|k| vec![("Idempotency-Key", k)]).unwrap_or_default();
        let (status, build) = client.post_json("/v1/builds", &body, &headers)?;
        let id = build["id"].as_str().unwrap_or_default().to_string();
        if args.json {
            println!("{build}");
        } else {
            let again = if status == 200 { " (already submitted with this key)" } else { "" };
            println!("{id}{again}");
        }
        if args.wait {
            return follow(&client, &id, args.json);
        }
        Ok(Exit::Ok)
    })())
}

pub fn status(args: BuildArgs) -> Exit {
    finish((|| {
        let client = Client::from_env()?;
        let b = client.get_json(&format!("/v1/builds/{}", args.build))?;
        if args.json {
            println!("{b}");
        } else {
            let failure = b["failure"].as_str().map(|f| format!(" ({f})")).unwrap_or_default();
            let reason = b["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
            println!(
                "build {} {}{failure}{reason}",
                b["id"].as_str().unwrap_or(""),
                b["state"].as_str().unwrap_or("")
            );
            println!(
                "  priority {}, attempt {}, retries {}",
                b["priority"].as_str().unwrap_or(""),
                b["attempt"],
                b["retries"]
            );
            for j in b["jobs"].as_array().into_iter().flatten() {
                println!(
                    "  job {:<24} {}",
                    j["id"].as_str().unwrap_or(""),
                    j["status"].as_str().unwrap_or("")
                );
            }
        }
        Ok(Exit::Ok)
    })())
}

pub fn cancel(args: BuildArgs) -> Exit {
    finish((|| {
        let client = Client::from_env()?;
        let (_, b) = client.post_json(&format!("/v1/builds/{}/cancel", args.build), &json!({}), &[])?;
        if args.json {
            println!("{b}");
        } else {
            println!("build {}: cancel requested ({})", args.build, b["state"].as_str().unwrap_or(""));
        }
        Ok(Exit::Ok)
    })())
}

/// `kiln logs BUILD` against the server: the whole log, or with `-f` the
/// live stream until the build ends.
pub fn logs(args: crate::cli::LogsArgs) -> Exit {
    finish((|| {
        let client = Client::from_env()?;
        if args.follow {
            return follow(&client, &args.build, args.json);
        }
        let mut resp = client.get(&format!("/v1/builds/{}/logs?format=text", args.build))?;
        let text =
            resp.body_mut().with_config().limit(1 << 32).read_to_string().map_err(|e| anyhow!("{e}"))?;
        print!("{text}");
        Ok(Exit::Ok)
    })())
}

/// Follows a build's log over Server-Sent Events, reconnecting with
/// `Last-Event-ID` after a dropped connection, and returns the build's exit
/// status.
fn follow(client: &Client, build: &str, json_out: bool) -> Result<Exit, Failure> {
    let mut last: Option<String> = None;
    let mut failures = 0;
    loop {
        let url = format!("{}/v1/builds/{build}/logs", client.base);
        let mut req = client
            .agent
            .get(&url)
            .header("Authorization", &client.auth)
            .header("Accept", "text/event-stream");
        if let Some(id) = &last {
            req = req.header("Last-Event-ID", id);
        }
        let resp = match req.call() {
            Ok(r) => client.check(r)?,
            Err(e) => {
                failures += 1;
                if failures > 30 {
                    return Err(Failure(Exit::Infra, format!("GET {url}: {e}")));
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let reader = BufReader::new(resp.into_body().into_reader());
        let (mut id, mut event, mut data) = (None::<String>, String::new(), String::new());
        let mut out = std::io::stdout().lock();
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if line.is_empty() {
                if event == "end" {
                    let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                    let state = v["state"].as_str().unwrap_or("");
                    if json_out {
                        let _ = writeln!(
                            out,
                            "{}",
                            json!({"type": "end", "build": build, "state": state, "failure": v["failure"], "reason": v["reason"]})
                        );
                    } else {
                        let why = v["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
                        let _ = writeln!(out, "build {build} {state}{why}");
                    }
                    return Ok(state_code(state));
                }
                if event == "log" {
                    if json_out {
                        let _ = writeln!(out, "{data}");
                    } else if let Ok(v) = serde_json::from_str::<Value>(&data) {
                        let _ = writeln!(
                            out,
                            "[{}] {}",
                            v["job"].as_str().unwrap_or(""),
                            v["text"].as_str().unwrap_or("")
                        );
                    }
                    let _ = out.flush();
                    if id.is_some() {
                        last = id.take();
                    }
                }
                event.clear();
                data.clear();
                continue;
            }
            if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        // The connection dropped before the end: resume where it stopped.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kiln artifact get ID --out DIR` against the server: the tar is checked
/// by the content store's strict reader and every file by its digest.
pub fn artifact_get(id: &str, out: &std::path::Path) -> Exit {
    finish((|| {
        if std::fs::symlink_metadata(out).is_ok() {
            return Err(Failure(
                Exit::Invalid,
                format!("{} already exists; name a new directory", out.display()),
            ));
        }
        let client = Client::from_env()?;
        let mut resp = client.get(&format!("/v1/artifacts/{id}"))?;
        let tar = resp.body_mut().with_config().limit(1 << 34).read_to_vec().map_err(|e| anyhow!("{e}"))?;
        let scratch = tempfile_dir()?;
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| anyhow!("{e}"))?;
        let result = rt.block_on(async {
            let store = kiln_store::Store::open_local(&scratch).map_err(|e| anyhow!("{e}"))?;
            store
                .extract_tar(std::io::Cursor::new(tar), out, &kiln_store::RestoreLimits::default())
                .await
                .map_err(|e| anyhow!("the server's archive was refused: {e}"))
        });
        let _ = std::fs::remove_dir_all(&scratch);
        let stats = result?;
        if stats.digest.to_string() != id {
            let _ = std::fs::remove_dir_all(out);
            return Err(Failure(
                Exit::Infra,
                format!("the server sent tree {} for artifact {id}", stats.digest),
            ));
        }
        println!("restored {id} ({} files, {} bytes) into {}", stats.files, stats.bytes, out.display());
        Ok(Exit::Ok)
    })())
}
