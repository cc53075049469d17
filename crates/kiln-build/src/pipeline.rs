//! The zero-config pipeline as a workflow: fetch → `kiln/detect` → the
//! dependency cache → install → build → `kiln/package`, one job whose steps
//! each run in their own sandbox with their phase's network. `kiln build`
//! and `kiln serve` (a build of a repository URL) both run it; the engine
//! loads it like any workflow file.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// Which submodules the fetch checks out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Submodules {
    #[default]
    None,
    Shallow,
    Recursive,
}

impl Submodules {
    pub fn as_str(self) -> &'static str {
        match self {
            Submodules::None => "none",
            Submodules::Shallow => "shallow",
            Submodules::Recursive => "recursive",
        }
    }
}

/// How to write the pipeline.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    /// Shown in the pipeline's name (the source as the user gave it).
    pub name: String,
    pub git_ref: Option<String>,
    /// History depth; `None`: the whole history.
    pub depth: Option<u32>,
    /// Paths to check out (cone mode); empty: everything.
    pub sparse: Vec<String>,
    pub submodules: Submodules,
    pub lfs_fetch: bool,
    pub ignore_scripts: bool,
    /// Operator-named registry mirrors.
    pub registries: Vec<Registry>,
}

/// Deepest directory a fetched tree may have.
const MAX_TREE_DEPTH: u32 = 64;

/// Where the source comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Fetched inside a sandbox whose network reaches only `host:port`.
    Remote { url: String, host: String, port: u16, plain_http: bool },
    /// A local directory: a git repository is cloned by kiln (no hard links,
    /// no shared objects) before any step runs; anything else is copied.
    Local(PathBuf),
}

/// One operator-named registry mirror: `npm=URL`, `pypi=URL`, `go=URL`.
#[derive(Debug, Clone)]
pub struct Registry {
    pub kind: String,
    pub url: url::Url,
}

impl Registry {
    /// `npm=URL`, `pypi=URL` or `go=URL`.
    pub fn parse(spec: &str) -> Result<Registry, String> {
        let (kind, url) = spec
            .split_once('=')
            .ok_or_else(|| format!("--registry {spec}: expected KIND=URL (npm, pypi or go)"))?;
        if !matches!(kind, "npm" | "pypi" | "go") {
            return Err(format!("--registry {spec}: unknown kind `{kind}` (npm, pypi or go)"));
        }
        let url = url::Url::parse(url).map_err(|e| format!("--registry {spec}: {e}"))?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(format!("--registry {spec}: an http(s) URL with a host"));
        }
        Ok(Registry { kind: kind.to_string(), url })
    }

    /// The environment that points the package manager at the mirror.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let u = self.url.as_str().to_string();
        match self.kind.as_str() {
            "npm" => vec![
                ("npm_config_registry", u.clone()),
                ("YARN_NPM_REGISTRY_SERVER", u.clone()),
                ("BUN_CONFIG_REGISTRY", u),
            ],
            "pypi" => {
                let mut env = vec![("PIP_INDEX_URL", u.clone()), ("UV_INDEX_URL", u)];
                // pip refuses a plain-http index unless told the operator
                // trusts that host (they named it).
                if self.url.scheme() == "http" {
                    env.push(("PIP_TRUSTED_HOST", self.url.host_str().unwrap_or_default().to_string()));
                }
                env
            }
            _ => vec![("GOPROXY", u)],
        }
    }
}

