//! Pulling images from an OCI registry (the distribution API), into an
//! OCI layout that [`crate::import_oci`] then imports with every check.
//!
//! Requests are kiln's own, made host-side with `curl`, under the egress
//! policy's address rules: the registry's name is resolved here, an
//! address in a refused class (loopback, private, link-local, metadata...)
//! is refused unless the operator opened exactly that `ip:port`, and curl
//! is pinned to the address that was checked (`--resolve`), https only
//! unless the operator says the registry speaks plain http. Anonymous
//! pulls, the bearer-token challenge registries answer with, and
//! credentials (a user name and password or token, for `Basic` registries
//! and for the token service) are supported. Credentials and tokens go to
//! curl on its stdin (`--config -`), never on its command line where any
//! process could read them, and curl does not send them to another host a
//! blob download is redirected to.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kiln_store::{Digest, Store};
use sha2::Digest as _;

use crate::error::{io_err, ImageError, Result};
use crate::manifest::ImageManifest;

/// Media types asked for when fetching a manifest.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest or token answer.
const MAX_DOC: u64 = 4 << 20;

/// Largest layer.
const MAX_BLOB: u64 = 8 << 30;

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `ip:port`s the operator opened (a private registry).
    pub open: Vec<SocketAddr>,
    /// The registry speaks plain http (a registry on a private network).
    pub plain_http: bool,
    /// Scratch space for the layout while it is imported.
    pub scratch: PathBuf,
    /// Where the image is materialized (see [`crate::materialize`]).
    pub images_dir: PathBuf,
    /// A registry login, for a registry that asks for one.
    pub credentials: Option<Credentials>,
}

/// A registry login: a user name and a password or token.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ username: {:?}, password: *** }}", self.username)
    }
}

