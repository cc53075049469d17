//! Lockfile entries: every resolved source must be `https://` on an allowed registry host.
//!
//! | manager | file | what is checked |
//! | --- | --- | --- |
//! | npm | `npm-shrinkwrap.json`, `package-lock.json` | v2/v3 `packages.*.resolved` (`link: true` and entries without `resolved` are fine); v1 `dependencies.*.resolved` and `version` when it is a URL or git spec, recursively |
//! | Yarn classic | `yarn.lock` | every `resolved` |
//! | Yarn berry | `yarn.lock` | every `resolution`: `npm:`, `workspace:`, `portal:`, `link:` fine; `patch:` checked on what it patches; `http(s):` checked as a URL; `git`, `github:`, `file:`, `exec:` refused |
//! | pnpm | `pnpm-lock.yaml` | `packages.*.resolution`: `tarball` checked as a URL, `type: git` refused, `type: directory` fine |
//! | bun | `bun.lock` | `packages.*`: the spec (`name@https://...`, `github:`, `git+`, `file:`) and the registry URL |
//! | bun | `bun.lockb` | binary: every `http(s)://`, `git+` or `github:` string inside it (a heuristic, see below) |
//! | pip | `requirements.txt` and the files it includes (`-r`, `-c`) | `--index-url`, `--extra-index-url`, `--find-links` URLs, `--trusted-host` (refused), `name @ URL` and bare URL requirements, VCS (`git+`) requirements |
//! | Poetry | `poetry.lock` | `[package.source]`: `git` and `file` refused, `directory` fine, `url`/`legacy` checked |
//! | uv | `uv.lock` | `source`: `registry`/`url` checked, `git` and `path` refused, `directory`/`editable`/`virtual` fine; every `sdist` and `wheels` URL |
//! | Cargo | `Cargo.lock` | `source`: `registry+`/`sparse+` URLs checked (the crates.io index in either form counts as `index.crates.io`), `git+` refused |
//!
//! Go has nothing to check here: `go.sum` holds hashes, not URLs, and modules come through
//! the module proxy and are verified against the checksum database.
//!
//! `bun.lockb` is bun's older binary format. Its string table stores the URLs of packages that
//! do not come from the default registry and leaves default-registry packages without one, so
//! looking for URL-like strings in it finds the entries that matter without decoding the
//! format. It can miss a URL split oddly in the table; `bun install --save-text-lockfile`
//! writes the checkable `bun.lock`.
//!
//! A lockfile that cannot be read or parsed is one violation naming it: kiln will not vouch
//! for what it could not check.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::detect::Manager;
use crate::fsread::{self, LOCKFILE_CAP};
use crate::yaml::{self, Node};

use super::repo::is_crates_io_index;
use super::{line_at, line_of, redact, Allowed, Report, Violation};

/// Nesting of `-r` includes followed in requirements files.
const MAX_INCLUDE_DEPTH: usize = 8;

/// Check the lockfile(s) `manager` installs from.
pub fn check_lockfile(root: &Path, manager: Manager, allowed_registries: &[String]) -> Vec<Violation> {
    let allowed = Allowed::new(allowed_registries);
    let text = |file: &str, check: &dyn Fn(&mut Report, &str)| -> Vec<Violation> {
        match fsread::read_text(root, file, LOCKFILE_CAP) {
            Ok(None) => Vec::new(),
            Ok(Some(t)) => {
                let mut r = Report::new(file, &allowed);
                check(&mut r, &t);
                r.finish()
            }
            Err(e) => vec![unreadable(file, e)],
        }
    };
    match manager {
        Manager::Npm => {
            let mut out = text("npm-shrinkwrap.json", &package_lock);
            out.extend(text("package-lock.json", &package_lock));
            out
        }
        Manager::YarnClassic => text("yarn.lock", &yarn_classic),
        Manager::YarnBerry => text("yarn.lock", &yarn_berry),
        Manager::Pnpm => text("pnpm-lock.yaml", &pnpm),
        Manager::Bun => {
            let mut out = text("bun.lock", &bun_lock);
            out.extend(match fsread::read(root, "bun.lockb", LOCKFILE_CAP) {
                Ok(None) => Vec::new(),
                Ok(Some(bytes)) => {
                    let mut r = Report::new("bun.lockb", &allowed);
                    bun_lockb(&mut r, &bytes);
                    r.finish()
                }
                Err(e) => vec![unreadable("bun.lockb", e)],
            });
            out
        }
        Manager::Pip => {
            let mut seen = HashSet::new();
            requirements(root, "requirements.txt", &allowed, 0, &mut seen)
        }
        Manager::Poetry => text("poetry.lock", &poetry_lock),
        Manager::Uv => text("uv.lock", &uv_lock),
        Manager::Cargo => text("Cargo.lock", &cargo_lock),
        Manager::Go | Manager::Unknown => Vec::new(),
    }
}

fn unreadable(file: &str, e: crate::BuildError) -> Violation {
    Violation {
        file: file.into(),
        line: None,
        entry: "(file)".into(),
        reason: format!("cannot be checked: {e}"),
    }
}

/// Local directory references are fine; see the module docs.
fn is_git_spec(s: &str) -> bool {
    s.starts_with("git+")
        || s.starts_with("git:")
        || s.starts_with("git@")
        || s.starts_with("github:")
        || s.starts_with("gitlab:")
        || s.starts_with("bitbucket:")
        || s.starts_with("ssh:")
}

// ---- npm -------------------------------------------------------------------------------

fn package_lock(r: &mut Report, text: &str) {
    let json: serde_json::Value = match serde_json::from_str(text) {
        Ok(j) => j,
        Err(e) => return r.push("(file)", Some(e.line()), format!("cannot be parsed: {e}")),
    };
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    if let Some(packages) = json.get("packages").and_then(|p| p.as_object()) {
        for (key, entry) in packages {
            if key.is_empty() || entry.get("link").and_then(|l| l.as_bool()) == Some(true) {
                continue;
            }
            if let Some(resolved) = entry.get("resolved").and_then(|x| x.as_str()) {
                let name = if key.is_empty() { "(root)" } else { key };
                r.url(name, resolved, || line_of(text, &quoted(resolved)));
            }
        }
        return;
    }
    if let Some(deps) = json.get("dependencies").and_then(|d| d.as_object()) {
        npm_v1(r, text, "", deps, 0);
    }
}