/// What a `kiln build` source argument means; refuses every transport but
/// https (and plain http, which the caller allows only to an address the
/// operator opened), and local paths.
pub fn parse_source(raw: &str) -> Result<Source, String> {
    // Every message below shows the source without the userinfo a URL may
    // carry: it is often a token.
    let spec = &redacted(raw);
    if raw.contains("${{") {
        return Err("the source may not contain `${{`".into());
    }
    if let Some(rest) = spec.strip_prefix("ext::") {
        let _ = rest;
        return Err("`ext::` transports are never allowed".into());
    }
    if raw.contains("://") {
        let url = url::Url::parse(raw).map_err(|e| format!("{spec}: {e}"))?;
        if url.scheme() == "file" {
            let p = url.to_file_path().map_err(|_| format!("{spec}: not a local path"))?;
            return Ok(Source::Local(p));
        }
        // The transport first: `ssh://git@host/x` is refused for being ssh.
        let plain_http = match url.scheme() {
            "https" => false,
            "http" => true,
            other => return Err(format!("{spec}: only https (or a local path) is fetched, not `{other}`")),
        };
        let host = url.host_str().ok_or_else(|| format!("{spec}: no host"))?.to_string();
        // The URL standard lets through hosts no resolver has (`a`b`); the
        // build's network rules name the host, so it must be a host name.
        if let Some(url::Host::Domain(d)) = url.host() {
            if !is_host_name(d) {
                return Err(format!("{spec}: `{d}` is not a host name"));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{spec}: credentials in the URL are refused; pass a token as a secret"));
        }
        let port = url.port_or_known_default().unwrap_or(443);
        // The build's network rule names this port; no connection goes to 0.
        if port == 0 {
            return Err(format!("{spec}: port 0 is not a port to fetch from"));
        }
        return Ok(Source::Remote { url: url.to_string(), host, port, plain_http });
    }
    if raw.contains(':') && !Path::new(raw).exists() {
        return Err(format!("{spec}: scp-style and ssh URLs are not fetched; use https"));
    }
    Ok(Source::Local(PathBuf::from(raw)))
}

/// Letters, digits and `-` in dot-separated labels of 1 to 63 bytes, not
/// beginning or ending with `-`; 253 bytes at most; no trailing dot (the
/// network rules name hosts as the resolver is asked them).
fn is_host_name(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A source as it may be shown: a URL's userinfo (user, password, token)
/// replaced by `***`, whether or not the rest of it parses.
pub fn redacted(spec: &str) -> String {
    let Some((scheme, rest)) = spec.split_once("://") else { return spec.to_string() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => spec.to_string(),
    }
}

/// The shell script of the fetch step. Everything variable comes from the
/// step's environment, never from text pasted into the script.
fn fetch_script() -> String {
    format!(
        r#"set -eu
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0 GIT_LFS_SKIP_SMUDGE=1 HOME=/tmp
g() {{
  git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c core.pager=cat \
    -c protocol.allow=never -c "protocol.$KILN_FETCH_PROTO.allow=always" \
    -c transfer.fsckObjects=true -c fetch.fsckObjects=true \
    -c submodule.recurse=false -c advice.detachedHead=false -c init.defaultBranch=main "$@"
}}
g init -q .
g remote add origin "$KILN_FETCH_URL"
if [ -n "$KILN_FETCH_SPARSE" ]; then
  # shellcheck disable=SC2086
  g sparse-checkout set --cone -- $KILN_FETCH_SPARSE
fi
# shellcheck disable=SC2086
g fetch -q --no-tags $KILN_FETCH_DEPTH origin "$KILN_FETCH_REF"
g checkout -q --detach FETCH_HEAD
commit=$(g rev-parse HEAD)
echo "commit=$commit" >> "$GITHUB_OUTPUT"
echo "fetched $KILN_FETCH_URL at $commit"
deep=$(find . -path ./.git -prune -o -mindepth {MAX_TREE_DEPTH} -print | head -n 1)
if [ -n "$deep" ]; then
  echo "refused: the tree is deeper than {MAX_TREE_DEPTH} levels ($deep)" >&2
  exit 1
fi
# A relative submodule URL resolves against the superproject's: each
# leading `../` drops one path component of it, and more of them than it
# has would climb onto another host. `..` anywhere else is refused.
rel_ok() {{
  r=$1; ups=0
  while :; do
    case "$r" in
      ./*) r=${{r#./}} ;;
      ../*) r=${{r#../}}; ups=$((ups + 1)) ;;
      *) break ;;
    esac
  done
  case "/$r/" in */../*|*/./*) return 1 ;; esac
  path=${{KILN_FETCH_URL#*://}}; path=${{path#*/}}
  n=$(printf '%s\n' "$path" | tr '/' '\n' | grep -c .)
  [ "$ups" -le "$n" ]
}}
if [ "$KILN_FETCH_SUBMODULES" != none ] && [ -f .gitmodules ]; then
  g config -f .gitmodules --get-regexp '^submodule\..*\.url$' | while read -r key url; do
    case "$url" in
      "$KILN_FETCH_PROTO://$KILN_FETCH_HOST"/*) ;;
      ../*|./*)
        rel_ok "$url" || {{ echo "refused submodule URL of $key: $url (it climbs out of $KILN_FETCH_HOST)" >&2; exit 1; }} ;;
      *) echo "refused submodule URL of $key: $url (only $KILN_FETCH_PROTO on $KILN_FETCH_HOST)" >&2; exit 1 ;;
    esac
  done
  if [ "$KILN_FETCH_SUBMODULES" = recursive ]; then
    g submodule update --init --recursive --depth 1
  else
    g submodule update --init --depth 1
  fi
fi
if [ "$KILN_FETCH_LFS" = fetch ]; then
  command -v git-lfs >/dev/null || {{ echo "--lfs fetch: git-lfs is not installed in the builder" >&2; exit 1; }}
  g lfs pull
fi
"#
    )
}

/// The pipeline for `source` as a workflow document.
fn pipeline(opts: &PipelineOptions, source: &Source) -> Value {
    let mut steps: Vec<Value> = Vec::new();
    match source {
        Source::Remote { url, host, port, plain_http } => {
            let depth = match opts.depth {
                None => String::new(),
                Some(d) => format!("--depth {}", d.max(1)),
            };
            steps.push(json!({
                "id": "fetch",
                "name": "fetch",
                "timeout-minutes": 10,
                // An address (an operator's mirror) is reached through
                // --allow-private; a name through this rule.
                "kiln": { "phase": "source-fetch", "network": { "allow":
                    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') { vec![] } else { vec![format!("{host}:{port}")] }
                } },
                "env": {
                    "KILN_FETCH_URL": url,
                    "KILN_FETCH_HOST": if (*plain_http && *port != 80) || (!*plain_http && *port != 443) { format!("{host}:{port}") } else { host.clone() },
                    "KILN_FETCH_PROTO": if *plain_http { "http" } else { "https" },
                    "KILN_FETCH_REF": opts.git_ref.clone().unwrap_or_else(|| "HEAD".into()),
                    "KILN_FETCH_DEPTH": depth,
                    "KILN_FETCH_SPARSE": opts.sparse.join(" "),
                    "KILN_FETCH_SUBMODULES": opts.submodules.as_str(),
                    "KILN_FETCH_LFS": if opts.lfs_fetch { "fetch" } else { "skip" },
                },
                "run": fetch_script(),
            }));
        }
        Source::Local(_) => {
            steps.push(json!({ "id": "fetch", "name": "fetch", "uses": "actions/checkout@v4" }))
        }
    }
    steps.push(json!({
        "id": "detect",
        "name": "detect",
        "uses": "kiln/detect@v1",
        "with": { "ignore-scripts": opts.ignore_scripts.to_string() },
    }));
    steps.push(json!({
        "id": "deps",
        "name": "dependency cache",
        "if": "steps.detect.outputs.cache-key != ''",
        "kiln": { "phase": "dependency-install" },
        "uses": "actions/cache@v4",
        "with": {
            "key": "${{ steps.detect.outputs.cache-key }}",
            "path": "${{ steps.detect.outputs.cache-paths }}",
        },
    }));
    // Package managers keep their caches and config under HOME: inside the
    // workspace (`.kiln/home`), so the dependency cache can carry them and
    // nothing is written outside it. No telemetry, audits or update checks:
    // they would only knock on the proxy.
    let mut install_env = Map::new();
    let home = format!("${{{{ github.workspace }}}}/{}", crate::HOME_DIR);
    for (k, v) in [
        ("HOME", home.as_str()),
        ("npm_config_audit", "false"),
        ("npm_config_fund", "false"),
        ("npm_config_update_notifier", "false"),
        ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
        ("CARGO_TERM_COLOR", "never"),
    ] {
        install_env.insert(k.to_string(), Value::String(v.to_string()));
    }
    for r in &opts.registries {
        for (k, v) in r.env() {
            install_env.insert(k.to_string(), Value::String(v));
        }
    }
    steps.push(json!({
        "name": "install",
        "if": "steps.detect.outputs.install != '' && steps.deps.outputs.cache-hit != 'true'",
        "timeout-minutes": 30,
        "kiln": { "phase": "dependency-install", "network": "registries" },
        "env": install_env,
        "run": "mkdir -p \"$HOME\"\n${{ steps.detect.outputs.install }}",
    }));
    steps.push(json!({
        "name": "build",
        "if": "steps.detect.outputs.build != '' && steps.detect.outputs.hermetic == 'true'",
        "timeout-minutes": 30,
        "kiln": { "phase": "build", "network": "none" },
        "env": install_env,
        "run": "mkdir -p \"$HOME\"\n${{ steps.detect.outputs.build }}",
    }));
    steps.push(json!({
        "name": "build (with network: kiln.toml hermetic = false)",
        "if": "steps.detect.outputs.build != '' && steps.detect.outputs.hermetic != 'true'",
        "timeout-minutes": 30,
        "kiln": { "phase": "build", "network": "registries" },
        "env": install_env,
        "run": "mkdir -p \"$HOME\"\n${{ steps.detect.outputs.build }}",
    }));
    let mut package = json!({
        "id": "package",
        "name": "package",
        "uses": "kiln/package@v1",
        "with": { "name": "output", "output-type": "${{ steps.detect.outputs.output-type }}" },
    });
    if matches!(source, Source::Remote { .. }) {
        package["with"]["commit"] = json!("${{ steps.fetch.outputs.commit }}");
    }
    steps.push(package);
    json!({
        "name": format!("kiln build {}", opts.name),
        "jobs": { "build": { "name": "build", "timeout-minutes": 90, "steps": steps } },
    })
}

/// Block YAML for a JSON value; every scalar is a double-quoted JSON string
/// (valid YAML), so nothing in a URL or a path can change the structure.
fn to_yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::Object(inner) if !inner.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        to_yaml(v, indent + 2, out);
                    }
                    Value::Array(items) if !items.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        to_yaml(v, indent + 2, out);
                    }
                    _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(v))),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(_) | Value::Array(_) => {
                        let mut inner = String::new();
                        to_yaml(item, indent + 2, &mut inner);
                        let inner = inner.trim_start().to_string();
                        out.push_str(&format!("{pad}- {inner}"));
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", scalar(item))),
                }
            }
        }
        _ => out.push_str(&format!("{pad}{}\n", scalar(v))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

/// The workflow text of the pipeline.
/// The pipeline for `source` as workflow text (what `--print-workflow`
/// shows and what the engine loads).
pub fn workflow_text(opts: &PipelineOptions, source: &Source) -> String {
    let mut out = String::from("# The zero-config pipeline kiln runs for this source.\n");
    to_yaml(&pipeline(opts, source), 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `server_api_json` fuzz target: the URL standard accepts
    /// hosts such as ``a`b``, which then broke the generated pipeline's
    /// network rule instead of being refused as a source.
    #[test]
    fn bug_a_source_host_that_is_not_a_host_name_was_accepted() {
        for bad in ["https://a`b/", "https://g;it.example/x", "https://-a.example/x", "https://a_b.example/x"]
        {
            let e = parse_source(bad).unwrap_err();
            assert!(e.contains("is not a host name"), "{bad}: {e}");
        }
        for good in [
            "https://git.example/a.git",
            "https://127.0.0.1:8443/a",
            "https://[::1]/a",
            "https://x-1.example/a",
        ] {
            assert!(parse_source(good).is_ok(), "{good}");
        }
    }

    /// Found by the `server_api_json` fuzz target: `http://s:0/x` was
    /// accepted, and the pipeline's network rule `s:0` then failed to load.
    /// Every source accepted must give a rule the workflow accepts.
    #[test]
    fn bug_a_source_on_port_0_was_accepted() {
        for bad in ["http://s:0/git", "https://git.example:0/a.git", "https://127.0.0.1:0/a"] {
            let e = parse_source(bad).unwrap_err();
            assert!(e.contains("port 0"), "{bad}: {e}");
        }
        for good in ["http://s:1/git", "https://git.example:65535/a.git", "http://git.example/a"] {
            let Ok(src @ Source::Remote { .. }) = parse_source(good) else { panic!("{good}") };
            let wf = workflow_text(
                &PipelineOptions { name: good.into(), depth: Some(1), ..Default::default() },
                &src,
            );
            kiln_workflow::load("workflow.yml", &wf).unwrap_or_else(|d| panic!("{good}: {d}\n{wf}"));
        }
    }

    #[test]
    fn bug_build_repeated_the_token_in_its_url_error() {
        let e = parse_source("https://user:tok_8Fz3Qm1@git.example/a/b.git").unwrap_err();
        assert!(!e.contains("tok_8Fz3Qm1") && !e.contains("user:"), "{e}");
        assert!(e.starts_with("https://***@git.example/a/b.git: credentials in the URL are refused"), "{e}");
        // A URL that does not even parse still never shows its userinfo.
        let e = parse_source("https://user:tok_8Fz3Qm1@[bad/x").unwrap_err();
        assert!(!e.contains("tok_8Fz3Qm1"), "{e}");
        // ssh:// is refused for its transport, not taken for credentials.
        let e = parse_source("ssh://git@host/x").unwrap_err();
        assert!(e.contains("only https (or a local path) is fetched, not `ssh`"), "{e}");
        assert_eq!(redacted("https://a:b@h:1/p@q"), "https://***@h:1/p@q");
        assert_eq!(redacted("https://h/p@q"), "https://h/p@q");
        assert_eq!(redacted("/local/dir"), "/local/dir");
    }

    #[test]
    fn sources() {
        assert!(matches!(
            parse_source("https://git.example/a/b.git"),
            Ok(Source::Remote { port: 443, plain_http: false, .. })
        ));
        assert!(parse_source("ext::sh -c touch% /tmp/pwned").is_err());
        assert!(parse_source("ssh://git@host/x").is_err());
        assert!(parse_source("git@host:x/y").is_err());
        assert!(parse_source("https://user:tok@host/x").is_err());
        assert!(parse_source("https://host/${{ secrets.X }}").is_err());
        assert!(matches!(parse_source("file:///srv/repo"), Ok(Source::Local(_))));
    }

    #[test]
    fn yaml_round_trips_hostile_text() {
        let v = json!({ "jobs": { "a": { "steps": [ { "run": "echo \"x\": y\n- z #c", "env": { "K": "a: [b]" } } ] } } });
        let mut y = String::new();
        to_yaml(&v, 0, &mut y);
        let docs = yaml_rust2::YamlLoader::load_from_str(&y).unwrap();
        assert_eq!(docs[0]["jobs"]["a"]["steps"][0]["run"].as_str().unwrap(), "echo \"x\": y\n- z #c");
        assert_eq!(docs[0]["jobs"]["a"]["steps"][0]["env"]["K"].as_str().unwrap(), "a: [b]");
    }
}
