//! Repository settings that choose where the install fetches from.
//!
//! | manager | files |
//! | --- | --- |
//! | all JavaScript | `.npmrc` `registry=`, `@scope:registry=` |
//! | bun | `bunfig.toml` `[install] registry`, `[install.scopes]` |
//! | Yarn classic | `.yarnrc` `registry`, `"@scope:registry"`, `yarn-path`; `.yarnrc.yml` as below |
//! | Yarn berry | `.yarnrc.yml` `npmRegistryServer`, `npmScopes.*.npmRegistryServer`, `yarnPath`, `plugins` |
//! | all Python | `pip.conf`, `pip.ini`, `.venv/pip.conf`: `index-url`, `extra-index-url`, `find-links`, `trusted-host` |
//! | uv | `uv.toml` and `pyproject.toml` `[tool.uv]`: `index-url`, `extra-index-url`, `find-links`, `[[index]] url` |
//! | Poetry | `pyproject.toml` `[[tool.poetry.source]] url` |
//! | Cargo | `.cargo/config.toml`, `.cargo/config`: `[registries.*] index`, `[registry] index`, `[source.*] registry`/`git` |
//!
//! A repository with no recognised manager gets every check. Every repository is refused a
//! `.kiln/` of its own (see the crate docs on `HOME`). Values taken from environment
//! variables (`${NPM_REGISTRY}`) cannot be checked and are violations.

use std::collections::BTreeMap;
use std::path::Path;

use crate::detect::Manager;
use crate::fsread::{self, CONFIG_CAP};
use crate::yaml::{self, Node};

use super::{Allowed, PolicyOptions, Report, Violation};

const FROM_ENV: &str = "taken from an environment variable, so it cannot be checked";
const YARN_CODE: &str =
    "runs JavaScript from the repository inside yarn itself (set allow_yarn_path in kiln.toml to accept)";

/// [`check_repo_config_with`] with default options (`yarnPath` refused).
pub fn check_repo_config(root: &Path, manager: Manager, allowed_registries: &[String]) -> Vec<Violation> {
    check_repo_config_with(root, manager, allowed_registries, &PolicyOptions::default())
}

/// Check the settings files that `manager` reads for sources outside `allowed_registries`.
///
/// Run it on the fetched tree, before a cache restore or the install: both create `.kiln/`,
/// which is refused here when the repository itself ships one.
pub fn check_repo_config_with(
    root: &Path,
    manager: Manager,
    allowed_registries: &[String],
    opts: &PolicyOptions,
) -> Vec<Violation> {
    let allowed = Allowed::new(allowed_registries);
    let mut out = Vec::new();
    let all = manager == Manager::Unknown;

    match fsread::entry(root, ".kiln") {
        Ok(None) => {}
        Ok(Some(_)) => out.push(Violation {
            file: ".kiln".into(),
            line: None,
            entry: ".kiln".into(),
            reason: "the repository ships kiln's own directory (tool home, outputs); remove it".into(),
        }),
        Err(e) => out.push(unreadable(".kiln", e)),
    }
    if all || manager.is_node() {
        out.extend(with_text(root, ".npmrc", &allowed, npmrc));
    }
    if all || manager == Manager::Bun {
        out.extend(with_text(root, "bunfig.toml", &allowed, bunfig));
    }
    if all || manager == Manager::YarnClassic {
        out.extend(with_text(root, ".yarnrc", &allowed, |r, t| yarnrc_classic(r, t, opts)));
    }
    if all || matches!(manager, Manager::YarnClassic | Manager::YarnBerry) {
        out.extend(with_text(root, ".yarnrc.yml", &allowed, |r, t| yarnrc_yml(r, t, opts)));
    }
    if all || manager.is_python() {
        for file in ["pip.conf", "pip.ini", ".venv/pip.conf"] {
            out.extend(with_text(root, file, &allowed, pip_conf));
        }
    }
    if all || manager == Manager::Uv {
        out.extend(with_text(root, "uv.toml", &allowed, |r, t| uv_settings(r, t, false)));
        out.extend(with_text(root, "pyproject.toml", &allowed, |r, t| uv_settings(r, t, true)));
    }
    if all || manager == Manager::Poetry {
        out.extend(with_text(root, "pyproject.toml", &allowed, poetry_sources));
    }
    if all || manager == Manager::Cargo {
        for file in [".cargo/config.toml", ".cargo/config"] {
            out.extend(with_text(root, file, &allowed, cargo_config));
        }
    }
    out
}