impl Credentials {
    /// `Basic base64(user:password)`.
    fn basic(&self) -> String {
        use base64::Engine as _;
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` of the registry.
    pub registry: String,
    /// The repository (`library/node`).
    pub repository: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl Reference {
    /// Parses `[registry/]repository[:tag|@sha256:hex]` as docker does
    /// (`node:20` is `registry-1.docker.io/library/node:20`).
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why: &str| ImageError::Recipe(format!("image reference `{s}`: {why}"));
        if s.is_empty() || s.len() > 512 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("empty, too long or with spaces"));
        }
        let (rest, reference) = match s.split_once('@') {
            Some((r, d)) => {
                let hex = d.strip_prefix("sha256:").ok_or_else(|| bad("a digest is sha256:HEX"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                    return Err(bad("a digest is sha256: and 64 lowercase hex digits"));
                }
                (r, d.to_string())
            }
            None => match s.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r, t.to_string()),
                _ => (s, "latest".to_string()),
            },
        };
        let (registry, repository) = match rest.split_once('/') {
            Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => {
                if let Some((_, port)) = h.rsplit_once(':') {
                    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(bad("a registry's port is a number"));
                    }
                }
                (h.to_string(), r.to_string())
            }
            _ => ("registry-1.docker.io".to_string(), rest.to_string()),
        };
        let repository = if registry == "registry-1.docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
                && p.starts_with(|c: char| c.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(part_ok) {
            return Err(bad("a repository is lowercase parts separated by `/`"));
        }
        let tag_ok = reference.starts_with("sha256:")
            || (!reference.is_empty()
                && reference.len() <= 128
                && reference.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
        if !tag_ok {
            return Err(bad("a tag is letters, digits, `.`, `_` and `-`"));
        }
        Ok(Reference { registry, repository, reference })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.starts_with("sha256:") { '@' } else { ':' };
        write!(f, "{}/{}{sep}{}", self.registry, self.repository, self.reference)
    }
}

/// One registry host, resolved and checked once.
struct Client {
    scheme: &'static str,
    pin: Vec<String>,
    /// The `Authorization` header requests carry (a bearer token, or a
    /// login for a `Basic` registry).
    auth: Option<String>,
    open: Vec<SocketAddr>,
    credentials: Option<Credentials>,
}

/// A value for curl's config syntax (double-quoted, backslash escapes).
fn curl_quote(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '\\' | '"' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn fail(what: String) -> ImageError {
    ImageError::Pull(what)
}

/// Resolves `host[:port]` and picks an address the egress rules allow;
/// returns curl's `--resolve` pin for it.
async fn pin(hostport: &str, default_port: u16, open: &[SocketAddr]) -> Result<String> {
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => {
            (h.to_string(), p.parse().map_err(|_| fail(format!("bad port in {hostport}")))?)
        }
        _ => (hostport.to_string(), default_port),
    };
    let candidates: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| fail(format!("resolving {host}: {e}")))?
        .collect();
    let mut policy = kiln_egress::Policy::none();
    for a in open {
        policy = policy.with_open(*a);
    }
    let addr = kiln_egress::policy::select_address(&policy, &host, &candidates).map_err(|why| {
        fail(format!("{host}:{port}: {why}; open it with --allow-private IP:PORT if it is your registry"))
    })?;
    let ip = match addr.ip() {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    Ok(format!("{host}:{port}:{ip}"))
}

/// What a request got back.
struct Answer {
    status: u16,
    headers: String,
}

impl Client {
    /// GETs `url` into `out` (at most `max` bytes), following redirects
    /// (to https only).
    async fn get(&self, url: &str, out: &Path, accept: Option<&str>, max: u64) -> Result<Answer> {
        self.get_with(url, out, accept, max, None).await
    }

    /// [`Client::get`] with an `Authorization` header of its own.
    async fn get_with(
        &self,
        url: &str,
        out: &Path,
        accept: Option<&str>,
        max: u64,
        auth: Option<&str>,
    ) -> Result<Answer> {
        let headers_file = out.with_extension("headers");
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-sS", "-L", "--max-redirs", "5", "--max-time", "1800", "--proto"])
            .arg(format!("={}", self.scheme))
            .args(["--proto-redir", "=https"])
            .arg("--max-filesize")
            .arg(max.to_string())
            .arg("-D")
            .arg(&headers_file)
            .arg("-o")
            .arg(out)
            .args(["-w", "%{http_code}"]);
        for p in &self.pin {
            cmd.arg("--resolve").arg(p);
        }
        if let Some(a) = accept {
            cmd.arg("-H").arg(format!("Accept: {a}"));
        }
        // Secrets through stdin only.
        let auth = auth.or(self.auth.as_deref());
        let config = match auth {
            Some(a) => format!("header = {}\n", curl_quote(&format!("Authorization: {a}"))),
            None => String::new(),
        };
        cmd.args(["--config", "-"]).arg(url).kill_on_drop(true);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| fail(format!("running curl: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin.write_all(config.as_bytes()).await.map_err(|e| fail(format!("curl's config: {e}")))?;
        }
        let o = child.wait_with_output().await.map_err(|e| fail(format!("running curl: {e}")))?;
        if !o.status.success() {
            let why = String::from_utf8_lossy(&o.stderr).trim().to_string();
            return Err(fail(format!("GET {url}: {why}")));
        }
        let status = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0);
        let headers = std::fs::read_to_string(&headers_file).unwrap_or_default();
        let _ = std::fs::remove_file(&headers_file);
        Ok(Answer { status, headers })
    }

    /// Answers the registry's challenge: `Basic` with the login (which
    /// every later request then carries); `Bearer realm=...` with a token
    /// from the realm (asked for with the login when there is one,
    /// anonymously otherwise).
    async fn authenticate(&mut self, challenge: &str, scratch: &Path) -> Result<()> {
        if challenge.to_ascii_lowercase().starts_with("basic") {
            let login = self.credentials.as_ref().ok_or_else(|| {
                fail("the registry wants a login: give --username (and the password on stdin with --password-stdin)".into())
            })?;
            self.auth = Some(login.basic());
            return Ok(());
        }
        let param = |k: &str| {
            let at = challenge.find(&format!("{k}=\""))? + k.len() + 2;
            challenge[at..].split('"').next().map(str::to_string)
        };
        let realm = param("realm").ok_or_else(|| fail(format!("unreadable auth challenge: {challenge}")))?;
        let mut url = url::Url::parse(&realm).map_err(|e| fail(format!("auth realm {realm}: {e}")))?;
        if url.scheme() != "https" && !(self.scheme == "http" && url.scheme() == "http") {
            return Err(fail(format!("auth realm {realm} is not https")));
        }
        {
            let mut q = url.query_pairs_mut();
            for k in ["service", "scope"] {
                if let Some(v) = param(k) {
                    q.append_pair(k, &v);
                }
            }
        }
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        self.pin.push(pin(&format!("{host}:{port}"), port, &self.open).await?);
        let out = scratch.join("token.json");
        let login = self.credentials.as_ref().map(Credentials::basic);
        let a = self.get_with(url.as_str(), &out, None, MAX_DOC, login.as_deref()).await?;
        if a.status != 200 {
            let hint = if a.status == 401 && login.is_some() { " (the login was refused)" } else { "" };
            return Err(fail(format!("token from {realm}: HTTP {}{hint}", a.status)));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out).map_err(io_err("read", &out))?)
                .map_err(|e| fail(format!("token from {realm}: {e}")))?;
        let _ = std::fs::remove_file(&out);
        let token = v["token"].as_str().or_else(|| v["access_token"].as_str());
        let token = token.ok_or_else(|| fail(format!("no token from {realm}")))?;
        self.auth = Some(format!("Bearer {token}"));
        Ok(())
    }
}

fn challenge(headers: &str) -> Option<String> {
    headers
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("www-authenticate"))
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| {
            let v = v.to_ascii_lowercase();
            v.starts_with("bearer ") || v.starts_with("basic")
        })
}

fn sha256_file(p: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(p).map_err(io_err("open", p))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io_err("read", p))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Pulls `reference` and imports it as image `name`.
pub async fn pull(
    store: &Store,
    reference: &str,
    name: &str,
    opts: &PullOptions,
) -> Result<(Digest, ImageManifest)> {
    let r = Reference::parse(reference)?;
    kiln_store::check_image_name(name)?;
    std::fs::create_dir_all(&opts.scratch).map_err(io_err("create", &opts.scratch))?;
    let work = tempfile::Builder::new()
        .prefix(".pull-")
        .tempdir_in(&opts.scratch)
        .map_err(io_err("create", &opts.scratch))?;
    let blobs = work.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
    pull_into(store, &r, name, opts, work.path()).await
}

async fn pull_into(
    store: &Store,
    r: &Reference,
    name: &str,
    opts: &PullOptions,
    work: &Path,
) -> Result<(Digest, ImageManifest)> {
    let scheme = if opts.plain_http { "http" } else { "https" };
    let default_port = if opts.plain_http { 80 } else { 443 };
    let mut client = Client {
        scheme,
        pin: vec![pin(&r.registry, default_port, &opts.open).await?],
        auth: None,
        open: opts.open.clone(),
        credentials: opts.credentials.clone(),
    };
    let base = format!("{scheme}://{}/v2/{}", r.registry, r.repository);
    let blobs = work.join("blobs/sha256");
    let tmp = work.join("download");
    // The top manifest (or index), with the token dance if asked.
    let top_url = format!("{base}/manifests/{}", r.reference);
    let mut a = client.get(&top_url, &tmp, Some(ACCEPT), MAX_DOC).await?;
    if a.status == 401 {
        let c = challenge(&a.headers).ok_or_else(|| fail(format!("{r}: the registry wants credentials")))?;
        client.authenticate(&c, work).await?;
        a = client.get(&top_url, &tmp, Some(ACCEPT), MAX_DOC).await?;
        if a.status == 401 {
            return Err(fail(format!("{r}: the registry refused the login")));
        }
    }
    if a.status != 200 {
        return Err(fail(format!("{r}: manifest: HTTP {}", a.status)));
    }
    let top_digest = sha256_file(&tmp)?;
    if r.reference.starts_with("sha256:") && top_digest != r.reference {
        return Err(fail(format!("{r}: the registry's manifest is {top_digest}")));
    }
    let top_bytes = std::fs::read(&tmp).map_err(io_err("read", &tmp))?;
    let top: serde_json::Value =
        serde_json::from_slice(&top_bytes).map_err(|e| fail(format!("{r}: manifest: {e}")))?;
    let media = top["mediaType"].as_str().unwrap_or_default().to_string();
    std::fs::rename(&tmp, blobs.join(top_digest.trim_start_matches("sha256:")))
        .map_err(io_err("rename", &tmp))?;
    // An index: the linux/amd64 manifest.
    let manifest = if top["manifests"].is_array() {
        let d = top["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| fail(format!("{r}: no linux/amd64 image")))?
            .to_string();
        fetch_blob(&client, &format!("{base}/manifests/{d}"), &d, &blobs, &tmp, Some(ACCEPT), MAX_DOC)
            .await?;
        let p = blobs.join(d.trim_start_matches("sha256:"));
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&p).map_err(io_err("read", &p))?)
            .map_err(|e| fail(format!("{r}: manifest: {e}")))?
    } else {
        top.clone()
    };
    let mut wanted: Vec<String> = Vec::new();
    if let Some(c) = manifest["config"]["digest"].as_str() {
        wanted.push(c.to_string());
    }
    for l in manifest["layers"].as_array().into_iter().flatten() {
        if let Some(d) = l["digest"].as_str() {
            wanted.push(d.to_string());
        }
    }
    for d in &wanted {
        if !d.starts_with("sha256:") || d.len() != 71 || !d[7..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail(format!("{r}: blob digest `{d}` is malformed")));
        }
        fetch_blob(&client, &format!("{base}/blobs/{d}"), d, &blobs, &tmp, None, MAX_BLOB).await?;
    }
    let media = if media.is_empty() {
        if top["manifests"].is_array() {
            "application/vnd.oci.image.index.v1+json"
        } else {
            "application/vnd.oci.image.manifest.v1+json"
        }
        .to_string()
    } else {
        media
    };
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": media, "digest": top_digest, "size": top_bytes.len()}]});
    std::fs::write(work.join("index.json"), index.to_string()).map_err(io_err("write", work))?;
    std::fs::write(work.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io_err("write", work))?;
    crate::oci::import_oci(store, work, name, &r.to_string(), &opts.scratch, &opts.images_dir).await
}

/// Fetches one blob into the layout, checking its digest.
async fn fetch_blob(
    client: &Client,
    url: &str,
    digest: &str,
    blobs: &Path,
    tmp: &Path,
    accept: Option<&str>,
    max: u64,
) -> Result<()> {
    let a = client.get(url, tmp, accept, max).await?;
    if a.status != 200 {
        return Err(fail(format!("GET {url}: HTTP {}", a.status)));
    }
    let got = sha256_file(tmp)?;
    if got != digest {
        let _ = std::fs::remove_file(tmp);
        return Err(fail(format!("{url}: the bytes are {got}, not {digest}")));
    }
    std::fs::rename(tmp, blobs.join(digest.trim_start_matches("sha256:"))).map_err(io_err("rename", tmp))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_docker_does() {
        let r = Reference::parse("node:20").unwrap();
        assert_eq!(r.to_string(), "registry-1.docker.io/library/node:20");
        let r = Reference::parse("127.0.0.1:5000/team/img").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "team/img", "latest")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("ghcr.io/o/r@{d}")).unwrap();
        assert_eq!(r.reference, d);
        for bad in ["", "Node:20", "a b", "x/../y", "ghcr.io/o/r@sha256:zz", "node:bad/tag", "ghcr.io/o//r"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bearer_and_basic_challenges_are_found() {
        let h = "HTTP/1.1 401 Unauthorized\r\nWww-Authenticate: Bearer realm=\"https://auth.example/token\",service=\"r\",scope=\"repository:a:pull\"\r\n";
        assert!(challenge(h).unwrap().contains("realm=\"https://auth.example/token\""));
        assert!(challenge("HTTP/1.1 401\r\nWWW-Authenticate: Basic realm=\"x\"\r\n")
            .unwrap()
            .starts_with("Basic"));
        assert!(challenge("HTTP/1.1 401\r\nWWW-Authenticate: Negotiate\r\n").is_none());
    }

    #[test]
    fn logins_never_print_and_quote_safely_for_curl() {
        let c = Credentials { username: "u".into(), password: "p\"w\\x".into() };
        assert!(!format!("{c:?}").contains("p\"w"));
        assert_eq!(c.basic(), "Basic dTpwIndceA==");
        assert_eq!(curl_quote("a\"b\\c\nd"), "\"a\\\"b\\\\cd\"");
    }
}