fn npm_v1(
    r: &mut Report,
    text: &str,
    parent: &str,
    deps: &serde_json::Map<String, serde_json::Value>,
    depth: usize,
) {
    if depth > 64 {
        return;
    }
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    for (name, entry) in deps {
        let path = format!("{parent}{name}");
        if let Some(resolved) = entry.get("resolved").and_then(|x| x.as_str()) {
            r.url(&path, resolved, || line_of(text, &quoted(resolved)));
        } else if let Some(version) = entry.get("version").and_then(|x| x.as_str()) {
            if is_git_spec(version) {
                let reason = format!("{}: a git source, not a registry", redact(version));
                r.fail(&path, reason, || line_of(text, &quoted(version)));
            } else if version.contains("://") {
                r.url(&path, version, || line_of(text, &quoted(version)));
            } else if let Some(local) = version.strip_prefix("file:") {
                if is_archive(local) {
                    let reason = format!("{version}: a local archive, not from a registry");
                    r.fail(&path, reason, || line_of(text, &quoted(version)));
                }
            }
        }
        if let Some(nested) = entry.get("dependencies").and_then(|d| d.as_object()) {
            npm_v1(r, text, &format!("{path} > "), nested, depth + 1);
        }
    }
}

fn is_archive(path: &str) -> bool {
    [".tgz", ".tar.gz", ".tar", ".zip", ".whl", ".crate"].iter().any(|ext| path.ends_with(ext))
}

// ---- Yarn ------------------------------------------------------------------------------

fn yarn_classic(r: &mut Report, text: &str) {
    let mut entry = String::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            // `"a@^1", "a@^1.2":` → `a@^1`
            let first = line.trim_end_matches(':').split(", ").next().unwrap_or("");
            entry = first.trim_matches('"').to_string();
            continue;
        }
        let t = line.trim();
        if let Some(value) = t.strip_prefix("resolved ") {
            let url = value.trim().trim_matches('"');
            r.url(&entry, url, || Some(i + 1));
        }
    }
}

/// Split `name@rest`, where `name` may be scoped (`@scope/name@rest`).
fn split_locator(s: &str) -> Option<(&str, &str)> {
    let from = usize::from(s.starts_with('@'));
    let at = s[from..].find('@')? + from;
    Some((&s[..at], &s[at + 1..]))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a berry locator's source is refused, if it is.
fn berry_locator(allowed: &Allowed, locator: &str, depth: usize) -> Result<(), String> {
    let Some((_, reference)) = split_locator(locator) else {
        return Err(format!("{locator}: not a package locator"));
    };
    let protocol = reference.split_once(':').map_or("", |(p, _)| p);
    match protocol {
        "npm" | "workspace" | "portal" | "link" => Ok(()),
        "patch" if depth < 4 => {
            // `patch:<inner locator, %-encoded>#<patch file>`
            let inner = reference["patch:".len()..].split('#').next().unwrap_or("");
            berry_locator(allowed, &percent_decode(inner), depth + 1)
        }
        "http" | "https" => {
            if reference.contains(".git#") || reference.contains("#commit=") || reference.ends_with(".git") {
                Err(format!("{}: a git source, not a registry", redact(reference)))
            } else {
                allowed.url(reference)
            }
        }
        "file" => Err(format!("{reference}: a local archive, not from a registry")),
        "exec" => Err(format!("{reference}: runs a script to produce the package")),
        _ if is_git_spec(reference) || protocol.starts_with("git") => {
            Err(format!("{}: a git source, not a registry", redact(reference)))
        }
        _ => Err(format!("{}: unknown protocol `{protocol}:`", redact(reference))),
    }
}

fn yaml_doc(r: &mut Report, text: &str) -> Option<Node> {
    match yaml::parse(text) {
        Ok(doc) => Some(doc),
        Err((line, message)) => {
            r.push("(file)", Some(line), format!("cannot be parsed: {message}"));
            None
        }
    }
}

fn yarn_berry(r: &mut Report, text: &str) {
    let Some(doc) = yaml_doc(r, text) else { return };
    for (key, entry) in doc.entries() {
        let name = key.as_str().unwrap_or("?");
        if name == "__metadata" {
            continue;
        }
        let Some(resolution) = entry.get("resolution") else { continue };
        let Some(locator) = resolution.as_str() else { continue };
        if let Err(reason) = berry_locator(r.allowed, locator, 0) {
            r.push(locator, Some(resolution.line), reason);
        }
    }
}

// ---- pnpm ------------------------------------------------------------------------------

fn pnpm(r: &mut Report, text: &str) {
    let Some(doc) = yaml_doc(r, text) else { return };
    let Some(packages) = doc.get("packages") else { return };
    for (key, entry) in packages.entries() {
        let name = key.as_str().unwrap_or("?");
        let Some(resolution) = entry.get("resolution") else { continue };
        let kind = resolution.get("type").and_then(Node::as_str);
        if kind == Some("git") {
            let repo = resolution.get("repo").and_then(Node::as_str).unwrap_or("?");
            r.push(name, Some(resolution.line), format!("{}: a git source, not a registry", redact(repo)));
        } else if kind == Some("directory") {
            continue;
        } else if let Some(tarball) = resolution.get("tarball") {
            let url = tarball.as_str().unwrap_or("");
            let line = tarball.line;
            if url.starts_with("file:") {
                r.push(name, Some(line), format!("{url}: a local archive, not from a registry"));
            } else {
                r.url(name, url, || Some(line));
            }
        }
    }
}

// ---- bun -------------------------------------------------------------------------------

/// JSONC (comments, trailing commas) → JSON, leaving string contents alone.
fn jsonc_to_json(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(b.len());
                out.extend_from_slice(&b[start..i]);
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    // Keep line numbers.
                    if b[i] == b'\n' {
                        out.push(b'\n');
                    }
                    i += 1;
                }
                i = (i + 2).min(b.len());
            }
            b',' => {
                if !matches!(b.get(skip_blank(b, i + 1)), Some(b'}') | Some(b']')) {
                    out.push(b',');
                }
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The index of the first byte at or after `j` that is neither whitespace nor in a comment.
fn skip_blank(b: &[u8], mut j: usize) -> usize {
    loop {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        match (b.get(j), b.get(j + 1)) {
            (Some(b'/'), Some(b'/')) => {
                while j < b.len() && b[j] != b'\n' {
                    j += 1;
                }
            }
            (Some(b'/'), Some(b'*')) => {
                j += 2;
                while j < b.len() && !(b[j] == b'*' && b.get(j + 1) == Some(&b'/')) {
                    j += 1;
                }
                j = (j + 2).min(b.len());
            }
            _ => return j,
        }
    }
}

/// A bun or npm-style spec after `name@`.
fn check_spec(r: &mut Report, entry: &str, spec: &str, line: impl FnOnce() -> Option<usize>) {
    if spec.starts_with("workspace:") || spec.starts_with("link:") || spec.starts_with("npm:") {
        return;
    }
    if is_git_spec(spec) || spec.contains(".git#") {
        r.fail(entry, format!("{}: a git source, not a registry", redact(spec)), line);
    } else if spec.starts_with("file:") {
        r.fail(entry, format!("{spec}: a local archive, not from a registry"), line);
    } else if spec.contains("://") {
        r.url(entry, spec, line);
    }
}

fn bun_lock(r: &mut Report, text: &str) {
    let json = jsonc_to_json(text);
    let doc: serde_json::Value = match serde_json::from_str(&json) {
        Ok(v) => v,
        Err(e) => return r.push("(file)", Some(e.line()), format!("cannot be parsed: {e}")),
    };
    let Some(packages) = doc.get("packages").and_then(|p| p.as_object()) else { return };
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    for (key, entry) in packages {
        let Some(items) = entry.as_array() else { continue };
        if let Some(id) = items.first().and_then(|v| v.as_str()) {
            if let Some((_, spec)) = split_locator(id) {
                check_spec(r, key, spec, || line_of(text, &quoted(id)));
            }
        }
        // The second item of a registry package is its registry URL ("" = the default).
        if let Some(registry) = items.get(1).and_then(|v| v.as_str()) {
            if !registry.is_empty() {
                r.url(key, registry, || line_of(text, &quoted(registry)));
            }
        }
    }
}

fn bun_lockb(r: &mut Report, bytes: &[u8]) {
    let url_byte = |b: u8| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'<' | b'>' | b'\\' | b'`');
    let mut seen = HashSet::new();
    for needle in [&b"https://"[..], b"http://", b"git+", b"github:"] {
        for at in memchr::memmem::find_iter(bytes, needle) {
            let end = bytes[at..].iter().position(|&b| !url_byte(b)).map_or(bytes.len(), |n| at + n);
            let s = String::from_utf8_lossy(&bytes[at..end]).into_owned();
            if needle == b"git+" && s.starts_with("git+") && seen.contains(&s[4..]) {
                continue;
            }
            if !seen.insert(s.clone()) {
                continue;
            }
            check_spec(r, "(string in bun.lockb)", &s, || None);
        }
    }
}