fn unreadable(file: &str, e: crate::BuildError) -> Violation {
    Violation { file: file.into(), line: None, entry: file.into(), reason: format!("cannot be checked: {e}") }
}

/// Run `check` over the file's text if it exists; an unreadable file is a violation (the
/// manager might read what kiln could not).
fn with_text(
    root: &Path,
    file: &str,
    allowed: &Allowed,
    check: impl FnOnce(&mut Report, &str),
) -> Vec<Violation> {
    match fsread::read_text(root, file, CONFIG_CAP) {
        Ok(None) => Vec::new(),
        Ok(Some(text)) => {
            let mut report = Report::new(file, allowed);
            check(&mut report, &text);
            report.finish()
        }
        Err(e) => vec![unreadable(file, e)],
    }
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|x| x.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

fn registry_value(r: &mut Report, entry: &str, value: &str, line: usize) {
    if value.contains("${") {
        r.push(entry, Some(line), FROM_ENV);
    } else {
        r.url(entry, value, || Some(line));
    }
}

fn npmrc(r: &mut Report, text: &str) {
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        let Some((key, value)) = t.split_once('=') else { continue };
        let key = key.trim();
        if key.eq_ignore_ascii_case("registry") || key.to_ascii_lowercase().ends_with(":registry") {
            registry_value(r, key, unquote(value), line_no);
        }
    }
}

fn yarnrc_classic(r: &mut Report, text: &str, opts: &PolicyOptions) {
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (key, value) = match t.strip_prefix('"') {
            Some(rest) => match rest.split_once('"') {
                Some((k, v)) => (k, v),
                None => continue,
            },
            None => t.split_once(char::is_whitespace).unwrap_or((t, "")),
        };
        let value = unquote(value);
        if key == "registry" || key.ends_with(":registry") {
            registry_value(r, key, value, i + 1);
        } else if key == "yarn-path" && !opts.allow_yarn_path {
            r.push("yarn-path", Some(i + 1), format!("{value}: {YARN_CODE}"));
        }
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

fn yarnrc_yml(r: &mut Report, text: &str, opts: &PolicyOptions) {
    let Some(doc) = yaml_doc(r, text) else { return };
    let server = |r: &mut Report, entry: &str, node: &Node| match node.as_str() {
        Some(v) => registry_value(r, entry, v, node.line),
        None => r.push(entry, Some(node.line), "is not a URL string"),
    };
    if let Some(node) = doc.get("npmRegistryServer") {
        server(r, "npmRegistryServer", node);
    }
    if let Some(scopes) = doc.get("npmScopes") {
        for (scope, settings) in scopes.entries() {
            if let Some(node) = settings.get("npmRegistryServer") {
                let entry = format!("npmScopes.{}.npmRegistryServer", scope.as_str().unwrap_or("?"));
                server(r, &entry, node);
            }
        }
    }
    if opts.allow_yarn_path {
        return;
    }
    if let Some(node) = doc.get("yarnPath") {
        r.push("yarnPath", Some(node.line), format!("{}: {YARN_CODE}", node.as_str().unwrap_or("?")));
    }
    if let Some(plugins) = doc.get("plugins") {
        for (i, p) in plugins.items().iter().enumerate() {
            let what = p.as_str().or_else(|| p.get("path").and_then(Node::as_str)).unwrap_or("?");
            r.push(format!("plugins[{i}]"), Some(p.line), format!("{what}: {YARN_CODE}"));
        }
    }
}

fn pip_conf(r: &mut Report, text: &str) {
    // INI: `key = value`, values continue on indented lines; lists are whitespace-separated.
    let mut current: Option<(String, usize)> = None;
    let mut values: Vec<(String, usize, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((key, _)) = &current {
                values.push((key.clone(), i + 1, t.to_string()));
            }
            continue;
        }
        if t.starts_with('[') {
            current = None;
            continue;
        }
        let Some((key, value)) = t.split_once(['=', ':']) else { continue };
        let key = key.trim().to_ascii_lowercase().replace('_', "-");
        current = Some((key.clone(), i + 1));
        values.push((key, i + 1, value.trim().to_string()));
    }
    for (key, line, value) in values {
        for item in value.split_whitespace() {
            match key.as_str() {
                "index-url" | "extra-index-url" => registry_value(r, &key, item, line),
                "find-links" if item.contains("://") => registry_value(r, &key, item, line),
                "trusted-host" => {
                    r.push(&key, Some(line), format!("{item}: turns off TLS verification for that host"))
                }
                _ => {}
            }
        }
    }
}

