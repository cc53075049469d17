//! Where a repository's install would fetch from, checked before the install runs.
//!
//! The egress proxy blocks any host that is not allowed anyway; these checks exist so that a
//! build fails early with the file, line and entry to fix, instead of a registry timeout deep
//! in an install log. Every URL a repository names must be `https://` on an allowed host.
//!
//! Allowed hosts use the egress host-rule syntax: `registry.npmjs.org`, `*.example.org`
//! (subdomains at any depth, not `example.org` itself), `host:port`. Without a port only 443
//! matches. Matching is ASCII case-insensitive and ignores a trailing dot.
//!
//! Local sources follow one rule across formats: a local *directory* inside the repository
//! (npm `link: true`, pnpm `directory`, uv `directory`/`editable`/`virtual`, Poetry
//! `directory`, Yarn `workspace:`/`portal:`/`link:`) is fine, it is the repository's own code;
//! a local *archive* (`file:` tarballs, uv `path`, Poetry `file`) is a violation, it is an
//! opaque blob no registry vouches for. Git sources are always violations: they are not
//! registries, and a git host would have to be opened for the install.
//!
//! URLs shown in violations have any `user:password@` part replaced by `***@`.

mod lock;
mod repo;

use std::fmt;
use std::path::Path;

use serde::Serialize;
use url::{Host, Url};

use crate::config::KilnToml;
use crate::detect::Manager;

pub use lock::check_lockfile;
pub use repo::{check_env, check_repo_config, check_repo_config_with};

/// One thing in the repository that would fetch from somewhere it may not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The file, relative to the repository root.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The entry: a package (`node_modules/left-pad`), a setting (`registry`), an option.
    pub entry: String,
    /// Why it is refused.
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}: {}", self.file, self.entry, self.reason),
            None => write!(f, "{}: {}: {}", self.file, self.entry, self.reason),
        }
    }
}

/// Settings of the repository checks that `kiln.toml` may change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyOptions {
    /// Accept Yarn's `yarnPath`/`yarn-path` and `plugins`: JavaScript from the repository that
    /// runs inside yarn itself, even with scripts disabled.
    pub allow_yarn_path: bool,
}

impl From<&KilnToml> for PolicyOptions {
    fn from(config: &KilnToml) -> Self {
        PolicyOptions { allow_yarn_path: config.allow_yarn_path }
    }
}

/// Every registry host the manager needs, plus those `kiln.toml` asks for, that
/// `operator_allows` accepts. The repository's list asks, the operator decides.
pub fn effective_registries(
    manager: Manager,
    config: &KilnToml,
    operator_allows: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for host in manager.registries().iter().copied().chain(config.registries.iter().map(String::as_str)) {
        if operator_allows(host) && !out.iter().any(|h| h == host) {
            out.push(host.to_string());
        }
    }
    out
}

/// One allow-list entry, in the egress proxy's host-rule syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostRule {
    domain: String,
    wildcard: bool,
    port: Option<u16>,
}

impl HostRule {
    pub(crate) fn parse(s: &str) -> Result<HostRule, String> {
        let bad =
            || format!("{s:?} is not a host name (`registry.example.org`, `*.example.org`, `host:port`)");
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                let port = p.parse::<u16>().ok().filter(|&n| n > 0 && n.to_string() == p).ok_or_else(bad)?;
                (h, Some(port))
            }
            None => (s, None),
        };
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(bad());
        }
        if name.split('.').next_back().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!("{s:?} is an IP address; registries are named hosts"));
        }
        Ok(HostRule { domain: name, wildcard, port })
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        let name_ok = if self.wildcard {
            host.len() > self.domain.len() + 1
                && host[host.len() - self.domain.len()..].eq_ignore_ascii_case(&self.domain)
                && host.as_bytes()[host.len() - self.domain.len() - 1] == b'.'
        } else {
            host.eq_ignore_ascii_case(&self.domain)
        };
        name_ok && self.port.unwrap_or(443) == port
    }
}

/// The allow-list, parsed once. Entries that do not parse match nothing.
#[derive(Debug, Clone)]
pub(crate) struct Allowed {
    rules: Vec<HostRule>,
    /// Exact origins (`scheme://host:port`) the operator named as mirrors:
    /// allowed whatever their scheme or address, since the operator chose them.
    origins: Vec<String>,
    shown: String,
}

/// `scheme://host:port` of a URL, lower-case, port always written.
fn origin_of(u: &Url) -> Option<String> {
    Some(format!("{}://{}:{}", u.scheme(), u.host_str()?.to_ascii_lowercase(), u.port_or_known_default()?))
}