// ---- pip -------------------------------------------------------------------------------

/// The logical lines of a requirements file: `(first physical line, text)` with
/// continuations joined and comments removed.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        // A comment starts at `#` at the line start or after whitespace.
        let mut line = raw;
        if let Some(pos) =
            raw.char_indices().find(|&(p, c)| c == '#' && (p == 0 || raw[..p].ends_with([' ', '\t'])))
        {
            line = &raw[..pos.0];
        }
        let (start, mut acc) = current.take().unwrap_or((i + 1, String::new()));
        match line.strip_suffix('\\') {
            Some(body) => {
                acc.push_str(body);
                acc.push(' ');
                current = Some((start, acc));
            }
            None => {
                acc.push_str(line);
                if !acc.trim().is_empty() {
                    out.push((start, acc));
                }
            }
        }
    }
    if let Some((start, acc)) = current {
        if !acc.trim().is_empty() {
            out.push((start, acc));
        }
    }
    out
}

fn requirements(
    root: &Path,
    file: &str,
    allowed: &Allowed,
    depth: usize,
    seen: &mut HashSet<String>,
) -> Vec<Violation> {
    if !seen.insert(file.to_string()) {
        return Vec::new();
    }
    let text = match fsread::read_text(root, file, LOCKFILE_CAP) {
        Ok(Some(t)) => t,
        Ok(None) if depth == 0 => return Vec::new(),
        Ok(None) => {
            return vec![unreadable(
                file,
                crate::BuildError::Parse { file: file.into(), message: "included but missing".into() },
            )]
        }
        Err(e) => return vec![unreadable(file, e)],
    };
    let mut r = Report::new(file, allowed);
    let mut includes = Vec::new();
    let dir = file.rsplit_once('/').map_or("", |(d, _)| d);
    for (line, logical) in logical_lines(&text) {
        let tokens: Vec<&str> = logical.split_whitespace().collect();
        let mut i = 0;
        while i < tokens.len() {
            let tok = tokens[i];
            let (opt, inline) = match tok.split_once('=') {
                Some((o, v)) if o.starts_with('-') => (o, Some(v)),
                _ => (tok, None),
            };
            let takes_value = matches!(
                opt,
                "-i" | "--index-url"
                    | "--extra-index-url"
                    | "-f"
                    | "--find-links"
                    | "--trusted-host"
                    | "-r"
                    | "--requirement"
                    | "-c"
                    | "--constraint"
                    | "-e"
                    | "--editable"
            );
            if takes_value {
                let value = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        tokens.get(i).copied().unwrap_or("")
                    }
                };
                let entry = opt.to_string();
                match opt {
                    "-i" | "--index-url" | "--extra-index-url" => {
                        requirement_url(&mut r, &entry, value, line)
                    }
                    "-f" | "--find-links" if value.contains("://") => {
                        requirement_url(&mut r, &entry, value, line)
                    }
                    "--trusted-host" => r.push(
                        entry,
                        Some(line),
                        format!("{value}: turns off TLS verification for that host"),
                    ),
                    "-r" | "--requirement" | "-c" | "--constraint" => {
                        includes.push((line, value.to_string()))
                    }
                    "-e" | "--editable" if is_vcs(value) || value.contains("://") => {
                        requirement_url(&mut r, value, value, line)
                    }
                    _ => {}
                }
                i += 1;
                continue;
            }
            if tok.starts_with('-') {
                i += 1;
                continue;
            }
            // A requirement: `name[extra] @ URL ; marker`, a bare URL, a path or `name==1.0`.
            let spec = logical.split(" ;").next().unwrap_or(&logical).trim();
            let spec = spec.split(" --").next().unwrap_or(spec).trim();
            if let Some((name, url)) = spec
                .split_once('@')
                .filter(|(n, u)| !n.contains("://") && !u.trim().is_empty() && !n.contains('/'))
            {
                let url = url.split_whitespace().next().unwrap_or("");
                if url.contains(':') {
                    requirement_url(&mut r, name.trim(), url, line);
                }
            } else if spec.contains("://") || is_vcs(spec) {
                let url = spec.split_whitespace().next().unwrap_or(spec);
                requirement_url(&mut r, url, url, line);
            }
            break;
        }
    }
    let mut out = r.finish();
    for (line, include) in includes {
        let joined = if dir.is_empty() { include.clone() } else { format!("{dir}/{include}") };
        match crate::config::normalize_output(&joined) {
            Ok(path) if depth < MAX_INCLUDE_DEPTH => {
                out.extend(requirements(root, &path, allowed, depth + 1, seen))
            }
            Ok(_) => out.push(Violation {
                file: file.into(),
                line: Some(line),
                entry: include,
                reason: format!("included more than {MAX_INCLUDE_DEPTH} levels deep"),
            }),
            Err(reason) => out.push(Violation {
                file: file.into(),
                line: Some(line),
                entry: include,
                reason: format!("cannot be checked: {reason}"),
            }),
        }
    }
    out
}