fn toml_doc(r: &mut Report, text: &str) -> Option<toml::Table> {
    match toml::from_str::<toml::Table>(text) {
        Ok(t) => Some(t),
        Err(e) => {
            let line = e.span().map(|s| super::line_at(text, s.start));
            r.push("(file)", line, format!("cannot be parsed: {}", e.message().trim()));
            None
        }
    }
}

/// Check a TOML string value or a list of them; the line is where the value's text is.
fn toml_urls(r: &mut Report, text: &str, entry: &str, value: Option<&toml::Value>, paths_ok: bool) {
    let mut items = Vec::new();
    match value {
        None => return,
        Some(toml::Value::String(s)) => items.push(s.as_str()),
        Some(toml::Value::Array(a)) => items.extend(a.iter().filter_map(|v| v.as_str())),
        Some(toml::Value::Table(t)) => items.extend(t.get("url").and_then(|v| v.as_str())),
        Some(_) => {}
    }
    for item in items {
        if paths_ok && !item.contains("://") {
            continue;
        }
        let item = item.strip_prefix("sparse+").unwrap_or(item);
        if item.contains("${") {
            r.fail(entry, FROM_ENV, || super::line_of(text, item));
        } else {
            r.url(entry, item, || super::line_of(text, item));
        }
    }
}

fn bunfig(r: &mut Report, text: &str) {
    let Some(doc) = toml_doc(r, text) else { return };
    let Some(install) = doc.get("install") else { return };
    toml_urls(r, text, "install.registry", install.get("registry"), false);
    if let Some(scopes) = install.get("scopes").and_then(|s| s.as_table()) {
        for (scope, v) in scopes {
            toml_urls(r, text, &format!("install.scopes.{scope}"), Some(v), false);
        }
    }
}

fn uv_settings(r: &mut Report, text: &str, in_pyproject: bool) {
    let Some(doc) = toml_doc(r, text) else { return };
    let table = if in_pyproject {
        doc.get("tool").and_then(|t| t.get("uv"))
    } else {
        Some(&toml::Value::Table(doc.clone()))
    };
    let Some(uv) = table else { return };
    let prefix = if in_pyproject { "tool.uv." } else { "" };
    for key in ["index-url", "extra-index-url"] {
        toml_urls(r, text, &format!("{prefix}{key}"), uv.get(key), false);
    }
    toml_urls(r, text, &format!("{prefix}find-links"), uv.get("find-links"), true);
    if let Some(indexes) = uv.get("index").and_then(|i| i.as_array()) {
        for (i, index) in indexes.iter().enumerate() {
            toml_urls(r, text, &format!("{prefix}index[{i}].url"), index.get("url"), false);
        }
    }
}

fn poetry_sources(r: &mut Report, text: &str) {
    let Some(doc) = toml_doc(r, text) else { return };
    let sources = doc
        .get("tool")
        .and_then(|t| t.get("poetry"))
        .and_then(|p| p.get("source"))
        .and_then(|s| s.as_array());
    for (i, source) in sources.into_iter().flatten().enumerate() {
        let name = source.get("name").and_then(|n| n.as_str()).unwrap_or("?");
        toml_urls(r, text, &format!("tool.poetry.source[{i}] ({name})"), source.get("url"), false);
    }
}