impl Allowed {
    pub(crate) fn new(allowed: &[String]) -> Allowed {
        let rules: Vec<HostRule> = allowed.iter().filter_map(|a| HostRule::parse(a.trim()).ok()).collect();
        let origins: Vec<String> = allowed
            .iter()
            .filter(|a| a.contains("://"))
            .filter_map(|a| Url::parse(a.trim()).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .filter_map(|u| origin_of(&u))
            .collect();
        let mut shown = allowed.iter().take(6).cloned().collect::<Vec<_>>().join(", ");
        if allowed.len() > 6 {
            shown.push_str(", ...");
        }
        if shown.is_empty() {
            shown = "none".into();
        }
        Allowed { rules, origins, shown }
    }

    pub(crate) fn host(&self, host: &str, port: u16) -> Result<(), String> {
        if self.rules.iter().any(|r| r.matches(host, port)) {
            Ok(())
        } else {
            let at = if port == 443 { host.to_string() } else { format!("{host}:{port}") };
            Err(format!("{at} is not an allowed registry (allowed: {})", self.shown))
        }
    }

    /// `Ok` when `raw` is an `https://` URL on an allowed host; otherwise why not.
    pub(crate) fn url(&self, raw: &str) -> Result<(), String> {
        let u = Url::parse(raw.trim()).map_err(|e| format!("{} is not a valid URL ({e})", redact(raw)))?;
        if origin_of(&u).is_some_and(|o| self.origins.contains(&o)) {
            return Ok(());
        }
        match u.scheme() {
            "https" => {}
            "http" => return Err(format!("{} is plain http, not https", redact(raw))),
            "file" => return Err(format!("{} is a local archive, not from a registry", redact(raw))),
            s if s.starts_with("git") || s == "ssh" || s.ends_with("+ssh") => {
                return Err(format!("{} is a git source, not a registry", redact(raw)))
            }
            s => return Err(format!("{}: `{s}:` is not https", redact(raw))),
        }
        let port = u.port_or_known_default().unwrap_or(443);
        match u.host() {
            Some(Host::Domain(d)) => self.host(d, port).map_err(|e| format!("{}: {e}", redact(raw))),
            Some(Host::Ipv4(_) | Host::Ipv6(_)) => {
                Err(format!("{}: an IP address, not an allowed registry host", redact(raw)))
            }
            None => Err(format!("{} has no host", redact(raw))),
        }
    }
}

/// `scheme://user:pass@host/...` → `scheme://***@host/...`: URLs go into logs.
pub(crate) fn redact(url: &str) -> String {
    crate::pipeline::redacted(url.trim())
}

/// Violations reported per file; past this they are counted. A hostile lockfile with a
/// million bad entries must not make a million-line report (or a million line look-ups).
const MAX_PER_FILE: usize = 50;

/// Shared by the format checkers: the file being checked and what it found.
#[derive(Debug)]
pub(crate) struct Report<'a> {
    pub(crate) file: String,
    pub(crate) allowed: &'a Allowed,
    out: Vec<Violation>,
    more: usize,
}