fn is_vcs(s: &str) -> bool {
    ["git+", "hg+", "svn+", "bzr+"].iter().any(|p| s.starts_with(p))
}

fn requirement_url(r: &mut Report, entry: &str, url: &str, line: usize) {
    if url.contains("${") {
        r.push(
            entry,
            Some(line),
            format!("{}: taken from an environment variable, so it cannot be checked", redact(url)),
        );
    } else if is_vcs(url) {
        r.push(entry, Some(line), format!("{}: a version-control source, not a registry", redact(url)));
    } else {
        r.url(entry, url, || Some(line));
    }
}

// ---- Poetry, uv, Cargo -----------------------------------------------------------------

fn toml_lock<T: for<'de> Deserialize<'de>>(r: &mut Report, text: &str) -> Option<T> {
    match toml::from_str::<T>(text) {
        Ok(v) => Some(v),
        Err(e) => {
            let line = e.span().map(|s| line_at(text, s.start));
            r.push("(file)", line, format!("cannot be parsed: {}", e.message().trim()));
            None
        }
    }
}

#[derive(Deserialize)]
struct PoetryLock {
    #[serde(default)]
    package: Vec<PoetryPackage>,
}

#[derive(Deserialize)]
struct PoetryPackage {
    name: String,
    #[serde(default)]
    version: Option<String>,
    source: Option<PoetrySource>,
}

#[derive(Deserialize)]
struct PoetrySource {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    #[serde(default)]
    url: Option<Spanned<String>>,
}

/// Whether a local path stays inside the repository.
fn local_inside(path: &str) -> bool {
    let p = path.trim_start_matches("./");
    p.is_empty() || p == "." || crate::fsread::components(p.trim_end_matches('/')).is_ok()
}

fn poetry_lock(r: &mut Report, text: &str) {
    let Some(lock) = toml_lock::<PoetryLock>(r, text) else { return };
    for p in lock.package {
        let Some(source) = p.source else { continue };
        let entry = format!("{} {}", p.name, p.version.unwrap_or_default());
        let type_line = line_at(text, source.kind.span().start);
        let (url, url_line) = match &source.url {
            Some(u) => (u.get_ref().as_str(), line_at(text, u.span().start)),
            None => ("", type_line),
        };
        match source.kind.get_ref().as_str() {
            "git" => r.push(entry, Some(type_line), format!("{}: a git source, not a registry", redact(url))),
            "file" => r.push(entry, Some(type_line), format!("{url}: a local archive, not from a registry")),
            "directory" if local_inside(url) => {}
            "directory" => {
                r.push(entry, Some(type_line), format!("{url}: a directory outside the repository"))
            }
            _ => r.url(&entry, url, || Some(url_line)),
        }
    }
}

#[derive(Deserialize)]
struct UvLock {
    #[serde(default)]
    package: Vec<UvPackage>,
}

#[derive(Deserialize)]
struct UvPackage {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    source: Option<Spanned<toml::Table>>,
    #[serde(default)]
    sdist: Option<Spanned<toml::Table>>,
    #[serde(default)]
    wheels: Vec<Spanned<toml::Table>>,
}

fn uv_lock(r: &mut Report, text: &str) {
    let Some(lock) = toml_lock::<UvLock>(r, text) else { return };
    for p in lock.package {
        let entry = format!("{} {}", p.name, p.version.unwrap_or_default());
        if let Some(source) = &p.source {
            let line = line_at(text, source.span().start);
            let get = |k: &str| source.get_ref().get(k).and_then(|v| v.as_str());
            if let Some(url) = get("registry").or_else(|| get("url")) {
                if url.contains("://") {
                    r.url(&entry, url, || Some(line));
                } else {
                    // A registry given as a local directory (a flat index in the repository).
                    if !local_inside(url) {
                        r.push(&entry, Some(line), format!("{url}: a directory outside the repository"));
                    }
                }
            } else if let Some(url) = get("git") {
                r.push(&entry, Some(line), format!("{}: a git source, not a registry", redact(url)));
            } else if let Some(path) = get("path") {
                r.push(&entry, Some(line), format!("{path}: a local archive, not from a registry"));
            } else if let Some(dir) = get("directory").or_else(|| get("editable")).or_else(|| get("virtual"))
            {
                if !local_inside(dir) {
                    r.push(&entry, Some(line), format!("{dir}: a directory outside the repository"));
                }
            }
        }
        for file in p.sdist.iter().chain(p.wheels.iter()) {
            if let Some(url) = file.get_ref().get("url").and_then(|v| v.as_str()) {
                let line = line_at(text, file.span().start);
                r.url(&entry, url, || Some(line));
            }
        }
    }
}