/// The index URLs that mean crates.io itself.
pub(crate) fn is_crates_io_index(url: &str) -> bool {
    let u = url.trim_end_matches('/');
    u == "https://github.com/rust-lang/crates.io-index" || u == "https://index.crates.io"
}

fn cargo_index(r: &mut Report, text: &str, entry: &str, url: &str) {
    let bare = url.strip_prefix("sparse+").or_else(|| url.strip_prefix("registry+")).unwrap_or(url);
    let checked = if is_crates_io_index(bare) { "https://index.crates.io/" } else { bare };
    r.url(entry, checked, || super::line_of(text, url));
}

fn cargo_config(r: &mut Report, text: &str) {
    let Some(doc) = toml_doc(r, text) else { return };
    if let Some(registries) = doc.get("registries").and_then(|x| x.as_table()) {
        for (name, reg) in registries {
            if let Some(index) = reg.get("index").and_then(|i| i.as_str()) {
                cargo_index(r, text, &format!("registries.{name}.index"), index);
            }
        }
    }
    if let Some(index) = doc.get("registry").and_then(|x| x.get("index")).and_then(|i| i.as_str()) {
        cargo_index(r, text, "registry.index", index);
    }
    if let Some(sources) = doc.get("source").and_then(|x| x.as_table()) {
        for (name, source) in sources {
            if let Some(url) = source.get("registry").and_then(|i| i.as_str()) {
                cargo_index(r, text, &format!("source.{name}.registry"), url);
            }
            if let Some(url) = source.get("git").and_then(|i| i.as_str()) {
                let entry = format!("source.{name}.git");
                r.fail(&entry, format!("{}: a git source, not a registry", super::redact(url)), || {
                    super::line_of(text, url)
                });
            }
        }
    }
}