impl<'a> Report<'a> {
    pub(crate) fn new(file: &str, allowed: &'a Allowed) -> Report<'a> {
        Report { file: file.to_string(), allowed, out: Vec::new(), more: 0 }
    }

    /// Whether another violation would still be shown (callers skip line look-ups if not).
    pub(crate) fn full(&self) -> bool {
        self.out.len() >= MAX_PER_FILE
    }

    pub(crate) fn push(&mut self, entry: impl Into<String>, line: Option<usize>, reason: impl Into<String>) {
        if self.full() {
            self.more += 1;
            return;
        }
        self.out.push(Violation {
            file: self.file.clone(),
            line,
            entry: entry.into(),
            reason: reason.into(),
        });
    }

    /// The violations, with a last one counting those left out.
    pub(crate) fn finish(mut self) -> Vec<Violation> {
        if self.more > 0 {
            let (file, more) = (self.file.clone(), self.more);
            self.out.push(Violation {
                file,
                line: None,
                entry: format!("{more} more entries"),
                reason: format!("not listed; the first {MAX_PER_FILE} are above"),
            });
        }
        self.out
    }

    /// A URL that must be https on an allowed host; `line` is only asked for when it fails.
    pub(crate) fn url(&mut self, entry: &str, url: &str, line: impl FnOnce() -> Option<usize>) {
        if let Err(reason) = self.allowed.url(url) {
            self.fail(entry, reason, line);
        }
    }

    /// [`Report::push`] with a lazily found line.
    pub(crate) fn fail(
        &mut self,
        entry: &str,
        reason: impl Into<String>,
        line: impl FnOnce() -> Option<usize>,
    ) {
        let line = if self.full() { None } else { line() };
        self.push(entry, line, reason);
    }
}

/// Violations of both kinds for one repository: its settings, its lockfile and `kiln.toml`'s
/// `env`.
pub fn check_all(root: &Path, manager: Manager, allowed: &[String], config: &KilnToml) -> Vec<Violation> {
    let opts = PolicyOptions::from(config);
    let mut out = check_repo_config_with(root, manager, allowed, &opts);
    out.extend(check_lockfile(root, manager, allowed));
    out.extend(check_env(&config.env, allowed, &opts));
    out
}

/// Line (1-based) of the first occurrence of `needle` in `text`.
pub(crate) fn line_of(text: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(text.as_bytes(), needle.as_bytes()).map(|at| line_at(text, at))
}

/// Line (1-based) of byte `offset`.
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
    memchr::memchr_iter(b'\n', &text.as_bytes()[..offset.min(text.len())]).count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(list: &[&str]) -> Allowed {
        Allowed::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn host_rules() {
        for good in ["registry.npmjs.org", "*.pythonhosted.org", "crates.io:8443", "EXAMPLE.org."] {
            HostRule::parse(good).unwrap();
        }
        for bad in ["", "https://x.org", "x.org:0", "x.org:abc", "*.", "-a.org", "a..org", "10.0.0.1", "a b"]
        {
            assert!(HostRule::parse(bad).is_err(), "{bad}");
        }
        let a = allowed(&["registry.npmjs.org", "*.example.org", "mirror.local:8443"]);
        assert!(a.host("registry.npmjs.org", 443).is_ok());
        assert!(a.host("REGISTRY.npmjs.org.", 443).is_ok());
        assert!(a.host("registry.npmjs.org", 80).is_err());
        assert!(a.host("a.b.example.org", 443).is_ok());
        assert!(a.host("example.org", 443).is_err());
        assert!(a.host("badexample.org", 443).is_err());
        assert!(a.host("mirror.local", 8443).is_ok());
        assert!(a.host("mirror.local", 443).is_err());
    }

    #[test]
    fn urls() {
        let a = allowed(&["registry.npmjs.org"]);
        assert!(a.url("https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz").is_ok());
        assert!(a.url("https://registry.npmjs.org:443/x").is_ok());
        for (bad, why) in [
            ("http://registry.npmjs.org/x.tgz", "plain http"),
            ("https://evil.example/x.tgz", "evil.example is not an allowed registry"),
            ("https://registry.npmjs.org:8443/x", "registry.npmjs.org:8443 is not"),
            ("git+ssh://git@github.com/a/b.git", "git source"),
            ("git://github.com/a/b", "git source"),
            ("file:../x.tgz", "local archive"),
            ("https://1.2.3.4/x", "IP address"),
            ("ftp://registry.npmjs.org/x", "`ftp:` is not https"),
            ("not a url", "not a valid URL"),
        ] {
            let err = a.url(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let err = a.url("https://user:s3cret@evil.example/x").unwrap_err();
        assert!(!err.contains("s3cret") && err.contains("***@evil.example"), "{err}");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("https://u:p@h/x@y"), "https://***@h/x@y");
        assert_eq!(redact("https://h/x@y"), "https://h/x@y");
        // An operator's mirror, named as a URL, is allowed as that exact origin.
        let m = Allowed::new(&["registry.npmjs.org".into(), "http://127.0.0.2:4873/".into()]);
        assert!(m.url("http://127.0.0.2:4873/pkg/-/pkg-1.0.0.tgz").is_ok());
        assert!(m.url("http://127.0.0.2:4874/pkg.tgz").is_err());
        assert!(m.url("https://127.0.0.2:4873/pkg.tgz").is_err());
        assert_eq!(redact("git+ssh://git@github.com/a"), "git+ssh://***@github.com/a");
        assert_eq!(redact("no-scheme"), "no-scheme");
    }

    #[test]
    fn effective_registries_need_the_operator() {
        let config = KilnToml {
            registries: vec!["npm.pkg.github.com".into(), "evil.example".into()],
            ..KilnToml::default()
        };
        let got = effective_registries(Manager::Npm, &config, |h| h != "evil.example");
        assert_eq!(got, ["registry.npmjs.org", "registry.yarnpkg.com", "npm.pkg.github.com"]);
    }

    #[test]
    fn violation_display() {
        let v =
            Violation { file: "yarn.lock".into(), line: Some(7), entry: "x@1".into(), reason: "r".into() };
        assert_eq!(v.to_string(), "yarn.lock:7: x@1: r");
        let v = Violation { line: None, ..v };
        assert_eq!(v.to_string(), "yarn.lock: x@1: r");
    }
}