#[derive(Deserialize)]
struct CargoLock {
    #[serde(default)]
    package: Vec<CargoPackage>,
}

#[derive(Deserialize)]
struct CargoPackage {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    source: Option<Spanned<String>>,
}

fn cargo_lock(r: &mut Report, text: &str) {
    let Some(lock) = toml_lock::<CargoLock>(r, text) else { return };
    for p in lock.package {
        let Some(source) = p.source else { continue };
        let line = line_at(text, source.span().start);
        let entry = format!("{} {}", p.name, p.version.unwrap_or_default());
        let s = source.get_ref();
        if let Some(url) = s.strip_prefix("registry+").or_else(|| s.strip_prefix("sparse+")) {
            let checked = if is_crates_io_index(url) { "https://index.crates.io/" } else { url };
            r.url(&entry, checked, || Some(line));
        } else if s.starts_with("git+") {
            r.push(entry, Some(line), format!("{}: a git source, not a registry", redact(s)));
        } else {
            r.push(entry, Some(line), format!("{}: unknown source kind", redact(s)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn check(manager: Manager, files: &[(&str, &[u8])]) -> Vec<Violation> {
        let dir = tempfile::tempdir().unwrap();
        for (path, body) in files {
            let p = dir.path().join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, body).unwrap();
        }
        let allowed: Vec<String> = manager.registries().iter().map(|s| s.to_string()).collect();
        check_lockfile(dir.path(), manager, &allowed)
    }

    fn one(manager: Manager, file: &str, body: &str) -> Vec<Violation> {
        check(manager, &[(file, body.as_bytes())])
    }

    fn entries(v: &[Violation]) -> Vec<(Option<usize>, &str)> {
        v.iter().map(|v| (v.line, v.entry.as_str())).collect()
    }

    /// The 1-based line of `text` that contains `needle` (written apart from the code under
    /// test, which finds lines from parser spans or its own search).
    fn at(text: &str, needle: &str) -> Option<usize> {
        let found = text.lines().position(|l| l.contains(needle)).map(|i| i + 1);
        assert!(found.is_some(), "{needle:?} not in the fixture");
        found
    }

    fn assert_reason(v: &Violation, want: &str) {
        assert!(v.reason.contains(want), "{v} should say {want:?}");
    }

    const NPM_V3_GOOD: &str = r#"{
  "name": "site",
  "lockfileVersion": 3,
  "packages": {
    "": { "name": "site", "dependencies": { "left-pad": "^1.3.0" } },
    "node_modules/left-pad": {
      "version": "1.3.0",
      "resolved": "https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz",
      "integrity": "sha512-abc"
    },
    "node_modules/local": { "resolved": "packages/local", "link": true },
    "node_modules/bundled": { "version": "1.0.0", "inBundle": true }
  }
}"#;

    #[test]
    fn package_lock_v2_v3() {
        assert!(one(Manager::Npm, "package-lock.json", NPM_V3_GOOD).is_empty());
        let bad = NPM_V3_GOOD.replace(
            r#""node_modules/bundled""#,
            r#""node_modules/evil": { "resolved": "https://npm.evil.example/evil-1.0.0.tgz" },
    "node_modules/gitdep": { "resolved": "git+ssh://git@github.com/a/b.git#0123abcd" },
    "node_modules/tarball": { "resolved": "file:vendor/t-1.0.0.tgz" },
    "node_modules/plain": { "resolved": "http://registry.npmjs.org/plain/-/plain-1.0.0.tgz" },
    "node_modules/bundled""#,
        );
        let v = one(Manager::Npm, "package-lock.json", &bad);
        assert_eq!(
            entries(&v),
            [
                (at(&bad, "evil-1.0.0.tgz"), "node_modules/evil"),
                (at(&bad, "git+ssh"), "node_modules/gitdep"),
                (at(&bad, "file:vendor"), "node_modules/tarball"),
                (at(&bad, "http://"), "node_modules/plain"),
            ]
        );
        assert_reason(&v[0], "npm.evil.example is not an allowed registry");
        assert_reason(&v[1], "git source");
        assert_reason(&v[2], "local archive");
        assert_reason(&v[3], "plain http");
        assert!(v[1].reason.contains("***@github.com"), "{}", v[1]);
    }

    #[test]
    fn package_lock_v1() {
        let good = r#"{"lockfileVersion": 1, "dependencies": {
  "a": {"version": "1.0.0", "resolved": "https://registry.npmjs.org/a/-/a-1.0.0.tgz",
        "dependencies": {"b": {"version": "2.0.0", "resolved": "https://registry.yarnpkg.com/b/-/b-2.0.0.tgz"}}},
  "local": {"version": "file:packages/local"}
}}"#;
        assert!(one(Manager::Npm, "npm-shrinkwrap.json", good).is_empty());
        let bad = r#"{"lockfileVersion": 1, "dependencies": {
  "a": {"version": "1.0.0", "resolved": "https://registry.npmjs.org/a/-/a-1.0.0.tgz",
        "dependencies": {"b": {"version": "2.0.0", "resolved": "https://cdn.evil.example/b.tgz"}}},
  "g": {"version": "github:user/repo#abcdef"},
  "t": {"version": "file:vendor/t.tgz"}
}}"#;
        let v = one(Manager::Npm, "package-lock.json", bad);
        assert_eq!(
            entries(&v),
            [(at(bad, "cdn.evil"), "a > b"), (at(bad, "github:"), "g"), (at(bad, "t.tgz"), "t")]
        );
    }

    const YARN_CLASSIC_GOOD: &str = r#"# THIS IS AN AUTOGENERATED FILE. DO NOT EDIT THIS FILE DIRECTLY.