/// Environment variables (from `kiln.toml` `env`) that point package managers elsewhere or
/// turn off their checks.
pub fn check_env(
    env: &BTreeMap<String, String>,
    allowed_registries: &[String],
    opts: &PolicyOptions,
) -> Vec<Violation> {
    let allowed = Allowed::new(allowed_registries);
    let mut r = Report::new(crate::config::KilnToml::FILE, &allowed);
    for (key, value) in env {
        let upper = key.to_ascii_uppercase();
        let entry = format!("env.{key}");
        let urls = |r: &mut Report, list: &str| {
            for item in list.split([' ', ',']).filter(|s| !s.is_empty()) {
                // `UV_INDEX` entries may be `name=url`.
                let item = item.split_once('=').map_or(item, |(_, u)| u);
                let item = item.strip_prefix("sparse+").unwrap_or(item);
                if item.contains("${") || item.starts_with('$') {
                    r.push(&entry, None, FROM_ENV);
                } else if is_crates_io_index(item) {
                    r.url(&entry, "https://index.crates.io/", || None);
                } else {
                    r.url(&entry, item, || None);
                }
            }
        };
        match upper.as_str() {
            "NPM_CONFIG_REGISTRY"
            | "YARN_REGISTRY"
            | "YARN_NPM_REGISTRY_SERVER"
            | "BUN_CONFIG_REGISTRY"
            | "PIP_INDEX_URL"
            | "PIP_EXTRA_INDEX_URL"
            | "UV_INDEX_URL"
            | "UV_DEFAULT_INDEX"
            | "UV_EXTRA_INDEX_URL"
            | "UV_INDEX"
            | "CARGO_REGISTRY_INDEX" => urls(&mut r, value),
            "PIP_FIND_LINKS" | "UV_FIND_LINKS" => {
                let remote: Vec<&str> = value.split_whitespace().filter(|v| v.contains("://")).collect();
                urls(&mut r, &remote.join(" "));
            }
            "PIP_TRUSTED_HOST" | "UV_INSECURE_HOST" => r.push(&entry, None, "turns off TLS verification"),
            "GOPROXY" => {
                for item in value.split([',', '|']).map(str::trim).filter(|s| !s.is_empty()) {
                    match item {
                        "off" => {}
                        "direct" => {
                            r.push(&entry, None, "`direct` fetches modules from their VCS hosts, not a proxy")
                        }
                        url => r.url(&entry, url, || None),
                    }
                }
            }
            "GOSUMDB" if value.trim() == "off" => r.push(&entry, None, "turns off the Go checksum database"),
            "GONOSUMDB" | "GONOSUMCHECK" | "GOPRIVATE" | "GOINSECURE" | "GONOPROXY" => {
                r.push(&entry, None, "exempts modules from the proxy or the checksum database")
            }
            "GOFLAGS" if value.contains("-insecure") => r.push(&entry, None, "allows insecure fetches"),
            "YARN_YARN_PATH" | "YARN_PLUGINS" if !opts.allow_yarn_path => r.push(&entry, None, YARN_CODE),
            _ if upper.starts_with("POETRY_REPOSITORIES_") && upper.ends_with("_URL") => urls(&mut r, value),
            _ if upper.starts_with("CARGO_REGISTRIES_") && upper.ends_with("_INDEX") => urls(&mut r, value),
            _ if upper.starts_with("NPM_CONFIG_") && upper.ends_with(":REGISTRY") => urls(&mut r, value),
            _ => {}
        }
    }
    r.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::repo;

    fn allowed(manager: Manager) -> Vec<String> {
        manager.registries().iter().map(|s| s.to_string()).collect()
    }

    fn check(manager: Manager, files: &[(&str, &str)]) -> Vec<Violation> {
        check_repo_config(repo(files).path(), manager, &allowed(manager))
    }

    fn entries(v: &[Violation]) -> Vec<(String, Option<usize>, String)> {
        v.iter().map(|v| (v.file.clone(), v.line, v.entry.clone())).collect()
    }

    #[test]
    fn npmrc_registries() {
        let good = "# company settings\nregistry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken=${NPM_TOKEN}\nsave-exact=true\n";
        assert!(check(Manager::Npm, &[(".npmrc", good)]).is_empty());
        let bad = "registry = \"https://npm.evil.example/\"\n@corp:registry=http://registry.npmjs.org/\n@x:registry=${REG}\n";
        let v = check(Manager::Pnpm, &[(".npmrc", bad)]);
        assert_eq!(
            entries(&v),
            [
                (".npmrc".into(), Some(1), "registry".into()),
                (".npmrc".into(), Some(2), "@corp:registry".into()),
                (".npmrc".into(), Some(3), "@x:registry".into())
            ]
        );
        assert!(v[0].reason.contains("npm.evil.example is not an allowed registry"), "{}", v[0]);
        assert!(v[1].reason.contains("plain http"));
        assert!(v[2].reason.contains("environment variable"));
        // Not read by a Python manager.
        assert!(check(Manager::Pip, &[(".npmrc", bad)]).is_empty());
    }

    #[test]
    fn yarnrc_yml() {
        let good = "nodeLinker: node-modules\nnpmRegistryServer: \"https://registry.yarnpkg.com\"\n";
        assert!(check(Manager::YarnBerry, &[(".yarnrc.yml", good)]).is_empty());
        let bad = "yarnPath: .yarn/releases/yarn-4.1.0.cjs\nnpmRegistryServer: https://npm.evil.example\nnpmScopes:\n  corp:\n    npmRegistryServer: https://npm.corp.example\nplugins:\n  - path: .yarn/plugins/x.cjs\n";
        let v = check(Manager::YarnBerry, &[(".yarnrc.yml", bad)]);
        assert_eq!(
            entries(&v),
            [
                (".yarnrc.yml".into(), Some(2), "npmRegistryServer".into()),
                (".yarnrc.yml".into(), Some(5), "npmScopes.corp.npmRegistryServer".into()),
                (".yarnrc.yml".into(), Some(1), "yarnPath".into()),
                (".yarnrc.yml".into(), Some(7), "plugins[0]".into()),
            ]
        );
        assert!(v[2].reason.contains("allow_yarn_path"));
        let r = repo(&[(".yarnrc.yml", "yarnPath: .yarn/releases/yarn.cjs\n")]);
        let opts = PolicyOptions { allow_yarn_path: true };
        assert!(check_repo_config_with(r.path(), Manager::YarnBerry, &allowed(Manager::YarnBerry), &opts)
            .is_empty());
        let v = check(Manager::YarnBerry, &[(".yarnrc.yml", "a: [\n")]);
        assert!(v[0].reason.contains("cannot be parsed"));
    }

    #[test]
    fn yarnrc_classic() {
        assert!(check(Manager::YarnClassic, &[(".yarnrc", "registry \"https://registry.yarnpkg.com\"\n")])
            .is_empty());
        let v = check(
            Manager::YarnClassic,
            &[(
                ".yarnrc",
                "# x\n\"@corp:registry\" \"https://npm.corp.example\"\nyarn-path \"./bin/yarn.js\"\n",
            )],
        );
        assert_eq!(
            entries(&v),
            [
                (".yarnrc".into(), Some(2), "@corp:registry".into()),
                (".yarnrc".into(), Some(3), "yarn-path".into())
            ]
        );
    }

    #[test]
    fn bunfig() {
        let good = "[install]\nregistry = \"https://registry.npmjs.org\"\n";
        assert!(check(Manager::Bun, &[("bunfig.toml", good)]).is_empty());
        let bad = "[install]\nregistry = { url = \"https://npm.evil.example\", token = \"t\" }\n[install.scopes]\ncorp = \"https://npm.corp.example/\"\n";
        let v = check(Manager::Bun, &[("bunfig.toml", bad)]);
        assert_eq!(
            entries(&v),
            [
                ("bunfig.toml".into(), Some(2), "install.registry".into()),
                ("bunfig.toml".into(), Some(4), "install.scopes.corp".into())
            ]
        );
    }

    #[test]
    fn pip_conf() {
        let good = "[global]\nindex-url = https://pypi.org/simple\nfind-links = ./wheels\ntimeout = 60\n";
        assert!(check(Manager::Pip, &[("pip.conf", good)]).is_empty());
        let bad = "[global]\nindex-url = https://pypi.evil.example/simple\nextra-index-url =\n    https://pypi.org/simple\n    http://mirror.example/simple\ntrusted-host = mirror.example\n[install]\nfind-links = https://wheels.example/\n";
        let v = check(Manager::Poetry, &[("pip.ini", bad)]);
        assert_eq!(
            entries(&v),
            [
                ("pip.ini".into(), Some(2), "index-url".into()),
                ("pip.ini".into(), Some(5), "extra-index-url".into()),
                ("pip.ini".into(), Some(6), "trusted-host".into()),
                ("pip.ini".into(), Some(8), "find-links".into()),
            ]
        );
    }

    #[test]
    fn uv_and_poetry_sources() {
        let good = "[tool.uv]\nindex-url = \"https://pypi.org/simple\"\n";
        assert!(check(Manager::Uv, &[("pyproject.toml", good)]).is_empty());
        let bad = "[project]\nname = \"x\"\n[tool.uv]\nextra-index-url = [\"https://pypi.org/simple\", \"https://download.pytorch.example/whl\"]\n[[tool.uv.index]]\nname = \"corp\"\nurl = \"https://pypi.corp.example/simple\"\n";
        let v = check(
            Manager::Uv,
            &[("pyproject.toml", bad), ("uv.toml", "find-links = [\"./wheels\", \"https://x.example/\"]\n")],
        );
        assert_eq!(
            entries(&v),
            [
                ("uv.toml".into(), Some(1), "find-links".into()),
                ("pyproject.toml".into(), Some(4), "tool.uv.extra-index-url".into()),
                ("pyproject.toml".into(), Some(7), "tool.uv.index[0].url".into()),
            ]
        );
        let poetry = "[tool.poetry]\nname = \"x\"\n[[tool.poetry.source]]\nname = \"corp\"\nurl = \"https://pypi.corp.example/simple/\"\npriority = \"primary\"\n";
        let v = check(Manager::Poetry, &[("pyproject.toml", poetry)]);
        assert_eq!(entries(&v), [("pyproject.toml".into(), Some(5), "tool.poetry.source[0] (corp)".into())]);
        assert!(check(Manager::Poetry, &[("pyproject.toml", "[tool.poetry]\nname = \"x\"\n")]).is_empty());
    }

    #[test]
    fn cargo_config() {
        let good = "[source.crates-io]\nreplace-with = \"vendored\"\n[source.vendored]\ndirectory = \"vendor\"\n[registries.crates-io]\nprotocol = \"sparse\"\n";
        assert!(check(Manager::Cargo, &[(".cargo/config.toml", good)]).is_empty());
        let bad = "[registries.corp]\nindex = \"sparse+https://cargo.corp.example/index/\"\n[source.mirror]\ngit = \"https://github.com/corp/index\"\n";
        let v = check(Manager::Cargo, &[(".cargo/config", bad)]);
        assert_eq!(
            entries(&v),
            [
                (".cargo/config".into(), Some(2), "registries.corp.index".into()),
                (".cargo/config".into(), Some(4), "source.mirror.git".into())
            ]
        );
    }

    #[test]
    fn kiln_dir_and_unreadable_files() {
        let v = check(Manager::Go, &[(".kiln/home/.npmrc", "registry=https://x.example\n")]);
        assert_eq!(entries(&v), [(".kiln".into(), None, ".kiln".into())]);
        let r = repo(&[]);
        std::os::unix::fs::symlink("/etc/passwd", r.path().join(".npmrc")).unwrap();
        let v = check_repo_config(r.path(), Manager::Npm, &allowed(Manager::Npm));
        assert_eq!(v.len(), 1);
        assert!(v[0].reason.contains("symbolic link"), "{}", v[0]);
    }

    #[test]
    fn unknown_manager_gets_every_check() {
        let v = check(
            Manager::Unknown,
            &[
                (".npmrc", "registry=https://x.example\n"),
                (".cargo/config.toml", "[registry]\nindex = \"https://y.example\"\n"),
            ],
        );
        assert_eq!(v.len(), 2, "{v:?}");
    }

    #[test]
    fn env_settings() {
        let env: BTreeMap<String, String> = [
            ("NODE_ENV", "production"),
            ("npm_config_registry", "https://registry.npmjs.org/"),
            ("PIP_INDEX_URL", "https://pypi.evil.example/simple"),
            ("GOPROXY", "https://proxy.golang.org,direct"),
            ("GONOSUMDB", "corp.example/*"),
            ("YARN_YARN_PATH", "./x.cjs"),
            ("CARGO_REGISTRIES_CORP_INDEX", "sparse+https://cargo.corp.example/"),
            ("PIP_TRUSTED_HOST", "pypi.org"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut allowed_all = allowed(Manager::Npm);
        allowed_all.extend(allowed(Manager::Pip));
        allowed_all.extend(allowed(Manager::Go));
        let v = check_env(&env, &allowed_all, &PolicyOptions::default());
        let got: Vec<&str> = v.iter().map(|v| v.entry.as_str()).collect();
        assert_eq!(
            got,
            [
                "env.CARGO_REGISTRIES_CORP_INDEX",
                "env.GONOSUMDB",
                "env.GOPROXY",
                "env.PIP_INDEX_URL",
                "env.PIP_TRUSTED_HOST",
                "env.YARN_YARN_PATH"
            ]
        );
        assert!(v.iter().all(|v| v.file == "kiln.toml"));
        let opts = PolicyOptions { allow_yarn_path: true };
        assert!(!check_env(&env, &allowed_all, &opts).iter().any(|v| v.entry == "env.YARN_YARN_PATH"));
    }
}