# yarn lockfile v1


"@babel/code-frame@^7.0.0", "@babel/code-frame@^7.10.4":
  version "7.12.13"
  resolved "https://registry.yarnpkg.com/@babel/code-frame/-/code-frame-7.12.13.tgz#dcfc826beef65e75c50e21d3837d7d95798dd658"
  integrity sha512-HV1Cm0Q3ZrpCR93tkWOYiuYIgLxZXZFVG2VgK+MBWjUqZTundupbfx2aXarXuw5Ko5aMcjtJgbSs4vUGBS5v6g==
  dependencies:
    "@babel/highlight" "^7.12.13"

left-pad@^1.3.0:
  version "1.3.0"
  resolved "https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz#5b8a3a7765dfe001261dde915589e782f8c94d1e"
"#;

    #[test]
    fn yarn_classic() {
        assert!(one(Manager::YarnClassic, "yarn.lock", YARN_CLASSIC_GOOD).is_empty());
        let bad = format!(
            "{YARN_CLASSIC_GOOD}\nevil@^1.0.0:\n  version \"1.0.0\"\n  resolved \"https://npm.evil.example/evil-1.0.0.tgz#abc\"\n\n\"gitdep@github:a/b\":\n  version \"0.0.0\"\n  resolved \"git+https://github.com/a/b.git#0123\"\n"
        );
        let v = one(Manager::YarnClassic, "yarn.lock", &bad);
        assert_eq!(
            entries(&v),
            [(at(&bad, "npm.evil"), "evil@^1.0.0"), (at(&bad, "git+https"), "gitdep@github:a/b")]
        );
    }

    const YARN_BERRY_GOOD: &str = r#"# This file is generated by running "yarn install" inside your project.

__metadata:
  version: 8
  cacheKey: 10c0

"left-pad@npm:^1.3.0":
  version: 1.3.0
  resolution: "left-pad@npm:1.3.0"
  checksum: 10c0/abc
  languageName: node
  linkType: hard

"@scope/lib@workspace:packages/lib":
  version: 0.0.0-use.local
  resolution: "@scope/lib@workspace:packages/lib"
  languageName: unknown
  linkType: soft

"resolve@patch:resolve@npm%3A^1.22.1#optional!builtin<compat/resolve>":
  version: 1.22.8
  resolution: "resolve@patch:resolve@npm%3A1.22.8#optional!builtin<compat/resolve>::version=1.22.8&hash=c3c19d"
  languageName: node
  linkType: hard
"#;

    #[test]
    fn yarn_berry() {
        assert!(one(Manager::YarnBerry, "yarn.lock", YARN_BERRY_GOOD).is_empty());
        let bad = format!(
            "{YARN_BERRY_GOOD}
\"evil@https://npm.evil.example/evil-1.0.0.tgz\":
  version: 1.0.0
  resolution: \"evil@https://npm.evil.example/evil-1.0.0.tgz\"

\"lib@git+ssh://git@github.com/a/lib.git\":
  version: 1.0.0
  resolution: \"lib@git+ssh://git@github.com/a/lib.git#commit=0123\"

\"@s/t@file:./t.tgz::locator=x\":
  resolution: \"@s/t@file:./t.tgz::locator=x%40workspace%3A.\"

\"gen@exec:./gen.js\":
  resolution: \"gen@exec:./gen.js::locator=x\"

\"p@patch:p@https%3A//npm.evil.example/p.tgz#./p.patch\":
  resolution: \"p@patch:p@https%3A//npm.evil.example/p.tgz#./p.patch::version=1\"
"
        );
        let v = one(Manager::YarnBerry, "yarn.lock", &bad);
        let lines: Vec<Option<usize>> = v.iter().map(|v| v.line).collect();
        let want = [
            at(&bad, "resolution: \"evil@"),
            at(&bad, "resolution: \"lib@"),
            at(&bad, "resolution: \"@s/t@"),
            at(&bad, "resolution: \"gen@"),
            at(&bad, "resolution: \"p@"),
        ];
        assert_eq!(lines, want);
        assert_reason(&v[0], "npm.evil.example is not an allowed registry");
        assert_reason(&v[1], "git source");
        assert_reason(&v[2], "local archive");
        assert_reason(&v[3], "runs a script");
        assert_reason(&v[4], "npm.evil.example");
        assert!(v[0].entry.starts_with("evil@https://"));
    }

    const PNPM_GOOD: &str = "lockfileVersion: '9.0'

importers:
  .:
    dependencies:
      left-pad:
        specifier: ^1.3.0
        version: 1.3.0
      local:
        specifier: link:packages/local
        version: link:packages/local

packages:
  left-pad@1.3.0:
    resolution: {integrity: sha512-XI5MPzVNApjAyhQzphX8BkmKsKUxD4LdyK24iZeQpMNgq1RoKBUKtvhv1dHp7EVVuFYt7DwLdsGEZg1Ejz9t3Og==}

  corp-lib@2.0.0:
    resolution: {tarball: https://registry.npmjs.org/corp-lib/-/corp-lib-2.0.0.tgz, integrity: sha512-x}

  dir-dep@file:packages/dir:
    resolution: {directory: packages/dir, type: directory}
";

    #[test]
    fn pnpm() {
        assert!(one(Manager::Pnpm, "pnpm-lock.yaml", PNPM_GOOD).is_empty());
        let bad = format!(
            "{PNPM_GOOD}
  evil@1.0.0:
    resolution: {{tarball: https://npm.evil.example/evil-1.0.0.tgz}}

  lib@https://codeload.github.com/a/lib/tar.gz/0123:
    resolution: {{commit: 0123, repo: git@github.com:a/lib.git, type: git}}

  t@file:t.tgz:
    resolution:
      tarball: file:t.tgz
      integrity: sha512-y
"
        );
        let v = one(Manager::Pnpm, "pnpm-lock.yaml", &bad);
        assert_eq!(
            entries(&v),
            [
                (at(&bad, "tarball: https://npm.evil"), "evil@1.0.0"),
                (at(&bad, "type: git"), "lib@https://codeload.github.com/a/lib/tar.gz/0123"),
                (at(&bad, "tarball: file:"), "t@file:t.tgz")
            ]
        );
        assert_reason(&v[1], "git source");
        assert_reason(&v[2], "local archive");
        let v = one(Manager::Pnpm, "pnpm-lock.yaml", "a: &x [1]\nb: *x\n");
        assert_reason(&v[0], "aliases");
    }

    const BUN_GOOD: &str = r#"{
  "lockfileVersion": 1,
  // bun writes JSONC: comments and trailing commas
  "workspaces": {
    "": { "name": "site", "dependencies": { "left-pad": "^1.3.0", }, },
  },
  "packages": {
    "left-pad": ["left-pad@1.3.0", "", {}, "sha512-abc"],
    "lib": ["lib@workspace:packages/lib"],
    "scoped": ["@corp/scoped@2.0.0", "https://registry.npmjs.org/", {}, "sha512-def"],
  },
}
"#;

    #[test]
    fn bun_lock() {
        assert!(one(Manager::Bun, "bun.lock", BUN_GOOD).is_empty());
        let bad = BUN_GOOD.replace(
            r#"    "lib": "#,
            r#"    "evil": ["evil@1.0.0", "https://npm.evil.example/", {}, "sha512-x"],
    "gh": ["gh@github:a/gh#0123", {}, "a-gh-0123"],
    "tgz": ["tgz@https://cdn.evil.example/tgz-1.0.0.tgz", {}],
    "lib": "#,
        );
        let v = one(Manager::Bun, "bun.lock", &bad);
        assert_eq!(
            entries(&v),
            [(at(&bad, "\"evil@"), "evil"), (at(&bad, "\"gh@"), "gh"), (at(&bad, "\"tgz@"), "tgz")]
        );
        assert_reason(&v[1], "git source");
    }

    #[test]
    fn bun_lockb_strings() {
        let mut good = b"#!/usr/bin/env bun\nbun-lockfile-format-v0\n\0\0\x07left-pad\x001.3.0\0".to_vec();
        good.extend_from_slice(b"\x10https://registry.npmjs.org/\0");
        assert!(check(Manager::Bun, &[("bun.lockb", &good)]).is_empty());
        let mut bad = good.clone();
        bad.extend_from_slice(
            b"\0\x22https://npm.evil.example/evil.tgz\x01\x02git+ssh://git@github.com/a/b.git\0",
        );
        let v = check(Manager::Bun, &[("bun.lockb", &bad)]);
        assert_eq!(v.len(), 2, "{v:?}");
        assert_reason(&v[0], "npm.evil.example");
        assert_reason(&v[1], "git source");
        assert!(v.iter().all(|v| v.file == "bun.lockb"));
    }

    #[test]
    fn requirements_txt() {
        let good = "# pinned\n--index-url https://pypi.org/simple\nflask==3.0.0 \\\n    --hash=sha256:abc\nrequests[socks]==2.31.0 ; python_version >= \"3.8\"\n./local-pkg\n-e .\nwheel @ https://files.pythonhosted.org/packages/w/wheel-0.42.0-py3-none-any.whl\n-r more.txt\n";
        let more = "-c constraints.txt\nidna==3.6  # comment with http://x.example\n";
        let files: &[(&str, &[u8])] = &[
            ("requirements.txt", good.as_bytes()),
            ("more.txt", more.as_bytes()),
            ("constraints.txt", b"urllib3<3\n"),
        ];
        assert!(check(Manager::Pip, files).is_empty(), "{:?}", check(Manager::Pip, files));

        let bad = "--extra-index-url=https://pypi.evil.example/simple\n-i http://pypi.org/simple\n--trusted-host pypi.evil.example\n-f https://wheels.evil.example/\nmylib @ git+https://github.com/a/mylib@v1\n-e git+https://github.com/a/b.git#egg=b\nthing @ file:///tmp/thing.whl\nhttps://cdn.evil.example/x-1.0.tar.gz\n-r sub/extra.txt\n";
        let extra = "pkg @ https://evil.example/pkg.whl\n-r ../../../etc/passwd\n";
        let v =
            check(Manager::Pip, &[("requirements.txt", bad.as_bytes()), ("sub/extra.txt", extra.as_bytes())]);
        let got: Vec<(&str, Option<usize>, &str)> =
            v.iter().map(|v| (v.file.as_str(), v.line, v.entry.as_str())).collect();
        assert_eq!(
            got,
            [
                ("requirements.txt", Some(1), "--extra-index-url"),
                ("requirements.txt", Some(2), "-i"),
                ("requirements.txt", Some(3), "--trusted-host"),
                ("requirements.txt", Some(4), "-f"),
                ("requirements.txt", Some(5), "mylib"),
                ("requirements.txt", Some(6), "git+https://github.com/a/b.git#egg=b"),
                ("requirements.txt", Some(7), "thing"),
                ("requirements.txt", Some(8), "https://cdn.evil.example/x-1.0.tar.gz"),
                ("sub/extra.txt", Some(1), "pkg"),
                ("sub/extra.txt", Some(2), "../../../etc/passwd"),
            ]
        );
        assert_reason(&v[4], "version-control");
        assert_reason(&v[6], "local archive");
        assert_reason(&v[9], "leaves the repository");
    }

    #[test]
    fn poetry_lock() {
        let good = r#"# This file is automatically @generated by Poetry 1.8.2 and should not be changed by hand.

[[package]]
name = "flask"
version = "3.0.0"
description = "A simple framework"
optional = false
python-versions = ">=3.8"
files = [
    {file = "flask-3.0.0-py3-none-any.whl", hash = "sha256:abc"},
]

[[package]]
name = "mylib"
version = "0.1.0"
develop = true

[package.source]
type = "directory"
url = "libs/mylib"

[metadata]
lock-version = "2.0"
"#;
        assert!(one(Manager::Poetry, "poetry.lock", good).is_empty());
        let bad = format!(
            "{good}
[[package]]
name = \"corp\"
version = \"1.0\"

[package.source]
type = \"legacy\"
url = \"https://pypi.corp.example/simple\"
reference = \"corp\"

[[package]]
name = \"gitdep\"
version = \"2.0\"

[package.source]
type = \"git\"
url = \"https://github.com/a/gitdep.git\"
reference = \"main\"
resolved_reference = \"0123\"

[[package]]
name = \"archive\"
version = \"3.0\"

[package.source]
type = \"file\"
url = \"vendor/archive-3.0.tar.gz\"
"
        );
        let v = one(Manager::Poetry, "poetry.lock", &bad);
        assert_eq!(
            entries(&v),
            [
                (at(&bad, "url = \"https://pypi.corp"), "corp 1.0"),
                (at(&bad, "type = \"git"), "gitdep 2.0"),
                (at(&bad, "type = \"file"), "archive 3.0")
            ]
        );
        assert_reason(&v[0], "pypi.corp.example is not an allowed registry");
        assert_reason(&v[1], "git source");
        assert_reason(&v[2], "local archive");
    }

    #[test]
    fn uv_lock() {
        let good = r#"version = 1
requires-python = ">=3.12"

[[package]]
name = "app"
version = "0.1.0"
source = { editable = "." }

[[package]]
name = "idna"
version = "3.6"
source = { registry = "https://pypi.org/simple" }
sdist = { url = "https://files.pythonhosted.org/packages/idna-3.6.tar.gz", hash = "sha256:a", size = 1 }
wheels = [
    { url = "https://files.pythonhosted.org/packages/idna-3.6-py3-none-any.whl", hash = "sha256:b", size = 2 },
]
"#;
        assert!(one(Manager::Uv, "uv.lock", good).is_empty());
        let bad = format!(
            "{good}
[[package]]
name = \"torch\"
version = \"2.2.0\"
source = {{ registry = \"https://download.pytorch.example/whl/cpu\" }}
wheels = [
    {{ url = \"https://download.pytorch.example/whl/cpu/torch-2.2.0.whl\", hash = \"sha256:c\" }},
]

[[package]]
name = \"gitdep\"
version = \"1.0\"
source = {{ git = \"https://github.com/a/gitdep?rev=main#0123\" }}

[[package]]
name = \"blob\"
version = \"1.0\"
source = {{ path = \"vendor/blob-1.0.whl\" }}

[[package]]
name = \"outside\"
version = \"1.0\"
source = {{ directory = \"../outside\" }}
"
        );
        let v = one(Manager::Uv, "uv.lock", &bad);
        assert_eq!(
            entries(&v),
            [
                (at(&bad, "registry = \"https://download"), "torch 2.2.0"),
                (at(&bad, "torch-2.2.0.whl"), "torch 2.2.0"),
                (at(&bad, "git = "), "gitdep 1.0"),
                (at(&bad, "path = "), "blob 1.0"),
                (at(&bad, "../outside"), "outside 1.0"),
            ]
        );
    }

    #[test]
    fn cargo_lock() {
        let good = r#"# This file is automatically @generated by Cargo.
version = 3

[[package]]
name = "app"
version = "0.1.0"
dependencies = ["serde"]

[[package]]
name = "serde"
version = "1.0.200"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "abc"

[[package]]
name = "itoa"
version = "1.0.11"
source = "sparse+https://index.crates.io/"
checksum = "def"
"#;
        assert!(one(Manager::Cargo, "Cargo.lock", good).is_empty());
        let bad = format!(
            "{good}
[[package]]
name = \"corp\"
version = \"0.1.0\"
source = \"sparse+https://cargo.corp.example/index/\"

[[package]]
name = \"fork\"
version = \"0.2.0\"
source = \"git+https://github.com/a/fork?branch=main#0123\"
"
        );
        let v = one(Manager::Cargo, "Cargo.lock", &bad);
        assert_eq!(
            entries(&v),
            [(at(&bad, "cargo.corp"), "corp 0.1.0"), (at(&bad, "git+https"), "fork 0.2.0")]
        );
        // Without crates.io allowed, the default registry is a violation too.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Cargo.lock"), good).unwrap();
        let v = check_lockfile(dir.path(), Manager::Cargo, &["mirror.example".to_string()]);
        assert_eq!(v.len(), 2);
        assert_reason(&v[0], "index.crates.io is not an allowed registry");
    }

    #[test]
    fn unparsable_and_oversized_lockfiles_are_violations() {
        let v = one(Manager::Cargo, "Cargo.lock", "[[package]\n");
        assert_eq!((v[0].entry.as_str(), v[0].line), ("(file)", Some(1)));
        assert_reason(&v[0], "cannot be parsed");
        let v = one(Manager::Npm, "package-lock.json", "{\n  \"packages\": ");
        assert_reason(&v[0], "cannot be parsed");
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("uv.lock")).unwrap();
        let v = check_lockfile(dir.path(), Manager::Uv, &[]);
        assert_reason(&v[0], "symbolic link");
    }

    #[test]
    fn many_violations_are_capped() {
        let mut lock = String::from("# yarn lockfile v1\n\n");
        for i in 0..500 {
            lock.push_str(&format!("p{i}@1:\n  resolved \"https://evil.example/p{i}.tgz\"\n\n"));
        }
        let v = one(Manager::YarnClassic, "yarn.lock", &lock);
        assert_eq!(v.len(), 51);
        assert_eq!(v[50].entry, "450 more entries");
    }

    #[test]
    fn go_has_nothing_to_check() {
        assert!(one(Manager::Go, "go.sum", "example.com/x v1.0.0 h1:abc=\n").is_empty());
    }

    #[test]
    fn helpers() {
        assert_eq!(split_locator("@scope/name@npm:1.0"), Some(("@scope/name", "npm:1.0")));
        assert_eq!(split_locator("name@1.0"), Some(("name", "1.0")));
        assert_eq!(split_locator("name"), None);
        assert_eq!(percent_decode("npm%3A1.0%"), "npm:1.0%");
        assert_eq!(
            jsonc_to_json("{\"a\": \"x,}\", // c\n \"b\": [1,],/* d\n */}"),
            "{\"a\": \"x,}\", \n \"b\": [1]\n}"
        );
        let lines = logical_lines("a \\\n b # c\n#x\nd#e\n");
        assert_eq!(lines, [(1, "a   b ".to_string()), (4, "d#e".to_string())]);
    }
}
